"""A scripted MSRPC endpoint mapper (EPM) with Exchange 5.5-style registrations.

Used in-process by the tests (`async with EpmPeer(PeerConfig(...)) as peer:` on
127.0.0.1 / ::1, ephemeral ports) and as a script inside the lab's server namespace::

    python -m tests.peers.epm_peer --bind 10.250.0.2 --port 135 --mode exchange55 \
        --ports ds=1600,is=1601,mta=1602,sa=1603 --listeners ds,is,mta,sa

It speaks DCE/RPC with exprobe's own server-side builders (`exprobe.wire.dcerpc`):
bind → bind_ack, ept_lookup (opnum 2) with paging that honours max_ents, ept_map
(opnum 3), ept_lookup_handle_free (opnum 4).  Behind each registered component port a
plain TCP listener answers a DCE bind with a bind_ack (accepted for the interfaces
registered on that port, provider rejection otherwise).

Registrations (mode exchange55): NSPI f5cc5a18 v56.0 + XDS f5cc5a7c v21.0 on the DS
port; EMSMDB a4f1db00-…-b31f v0.81 + store admin a4f1db00-…-b31e v1.0 on the IS port;
MTA 9e8ee830 v2.0 on the MTA port; System Attendant 469d6ec0 v16.0 on the SA port; plus
(unless `others=False`) the mapper itself on TCP, a named pipe with a NetBIOS host floor,
ncalrpc, ncacn_http 0.0.0.0[593] and a 7-floor tower.  Mode `empty` registers nothing
(ept_map then says "not registered" for everything); `samba-like` only non-Exchange
interfaces; `dag` the failover cluster's interface (component `cluster`), as a DAG member's.

Knobs (`PeerConfig`): `end` ("windows": last batch + status 0 + NULL handle;
"samba": last batch + 0x16C9A0D6 + NULL handle, one constant handle value while paging),
`page_cap` (entries per reply beyond max_ents), `max_frag` (small → multi-fragment
replies), `synthetic` (N extra entries, generated lazily), `trickle` (write N bytes at a
time), `behaviour` (see BEHAVIOURS), `host_floor` (the IPv4 address in towers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import struct
import sys
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from exprobe.errors import ProtocolError
from exprobe.wire import dcerpc as rpc

BEHAVIOURS = (
    "normal",
    "tarpit",  # accept, read, never answer
    "bind-nak",  # bind_nak (reason `nak_reason`)
    "reject-bind",  # bind_ack with a provider rejection (abstract syntax not supported)
    "bind-fault",  # a fault PDU in answer to the bind
    "access-denied",  # bind ok, every call → fault 5 (rpc_s_access_denied)
    "lookup-fault",  # ept_lookup → fault nca_s_op_rng_error, ept_map works
    "lookup-denied-status",  # ept_lookup reply with status 5
    "bad-frag-len",  # bind_ack whose frag_len is 12
    "frag-len-65535",  # a header announcing 65535 bytes, 10 bytes behind it, then silence
    "big-endian",  # bind_ack with a big-endian data representation
    "garbage",  # an SSH banner instead of a bind_ack
    "truncated-stub",  # ept_lookup reply with a stub cut in half (frag_len consistent)
    "garbage-towers",  # ept_lookup entries whose towers announce floors that are not there
    "endless",  # ept_lookup: a full batch and a non-NULL handle, forever
    "close-after-bind",  # bind_ack, then close at the first request
    "wrong-call-id",  # responses carry another call id
)

COMPONENT_REGISTRATIONS: dict[str, list[tuple[str, tuple[int, int], str]]] = {
    "ds": [
        ("f5cc5a18-4264-101a-8c59-08002b2f8426", (56, 0), "MS Exchange Directory NSPI"),
        ("f5cc5a7c-4264-101a-8c59-08002b2f8426", (21, 0), "MS Exchange Directory XDS"),
    ],
    "is": [
        ("a4f1db00-ca47-1067-b31f-00dd010662da", (0, 81), "MS Exchange Information Store"),
        ("a4f1db00-ca47-1067-b31e-00dd010662da", (1, 0), "MS Exchange Store admin"),
    ],
    "mta": [("9e8ee830-4459-11ce-979b-00aa005ffebe", (2, 0), "MS Exchange MTA")],
    "sa": [("469d6ec0-0d87-11ce-b13f-00aa003bac6c", (16, 0), "MS Exchange System Attendant")],
}
# Mode `dag`: what a DAG member's endpoint mapper hands out for the Windows failover
# cluster (clusapi), the RPC a DAG needs between its members.
DAG_REGISTRATIONS: dict[str, list[tuple[str, tuple[int, int], str]]] = {
    "cluster": [("b97db8b2-4c63-11cf-bff6-08002be23f2f", (3, 0), "Failover Cluster (clusapi)")],
}
MODES = ("exchange55", "empty", "samba-like", "dag")
LSARPC = "12345778-1234-abcd-ef00-0123456789ab"
SAMR = "12345778-1234-abcd-ef00-0123456789ac"
WINREG = "338cd001-2244-31f1-aaaa-900038001003"
SPOOLSS = "12345678-1234-abcd-ef00-0123456789ab"
SYNTHETIC_NS = uuidlib.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")
MAX_PDUS_PER_CONNECTION = 50_000
IDLE_TIMEOUT = 30.0
MAX_REQUEST_STUB = 1 << 16


@dataclass(frozen=True, slots=True)
class Registration:
    uuid: str
    version: tuple[int, int]
    annotation: str
    protocol: str = "ncacn_ip_tcp"
    port: int = 0
    pipe: str | None = None
    netbios: str | None = None
    host: str | None = None  # None: the peer's host floor
    extra_floors: tuple[tuple[bytes, bytes], ...] = ()
    component: str | None = None

    def tower(self, host_floor: str) -> bytes:
        host = self.host if self.host is not None else host_floor
        return rpc.build_tower(
            self.uuid,
            self.version,
            protocol=self.protocol,
            port=self.port,
            host=host if self.protocol in ("ncacn_ip_tcp", "ncacn_http") else None,
            pipe=self.pipe,
            netbios=self.netbios,
            extra_floors=self.extra_floors,
        )


@dataclass(slots=True)
class PeerConfig:
    mode: str = "exchange55"  # one of MODES
    behaviour: str = "normal"
    end: str = "windows"  # windows | samba
    ports: dict[str, int] = field(default_factory=dict)  # component -> port (0: pick)
    listeners: tuple[str, ...] = ("ds", "is", "mta", "sa")
    host_floor: str | None = None  # None: the bind address (0.0.0.0 for IPv6)
    max_frag: int = rpc.DEFAULT_MAX_FRAG
    page_cap: int | None = None
    synthetic: int = 0
    trickle: int = 0  # bytes per write; 0 = whole PDUs
    trickle_delay: float = 0.001
    others: bool = True
    nak_reason: int = 0
    annotation: str | None = None  # overrides every annotation (hostile text tests)
    honour_max_recv: bool = True  # False: fragments of max_frag whatever the client accepts

    def __post_init__(self) -> None:
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {self.behaviour!r}")
        if self.end not in ("windows", "samba"):
            raise ValueError(f"unknown end style {self.end!r}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}")


def _reserve_port(host: str) -> socket.socket:
    """A port nobody listens on, held: bound and never listening, so a connection to it
    is refused and no later bind to port 0 (this peer's own server, another test's) can
    be handed the same port while the peer runs."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
    except BaseException:
        s.close()
        raise
    return s


class _Conn:
    """One client connection: framing, trickling, the negotiated fragment size."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cfg: PeerConfig
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.cfg = cfg
        self.max_frag = cfg.max_frag
        sock = writer.get_extra_info("socket")
        if sock is not None and cfg.trickle:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def read_pdu(self) -> bytes | None:
        try:
            async with asyncio.timeout(IDLE_TIMEOUT):
                head = await self.reader.readexactly(rpc.HEADER_LEN)
                (frag_len,) = struct.unpack_from("<H", head, 8)
                if frag_len < rpc.HEADER_LEN:
                    return None
                rest = await self.reader.readexactly(frag_len - rpc.HEADER_LEN)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            return None
        return head + rest

    async def send(self, data: bytes) -> None:
        n = self.cfg.trickle
        if not n:
            self.writer.write(data)
            await self.writer.drain()
            return
        for i in range(0, len(data), n):
            self.writer.write(data[i : i + n])
            await self.writer.drain()
            await asyncio.sleep(self.cfg.trickle_delay)

    async def send_all(self, frags: Iterable[bytes]) -> None:
        if not self.cfg.trickle:
            self.writer.write(b"".join(frags))
            await self.writer.drain()
            return
        for f in frags:
            await self.send(f)


class EpmPeer:
    """The scripted endpoint mapper plus a listener per registered component port."""

    def __init__(
        self,
        config: PeerConfig | None = None,
        hosts: str | list[str] = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.cfg = config or PeerConfig()
        self.hosts = [hosts] if isinstance(hosts, str) else list(hosts)
        self.port = port
        self.ports: dict[str, int] = {}
        self.registrations: list[Registration] = []
        self.connections = 0
        self.disconnects = 0
        self.requests: list[int] = []  # opnums in arrival order
        self.lookup_rounds = 0
        self.listener_binds: dict[str, int] = {}
        self.connected = asyncio.Event()
        self._servers: list[asyncio.Server] = []
        self._reserved: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._page_cache: dict[tuple[int, int], bytes] = {}
        primary = self.hosts[0]
        if self.cfg.host_floor is not None:
            self.host_floor = self.cfg.host_floor
        elif ":" not in primary and primary not in ("", "0.0.0.0"):
            self.host_floor = primary
        else:
            self.host_floor = "0.0.0.0"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> EpmPeer:
        cfg = self.cfg
        components = {"exchange55": list(COMPONENT_REGISTRATIONS),
                      "dag": list(DAG_REGISTRATIONS)}.get(cfg.mode, [])  # fmt: skip
        for comp in components:
            want = cfg.ports.get(comp, 0)
            if comp in cfg.listeners:
                server = await asyncio.start_server(
                    lambda r, w, c=comp: self._spawn(self._listener(r, w, c)),
                    host=self.hosts,
                    port=want,
                    reuse_address=True,
                )
                self._servers.append(server)
                self.ports[comp] = server.sockets[0].getsockname()[1]
            elif want:
                self.ports[comp] = want
            else:
                held = _reserve_port(self.hosts[0])
                self._reserved.append(held)
                self.ports[comp] = held.getsockname()[1]
        server = await asyncio.start_server(
            lambda r, w: self._spawn(self._serve(r, w)),
            host=self.hosts,
            port=self.port,
            reuse_address=True,
        )
        self._servers.append(server)
        self.port = server.sockets[0].getsockname()[1]
        self.registrations = self._registrations(components)
        return self

    async def close(self) -> None:
        for s in self._servers:
            s.close()
        for held in self._reserved:
            held.close()
        self._reserved.clear()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for s in self._servers:
            with contextlib.suppress(Exception):
                await s.wait_closed()

    async def __aenter__(self) -> EpmPeer:
        try:
            return await self.start()
        except BaseException:
            await self.close()  # what started before the failure (servers, held ports)
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the registration list ------------------------------------------------------------

    def _registrations(self, components: list[str]) -> list[Registration]:
        regs: list[Registration] = []
        for comp in components:
            for uuid, version, annotation in {**COMPONENT_REGISTRATIONS, **DAG_REGISTRATIONS}[comp]:
                regs.append(
                    Registration(uuid, version, annotation, port=self.ports[comp], component=comp)
                )
        if self.cfg.mode == "samba-like":
            regs += [
                Registration(LSARPC, (0, 0), "lsarpc", port=49152),
                Registration(SAMR, (1, 0), "samr", port=49152),
                Registration(WINREG, (1, 0), "winreg", port=49153),
            ]
        if self.cfg.others:
            regs += [
                Registration(rpc.EPM_UUID, rpc.EPM_VERSION, "", port=self.port),
                Registration(
                    rpc.EPM_UUID,
                    rpc.EPM_VERSION,
                    "",
                    protocol="ncacn_np",
                    pipe="\\PIPE\\epmapper",
                    netbios="\\\\EXCH55",
                ),
                Registration(
                    rpc.EPM_UUID, rpc.EPM_VERSION, "", protocol="ncalrpc", pipe="epmapper"
                ),
                Registration(
                    rpc.EPM_UUID,
                    rpc.EPM_VERSION,
                    "",
                    protocol="ncacn_http",
                    port=593,
                    host="0.0.0.0",
                ),
                Registration(
                    SPOOLSS,
                    (1, 0),
                    "Spooler (7-floor tower)",
                    port=49170,
                    extra_floors=((b"\x42", b"\x00\x00"), (b"\x43", b"\x01")),
                ),
            ]
        return regs

    @property
    def total_entries(self) -> int:
        return len(self.registrations) + self.cfg.synthetic

    def _entry(self, i: int) -> rpc.EntrySpec:
        if i < len(self.registrations):
            reg = self.registrations[i]
            note = reg.annotation if self.cfg.annotation is None else self.cfg.annotation
            return rpc.EntrySpec(reg.tower(self.host_floor), note)
        n = i - len(self.registrations)
        uuid = str(uuidlib.uuid5(SYNTHETIC_NS, f"synthetic-{n}"))
        tower = rpc.build_tower(uuid, (1, 0), port=50000 + n % 10000, host=self.host_floor)
        return rpc.EntrySpec(tower, f"synthetic {n}")

    def _page(self, start: int, count: int) -> list[rpc.EntrySpec]:
        return [self._entry(i) for i in range(start, min(start + count, self.total_entries))]

    # -- the endpoint mapper ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.connected.set()
        conn = _Conn(reader, writer, self.cfg)
        try:
            await self._dialogue(conn)
        finally:
            self.disconnects += 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dialogue(self, conn: _Conn) -> None:
        cfg = self.cfg
        if cfg.behaviour == "tarpit":
            with contextlib.suppress(Exception):
                async with asyncio.timeout(IDLE_TIMEOUT * 4):
                    while await conn.reader.read(4096):
                        pass
            return
        cursors: dict[bytes, int] = {}
        const_handle = b"\x00\x00\x00\x00" + uuidlib.uuid4().bytes
        pending: list[bytes] = []
        for _ in range(MAX_PDUS_PER_CONNECTION):
            data = await conn.read_pdu()
            if data is None:
                return
            ptype = data[2]
            if ptype in (rpc.PTYPE_BIND, rpc.PTYPE_ALTER_CONTEXT):
                if not await self._bind(conn, data):
                    return
                continue
            if ptype != rpc.PTYPE_REQUEST:
                return
            try:
                req = rpc.parse_request(data)
            except ProtocolError:
                return
            if cfg.behaviour == "close-after-bind":
                return
            pending.append(req.stub)
            if sum(len(p) for p in pending) > MAX_REQUEST_STUB:
                return
            if not req.last:
                continue
            stub = b"".join(pending)
            pending = []
            self.requests.append(req.opnum)
            call_id = req.call_id + (1000 if cfg.behaviour == "wrong-call-id" else 0)
            if cfg.behaviour == "access-denied":
                await conn.send(rpc.build_fault(call_id, rpc.RPC_S_ACCESS_DENIED))
                continue
            reply = self._call(req.opnum, stub, cursors, const_handle)
            if reply is None:
                await conn.send(rpc.build_fault(call_id, rpc.NCA_S_OP_RNG_ERROR))
                continue
            await conn.send_all(rpc.build_response(call_id, reply, max_frag=conn.max_frag))

    async def _bind(self, conn: _Conn, data: bytes) -> bool:
        cfg = self.cfg
        try:
            bind = rpc.parse_bind(data)
        except ProtocolError:
            return False
        call_id = bind.call_id
        wanted = min(cfg.max_frag, bind.max_recv) if cfg.honour_max_recv else cfg.max_frag
        conn.max_frag = max(rpc.REQUEST_HEADER_LEN + 8, wanted)
        b = cfg.behaviour
        if b == "bind-nak":
            await conn.send(rpc.build_bind_nak(call_id, cfg.nak_reason))
            return False
        if b == "bind-fault":
            await conn.send(rpc.build_fault(call_id, rpc.RPC_S_ACCESS_DENIED))
            return False
        if b == "garbage":
            await conn.send(b"SSH-2.0-OpenSSH_9.2\r\n")
            return False
        if b == "frag-len-65535":
            head = struct.pack(
                "<BBBB4sHHI", 5, 0, rpc.PTYPE_BIND_ACK, 3, rpc.DREP_LE, 65535, 0, call_id
            )
            await conn.send(head + b"\x00" * 10)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(IDLE_TIMEOUT):
                    while await conn.reader.read(4096):
                        pass
            return False
        results = []
        for ctx in bind.contexts:
            ok = ctx.abstract == rpc.EPM_UUID and ctx.version[0] == 3 and ctx.offers_ndr
            ok = ok and b != "reject-bind"
            results.append((0, 0) if ok else (rpc.RESULT_PROVIDER_REJECTION, 1))
        ack = rpc.build_bind_ack(call_id, results, max_xmit=conn.max_frag, max_recv=cfg.max_frag)
        if b == "bad-frag-len":
            ack = ack[:8] + struct.pack("<H", 12) + ack[10:]
        elif b == "big-endian":
            ack = ack[:4] + b"\x00\x00\x00\x00" + ack[8:]
        await conn.send(ack)
        return b not in ("bad-frag-len", "big-endian")

    def _call(
        self, opnum: int, stub: bytes, cursors: dict[bytes, int], const_handle: bytes
    ) -> bytes | None:
        if opnum == rpc.OPNUM_EPT_LOOKUP:
            if self.cfg.behaviour == "lookup-fault":
                return None
            return self._lookup(stub, cursors, const_handle)
        if opnum == rpc.OPNUM_EPT_MAP:
            return self._map(stub)
        if opnum == rpc.OPNUM_EPT_LOOKUP_HANDLE_FREE:
            return rpc.NULL_HANDLE + struct.pack("<I", 0)
        return None

    def _lookup(self, stub: bytes, cursors: dict[bytes, int], const_handle: bytes) -> bytes:
        cfg = self.cfg
        self.lookup_rounds += 1
        try:
            req = rpc.decode_ept_lookup_request(stub)
        except ProtocolError:
            return rpc.build_ept_lookup_response([], rpc.NULL_HANDLE, rpc.RPC_X_BAD_STUB_DATA)
        count = req.max_ents if cfg.page_cap is None else min(req.max_ents, cfg.page_cap)
        if cfg.behaviour == "lookup-denied-status":
            return rpc.build_ept_lookup_response([], rpc.NULL_HANDLE, rpc.RPC_S_ACCESS_DENIED)
        if cfg.behaviour == "endless":
            key = (-1, count)
            if key not in self._page_cache:
                self._page_cache[key] = rpc.build_ept_lookup_response(
                    self._endless_page(count), const_handle, rpc.STATUS_OK
                )
            return self._page_cache[key]
        if cfg.behaviour == "garbage-towers":
            bad = [rpc.EntrySpec(b"\x07\x00\x13\x00\x0d" + b"\x01" * 9, "garbage")] * 3
            return rpc.build_ept_lookup_response(bad, rpc.NULL_HANDLE, rpc.STATUS_OK)
        key_handle = req.handle[4:]
        start = 0 if rpc.is_null_handle(req.handle) else cursors.pop(key_handle, -1)
        if start < 0:
            return rpc.build_ept_lookup_response([], rpc.NULL_HANDLE, rpc.EPT_S_NOT_REGISTERED)
        batch = self._page(start, count)
        nxt = start + len(batch)
        more = nxt < self.total_entries and bool(batch)
        if cfg.end == "samba":
            handle = const_handle if more else rpc.NULL_HANDLE
            status = rpc.STATUS_OK if more else rpc.EPT_S_NOT_REGISTERED
        else:
            handle = (b"\x00\x00\x00\x00" + uuidlib.uuid4().bytes) if more else rpc.NULL_HANDLE
            status = rpc.STATUS_OK if batch or start else rpc.EPT_S_NOT_REGISTERED
        if more:
            cursors[handle[4:]] = nxt
        out = rpc.build_ept_lookup_response(batch, handle, status)
        if cfg.behaviour == "truncated-stub":
            out = out[: max(28, len(out) // 2)]
        return out

    def _endless_page(self, count: int) -> list[rpc.EntrySpec]:
        out = []
        for n in range(count):
            uuid = str(uuidlib.uuid5(SYNTHETIC_NS, f"endless-{n}"))
            out.append(
                rpc.EntrySpec(rpc.build_tower(uuid, (1, 0), port=40000, host=self.host_floor))
            )
        return out

    def _map(self, stub: bytes) -> bytes:
        try:
            req = rpc.decode_ept_map_request(stub)
        except ProtocolError:
            return rpc.build_ept_map_response([], rpc.NULL_HANDLE, rpc.RPC_X_BAD_STUB_DATA)
        t = req.tower
        towers = [
            reg.tower(self.host_floor)
            for reg in self.registrations
            if reg.uuid == t.interface
            and reg.version[0] == t.version[0]
            and reg.version[1] >= t.version[1]
            and reg.protocol == t.protocol
        ][: max(0, req.max_towers)]
        if not towers:
            return rpc.build_ept_map_response([], rpc.NULL_HANDLE, rpc.EPT_S_NOT_REGISTERED)
        return rpc.build_ept_map_response(towers, rpc.NULL_HANDLE, rpc.STATUS_OK)

    # -- the component listeners ----------------------------------------------------------

    async def _listener(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, component: str
    ) -> None:
        conn = _Conn(reader, writer, PeerConfig(trickle=0))
        registered = {
            (r.uuid, r.version[0]) for r in self.registrations if r.component == component
        }
        try:
            for _ in range(16):
                data = await conn.read_pdu()
                if data is None or data[2] not in (rpc.PTYPE_BIND, rpc.PTYPE_ALTER_CONTEXT):
                    return
                try:
                    bind = rpc.parse_bind(data)
                except ProtocolError:
                    return
                results = []
                for ctx in bind.contexts:
                    ok = (ctx.abstract, ctx.version[0]) in registered and ctx.offers_ndr
                    results.append((0, 0) if ok else (rpc.RESULT_PROVIDER_REJECTION, 1))
                    if ok:
                        self.listener_binds[component] = self.listener_binds.get(component, 0) + 1
                port = self.ports[component]
                await conn.send(
                    rpc.build_bind_ack(bind.call_id, results, secondary_address=str(port))
                )
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


# -- the script ---------------------------------------------------------------------------------


def _parse_ports(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        comp, _, port = part.partition("=")
        out[comp.strip()] = int(port)
    return out


def _parse_list(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(p.strip() for p in text.split(",") if p.strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bind", action="append", default=[], help="address (repeatable)")
    ap.add_argument("--port", type=int, default=135)
    ap.add_argument("--mode", default="exchange55", choices=MODES)
    ap.add_argument("--behaviour", default="normal", choices=BEHAVIOURS)
    ap.add_argument("--end", default="windows", choices=("windows", "samba"))
    ap.add_argument("--ports", default="", help="ds=1600,is=1601,mta=1602,sa=1603")
    ap.add_argument("--listeners", default="ds,is,mta,sa", help="components with a listener")
    ap.add_argument("--host-floor", default=None)
    ap.add_argument("--max-frag", type=int, default=rpc.DEFAULT_MAX_FRAG)
    ap.add_argument("--page-cap", type=int, default=None)
    ap.add_argument("--synthetic", type=int, default=0)
    ap.add_argument("--trickle", type=int, default=0)
    ap.add_argument("--no-others", action="store_true")
    args = ap.parse_args(argv)
    hosts = args.bind or ["127.0.0.1"]
    for h in hosts:
        ipaddress.ip_address(h)
    cfg = PeerConfig(
        mode=args.mode,
        behaviour=args.behaviour,
        end=args.end,
        ports=_parse_ports(args.ports),
        listeners=_parse_list(args.listeners),
        host_floor=args.host_floor,
        max_frag=args.max_frag,
        page_cap=args.page_cap,
        synthetic=args.synthetic,
        trickle=args.trickle,
        others=not args.no_others,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with EpmPeer(cfg, hosts, args.port) as peer:
            ports = ",".join(f"{c}={p}" for c, p in peer.ports.items())
            print(f"READY pid={os.getpid()} port={peer.port} {ports}", flush=True)
            await stop.wait()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
