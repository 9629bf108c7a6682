"""DCE/RPC connection-oriented PDUs and the endpoint mapper's NDR, as pure functions.

References: C706 (DCE 1.1 RPC) chapter 12 (PDU formats), appendix L (towers) and I
(protocol identifiers); MS-RPCE 2.2.1.2 (the endpoint mapper: `ept_lookup` opnum 2,
`ept_map` opnum 3, status 0x16C9A0D6 = no more entries / not registered).

impacket is the codec for the PDU bodies and all NDR (`impacket.dcerpc.v5.rpcrt`,
`impacket.dcerpc.v5.epm`), imported lazily inside the functions that need it (it costs
~0.3 s to import).  Every decoder turns whatever impacket raises on garbage
(`struct.error`, `IndexError`, ...) into `ProtocolError`.  Towers are parsed by a generic
floor loop here, not by impacket's `EPMTower` (it has a 6-entry floor table and raises
`IndexError` on longer towers).

Client side: `build_bind`, `parse_header`, `parse_pdu`, `parse_bind_ack`, `parse_bind_nak`,
`parse_fault`, `build_request`, `parse_response`, `build_ept_lookup_stub`,
`build_ept_map_stub`, `decode_ept_lookup_response`, `decode_ept_map_response`,
`parse_tower`.

Server side (scripted peers, `exprobe listen`): `parse_bind`, `parse_request`,
`decode_ept_lookup_request`, `decode_ept_map_request`, `build_bind_ack`, `build_bind_nak`,
`build_fault`, `build_response` (fragmented to a max_frag), `build_tower`,
`build_ept_lookup_response`, `build_ept_map_response`.

Only little-endian, ASCII, IEEE data representations are accepted: impacket's structures
hard-code `<`, and a big-endian peer is rare enough to be named rather than guessed at.
"""

from __future__ import annotations

import ipaddress
import struct
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from exprobe.errors import ProtocolError

T = TypeVar("T")

# -- constants -----------------------------------------------------------------------------

EPM_UUID = "e1af8308-5d1f-11c9-91a4-08002b14a0fa"
EPM_VERSION = (3, 0)
NDR_UUID = "8a885d04-1ceb-11c9-9fe8-08002b104860"
NDR_VERSION = (2, 0)

PTYPE_REQUEST = 0
PTYPE_RESPONSE = 2
PTYPE_FAULT = 3
PTYPE_BIND = 11
PTYPE_BIND_ACK = 12
PTYPE_BIND_NAK = 13
PTYPE_ALTER_CONTEXT = 14
PTYPE_ALTER_CONTEXT_RESP = 15
PTYPE_SHUTDOWN = 17
PTYPE_CO_CANCEL = 18
PTYPE_ORPHANED = 19
PTYPE_NAMES = {
    0: "request",
    2: "response",
    3: "fault",
    11: "bind",
    12: "bind_ack",
    13: "bind_nak",
    14: "alter_context",
    15: "alter_context_resp",
    16: "auth3",
    17: "shutdown",
    18: "co_cancel",
    19: "orphaned",
}

PFC_FIRST_FRAG = 0x01
PFC_LAST_FRAG = 0x02
PFC_OBJECT_UUID = 0x80

HEADER_LEN = 16  # the common header
REQUEST_HEADER_LEN = 24
RESPONSE_HEADER_LEN = 24
SEC_TRAILER_LEN = 8
DEFAULT_MAX_FRAG = 4280  # what impacket and Windows clients offer
MIN_MAX_FRAG = 1432  # C706 12.6.3.1: must_recv_frag_size
MAX_FRAG_LIMIT = 0xFFFF
DREP_LE = b"\x10\x00\x00\x00"  # little-endian integers, ASCII characters, IEEE floats

# ept_lookup arguments (C706 appendix O / MS-RPCE 2.2.1.2.5).
RPC_C_EP_ALL_ELTS = 0
RPC_C_EP_MATCH_BY_IF = 1
RPC_C_VERS_ALL = 1
RPC_C_VERS_COMPATIBLE = 2
OPNUM_EPT_LOOKUP = 2
OPNUM_EPT_MAP = 3
OPNUM_EPT_LOOKUP_HANDLE_FREE = 4

# Status values the endpoint mapper and faults carry.
STATUS_OK = 0
RPC_S_ACCESS_DENIED = 0x00000005
EPT_S_NOT_REGISTERED = 0x16C9A0D6  # "no more entries" for ept_lookup
NCA_S_OP_RNG_ERROR = 0x1C010002
NCA_S_UNK_IF = 0x1C010003
NCA_S_PROTO_ERROR = 0x1C01000B
RPC_X_BAD_STUB_DATA = 0x000006F7
ACCESS_DENIED_STATUSES = frozenset({RPC_S_ACCESS_DENIED, 0x00000721})  # 0x721: rpc_s_sec_pkg_error

NULL_HANDLE = bytes(20)

# bind_ack per-context results (C706 12.6.3.4).
RESULT_ACCEPTANCE = 0
RESULT_USER_REJECTION = 1
RESULT_PROVIDER_REJECTION = 2
RESULT_NAMES = {0: "acceptance", 1: "user rejection", 2: "provider rejection"}
PROVIDER_REASONS = {
    0: "reason not specified",
    1: "abstract syntax not supported",
    2: "proposed transfer syntaxes not supported",
    3: "local limit exceeded",
}
BIND_NAK_REASONS = {
    0: "reason not specified",
    1: "temporary congestion",
    2: "local limit exceeded",
    3: "called presentation address unknown",
    4: "protocol version not supported",
    5: "default context not supported",
    6: "user data not readable",
    7: "no presentation service access point available",
    8: "authentication type not recognized",
    9: "invalid checksum",
}

# Tower floor protocol identifiers (C706 appendix I, MS-RPCE 2.2.1.1.7).
FLOOR_UUID = 0x0D
FLOOR_NCACN = 0x0B  # connection-oriented RPC
FLOOR_NCADG = 0x0A  # connectionless RPC
FLOOR_NCALRPC = 0x0C  # local RPC (at floor 2); SPX port at floor 3+
FLOOR_TCP_PORT = 0x07
FLOOR_UDP_PORT = 0x08
FLOOR_IPV4 = 0x09
FLOOR_NAMED_PIPE = 0x0F
FLOOR_LRPC_NAME = 0x10
FLOOR_NETBIOS = 0x11
FLOOR_NETBIOS_OLD = 0x01
FLOOR_HTTP_PORT = 0x1F
FLOOR_SPX = 0x0C
FLOOR_IPX = 0x0D
FLOOR_IPX_PORT = 0x0E


def warm_codec() -> None:
    """Import impacket's RPC modules now (~0.3-0.8 s cold), e.g. before timing a check."""
    import impacket.dcerpc.v5.epm
    import impacket.dcerpc.v5.rpcrt  # noqa: F401


def _status_names() -> dict[int, str]:
    from impacket.dcerpc.v5.rpcrt import rpc_status_codes

    return rpc_status_codes  # type: ignore[no-any-return]


def status_name(status: int) -> str:
    """`0x16c9a0d6 ept_s_not_registered`: a status with impacket's name for it, if any."""
    try:
        name = _status_names().get(status)
    except ImportError:  # pragma: no cover - impacket is a dependency
        name = None
    text = f"0x{status:08x}"
    return f"{text} {str(name).strip()}" if name else text


def _guard(what: str, fn: Callable[[], T]) -> T:
    """Run a decoder; anything but ProtocolError becomes ProtocolError naming `what`."""
    try:
        return fn()
    except ProtocolError:
        raise
    except Exception as exc:  # impacket raises struct.error, IndexError, KeyError, Exception
        kind = "struct.error" if isinstance(exc, struct.error) else type(exc).__name__
        detail = str(exc).splitlines()[0] if str(exc) else ""
        detail = detail if len(detail) <= 80 else detail[:79] + "…"
        raise ProtocolError(f"malformed {what} ({kind}{': ' + detail if detail else ''})") from exc


# -- UUIDs and versions ----------------------------------------------------------------------


def uuid_bytes(text: str) -> bytes:
    """The 16-byte little-endian (NDR/GUID) form of a UUID string."""
    return uuidlib.UUID(text).bytes_le


def uuid_text(data: bytes) -> str:
    """The lowercase string form of a 16-byte little-endian UUID."""
    if len(data) != 16:
        raise ProtocolError(f"UUID of {len(data)} bytes")
    return str(uuidlib.UUID(bytes_le=bytes(data)))


def parse_version(text: str) -> tuple[int, int]:
    """`"0.81"` → (0, 81); `"3"` → (3, 0).  ValueError on anything else."""
    parts = text.strip().split(".")
    if not 1 <= len(parts) <= 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"interface version {text!r} is not MAJOR.MINOR")
    major = int(parts[0])
    minor = int(parts[1]) if len(parts) == 2 else 0
    if major > 0xFFFF or minor > 0xFFFF:
        raise ValueError(f"interface version {text!r} out of range")
    return major, minor


def version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def syntax_id(uuid: str, version: tuple[int, int]) -> bytes:
    """A 20-byte presentation syntax id: UUID + u16 major + u16 minor."""
    return uuid_bytes(uuid) + struct.pack("<HH", version[0], version[1])


def is_null_handle(handle: bytes) -> bool:
    """A context handle is NULL when its UUID part is all zero (attributes ignored)."""
    return len(handle) < 20 or handle[4:20] == bytes(16)


# -- the common header -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """The 16-byte common header of every connection-oriented PDU."""

    ptype: int
    flags: int
    frag_len: int
    auth_len: int
    call_id: int
    minor: int = 0

    @property
    def first(self) -> bool:
        return bool(self.flags & PFC_FIRST_FRAG)

    @property
    def last(self) -> bool:
        return bool(self.flags & PFC_LAST_FRAG)

    @property
    def type_name(self) -> str:
        return PTYPE_NAMES.get(self.ptype, f"type {self.ptype}")


def parse_header(data: bytes, *, max_frag: int = MAX_FRAG_LIMIT) -> Header:
    """Validate and decode a common header (the first 16 bytes of `data`).

    Rejects: another RPC version than 5.0/5.1, a big-endian or non-ASCII data
    representation, frag_len below 16 or above `max_frag`, an auth_len that cannot fit.
    """
    if len(data) < HEADER_LEN:
        raise ProtocolError(f"DCE/RPC header needs 16 bytes, got {len(data)}")
    major, minor, ptype, flags = data[0], data[1], data[2], data[3]
    drep = data[4:8]
    frag_len, auth_len, call_id = struct.unpack_from("<HHI", data, 8)
    if major != 5 or minor not in (0, 1):
        raise ProtocolError(f"not DCE/RPC v5 connection-oriented (version {major}.{minor})")
    if drep[0] & 0xF0 != 0x10:
        raise ProtocolError("big-endian data representation is not supported")
    if drep[0] & 0x0F != 0 or drep[1] != 0:
        raise ProtocolError("EBCDIC / non-IEEE data representation is not supported")
    # frag_len is little-endian only after the drep check above (it follows drep).
    if frag_len < HEADER_LEN:
        raise ProtocolError(f"frag_len {frag_len} is shorter than the header")
    if frag_len > max_frag:
        raise ProtocolError(f"frag_len {frag_len} exceeds the negotiated maximum {max_frag}")
    if auth_len and HEADER_LEN + SEC_TRAILER_LEN + auth_len > frag_len:
        raise ProtocolError(f"auth_len {auth_len} does not fit in frag_len {frag_len}")
    return Header(ptype, flags, frag_len, auth_len, call_id, minor)


@dataclass(frozen=True, slots=True)
class Pdu:
    """One complete PDU: its header and the raw bytes (header included)."""

    header: Header
    data: bytes


def parse_pdu(data: bytes, *, max_frag: int = MAX_FRAG_LIMIT) -> Pdu:
    """A complete PDU; its length must be exactly frag_len."""
    header = parse_header(data, max_frag=max_frag)
    if len(data) != header.frag_len:
        raise ProtocolError(f"PDU of {len(data)} bytes but frag_len says {header.frag_len}")
    return Pdu(header, bytes(data))


def _expect(pdu: Pdu, ptype: int) -> None:
    if pdu.header.ptype != ptype:
        want = PTYPE_NAMES.get(ptype, str(ptype))
        raise ProtocolError(f"expected a {want} PDU, got {pdu.header.type_name}")


def _body_end(pdu: Pdu) -> int:
    """Where the PDU body ends: before the sec_trailer and auth value, if any."""
    h = pdu.header
    return h.frag_len - (h.auth_len + SEC_TRAILER_LEN if h.auth_len else 0)


# -- bind / bind_ack / bind_nak (client side) ----------------------------------------------------


def build_bind(
    call_id: int,
    uuid: str,
    version: tuple[int, int],
    *,
    max_xmit: int = DEFAULT_MAX_FRAG,
    max_recv: int = DEFAULT_MAX_FRAG,
    assoc_group: int = 0,
    ctx_id: int = 0,
) -> bytes:
    """A bind PDU with one presentation context: `uuid` v`version` over NDR 2.0, no auth."""
    from impacket.dcerpc.v5 import rpcrt

    bind = rpcrt.MSRPCBind()
    bind["max_tfrag"] = max_xmit
    bind["max_rfrag"] = max_recv
    bind["assoc_group"] = assoc_group
    item = rpcrt.CtxItem()
    item["ContextID"] = ctx_id
    item["TransItems"] = 1
    item["AbstractSyntax"] = syntax_id(uuid, version)
    item["TransferSyntax"] = syntax_id(NDR_UUID, NDR_VERSION)
    bind.addCtxItem(item)
    header = rpcrt.MSRPCHeader()
    header["type"] = PTYPE_BIND
    header["flags"] = PFC_FIRST_FRAG | PFC_LAST_FRAG
    header["call_id"] = call_id
    header["pduData"] = bind.getData()
    return bytes(header.getData())


@dataclass(frozen=True, slots=True)
class ContextResult:
    result: int
    reason: int
    transfer_syntax: str  # "uuid v2.0", or "" for a zero syntax

    @property
    def accepted(self) -> bool:
        return self.result == RESULT_ACCEPTANCE

    def describe(self) -> str:
        what = RESULT_NAMES.get(self.result, f"result {self.result}")
        if self.result == RESULT_ACCEPTANCE:
            return what
        why = PROVIDER_REASONS.get(self.reason, f"reason {self.reason}")
        return f"{what}, {why}"


@dataclass(frozen=True, slots=True)
class BindAck:
    """A decoded bind_ack: the server's fragment sizes and one result per context."""

    call_id: int
    max_xmit: int  # the server's max_xmit_frag (largest fragment it will send)
    max_recv: int  # the server's max_recv_frag (largest fragment it accepts)
    assoc_group: int
    secondary_address: str
    results: tuple[ContextResult, ...]

    @property
    def accepted(self) -> bool:
        return bool(self.results) and self.results[0].accepted


def _syntax_text(data: bytes) -> str:
    if len(data) != 20 or data == bytes(20):
        return ""
    major, minor = struct.unpack("<HH", data[16:20])
    return f"{uuid_text(data[:16])} v{major}.{minor}"


def parse_bind_ack(data: bytes) -> BindAck:
    """Decode a complete bind_ack PDU (impacket `MSRPCBindAck`, sanity-checked)."""
    pdu = parse_pdu(data)
    _expect(pdu, PTYPE_BIND_ACK)

    def decode() -> BindAck:
        from impacket.dcerpc.v5 import rpcrt

        ack = rpcrt.MSRPCBindAck(pdu.data)
        n = int(ack["ctx_num"])
        items = ack.getCtxItems()
        if n < 1 or len(items) != n:
            raise ProtocolError(f"bind_ack with {n} context results")
        results = []
        for it in items:
            syntax = bytes(it["TransferSyntax"])
            if len(syntax) != 20:
                raise ProtocolError("bind_ack context result truncated")
            results.append(
                ContextResult(int(it["Result"]), int(it["Reason"]), _syntax_text(syntax))
            )
        sec = ack["SecondaryAddr"] or b""
        if isinstance(sec, str):  # pragma: no cover - impacket version differences
            sec = sec.encode("latin-1")
        return BindAck(
            call_id=pdu.header.call_id,
            max_xmit=int(ack["max_tfrag"]),
            max_recv=int(ack["max_rfrag"]),
            assoc_group=int(ack["assoc_group"]),
            secondary_address=bytes(sec).rstrip(b"\x00").decode("latin-1"),
            results=tuple(results),
        )

    return _guard("bind_ack", decode)


@dataclass(frozen=True, slots=True)
class BindNak:
    call_id: int
    reason: int

    @property
    def reason_text(self) -> str:
        return BIND_NAK_REASONS.get(self.reason, f"reason {self.reason}")


def parse_bind_nak(data: bytes) -> BindNak:
    """Decode a complete bind_nak PDU: the rejection reason (u16 after the header)."""
    pdu = parse_pdu(data)
    _expect(pdu, PTYPE_BIND_NAK)

    def decode() -> BindNak:
        from impacket.dcerpc.v5 import rpcrt

        nak = rpcrt.MSRPCBindNak(pdu.data[HEADER_LEN:])
        return BindNak(pdu.header.call_id, int(nak["RejectedReason"]))

    if len(pdu.data) < HEADER_LEN + 2:
        raise ProtocolError("bind_nak without a reason")
    return _guard("bind_nak", decode)


@dataclass(frozen=True, slots=True)
class Fault:
    call_id: int
    status: int

    @property
    def name(self) -> str:
        return status_name(self.status)

    @property
    def access_denied(self) -> bool:
        return self.status in ACCESS_DENIED_STATUSES


def parse_fault(data: bytes) -> Fault:
    """Decode a complete fault PDU: the status is the u32 at byte 24."""
    pdu = parse_pdu(data)
    _expect(pdu, PTYPE_FAULT)
    if len(pdu.data) < 28:
        raise ProtocolError(f"fault PDU of {len(pdu.data)} bytes has no status")
    (status,) = struct.unpack_from("<I", pdu.data, 24)
    return Fault(pdu.header.call_id, status)


# -- requests and responses ---------------------------------------------------------------------


def _fragment_sizes(total: int, room: int) -> list[int]:
    """Split `total` stub bytes into fragments of at most `room`, multiples of 8 but the last.

    Non-final fragments carry 8-byte-multiple stub lengths so NDR alignment survives
    reassembly (MS-RPCE 3.3.1.5.1).
    """
    room = max(8, room - room % 8)
    sizes = []
    while total > room:
        sizes.append(room)
        total -= room
    sizes.append(total)
    return sizes


def _frame(
    ptype: int,
    call_id: int,
    stub: bytes,
    max_frag: int,
    extra: Callable[[int], bytes],
) -> list[bytes]:
    """Fragment `stub` behind a 24-byte header (16 common + 8 from `extra(alloc_hint)`)."""
    if max_frag < REQUEST_HEADER_LEN + 8:
        raise ValueError(f"max_frag {max_frag} too small")
    sizes = _fragment_sizes(len(stub), max_frag - REQUEST_HEADER_LEN)
    out = []
    pos = 0
    for i, size in enumerate(sizes):
        flags = (PFC_FIRST_FRAG if i == 0 else 0) | (PFC_LAST_FRAG if i == len(sizes) - 1 else 0)
        chunk = stub[pos : pos + size]
        frag_len = REQUEST_HEADER_LEN + len(chunk)
        head = struct.pack("<BBBB4sHHI", 5, 0, ptype, flags, DREP_LE, frag_len, 0, call_id)
        out.append(head + extra(len(stub) - pos) + chunk)
        pos += size
    return out


def build_request(
    call_id: int, opnum: int, stub: bytes, *, ctx_id: int = 0, max_frag: int = DEFAULT_MAX_FRAG
) -> list[bytes]:
    """Request PDU fragments carrying `stub` (impacket `MSRPCRequestHeader` layout)."""
    from impacket.dcerpc.v5 import rpcrt

    def extra(alloc_hint: int) -> bytes:
        head = rpcrt.MSRPCRequestHeader()
        head["alloc_hint"] = alloc_hint
        head["ctx_id"] = ctx_id
        head["op_num"] = opnum
        return bytes(head.getData()[HEADER_LEN:REQUEST_HEADER_LEN])

    return _frame(PTYPE_REQUEST, call_id, stub, max_frag, extra)


@dataclass(frozen=True, slots=True)
class Response:
    """One response fragment's stub bytes and flags."""

    call_id: int
    flags: int
    ctx_id: int
    alloc_hint: int
    stub: bytes

    @property
    def first(self) -> bool:
        return bool(self.flags & PFC_FIRST_FRAG)

    @property
    def last(self) -> bool:
        return bool(self.flags & PFC_LAST_FRAG)


def parse_response(data: bytes) -> Response:
    """Decode a complete response PDU fragment."""
    pdu = parse_pdu(data)
    _expect(pdu, PTYPE_RESPONSE)
    end = _body_end(pdu)
    if end < RESPONSE_HEADER_LEN:
        raise ProtocolError(f"response PDU of {len(pdu.data)} bytes is too short")
    alloc_hint, ctx_id = struct.unpack_from("<IH", pdu.data, HEADER_LEN)
    return Response(
        pdu.header.call_id, pdu.header.flags, ctx_id, alloc_hint, pdu.data[RESPONSE_HEADER_LEN:end]
    )


# -- towers -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Floor:
    lhs: bytes
    rhs: bytes

    @property
    def ident(self) -> int:
        return self.lhs[0] if self.lhs else -1


@dataclass(frozen=True, slots=True)
class Tower:
    """A decoded protocol tower (C706 appendix L): interface, transport and address."""

    interface: str  # UUID
    version: tuple[int, int]
    transfer_syntax: str  # "uuid v2.0" or ""
    protocol: str  # ncacn_ip_tcp, ncacn_http, ncacn_np, ncalrpc, ncadg_ip_udp, ...
    port: int | None = None
    host: str | None = None  # IPv4 text ("0.0.0.0" means: the address you asked)
    netbios: str | None = None  # NetBIOS host name (named pipes)
    pipe: str | None = None  # named pipe or LRPC endpoint name
    floors: tuple[Floor, ...] = ()

    @property
    def version_text(self) -> str:
        return version_text(self.version)

    def binding(self, host: str | None = None) -> str:
        """A string binding like rpcdump prints: `ncacn_ip_tcp:10.0.0.5[1026]`."""
        h = host or self.host or self.netbios or ""
        if ":" in h:
            h = f"[{h}]"
        if self.protocol == "ncalrpc":
            return f"ncalrpc:[{self.pipe or ''}]"
        if self.pipe is not None:
            return f"{self.protocol}:{h}[{self.pipe}]"
        if self.port is not None:
            return f"{self.protocol}:{h}[{self.port}]"
        return f"{self.protocol}:{h}"


def _cstring(data: bytes) -> str:
    return data.split(b"\x00", 1)[0].decode("utf-8", "replace")


_PROTOCOLS = {
    (FLOOR_NCACN, FLOOR_TCP_PORT): "ncacn_ip_tcp",
    (FLOOR_NCACN, FLOOR_HTTP_PORT): "ncacn_http",
    (FLOOR_NCACN, FLOOR_NAMED_PIPE): "ncacn_np",
    (FLOOR_NCACN, FLOOR_SPX): "ncacn_spx",
    (FLOOR_NCADG, FLOOR_UDP_PORT): "ncadg_ip_udp",
    (FLOOR_NCADG, FLOOR_IPX_PORT): "ncadg_ipx",
    (FLOOR_NCALRPC, FLOOR_LRPC_NAME): "ncalrpc",
}


def split_floors(data: bytes) -> list[Floor]:
    """The floors of a tower octet string, however many there are (u16 counts, LE)."""
    if len(data) < 2:
        raise ProtocolError("tower shorter than its floor count")
    (count,) = struct.unpack_from("<H", data, 0)
    pos = 2
    floors: list[Floor] = []
    for i in range(count):
        if pos + 2 > len(data):
            raise ProtocolError(f"tower truncated in floor {i} of {count}")
        (lhs_len,) = struct.unpack_from("<H", data, pos)
        pos += 2
        if lhs_len < 1 or pos + lhs_len + 2 > len(data):
            raise ProtocolError(f"tower floor {i}: bad LHS length {lhs_len}")
        lhs = data[pos : pos + lhs_len]
        pos += lhs_len
        (rhs_len,) = struct.unpack_from("<H", data, pos)
        pos += 2
        if pos + rhs_len > len(data):
            raise ProtocolError(f"tower floor {i}: bad RHS length {rhs_len}")
        rhs = data[pos : pos + rhs_len]
        pos += rhs_len
        floors.append(Floor(bytes(lhs), bytes(rhs)))
    # Trailing bytes after the last floor are tolerated: some stacks pad the octet string.
    return floors


def _uuid_floor(floor: Floor, what: str) -> tuple[str, tuple[int, int]]:
    if floor.ident != FLOOR_UUID or len(floor.lhs) != 19 or len(floor.rhs) < 2:
        raise ProtocolError(f"tower {what} floor is not a UUID floor")
    (major,) = struct.unpack_from("<H", floor.lhs, 17)
    (minor,) = struct.unpack_from("<H", floor.rhs, 0)
    return uuid_text(floor.lhs[1:17]), (major, minor)


def parse_tower(data: bytes) -> Tower:
    """Decode a tower of any floor count.

    Floor 0 is the interface (UUID, major; minor in the RHS), floor 1 the transfer syntax,
    floor 2 the RPC protocol (ncacn / ncadg / ncalrpc), floors 3+ the transport address:
    ports are big-endian (`!H`) while every count is little-endian; 0x09 is an IPv4 host,
    0x11 (or 0x01) a NetBIOS host name, 0x0f a named pipe, 0x10 an LRPC endpoint.
    Unknown address floors are kept in `floors` and otherwise ignored.
    """
    floors = split_floors(data)
    if len(floors) < 3:
        raise ProtocolError(f"tower with {len(floors)} floors (need at least 3)")
    interface, version = _uuid_floor(floors[0], "interface")
    transfer = ""
    if floors[1].ident == FLOOR_UUID:
        t_uuid, t_ver = _uuid_floor(floors[1], "transfer syntax")
        transfer = f"{t_uuid} v{version_text(t_ver)}"
    rpc = floors[2].ident
    port: int | None = None
    host: str | None = None
    netbios: str | None = None
    pipe: str | None = None
    transport: int | None = None
    for floor in floors[3:]:
        ident, rhs = floor.ident, floor.rhs
        if ident in (FLOOR_TCP_PORT, FLOOR_UDP_PORT, FLOOR_HTTP_PORT, FLOOR_IPX_PORT) or (
            ident == FLOOR_SPX and rpc == FLOOR_NCACN
        ):
            if len(rhs) != 2:
                raise ProtocolError(f"tower port floor with {len(rhs)} bytes")
            (port,) = struct.unpack("!H", rhs)  # ports are big-endian on the wire
            transport = transport if transport is not None else ident
        elif ident == FLOOR_IPV4:
            if len(rhs) != 4:
                raise ProtocolError(f"tower IPv4 floor with {len(rhs)} bytes")
            host = str(ipaddress.IPv4Address(rhs))
        elif ident in (FLOOR_NAMED_PIPE, FLOOR_LRPC_NAME):
            pipe = _cstring(rhs)
            transport = transport if transport is not None else ident
        elif ident in (FLOOR_NETBIOS, FLOOR_NETBIOS_OLD):
            netbios = _cstring(rhs)
    protocol = _PROTOCOLS.get((rpc, transport if transport is not None else -1))
    if protocol is None:
        protocol = f"unknown(0x{rpc & 0xFF:02x}" + (
            f"/0x{transport:02x})" if transport is not None else ")"
        )
    return Tower(interface, version, transfer, protocol, port, host, netbios, pipe, tuple(floors))


def build_tower(
    uuid: str,
    version: tuple[int, int],
    *,
    protocol: str = "ncacn_ip_tcp",
    port: int = 0,
    host: str | None = "0.0.0.0",
    pipe: str | None = None,
    netbios: str | None = None,
    extra_floors: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """A tower octet string (impacket `EPMFloor`s): interface, NDR, protocol, address floors.

    `protocol`: ncacn_ip_tcp, ncacn_http, ncadg_ip_udp (port + IPv4 host), ncacn_np (pipe +
    NetBIOS host), ncalrpc (endpoint name).  `extra_floors` (lhs, rhs) are appended as is.
    """
    from impacket.dcerpc.v5.epm import EPMFloor

    def floor(lhs: bytes, rhs: bytes) -> bytes:
        f = EPMFloor()
        f["LHSByteCount"] = len(lhs)
        f["ProtocolData"] = lhs
        f["RHSByteCount"] = len(rhs)
        f["RelatedData"] = rhs
        return bytes(f.getData())

    parts = [
        floor(bytes([FLOOR_UUID]) + syntax_id(uuid, version)[:18], struct.pack("<H", version[1])),
        floor(bytes([FLOOR_UUID]) + syntax_id(NDR_UUID, NDR_VERSION)[:18], b"\x00\x00"),
    ]
    if protocol in ("ncacn_ip_tcp", "ncacn_http", "ncadg_ip_udp"):
        rpc = FLOOR_NCADG if protocol == "ncadg_ip_udp" else FLOOR_NCACN
        ident = {"ncacn_ip_tcp": FLOOR_TCP_PORT, "ncacn_http": FLOOR_HTTP_PORT}.get(
            protocol, FLOOR_UDP_PORT
        )
        parts.append(floor(bytes([rpc]), b"\x00\x00"))
        parts.append(floor(bytes([ident]), struct.pack("!H", port)))
        if host is not None:
            parts.append(floor(bytes([FLOOR_IPV4]), ipaddress.IPv4Address(host).packed))
    elif protocol == "ncacn_np":
        parts.append(floor(bytes([FLOOR_NCACN]), b"\x00\x00"))
        parts.append(floor(bytes([FLOOR_NAMED_PIPE]), (pipe or "").encode() + b"\x00"))
        if netbios is not None:
            parts.append(floor(bytes([FLOOR_NETBIOS]), netbios.encode() + b"\x00"))
    elif protocol == "ncalrpc":
        parts.append(floor(bytes([FLOOR_NCALRPC]), b"\x00\x00"))
        parts.append(floor(bytes([FLOOR_LRPC_NAME]), (pipe or "").encode() + b"\x00"))
    else:
        raise ValueError(f"cannot build a tower for protocol {protocol!r}")
    parts += [floor(lhs, rhs) for lhs, rhs in extra_floors]
    return struct.pack("<H", len(parts)) + b"".join(parts)


# -- the endpoint mapper's NDR (client side) ------------------------------------------------------


def build_ept_lookup_stub(handle: bytes = NULL_HANDLE, max_ents: int = 500) -> bytes:
    """ept_lookup (opnum 2): all elements, NULL object and interface, all versions."""
    from impacket.dcerpc.v5 import epm

    req = epm.ept_lookup()
    req["inquiry_type"] = RPC_C_EP_ALL_ELTS
    req["object"] = epm.NULL
    req["Ifid"] = epm.NULL
    req["vers_option"] = RPC_C_VERS_ALL
    h = epm.ept_lookup_handle_t()
    h["context_handle_attributes"] = struct.unpack_from("<I", handle, 0)[0]
    h["context_handle_uuid"] = bytes(handle[4:20])
    req["entry_handle"] = h
    req["max_ents"] = max_ents
    return bytes(req.getData())


def build_ept_map_stub(uuid: str, version: tuple[int, int], *, max_towers: int = 4) -> bytes:
    """ept_map (opnum 3) for `uuid` v`version` over ncacn_ip_tcp, as Outlook asks it.

    The referent IDs are fixed (object 1, tower 2) like impacket's `hept_map`: Windows
    2003 answers random referent IDs with rpc_x_bad_stub_data (impacket issue #78).
    """
    from impacket.dcerpc.v5 import epm

    tower = build_tower(uuid, version, protocol="ncacn_ip_tcp", port=0, host="0.0.0.0")
    req = epm.ept_map()
    req["obj"] = bytes(16)
    req["map_tower"]["tower_length"] = len(tower)
    req["map_tower"]["tower_octet_string"] = tower
    req["entry_handle"] = epm.ept_lookup_handle_t()
    req["max_towers"] = max_towers
    req.fields["obj"].fields["ReferentID"] = 1
    req.fields["map_tower"].fields["ReferentID"] = 2
    return bytes(req.getData())


@dataclass(frozen=True, slots=True)
class EpmEntry:
    """One ept_lookup entry: object UUID, decoded tower, annotation."""

    object: str
    tower: Tower
    annotation: str


@dataclass(frozen=True, slots=True)
class LookupReply:
    handle: bytes
    entries: tuple[EpmEntry, ...]
    status: int

    @property
    def handle_null(self) -> bool:
        return is_null_handle(self.handle)


@dataclass(frozen=True, slots=True)
class MapReply:
    handle: bytes
    towers: tuple[Tower, ...]
    status: int


def _handle_bytes(h: Any) -> bytes:
    attrs = int(h["context_handle_attributes"])
    raw = bytes(h["context_handle_uuid"])
    if len(raw) != 16:
        raise ProtocolError("context handle truncated")
    return struct.pack("<I", attrs) + raw


def _octets(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return b"".join(value)


def _tower_of(ptr: Any) -> bytes | None:
    """A twr_p_t's octets; None for a NULL pointer (impacket decodes it as b'')."""
    if isinstance(ptr, bytes) or ptr is None:
        return None
    data = ptr["Data"] if "Data" in ptr.fields else ptr
    if isinstance(data, bytes):
        return None
    octets = _octets(data["tower_octet_string"])
    if int(data["tower_length"]) != len(octets):
        raise ProtocolError(f"tower_length {data['tower_length']} but {len(octets)} octets follow")
    return octets


def decode_ept_lookup_response(stub: bytes) -> LookupReply:
    """Decode an ept_lookup reply: the entries first, the status after (Samba's end sends
    the last batch together with 0x16C9A0D6)."""

    def decode() -> LookupReply:
        from impacket.dcerpc.v5 import epm

        resp = epm.ept_lookupResponse(stub)
        num = int(resp["num_ents"])
        raw = list(resp["entries"])
        if num != len(raw):
            raise ProtocolError(f"num_ents {num} but the array holds {len(raw)} entries")
        entries = []
        for e in raw:
            octets = _tower_of(e["tower"])
            if octets is None:
                raise ProtocolError("ept_lookup entry without a tower")
            entries.append(
                EpmEntry(
                    object=uuid_text(bytes(e["object"])),
                    tower=parse_tower(octets),
                    annotation=_cstring(_octets(e["annotation"])),
                )
            )
        return LookupReply(_handle_bytes(resp["entry_handle"]), tuple(entries), int(resp["status"]))

    return _guard("ept_lookup response", decode)


def decode_ept_map_response(stub: bytes) -> MapReply:
    """Decode an ept_map reply: the towers (NULL ones skipped) and the status."""

    def decode() -> MapReply:
        from impacket.dcerpc.v5 import epm

        resp = epm.ept_mapResponse(stub)
        num = int(resp["num_towers"])
        raw = list(resp["ITowers"])
        if num > len(raw):
            raise ProtocolError(f"num_towers {num} but the array holds {len(raw)}")
        towers = []
        for ptr in raw[:num]:
            octets = _tower_of(ptr)
            if octets is not None:
                towers.append(parse_tower(octets))
        return MapReply(_handle_bytes(resp["entry_handle"]), tuple(towers), int(resp["status"]))

    return _guard("ept_map response", decode)


# -- server side ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PresentationContext:
    ctx_id: int
    abstract: str  # UUID
    version: tuple[int, int]
    transfer: tuple[str, ...]  # "uuid v2.0" per offered transfer syntax

    @property
    def offers_ndr(self) -> bool:
        return f"{NDR_UUID} v2.0" in self.transfer


@dataclass(frozen=True, slots=True)
class BindRequest:
    call_id: int
    max_xmit: int
    max_recv: int
    assoc_group: int
    contexts: tuple[PresentationContext, ...]
    auth_len: int = 0


def parse_bind(data: bytes) -> BindRequest:
    """Decode a complete bind (or alter_context) PDU.

    The context list is walked by hand: impacket's `MSRPCBind` does not populate its
    items when parsing, and `CtxItem` assumes exactly one transfer syntax per context.
    """
    pdu = parse_pdu(data)
    if pdu.header.ptype not in (PTYPE_BIND, PTYPE_ALTER_CONTEXT):
        raise ProtocolError(f"expected a bind PDU, got {pdu.header.type_name}")
    end = _body_end(pdu)
    body = pdu.data[HEADER_LEN:end]
    if len(body) < 12:
        raise ProtocolError("bind PDU too short")
    max_xmit, max_recv, assoc, n = struct.unpack_from("<HHIB", body, 0)
    pos = 12
    contexts = []
    for _ in range(n):
        if pos + 24 > len(body):
            raise ProtocolError("bind context list truncated")
        ctx_id, n_syn = struct.unpack_from("<HB", body, pos)
        abstract = body[pos + 4 : pos + 24]
        pos += 24
        syntaxes = []
        for _ in range(n_syn):
            if pos + 20 > len(body):
                raise ProtocolError("bind transfer syntaxes truncated")
            syntaxes.append(_syntax_text(body[pos : pos + 20]))
            pos += 20
        major, minor = struct.unpack_from("<HH", abstract, 16)
        contexts.append(
            PresentationContext(ctx_id, uuid_text(abstract[:16]), (major, minor), tuple(syntaxes))
        )
    return BindRequest(
        pdu.header.call_id, max_xmit, max_recv, assoc, tuple(contexts), pdu.header.auth_len
    )


@dataclass(frozen=True, slots=True)
class Request:
    call_id: int
    flags: int
    ctx_id: int
    opnum: int
    alloc_hint: int
    stub: bytes
    object: str | None = None

    @property
    def first(self) -> bool:
        return bool(self.flags & PFC_FIRST_FRAG)

    @property
    def last(self) -> bool:
        return bool(self.flags & PFC_LAST_FRAG)


def parse_request(data: bytes) -> Request:
    """Decode a complete request PDU fragment (with the optional object UUID)."""
    pdu = parse_pdu(data)
    _expect(pdu, PTYPE_REQUEST)
    end = _body_end(pdu)
    start = REQUEST_HEADER_LEN + (16 if pdu.header.flags & PFC_OBJECT_UUID else 0)
    if end < start:
        raise ProtocolError("request PDU too short")
    alloc_hint, ctx_id, opnum = struct.unpack_from("<IHH", pdu.data, HEADER_LEN)
    obj = None
    if pdu.header.flags & PFC_OBJECT_UUID:
        obj = uuid_text(pdu.data[REQUEST_HEADER_LEN : REQUEST_HEADER_LEN + 16])
    return Request(
        pdu.header.call_id, pdu.header.flags, ctx_id, opnum, alloc_hint, pdu.data[start:end], obj
    )


@dataclass(frozen=True, slots=True)
class LookupRequest:
    inquiry_type: int
    object: str | None
    interface: tuple[str, tuple[int, int]] | None
    vers_option: int
    handle: bytes
    max_ents: int


def decode_ept_lookup_request(stub: bytes) -> LookupRequest:
    def decode() -> LookupRequest:
        from impacket.dcerpc.v5 import epm

        req = epm.ept_lookup(stub)
        obj = req["object"]
        ifid = req["Ifid"]
        iface = None
        if not isinstance(ifid, bytes) and ifid is not None and "Data" in ifid.fields:
            d = ifid["Data"]
            if not isinstance(d, bytes):
                iface = (uuid_text(bytes(d["Uuid"])), (int(d["VersMajor"]), int(d["VersMinor"])))
        obj_text = None
        if not isinstance(obj, bytes) and obj is not None and "Data" in obj.fields:
            data = obj["Data"]
            if isinstance(data, bytes) and len(data) == 16:
                obj_text = uuid_text(data)
        return LookupRequest(
            int(req["inquiry_type"]),
            obj_text,
            iface,
            int(req["vers_option"]),
            _handle_bytes(req["entry_handle"]),
            int(req["max_ents"]),
        )

    return _guard("ept_lookup request", decode)


@dataclass(frozen=True, slots=True)
class MapRequest:
    tower: Tower
    handle: bytes
    max_towers: int


def decode_ept_map_request(stub: bytes) -> MapRequest:
    def decode() -> MapRequest:
        from impacket.dcerpc.v5 import epm

        req = epm.ept_map(stub)
        octets = _tower_of(req["map_tower"])
        if octets is None:
            raise ProtocolError("ept_map request without a tower")
        return MapRequest(
            parse_tower(octets), _handle_bytes(req["entry_handle"]), int(req["max_towers"])
        )

    return _guard("ept_map request", decode)


def build_bind_ack(
    call_id: int,
    results: Sequence[tuple[int, int]],
    *,
    max_xmit: int = DEFAULT_MAX_FRAG,
    max_recv: int = DEFAULT_MAX_FRAG,
    assoc_group: int = 0x12345,
    secondary_address: str = "135",
) -> bytes:
    """A bind_ack with one (result, reason) per presentation context.

    Accepted contexts name NDR 2.0 as the transfer syntax, rejected ones a zero syntax.
    frag_len is computed from the finished body (impacket's `MSRPCBindAck` leaves it to
    the caller).
    """
    from impacket.dcerpc.v5 import rpcrt

    ack = rpcrt.MSRPCRelayBindAck()
    ack["max_tfrag"] = max_xmit
    ack["max_rfrag"] = max_recv
    ack["assoc_group"] = assoc_group
    ack["SecondaryAddr"] = secondary_address.encode("ascii")
    for result, reason in results:
        item = rpcrt.CtxItemResult()
        item["Result"] = result
        item["Reason"] = reason
        item["TransferSyntax"] = (
            syntax_id(NDR_UUID, NDR_VERSION) if result == RESULT_ACCEPTANCE else bytes(20)
        )
        ack.addCtxItem(item)
    body = bytes(ack.getData())
    head = struct.pack(
        "<BBBB4sHHI",
        5,
        0,
        PTYPE_BIND_ACK,
        PFC_FIRST_FRAG | PFC_LAST_FRAG,
        DREP_LE,
        HEADER_LEN + len(body),
        0,
        call_id,
    )
    return head + body


def build_bind_nak(call_id: int, reason: int) -> bytes:
    """A bind_nak with `reason` and the supported versions list (5.0)."""
    body = struct.pack("<HBBB", reason, 1, 5, 0) + b"\x00\x00\x00"
    head = struct.pack(
        "<BBBB4sHHI",
        5,
        0,
        PTYPE_BIND_NAK,
        PFC_FIRST_FRAG | PFC_LAST_FRAG,
        DREP_LE,
        HEADER_LEN + len(body),
        0,
        call_id,
    )
    return head + body


def build_fault(call_id: int, status: int, *, ctx_id: int = 0) -> bytes:
    """A fault PDU: 24-byte header, status at byte 24, 4 reserved bytes."""
    head = struct.pack(
        "<BBBB4sHHIIHBB",
        5,
        0,
        PTYPE_FAULT,
        PFC_FIRST_FRAG | PFC_LAST_FRAG | 0x20,  # PFC_DID_NOT_EXECUTE
        DREP_LE,
        32,
        0,
        call_id,
        0,
        ctx_id,
        0,
        0,
    )
    return head + struct.pack("<II", status, 0)


def build_response(
    call_id: int, stub: bytes, *, max_frag: int = DEFAULT_MAX_FRAG, ctx_id: int = 0
) -> list[bytes]:
    """Response PDU fragments carrying `stub`, each at most `max_frag` bytes."""
    from impacket.dcerpc.v5 import rpcrt

    def extra(alloc_hint: int) -> bytes:
        head = rpcrt.MSRPCRespHeader()
        head["alloc_hint"] = alloc_hint
        head["ctx_id"] = ctx_id
        return bytes(head.getData()[HEADER_LEN:RESPONSE_HEADER_LEN])

    return _frame(PTYPE_RESPONSE, call_id, stub, max_frag, extra)


def _handle_struct(handle: bytes) -> Any:
    from impacket.dcerpc.v5 import epm

    if len(handle) != 20:
        raise ValueError("a context handle is 20 bytes")
    h = epm.ept_lookup_handle_t()
    h["context_handle_attributes"] = struct.unpack_from("<I", handle, 0)[0]
    h["context_handle_uuid"] = bytes(handle[4:20])
    return h


@dataclass(frozen=True, slots=True)
class EntrySpec:
    """What a server puts in one ept_lookup entry."""

    tower: bytes
    annotation: str = ""
    object: str = "00000000-0000-0000-0000-000000000000"


def build_ept_lookup_response(
    entries: Sequence[EntrySpec], handle: bytes, status: int = STATUS_OK
) -> bytes:
    """An ept_lookup reply stub (impacket `ept_lookupResponse`)."""
    from impacket.dcerpc.v5 import epm

    resp = epm.ept_lookupResponse()
    resp["entry_handle"] = _handle_struct(handle)
    items = []
    for spec in entries:
        e = epm.ept_entry_t()
        e["object"] = uuid_bytes(spec.object)
        e["tower"]["tower_length"] = len(spec.tower)
        e["tower"]["tower_octet_string"] = spec.tower
        e["annotation"] = spec.annotation.encode("utf-8")[:63] + b"\x00"
        items.append(e)
    resp["num_ents"] = len(items)
    resp["entries"] = items
    resp["status"] = status
    return bytes(resp.getData())


def build_ept_map_response(
    towers: Sequence[bytes], handle: bytes, status: int = STATUS_OK
) -> bytes:
    """An ept_map reply stub (impacket `ept_mapResponse`)."""
    from impacket.dcerpc.v5 import epm

    resp = epm.ept_mapResponse()
    resp["entry_handle"] = _handle_struct(handle)
    items = []
    for tower in towers:
        p = epm.twr_p_t()
        p["tower_length"] = len(tower)
        p["tower_octet_string"] = tower
        items.append(p)
    resp["num_towers"] = len(items)
    resp["ITowers"] = items
    resp["status"] = status
    return bytes(resp.getData())
