"""`msrpc-epm`: ask the endpoint mapper where Exchange's DS, IS and MTA listen, and follow it.

`msrpc-bind`: an anonymous DCE/RPC bind to one interface (does an RPC server answer?).

Protocol: DCE/RPC connection-oriented (C706 ch. 12) over TCP, the endpoint mapper
interface e1af8308-5d1f-11c9-91a4-08002b14a0fa v3.0 (MS-RPCE 2.2.1.2), NDR 2.0, no
authentication.  The I/O is asyncio over the runner's `Stream` (one deadline, immediate
cancellation, TCP-segmented PDUs handled by `read_exact`); impacket is only the codec
(`exprobe.wire.dcerpc`).

msrpc-epm steps: `epm-bind`, `ept-lookup` (all elements, paged with the entry handle),
`ept-map` (one call per Exchange interface of the requested components, plus any extra
`interfaces`, over the same association — the call Outlook itself makes), `classify`.
Every ncacn_ip_tcp endpoint of a requested component becomes a derived check
(`msrpc-bind` to its interface, or a plain `tcp` connect) on the queried address.

Params (msrpc-epm): `components` (ds, is, mta, sa), `expect_ds`/`expect_is`/`expect_mta`/
`expect_sa` (pinned ports), `max_entries` (per ept_lookup call), `max_rounds` (ept_lookup
calls), `lookup`, `map`, `follow` ("bind", "tcp" or "none"), `interfaces` (extra
"uuid:major.minor" to map and follow as component "other").
Params (msrpc-bind): `interface` (UUID), `version` ("major.minor").
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

from exprobe.errors import ApplicationError, ProtocolError
from exprobe.net.stream import MAX_BYTES, Stream
from exprobe.probes.base import CheckSpec, Params, ProbeContext, register
from exprobe.wire import exchange_uuids as xu
from exprobe.wire.dcerpc import (
    DEFAULT_MAX_FRAG,
    EPM_UUID,
    EPM_VERSION,
    EPT_S_NOT_REGISTERED,
    HEADER_LEN,
    MAX_FRAG_LIMIT,
    NULL_HANDLE,
    OPNUM_EPT_LOOKUP,
    OPNUM_EPT_MAP,
    PTYPE_BIND_ACK,
    PTYPE_BIND_NAK,
    PTYPE_FAULT,
    PTYPE_RESPONSE,
    REQUEST_HEADER_LEN,
    RPC_S_ACCESS_DENIED,
    STATUS_OK,
    BindAck,
    EpmEntry,
    Fault,
    LookupReply,
    MapReply,
    Pdu,
    Tower,
    build_bind,
    build_ept_lookup_stub,
    build_ept_map_stub,
    build_request,
    decode_ept_lookup_response,
    decode_ept_map_response,
    parse_bind_ack,
    parse_bind_nak,
    parse_fault,
    parse_header,
    parse_response,
    parse_version,
    status_name,
    version_text,
    warm_codec,
)

# The pure-Python NDR decoder costs ~0.2 s per 500 entries (64 KB) on a slow machine:
# stubs above this size are decoded in a worker thread so a sweep's event loop keeps going.
DECODE_IN_THREAD = 16 * 1024
# Stop paging ept_lookup before the per-check byte budget is spent, so the ept_map calls
# (the answer Outlook would get) still fit.
LOOKUP_BYTE_CAP = MAX_BYTES * 3 // 4
MAX_ENDPOINT_FACTS = 5000
# Dynamic RPC port ranges: Windows NT 4.0-2003 (1025-5000) and Windows 2008+ (49152-65535).
EPHEMERAL_RANGES = ((1025, 5000), (49152, 65535))
COMPONENT_ORDER = ("is", "ds", "mta", "sa", "other")


# -- a small DCE/RPC client over the probe's stream -----------------------------------------------


class BindRejected(ApplicationError):
    """The server answered the bind with a bind_nak, a rejected context, or a fault."""


class FaultError(ApplicationError):
    """The server answered a call with a fault PDU."""

    def __init__(self, fault: Fault, what: str) -> None:
        super().__init__(f"{what}: fault {fault.name}")
        self.fault = fault


class RpcClient:
    """Bind and call over a connected `Stream`; fragments are reassembled, sizes enforced."""

    def __init__(self, stream: Stream, *, max_recv: int = DEFAULT_MAX_FRAG) -> None:
        self.stream = stream
        self.call_id = 0
        self.max_recv = max_recv  # what we accept (advertised as max_recv_frag)
        self.max_xmit = DEFAULT_MAX_FRAG  # what we send: min(ours, the server's max_recv)

    async def read_pdu(self) -> Pdu:
        """One PDU: the 16-byte header, validated before reading frag_len - 16 more."""
        head = await self.stream.read_exact(HEADER_LEN)
        header = parse_header(head, max_frag=self.max_recv)
        rest = await self.stream.read_exact(header.frag_len - HEADER_LEN)
        return Pdu(header, head + rest)

    async def bind(self, uuid: str, version: tuple[int, int]) -> BindAck:
        self.call_id += 1
        cid = self.call_id
        pdu = build_bind(cid, uuid, version, max_xmit=DEFAULT_MAX_FRAG, max_recv=self.max_recv)
        await self.stream.write(
            pdu, note=f"bind {uuid} v{version_text(version)} (NDR 2.0, no auth, call {cid})"
        )
        reply = await self.read_pdu()
        h = reply.header
        if h.ptype == PTYPE_BIND_NAK:
            nak = parse_bind_nak(reply.data)
            self.stream.transcript.add("S", f"bind_nak reason {nak.reason} ({nak.reason_text})")
            raise BindRejected(f"bind_nak ({nak.reason_text})", facts={"bind_nak": nak.reason})
        if h.ptype == PTYPE_FAULT:
            fault = parse_fault(reply.data)
            self.stream.transcript.add("S", f"fault {fault.name}")
            raise BindRejected(f"fault {fault.name}", facts={"fault": fault.name})
        if h.ptype != PTYPE_BIND_ACK:
            raise ProtocolError(f"expected bind_ack, got {h.type_name}")
        ack = parse_bind_ack(reply.data)
        if ack.call_id != cid:
            raise ProtocolError(f"bind_ack for call {ack.call_id}, expected {cid}")
        result = ack.results[0]
        self.stream.transcript.add(
            "S",
            f"bind_ack {result.describe()}, max_xmit {ack.max_xmit} max_recv {ack.max_recv}"
            f" sec_addr {ack.secondary_address!r}",
        )
        if not result.accepted:
            raise BindRejected(f"bind rejected ({result.describe()})")
        if ack.max_recv < REQUEST_HEADER_LEN + 8:
            raise ProtocolError(f"bind_ack max_recv_frag {ack.max_recv} is unusable")
        self.max_xmit = min(DEFAULT_MAX_FRAG, ack.max_recv)
        if ack.max_xmit > self.max_recv:
            # C706 says the server sends at most our max_recv_frag; a server that announces
            # larger fragments in its own bind_ack is taken at its word rather than failed.
            self.max_recv = min(ack.max_xmit, MAX_FRAG_LIMIT)
        return ack

    async def call(self, opnum: int, stub: bytes, *, what: str) -> bytes:
        """Send a request, return the reassembled response stub; a fault raises FaultError."""
        self.call_id += 1
        cid = self.call_id
        frags = build_request(cid, opnum, stub, max_frag=self.max_xmit)
        for i, frag in enumerate(frags):
            await self.stream.write(
                frag,
                note=f"{what} (call {cid}, {len(stub)} bytes)" if i == 0 else None,
                record=i == 0,
            )
        parts: list[bytes] = []
        size = 0
        while True:
            pdu = await self.read_pdu()
            h = pdu.header
            if h.call_id != cid:
                raise ProtocolError(f"{h.type_name} for call {h.call_id}, expected {cid}")
            if h.ptype == PTYPE_FAULT:
                fault = parse_fault(pdu.data)
                self.stream.transcript.add("S", f"fault {fault.name}")
                raise FaultError(fault, what)
            if h.ptype != PTYPE_RESPONSE:
                raise ProtocolError(f"expected a response to {what}, got {h.type_name}")
            resp = parse_response(pdu.data)
            if resp.first != (not parts):
                raise ProtocolError("response fragments out of order (PFC_FIRST_FRAG)")
            parts.append(resp.stub)
            size += len(resp.stub)
            if resp.last:
                break
        self.stream.transcript.add("S", f"response: {len(parts)} fragment(s), {size} bytes")
        return b"".join(parts)


_codec_loaded = False


async def _load_codec() -> None:
    """Import impacket once, in a worker thread: the first import costs 0.3-0.9 s, and on
    the event loop it would stall every other check of a sweep (and skew their timings)."""
    global _codec_loaded
    if not _codec_loaded:
        await asyncio.to_thread(warm_codec)
        _codec_loaded = True


async def _decode_lookup(stub: bytes) -> LookupReply:
    if len(stub) > DECODE_IN_THREAD:
        return await asyncio.to_thread(decode_ept_lookup_response, stub)
    return decode_ept_lookup_response(stub)


async def _decode_map(stub: bytes) -> MapReply:
    if len(stub) > DECODE_IN_THREAD:
        return await asyncio.to_thread(decode_ept_map_response, stub)
    return decode_ept_map_response(stub)


# -- parameters -------------------------------------------------------------------------------


def parse_interface_spec(text: str) -> tuple[str, tuple[int, int]]:
    """`"12345778-1234-abcd-ef00-0123456789ab:0.0"` → (uuid, (0, 0)).  ValueError if bad."""
    import uuid as uuidlib

    uuid_part, sep, ver_part = text.strip().partition(":")
    if not sep:
        raise ValueError(f"interface {text!r}: expected UUID:MAJOR.MINOR")
    try:
        uuid = str(uuidlib.UUID(uuid_part))
    except ValueError:
        raise ValueError(f"interface {text!r}: {uuid_part!r} is not a UUID") from None
    return uuid, parse_version(ver_part)


@dataclass(frozen=True, slots=True)
class EpmParams(Params):
    """msrpc-epm parameters (see the module docstring)."""

    components: tuple[str, ...] = ("ds", "is", "mta")
    expect_ds: int | None = None
    expect_is: int | None = None
    expect_mta: int | None = None
    expect_sa: int | None = None
    max_entries: int = 500
    max_rounds: int = 64
    lookup: bool = True
    map: bool = True
    follow: Literal["bind", "tcp", "none"] = "bind"
    interfaces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        Params.__post_init__(self)
        if self.tls != "none":
            raise ValueError("msrpc-epm speaks no TLS (tls must be none)")
        bad = [c for c in self.components if c not in xu.COMPONENTS]
        if bad:
            raise ValueError(f"unknown component(s) {bad} (known: {', '.join(xu.COMPONENTS)})")
        for name in ("expect_ds", "expect_is", "expect_mta", "expect_sa"):
            port = getattr(self, name)
            if port is not None and not 1 <= port <= 65535:
                raise ValueError(f"{name} {port} is outside 1-65535")
        if not 1 <= self.max_entries <= 10_000:
            raise ValueError("max_entries must be 1-10000")
        if not 1 <= self.max_rounds <= 10_000:
            raise ValueError("max_rounds must be 1-10000")
        if not (self.lookup or self.map):
            raise ValueError("lookup and map cannot both be off")
        for spec in self.interfaces:
            parse_interface_spec(spec)

    def expected(self, component: str) -> int | None:
        value = {
            "ds": self.expect_ds,
            "is": self.expect_is,
            "mta": self.expect_mta,
            "sa": self.expect_sa,
        }.get(component)
        return value


@dataclass(frozen=True, slots=True)
class BindParams(Params):
    """msrpc-bind parameters: the interface to bind to (default: the endpoint mapper)."""

    interface: str = EPM_UUID
    version: str = "3.0"

    def __post_init__(self) -> None:
        Params.__post_init__(self)
        if self.tls != "none":
            raise ValueError("msrpc-bind speaks no TLS (tls must be none)")
        parse_interface_spec(f"{self.interface}:{self.version}")


# -- msrpc-bind --------------------------------------------------------------------------------


@register(
    "msrpc-bind",
    BindParams,
    default_port=135,
    summary="DCE/RPC anonymous bind to one interface: does an RPC server answer for it?",
)
async def msrpc_bind(stream: Stream, params: BindParams, ctx: ProbeContext) -> None:
    """C706 bind (NDR 2.0, no auth) to `interface` v`version`; bind_ack accepted → success.

    Steps: `rpc-bind`.  A rejected context, bind_nak or fault → application-error (an RPC
    server answers, but not for this interface, or not anonymously).
    """
    ctx.step("rpc-bind")
    await _load_codec()
    uuid, version = parse_interface_spec(f"{params.interface}:{params.version}")
    meta = dict(ctx.check.meta)
    iface = xu.lookup(uuid, version)
    ctx.facts["component"] = meta.get("component") or (iface.component if iface else "other")
    ctx.facts["interface"] = uuid
    ctx.facts["interface_version"] = version_text(version)
    name = xu.known_name(uuid, version)
    if name:
        ctx.facts["interface_name"] = name
    label = f"{name or uuid} v{version_text(version)}"
    client = RpcClient(stream)
    try:
        ack = await client.bind(uuid, version)
    except BindRejected as exc:
        raise ApplicationError(
            f"{exc.message} for {label}: an RPC server answers on this port, "
            "but not for this interface (or not anonymously)",
            facts=exc.facts,
        ) from exc
    ctx.facts["bind"] = {
        "accepted": True,
        "max_xmit": ack.max_xmit,
        "max_recv": ack.max_recv,
        "assoc_group": f"0x{ack.assoc_group:08x}",
        "secondary_address": ack.secondary_address,
    }
    ctx.summary = f"RPC server answers: bind to {label} accepted"


# -- msrpc-epm ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Port:
    """What is known about one (component, port)."""

    interfaces: dict[tuple[str, tuple[int, int]], set[str]] = field(default_factory=dict)
    advertised: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Component:
    registered: bool = False
    ports: dict[int, _Port] = field(default_factory=dict)
    protocols: set[str] = field(default_factory=set)


def _entry_fact(e: EpmEntry) -> dict[str, Any]:
    t = e.tower
    iface = xu.lookup(t.interface, t.version)
    d: dict[str, Any] = {
        "uuid": t.interface,
        "version": t.version_text,
        "name": xu.known_name(t.interface, t.version),
        "component": iface.component if iface else None,
        "annotation": e.annotation,
        "protocol": t.protocol,
        "host": t.host if t.host is not None else t.netbios,
        "port": t.port,
        "pipe": t.pipe,
    }
    if e.object != "00000000-0000-0000-0000-000000000000":
        d["object"] = e.object
    return d


def _ephemeral(port: int) -> bool:
    return any(lo <= port <= hi for lo, hi in EPHEMERAL_RANGES)


def pinning(registered: bool, ports: list[int], expected: int | None) -> str:
    """How a component's ports compare with the pinned port the user expects."""
    plist = ",".join(str(p) for p in ports)
    if not ports:
        if not registered:
            return "not registered" if expected is None else f"not registered, expected {expected}"
        return "registered, but not on ncacn_ip_tcp"
    if expected is not None:
        if expected in ports:
            return "pinned as expected"
        return f"registered on {plist}, expected {expected}"
    if all(_ephemeral(p) for p in ports):
        return "dynamic (in the ephemeral range)"
    return "static (not in the ephemeral range, no expectation given)"


def _short(pin: str) -> str:
    if pin.startswith("dynamic"):
        return "dynamic"
    if pin.startswith("static"):
        return "static"
    if pin.startswith("registered on"):
        return "expected " + pin.rsplit("expected ", 1)[1]
    return pin


def _hostport(host: str, ports: list[int]) -> str:
    plist = ",".join(str(p) for p in ports)
    return f"[{host}]:{plist}" if ":" in host else f"{host}:{plist}"


def _is_ipv4(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 4
    except ValueError:
        return False


class _Epm:
    """One msrpc-epm run: state shared by the steps."""

    def __init__(self, stream: Stream, params: EpmParams, ctx: ProbeContext) -> None:
        self.stream = stream
        self.params = params
        self.ctx = ctx
        self.client = RpcClient(stream)
        self.address = ctx.check.address or ""
        self.entries: list[EpmEntry] = []
        self.map_facts: list[dict[str, Any]] = []
        self.map_towers: list[tuple[str, tuple[int, int], str, Tower]] = []
        self.extra = [parse_interface_spec(s) for s in params.interfaces]
        self.answered = False  # did ept_lookup or ept_map produce an answer?
        self.refusals: list[str] = []

    # -- steps ------------------------------------------------------------------------

    async def bind(self) -> None:
        self.ctx.step("epm-bind")
        await _load_codec()
        try:
            ack = await self.client.bind(EPM_UUID, EPM_VERSION)
        except BindRejected as exc:
            raise ApplicationError(
                f"endpoint mapper refused the anonymous bind: {exc.message}; it requires "
                "authentication or restricts clients (this says nothing about Exchange)",
                facts=exc.facts,
            ) from exc
        self.ctx.facts["epm"] = {
            "max_xmit": ack.max_xmit,
            "max_recv": ack.max_recv,
            "assoc_group": f"0x{ack.assoc_group:08x}",
            "secondary_address": ack.secondary_address,
        }

    def _denied(self, what: str, status: int) -> ApplicationError:
        return ApplicationError(
            f"endpoint mapper requires authentication: {what} answered {status_name(status)}"
            " (this says nothing about Exchange)",
            facts={"epm_status": status_name(status)},
        )

    async def lookup(self) -> None:
        self.ctx.step("ept-lookup")
        p = self.params
        handle = NULL_HANDLE
        rounds = 0
        end = ""
        while True:
            if rounds >= p.max_rounds:
                end = "max-rounds"
                self.ctx.warn(
                    f"ept_lookup stopped after {rounds} rounds (max_rounds) with more entries "
                    "announced: the endpoint list is incomplete"
                )
                break
            if self.stream.bytes_in >= LOOKUP_BYTE_CAP:
                end = "byte-budget"
                self.ctx.warn(
                    f"ept_lookup stopped after {rounds} rounds ({self.stream.bytes_in} bytes): "
                    "the endpoint list is incomplete"
                )
                break
            rounds += 1
            try:
                stub = await self.client.call(
                    OPNUM_EPT_LOOKUP,
                    build_ept_lookup_stub(handle, p.max_entries),
                    what=f"ept_lookup round {rounds}",
                )
            except FaultError as exc:
                if exc.fault.access_denied:
                    raise self._denied("ept_lookup", exc.fault.status) from exc
                if not p.map:
                    raise
                self.refusals.append(exc.message)
                self.ctx.warn(f"{exc.message}; trying ept_map alone")
                end = "fault"
                break
            reply = await _decode_lookup(stub)
            # The entries first, then the status: Samba sends its last batch together
            # with 0x16C9A0D6 (no more entries).
            self.entries.extend(reply.entries)
            self.answered = True
            if reply.status == EPT_S_NOT_REGISTERED:
                end = "no-more-entries"
                break
            if reply.status == RPC_S_ACCESS_DENIED:
                raise self._denied("ept_lookup", reply.status)
            if reply.status != STATUS_OK:
                end = f"status {status_name(reply.status)}"
                self.ctx.warn(f"ept_lookup ended with status {status_name(reply.status)}")
                break
            if reply.handle_null:
                end = "null-handle"
                break
            if not reply.entries:
                # A non-NULL handle with nothing in it would loop forever; the handle value
                # itself may legitimately repeat (Samba reuses one value for every page).
                end = "empty-batch"
                break
            handle = reply.handle
        self.ctx.facts["lookup"] = {
            "rounds": rounds,
            "entries": len(self.entries),
            "end": end,
            "complete": end in ("no-more-entries", "null-handle", "empty-batch"),
        }

    def _map_targets(self) -> list[tuple[str, tuple[int, int], str, str, str]]:
        """(uuid, version, component, name, confidence) for every ept_map call."""
        out = [
            (i.uuid, i.version, i.component, i.name, i.confidence)
            for i in xu.interfaces_of(self.params.components)
        ]
        for uuid, version in self.extra:
            name = xu.known_name(uuid, version) or uuid
            out.append((uuid, version, "other", name, ""))
        return out

    async def map(self) -> None:
        self.ctx.step("ept-map")
        for uuid, version, component, name, _conf in self._map_targets():
            label = f"ept_map {name} v{version_text(version)}"
            try:
                stub = await self.client.call(
                    OPNUM_EPT_MAP, build_ept_map_stub(uuid, version), what=label
                )
            except FaultError as exc:
                if exc.fault.access_denied:
                    raise self._denied("ept_map", exc.fault.status) from exc
                self.refusals.append(exc.message)
                self.ctx.warn(f"{exc.message}; no further ept_map calls")
                break
            reply = await _decode_map(stub)
            if reply.status == RPC_S_ACCESS_DENIED:
                raise self._denied("ept_map", reply.status)
            self.answered = True
            towers = [t for t in reply.towers if t.interface == uuid]
            registered = reply.status == STATUS_OK and bool(towers)
            if reply.status not in (STATUS_OK, EPT_S_NOT_REGISTERED):
                self.ctx.warn(f"{label} answered {status_name(reply.status)}")
            self.map_facts.append(
                {
                    "uuid": uuid,
                    "version": version_text(version),
                    "name": name,
                    "component": component,
                    "registered": registered,
                    "status": status_name(reply.status),
                    "endpoints": [t.binding(t.host) for t in towers],
                }
            )
            if registered:
                for t in towers:
                    self.map_towers.append((uuid, version, component, t))

    # -- classification and follow-through ---------------------------------------------------

    def _add(self, comps: dict[str, _Component], component: str, tower: Tower, via: str) -> None:
        comp = comps.setdefault(component, _Component())
        comp.registered = True
        comp.protocols.add(tower.protocol)
        if tower.protocol != "ncacn_ip_tcp" or not tower.port:
            return
        slot = comp.ports.setdefault(tower.port, _Port())
        slot.interfaces.setdefault((tower.interface, tower.version), set()).add(via)
        if tower.host and tower.host != "0.0.0.0":
            slot.advertised.add(tower.host)

    def classify(self) -> None:
        self.ctx.step("classify")
        p, ctx = self.params, self.ctx
        if not self.answered and self.refusals:
            raise ApplicationError(
                "endpoint mapper refused every query: " + "; ".join(self.refusals)
            )
        wanted = set(p.components)
        extra = {(u, v[0]) for u, v in self.extra}
        comps: dict[str, _Component] = {c: _Component() for c in p.components}
        if self.extra:
            comps["other"] = _Component()
        seen_dc = False
        for e in self.entries:
            t = e.tower
            if t.interface in xu.AD_DC_INTERFACES:
                seen_dc = True
            iface = xu.lookup(t.interface, t.version)
            if iface is not None and iface.component in wanted:
                self._add(comps, iface.component, t, "lookup")
            elif (t.interface, t.version[0]) in extra:
                self._add(comps, "other", t, "lookup")
        for _uuid, _version, component, t in self.map_towers:
            self._add(comps, component, t, "map")

        endpoints = [_entry_fact(e) for e in self.entries[:MAX_ENDPOINT_FACTS]]
        ctx.facts["endpoint_count"] = len(self.entries)
        ctx.facts["endpoints"] = endpoints
        if len(self.entries) > MAX_ENDPOINT_FACTS:
            ctx.facts["endpoints_truncated"] = len(self.entries) - MAX_ENDPOINT_FACTS
        if p.map:
            ctx.facts["map"] = self.map_facts

        facts: dict[str, Any] = {}
        parts = [f"{ctx.check.port} open"]
        lookup = ctx.facts.get("lookup")
        if lookup is not None:
            if lookup["end"] == "fault":
                parts[0] += " (ept_lookup refused)"
            else:
                more = "" if lookup["complete"] else "+"
                parts[0] += f" ({len(self.entries)}{more} endpoints listed)"
        first = True
        for name in COMPONENT_ORDER:
            if name not in comps:
                continue
            comp = comps[name]
            ports = sorted(comp.ports)
            expected = p.expected(name)
            if expected is not None:
                # A rehearsal listener shifted by --port-offset registers shifted ports.
                expected += ctx.port_offset
            pin = pinning(comp.registered, ports, expected)
            interfaces = []
            for port in ports:
                for (uuid, version), via in comp.ports[port].interfaces.items():
                    known = xu.lookup(uuid, version)
                    interfaces.append(
                        {
                            "uuid": uuid,
                            "version": version_text(version),
                            "name": xu.known_name(uuid, version),
                            "confidence": known.confidence if known else None,
                            "port": port,
                            "via": sorted(via),
                        }
                    )
            advertised = sorted({h for port in ports for h in comp.ports[port].advertised})
            entry: dict[str, Any] = {
                "registered": comp.registered,
                "ports": ports,
                "interfaces": interfaces,
                "pinning": pin,
                "protocols": sorted(comp.protocols),
            }
            if expected is not None:
                entry["expected"] = expected
            if advertised:
                entry["advertised_hosts"] = advertised
            if name == "ds" and comp.registered:
                only_shared = all(i["uuid"] in xu.AD_SHARED for i in interfaces)
                if seen_dc:
                    entry["note"] = (
                        "this host registers drsuapi (an AD domain controller): NSPI/XDS may "
                        "be Active Directory's own, not Exchange's"
                    )
                    ctx.warn("DS interfaces on a domain controller are not proof of Exchange")
                elif only_shared:
                    entry["note"] = (
                        "only NSPI/XDS: an Active Directory global catalog registers these too"
                    )
            facts[name] = entry
            if expected is not None and pin != "pinned as expected":
                ctx.warn(f"{xu.COMPONENT_NAMES[name]}: {pin}")
            label = xu.COMPONENT_NAMES[name]
            if not comp.registered:
                parts.append(f"{label} not registered")
            elif not ports:
                parts.append(f"{label} registered (no TCP endpoint)")
            elif first:
                parts.append(
                    f"{label} registered on {_hostport(self.address, ports)} ({_short(pin)})"
                )
                first = False
            else:
                parts.append(f"{label} on {','.join(map(str, ports))} ({_short(pin)})")
        ctx.facts["components"] = facts
        ctx.summary = "; ".join(parts)
        self._follow(comps)

    def _follow(self, comps: dict[str, _Component]) -> None:
        p, check = self.params, self.ctx.check
        if p.follow == "none":
            return
        from exprobe.probes.tcp import TcpParams

        for name in COMPONENT_ORDER:
            comp = comps.get(name)
            if comp is None:
                continue
            for port in sorted(comp.ports):
                slot = comp.ports[port]
                uuid, version = self._bind_interface(name, slot)
                iface_name = xu.known_name(uuid, version) or uuid
                params: Params
                if p.follow == "bind":
                    params = BindParams(interface=uuid, version=version_text(version))
                    probe = "msrpc-bind"
                else:
                    params = TcpParams()
                    probe = "tcp"
                # The derived check goes to the address that was queried, not to the host
                # floor of the tower: a client's RPC runtime takes only the endpoint (port)
                # from the mapper and keeps the network address it already used (the tower
                # is IPv4-only, says 0.0.0.0 on Samba, and names inside addresses behind
                # NAT).  The advertised host is kept in the facts (advertised_hosts).
                self.ctx.derive(
                    CheckSpec(
                        id=f"{check.id}/{name}:{port}",
                        probe=probe,
                        address=check.address,
                        port=port,
                        params=params,
                        target=check.target,
                        server_name=check.server_name,
                        parent=check.id,
                        labels=check.labels,
                        meta=(
                            ("component", name),
                            ("interface", uuid),
                            ("interface_name", iface_name),
                        ),
                    )
                )

    def _bind_interface(self, component: str, slot: _Port) -> tuple[str, tuple[int, int]]:
        """The interface a derived bind uses: the component's primary one if it is on this
        port, else the first one seen there."""
        registered = list(slot.interfaces)
        for iface in xu.EXCHANGE_INTERFACES:
            if iface.component != component:
                continue
            for uuid, version in registered:
                if uuid == iface.uuid:
                    return uuid, version
        return registered[0]


@register(
    "msrpc-epm",
    EpmParams,
    default_port=135,
    summary="MSRPC endpoint mapper: where do Exchange's DS, IS and MTA listen? (follows the ports)",
)
async def msrpc_epm(stream: Stream, params: EpmParams, ctx: ProbeContext) -> None:
    """Endpoint mapper dump and Exchange classification (C706, MS-RPCE 2.2.1.2).

    Steps: `epm-bind`, `ept-lookup`, `ept-map`, `classify`; then one derived check per
    (component, TCP port).  Bind rejected / bind_nak / access denied → application-error.
    """
    run = _Epm(stream, params, ctx)
    await run.bind()
    if params.lookup:
        await run.lookup()
    if params.map:
        await run.map()
    run.classify()
