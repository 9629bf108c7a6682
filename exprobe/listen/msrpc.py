"""MSRPC responders: an endpoint mapper that registers Exchange 5.5's interfaces on static
ports, and the DCE/RPC listeners behind those ports.

The endpoint mapper (C706 appendix O, MS-RPCE 2.2.1.2) answers a bind to its interface
(e1af8308 v3.0), `ept_lookup` (opnum 2: every registration, paged by the entry handle,
Windows-style end: last batch + status 0 + NULL handle), `ept_map` (opnum 3: the tower
of the requested interface on its port, or 0x16C9A0D6 ept_s_not_registered) and
`ept_lookup_handle_free` (opnum 4).  Each component listener (DS, IS, MTA, SA) accepts
a bind to its own interfaces and rejects others; any call on it gets a fault (no
Exchange behind it: the bind proves the path and an RPC server, which is the point).

PDUs and NDR come from `exprobe.wire.dcerpc` (impacket as a codec); the interface table
from `exprobe.wire.exchange_uuids`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from exprobe.errors import ProtocolError
from exprobe.listen.core import Conn, Hangup, Responder
from exprobe.wire import dcerpc as d
from exprobe.wire.exchange_uuids import EXCHANGE_INTERFACES, Interface

MAX_STUB = 64 * 1024  # a reassembled request stub; ept_lookup's is 40 bytes
MAX_PDUS = 200
MAX_ENTS = 500  # entries per ept_lookup reply, whatever the client asks
HANDLE_MAGIC = b"exprobe\x00"

# Exchange 5.5's registrations per component (research/msrpc.md §2): the interfaces a
# 5.5 server's dsamain.exe, store.exe, emsmta.exe and mad.exe register.
EXCHANGE55_UUIDS: dict[str, tuple[str, ...]] = {
    "ds": ("f5cc5a18-4264-101a-8c59-08002b2f8426", "f5cc5a7c-4264-101a-8c59-08002b2f8426"),
    "is": (
        "a4f1db00-ca47-1067-b31f-00dd010662da",
        "a4f1db00-ca47-1067-b31e-00dd010662da",
        "89742ace-a9ed-11cf-9c0c-08002be7ae86",
        "99e64010-b032-11d0-97a4-00c04fd6551d",
    ),
    "mta": ("9e8ee830-4459-11ce-979b-00aa005ffebe",),
    "sa": ("469d6ec0-0d87-11ce-b13f-00aa003bac6c", "83d72bf0-0d89-11ce-b13f-00aa003bac6c"),
}
COMPONENT_LABEL = {"ds": "DS", "is": "IS", "mta": "MTA", "sa": "SA", "other": "other"}


@dataclass(frozen=True, slots=True)
class Registration:
    """One component's interfaces on its (already offset) TCP port."""

    component: str
    port: int
    interfaces: tuple[Interface, ...]


@dataclass(slots=True)
class Registry:
    """What the endpoint mapper hands out."""

    registrations: list[Registration] = field(default_factory=list)

    @classmethod
    def exchange55(
        cls, ports: dict[str, int], other: list[tuple[str, tuple[int, int]]] | None = None
    ) -> Registry:
        """DS, IS, MTA and SA of an Exchange 5.5 server on `ports` (component → port), and
        the `other` interfaces (uuid, version) a check maps itself on `ports["other"]`."""
        from exprobe.wire.exchange_uuids import known_name

        regs = []
        for comp, port in ports.items():
            if comp == "other":
                ifaces = tuple(
                    Interface(u, v, known_name(u, v) or u, "other", "?") for u, v in other or ()
                )
            else:
                wanted = EXCHANGE55_UUIDS.get(comp, ())
                ifaces = tuple(i for u in wanted for i in EXCHANGE_INTERFACES if i.uuid == u)
            regs.append(Registration(comp, port, ifaces))
        return cls(regs)

    def describe(self) -> str:
        return ", ".join(
            f"{COMPONENT_LABEL.get(r.component, r.component)} on {r.port}"
            for r in self.registrations
        )

    def describe_component(self, component: str) -> str:
        for r in self.registrations:
            if r.component == component:
                names = ", ".join(i.name.split(" (")[0] for i in r.interfaces)
                return f"{COMPONENT_LABEL.get(component, component)}: DCE bind to {names}"
        return ""

    def entries(self) -> list[tuple[Interface, int]]:
        return [(i, r.port) for r in self.registrations for i in r.interfaces]

    def port_of(self, uuid: str, major: int) -> int | None:
        for iface, port in self.entries():
            if iface.uuid == uuid and iface.version[0] == major:
                return port
        return None

    def component(self, name: str) -> Registration | None:
        return next((r for r in self.registrations if r.component == name), None)


# -- the PDU loop shared by both responders ---------------------------------------------------


async def read_pdu(conn: Conn) -> bytes:
    """One whole PDU (header + frag_len - 16 bytes); garbage ends the connection."""
    head = await conn.read_exact(d.HEADER_LEN)
    try:
        h = d.parse_header(head)
    except ProtocolError as exc:
        raise Hangup(f"not DCE/RPC ({exc})") from None
    return head + await conn.read_exact(h.frag_len - d.HEADER_LEN)


def _host_of(conn: Conn) -> str:
    """The IPv4 address the towers carry: ours, or 0.0.0.0 ("the address you asked")."""
    try:
        addr = ipaddress.ip_address(conn.record.local)
    except ValueError:
        return "0.0.0.0"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr) if isinstance(addr, ipaddress.IPv4Address) else "0.0.0.0"


@dataclass(slots=True)
class _Dialogue:
    """Bound contexts and the fragment size the client accepts."""

    accepted: set[int] = field(default_factory=set)
    max_frag: int = d.DEFAULT_MAX_FRAG


def _accept(
    conn: Conn, bind: d.BindRequest, allowed: dict[str, str], dlg: _Dialogue
) -> list[tuple[int, int]]:
    """Per context: (result, reason); record the accepted ones and log what was asked."""
    results = []
    for ctx in bind.contexts:
        name = allowed.get(ctx.abstract)
        label = name or f"{ctx.abstract} v{ctx.version[0]}.{ctx.version[1]}"
        if name is None:
            results.append((d.RESULT_PROVIDER_REJECTION, 1))  # abstract syntax not supported
            conn.did(f"bind {label}: rejected")
        elif not ctx.offers_ndr:
            results.append((d.RESULT_PROVIDER_REJECTION, 2))  # transfer syntaxes
            conn.did(f"bind {label}: no NDR, rejected")
        else:
            results.append((d.RESULT_ACCEPTANCE, 0))
            dlg.accepted.add(ctx.ctx_id)
            conn.did(f"bind {label}")
    return results


async def _serve(conn: Conn, allowed: dict[str, str], epm: Registry | None) -> None:
    """Bind, then requests: the EPM's opnums when `epm` is given, a fault otherwise."""
    dlg = _Dialogue()
    stub = b""
    for _ in range(MAX_PDUS):
        raw = await read_pdu(conn)
        try:
            pdu = d.parse_pdu(raw)
        except ProtocolError as exc:
            raise Hangup(f"not DCE/RPC ({exc})") from None
        ptype = pdu.header.ptype
        if ptype in (d.PTYPE_BIND, d.PTYPE_ALTER_CONTEXT):
            try:
                bind = d.parse_bind(raw)
            except ProtocolError as exc:
                raise Hangup(f"bad bind ({exc})") from None
            if ptype == d.PTYPE_ALTER_CONTEXT:
                # No alter_context_resp builder, and nothing here needs a second context.
                conn.did("alter_context")
                await conn.write(d.build_fault(bind.call_id, d.NCA_S_PROTO_ERROR))
                raise Hangup("alter_context not supported (sent a fault)")
            if bind.auth_len:
                conn.did("bind with authentication")
                await conn.write(d.build_bind_nak(bind.call_id, 8))
                raise Hangup("authenticated bind (sent bind_nak: no authentication here)")
            if not bind.contexts:
                await conn.write(d.build_bind_nak(bind.call_id, 0))
                raise Hangup("bind without a presentation context")
            dlg.max_frag = max(d.MIN_MAX_FRAG, min(bind.max_recv, d.DEFAULT_MAX_FRAG))
            results = _accept(conn, bind, allowed, dlg)
            await conn.write(
                d.build_bind_ack(
                    bind.call_id,
                    results,
                    max_xmit=dlg.max_frag,
                    max_recv=d.DEFAULT_MAX_FRAG,
                    secondary_address=str(conn.record.port),
                )
            )
        elif ptype == d.PTYPE_REQUEST:
            try:
                req = d.parse_request(raw)
            except ProtocolError as exc:
                raise Hangup(f"bad request ({exc})") from None
            if req.first:
                stub = b""
            stub += req.stub
            if len(stub) > MAX_STUB:
                raise Hangup(f"request stub over {MAX_STUB} bytes")
            if not req.last:
                continue
            if req.ctx_id not in dlg.accepted:
                conn.did(f"call opnum {req.opnum} without a bound context")
                await conn.write(d.build_fault(req.call_id, d.NCA_S_UNK_IF, ctx_id=req.ctx_id))
                continue
            if epm is None:
                conn.did(f"call opnum {req.opnum}: fault (no Exchange behind this port)")
                await conn.write(
                    d.build_fault(req.call_id, d.NCA_S_OP_RNG_ERROR, ctx_id=req.ctx_id)
                )
                continue
            out = _epm_call(conn, epm, req.opnum, stub)
            if out is None:
                await conn.write(
                    d.build_fault(req.call_id, d.NCA_S_OP_RNG_ERROR, ctx_id=req.ctx_id)
                )
                continue
            for frag in d.build_response(
                req.call_id, out, max_frag=dlg.max_frag, ctx_id=req.ctx_id
            ):
                await conn.write(frag)
        elif ptype in (d.PTYPE_SHUTDOWN, d.PTYPE_ORPHANED, d.PTYPE_CO_CANCEL):
            conn.did(pdu.header.type_name)
        else:
            conn.did(f"unexpected {pdu.header.type_name}")
            await conn.write(d.build_fault(pdu.header.call_id, d.NCA_S_PROTO_ERROR))
            raise Hangup(f"unexpected {pdu.header.type_name} PDU (sent a fault)")
    raise Hangup(f"more than {MAX_PDUS} PDUs")


# -- the endpoint mapper's operations --------------------------------------------------------------


def _handle(offset: int) -> bytes:
    """A context handle that carries the next entry's index (NULL handle: start)."""
    return struct.pack("<I", 0) + HANDLE_MAGIC + struct.pack("<II", offset, 0x45787072)


def _offset_of(handle: bytes) -> int | None:
    if d.is_null_handle(handle):
        return 0
    if handle[4:12] != HANDLE_MAGIC:
        return None
    offset: int = struct.unpack_from("<I", handle, 12)[0]
    return offset


def _matches(iface: Interface, want: tuple[str, tuple[int, int]], vers_option: int) -> bool:
    uuid, (major, minor) = want
    if iface.uuid != uuid:
        return False
    if vers_option == d.RPC_C_VERS_ALL:
        return True
    if vers_option == 3:  # RPC_C_VERS_EXACT
        return iface.version == (major, minor)
    if vers_option == 4:  # RPC_C_VERS_MAJOR_ONLY
        return iface.version[0] == major
    if vers_option == 5:  # RPC_C_VERS_UPTO
        return iface.version <= (major, minor)
    return iface.version[0] == major and iface.version[1] >= minor  # COMPATIBLE


def _iface_name(uuid: str, version: tuple[int, int]) -> str:
    from exprobe.wire.exchange_uuids import known_name

    name = known_name(uuid, version)
    short = name.split(" (")[0] if name else uuid
    return f"{short} v{version[0]}.{version[1]}"


def _tower(iface: Interface, port: int, host: str) -> bytes:
    return d.build_tower(iface.uuid, iface.version, protocol="ncacn_ip_tcp", port=port, host=host)


def _epm_call(conn: Conn, reg: Registry, opnum: int, stub: bytes) -> bytes | None:
    """The reply stub of one endpoint-mapper call; None: no such operation (fault)."""
    host = _host_of(conn)
    if opnum == d.OPNUM_EPT_LOOKUP:
        try:
            q = d.decode_ept_lookup_request(stub)
        except ProtocolError as exc:
            raise Hangup(f"bad ept_lookup ({exc})") from None
        entries = reg.entries()
        if q.interface is not None and q.inquiry_type in (1, 3):  # MATCH_BY_IF / BOTH
            want = q.interface
            entries = [(i, p) for i, p in entries if _matches(i, want, q.vers_option)]
        start = _offset_of(q.handle)
        what = f"ept_lookup max_ents={q.max_ents}" + (
            f" {_iface_name(*q.interface)}" if q.interface else ""
        )
        if start is None or start >= len(entries):
            conn.did(f"{what}: none")
            return d.build_ept_lookup_response([], d.NULL_HANDLE, d.EPT_S_NOT_REGISTERED)
        n = max(1, min(q.max_ents, MAX_ENTS))
        batch = entries[start : start + n]
        end = start + len(batch)
        handle = d.NULL_HANDLE if end >= len(entries) else _handle(end)
        conn.did(f"{what}: {len(batch)} entries")
        specs = [
            d.EntrySpec(_tower(i, p, host), annotation=f"exprobe rehearsal: {i.name}")
            for i, p in batch
        ]
        return d.build_ept_lookup_response(specs, handle, d.STATUS_OK)
    if opnum == d.OPNUM_EPT_MAP:
        try:
            q_map = d.decode_ept_map_request(stub)
        except ProtocolError as exc:
            raise Hangup(f"bad ept_map ({exc})") from None
        t = q_map.tower
        port = reg.port_of(t.interface, t.version[0]) if t.protocol == "ncacn_ip_tcp" else None
        label = f"ept_map {_iface_name(t.interface, t.version)}"
        if port is None:
            conn.did(f"{label}: not registered")
            return d.build_ept_map_response([], d.NULL_HANDLE, d.EPT_S_NOT_REGISTERED)
        conn.did(f"{label}: {port}")
        iface = next(i for i, p in reg.entries() if i.uuid == t.interface and p == port)
        return d.build_ept_map_response([_tower(iface, port, host)], d.NULL_HANDLE, d.STATUS_OK)
    if opnum == d.OPNUM_EPT_LOOKUP_HANDLE_FREE:
        conn.did("ept_lookup_handle_free")
        return d.NULL_HANDLE + struct.pack("<I", 0)
    conn.did(f"epm opnum {opnum}: not supported")
    return None


# -- responders ------------------------------------------------------------------------------------


def epm_responder(reg: Registry) -> Responder:
    """The endpoint mapper on 135 (or 135 + offset)."""
    allowed = {d.EPM_UUID: "EPM v3.0"}

    async def epm(conn: Conn) -> None:
        await _serve(conn, allowed, reg)

    return epm


def dce_responder(reg: Registry, component: str) -> Responder:
    """A component's port: binds to its interfaces are accepted, calls get a fault."""
    r = reg.component(component)
    allowed = {
        i.uuid: f"{i.name.split(' (')[0]} v{i.version_text}" for i in (r.interfaces if r else ())
    }

    async def dce(conn: Conn) -> None:
        await _serve(conn, allowed, None)

    return dce
