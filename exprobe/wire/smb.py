"""SMB2/3 NEGOTIATE and the first SESSION_SETUP leg (MS-SMB2 2.2.3-2.2.6), over the
NetBIOS session service framing of direct TCP 445 (MS-SMB2 2.1).

The NEGOTIATE answer says which dialect the server picks, whether it requires signing,
its GUID, capabilities and clock.  A SESSION_SETUP whose SPNEGO token is a bare NTLMSSP
NEGOTIATE gets back (STATUS_MORE_PROCESSING_REQUIRED) an NTLM CHALLENGE naming the
server, its domain and forest: no credential is ever sent.

impacket's `smb3structs` are the codec.  They raise `struct.error`, `IndexError` and
other exceptions on hostile input; every decoder here turns them into `ProtocolError`.

Client side: `encode_negotiate`, `encode_session_setup`, `frame_length`,
`decode_negotiate`, `decode_session_setup`.
Server side (scripted peers): `encode_negotiate_response`.
"""

from __future__ import annotations

import datetime as dt
import os
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

from exprobe.errors import ProtocolError
from exprobe.wire.ntlm import SIGNATURE as NTLM_SIGNATURE
from exprobe.wire.ntlm import NtlmChallenge, decode_challenge

FRAME_HEADER = 4
MAX_MESSAGE = 64 * 1024
"""Largest SMB2 message accepted (bytes); a NEGOTIATE or SESSION_SETUP answer is < 1 KiB."""
HEADER_SIZE = 64
SMB2_MAGIC = b"\xfeSMB"
SMB1_MAGIC = b"\xffSMB"

CMD_NEGOTIATE = 0
CMD_SESSION_SETUP = 1
STATUS_SUCCESS = 0
STATUS_MORE_PROCESSING_REQUIRED = 0xC0000016

DIALECTS = {0x0202: "2.0.2", 0x0210: "2.1", 0x0300: "3.0", 0x0302: "3.0.2", 0x0311: "3.1.1"}
CAPABILITIES = {
    0x01: "DFS",
    0x02: "LEASING",
    0x04: "LARGE_MTU",
    0x08: "MULTI_CHANNEL",
    0x10: "PERSISTENT_HANDLES",
    0x20: "DIRECTORY_LEASING",
    0x40: "ENCRYPTION",
}
SIGNING_ENABLED = 0x01
SIGNING_REQUIRED = 0x02
_EPOCH_1601 = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Smb2Header:
    """The fields of an SMB2 sync header that matter here."""

    status: int
    command: int
    message_id: int
    session_id: int


@dataclass(frozen=True, slots=True)
class SmbNegotiate:
    """What a NEGOTIATE response says."""

    dialect: int
    security_mode: int
    server_guid: str
    capabilities: int
    max_transact: int
    max_read: int
    max_write: int
    system_time: dt.datetime | None
    security_blob: bytes = b""

    @property
    def dialect_name(self) -> str:
        return DIALECTS.get(self.dialect, f"0x{self.dialect:04x}")

    @property
    def signing_required(self) -> bool:
        return bool(self.security_mode & SIGNING_REQUIRED)

    def capability_names(self) -> list[str]:
        names = [name for bit, name in CAPABILITIES.items() if self.capabilities & bit]
        unknown = self.capabilities & ~sum(CAPABILITIES)
        if unknown:
            names.append(f"0x{unknown:08x}")
        return names

    def facts(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """Report facts, with the clock skew in seconds (server minus this machine)."""
        out: dict[str, Any] = {
            "dialect": self.dialect_name,
            "signing_enabled": bool(self.security_mode & SIGNING_ENABLED),
            "signing_required": self.signing_required,
            "server_guid": self.server_guid,
            "capabilities": self.capability_names(),
            "max_transact_size": self.max_transact,
            "max_read_size": self.max_read,
            "max_write_size": self.max_write,
        }
        if self.system_time is not None:
            now = now or dt.datetime.now(dt.UTC)
            out["server_time"] = self.system_time.isoformat(timespec="seconds")
            out["clock_skew_s"] = round((self.system_time - now).total_seconds(), 1) + 0.0
        return out


@dataclass(frozen=True, slots=True)
class SessionSetupReply:
    """The first SESSION_SETUP answer: its status and security blob, and the NTLM
    CHALLENGE inside that blob if there is one."""

    status: int
    security_blob: bytes = b""
    challenge: NtlmChallenge | None = field(default=None)


def _wrap(what: str, func: Any, *args: Any) -> Any:
    try:
        return func(*args)
    except ProtocolError:
        raise
    except Exception as exc:
        # impacket's Structure raises struct.error, IndexError, TypeError or a bare
        # Exception on hostile bytes: all the peer's protocol error, never our crash.
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ProtocolError(f"malformed SMB2 {what}: {reason}") from exc


def frame(message: bytes) -> bytes:
    """`message` with its NetBIOS session message header (type 0, 24-bit length)."""
    return struct.pack(">I", len(message)) + message


def frame_length(header: bytes) -> int:
    """The length a 4-byte NetBIOS session header announces; ProtocolError for another
    message type, an empty message or one over MAX_MESSAGE."""
    if len(header) != FRAME_HEADER:
        raise ProtocolError(f"truncated NetBIOS session header ({len(header)} bytes)")
    if header[0] != 0:
        raise ProtocolError(f"not a NetBIOS session message (type 0x{header[0]:02x})")
    length = int.from_bytes(header[1:], "big")
    if length < HEADER_SIZE:
        raise ProtocolError(f"SMB message of {length} bytes (shorter than an SMB2 header)")
    if length > MAX_MESSAGE:
        raise ProtocolError(f"SMB message of {length} bytes (limit {MAX_MESSAGE})")
    return length


def _packet(command: int, message_id: int, data: bytes, credits: int = 1) -> bytes:
    from impacket.smb3structs import SMB2Packet

    pkt = SMB2Packet()
    pkt["Command"] = command
    pkt["MessageID"] = message_id
    pkt["CreditRequestResponse"] = credits
    pkt["Data"] = data
    return frame(bytes(pkt.getData()))


def encode_negotiate(client_guid: bytes | None = None) -> bytes:
    """A framed NEGOTIATE offering 2.0.2 to 3.1.1 (with the 3.1.1 pre-authentication
    integrity and encryption contexts), signing enabled, not required."""
    from impacket import smb3structs as s

    neg = s.SMB2Negotiate()
    neg["SecurityMode"] = s.SMB2_NEGOTIATE_SIGNING_ENABLED
    neg["Capabilities"] = s.SMB2_GLOBAL_CAP_ENCRYPTION
    neg["ClientGuid"] = client_guid or os.urandom(16)
    neg["Dialects"] = list(DIALECTS)
    neg["DialectCount"] = len(DIALECTS)
    ctx_data = s.SMB311ContextData()
    # 64 (header) + 36 (fixed part) + 2 * 5 dialects = 110, then 2 bytes of padding.
    ctx_data["NegotiateContextOffset"] = HEADER_SIZE + 36 + 2 * len(DIALECTS) + 2
    ctx_data["NegotiateContextCount"] = 2
    preauth = s.SMB2PreAuthIntegrityCapabilities()
    preauth["HashAlgorithmCount"] = 1
    preauth["SaltLength"] = 32
    preauth["HashAlgorithms"] = b"\x01\x00"  # SHA-512
    preauth["Salt"] = os.urandom(32)
    ctx1 = s.SMB2NegotiateContext()
    ctx1["ContextType"] = s.SMB2_PREAUTH_INTEGRITY_CAPABILITIES
    ctx1["Data"] = preauth.getData()
    ctx1["DataLength"] = len(ctx1["Data"])
    pad = b"\x00" * ((8 - ctx1["DataLength"] % 8) % 8)
    enc = s.SMB2EncryptionCapabilities()
    enc["CipherCount"] = 2
    enc["Ciphers"] = b"\x02\x00\x01\x00"  # AES-128-GCM, AES-128-CCM
    ctx2 = s.SMB2NegotiateContext()
    ctx2["ContextType"] = s.SMB2_ENCRYPTION_CAPABILITIES
    ctx2["Data"] = enc.getData()
    ctx2["DataLength"] = len(ctx2["Data"])
    neg["ClientStartTime"] = ctx_data.getData()
    neg["Padding"] = b"\x00\x00"
    neg["NegotiateContextList"] = ctx1.getData() + pad + ctx2.getData()
    return _packet(CMD_NEGOTIATE, 0, bytes(neg.getData()))


def spnego_ntlm_negotiate(ntlm_token: bytes) -> bytes:
    """A SPNEGO NegTokenInit offering NTLMSSP only, carrying `ntlm_token`."""
    from impacket.spnego import SPNEGO_NegTokenInit, TypesMech

    init = SPNEGO_NegTokenInit()
    init["MechTypes"] = [TypesMech["NTLMSSP - Microsoft NTLM Security Support Provider"]]
    init["MechToken"] = ntlm_token
    return bytes(init.getData())


def encode_session_setup(security_blob: bytes, message_id: int = 1) -> bytes:
    """A framed SESSION_SETUP carrying `security_blob` (signing enabled, no session)."""
    from impacket import smb3structs as s

    setup = s.SMB2SessionSetup()
    setup["SecurityMode"] = s.SMB2_NEGOTIATE_SIGNING_ENABLED
    setup["SecurityBufferLength"] = len(security_blob)
    setup["Buffer"] = security_blob
    return _packet(CMD_SESSION_SETUP, message_id, bytes(setup.getData()), credits=1)


def decode_header(data: bytes) -> tuple[Smb2Header, bytes]:
    """The SMB2 header of a message and its body; ProtocolError for SMB1 or non-SMB."""
    if data[:4] == SMB1_MAGIC:
        raise ProtocolError("the server answered in SMB1 (it does not speak SMB2/3)")
    if data[:4] != SMB2_MAGIC:
        raise ProtocolError(f"not an SMB2 message (starts {data[:4].hex()})")
    if len(data) < HEADER_SIZE:
        raise ProtocolError(f"truncated SMB2 header ({len(data)} bytes)")
    status, command = struct.unpack_from("<IH", data, 8)
    (message_id,) = struct.unpack_from("<Q", data, 24)
    (session_id,) = struct.unpack_from("<Q", data, 40)
    return Smb2Header(status, command, message_id, session_id), data[HEADER_SIZE:]


def _filetime(ticks: int) -> dt.datetime | None:
    if ticks <= 0:
        return None
    try:
        return _EPOCH_1601 + dt.timedelta(microseconds=ticks // 10)
    except OverflowError:
        return None


def _blob(data: bytes, offset: int, length: int) -> bytes:
    """The security buffer at `offset` (from the start of the header) of `data`."""
    if length == 0:
        return b""
    start = offset - HEADER_SIZE
    if start < 0 or start + length > len(data) - HEADER_SIZE:
        raise ProtocolError(
            f"SMB2 security buffer at {offset}+{length} outside the {len(data)}-byte message"
        )
    return data[offset : offset + length]


def decode_negotiate(data: bytes) -> SmbNegotiate:
    """Decode a NEGOTIATE response (a whole SMB2 message, without framing); ProtocolError
    on anything malformed, another command, or an error status."""
    header, body = decode_header(data)
    if header.command != CMD_NEGOTIATE:
        raise ProtocolError(f"SMB2 command {header.command} in answer to NEGOTIATE")
    if header.status != STATUS_SUCCESS:
        raise ProtocolError(f"NEGOTIATE answered with status 0x{header.status:08x}")
    result: SmbNegotiate = _wrap("NEGOTIATE response", _negotiate, data, body)
    return result


def _negotiate(data: bytes, body: bytes) -> SmbNegotiate:
    if len(body) < 64:
        raise ProtocolError(f"truncated NEGOTIATE response ({len(body)} bytes)")
    (size, mode, dialect, _count) = struct.unpack_from("<HHHH", body, 0)
    if size != 65:
        raise ProtocolError(f"NEGOTIATE response StructureSize {size}, expected 65")
    guid = bytes(body[8:24])
    caps, max_t, max_r, max_w, sys_time, _start = struct.unpack_from("<LLLLQQ", body, 24)
    blob_off, blob_len = struct.unpack_from("<HH", body, 56)
    return SmbNegotiate(
        dialect=dialect,
        security_mode=mode,
        server_guid=str(uuid.UUID(bytes_le=guid)),
        capabilities=caps,
        max_transact=max_t,
        max_read=max_r,
        max_write=max_w,
        system_time=_filetime(sys_time),
        security_blob=_blob(data, blob_off, blob_len),
    )


def decode_session_setup(data: bytes) -> SessionSetupReply:
    """Decode the first SESSION_SETUP answer; the NTLM CHALLENGE in its blob, if any."""
    header, body = decode_header(data)
    if header.command != CMD_SESSION_SETUP:
        raise ProtocolError(f"SMB2 command {header.command} in answer to SESSION_SETUP")
    if header.status not in (STATUS_SUCCESS, STATUS_MORE_PROCESSING_REQUIRED):
        # An error answer has the 9-byte ERROR body, not a security blob.
        return SessionSetupReply(header.status)
    if len(body) < 8:
        raise ProtocolError(f"truncated SESSION_SETUP response ({len(body)} bytes)")
    size, _flags, blob_off, blob_len = struct.unpack_from("<HHHH", body, 0)
    if size != 9:
        raise ProtocolError(f"SESSION_SETUP response StructureSize {size}, expected 9")
    blob = _blob(data, blob_off, blob_len)
    return SessionSetupReply(header.status, blob, ntlm_in_blob(blob))


def ntlm_in_blob(blob: bytes) -> NtlmChallenge | None:
    """The NTLM CHALLENGE inside a SPNEGO token (nmap's smbauth does the same: find the
    NTLMSSP signature rather than trust the token's DER), or None if there is none."""
    at = blob.find(NTLM_SIGNATURE)
    if at < 0:
        return None
    return decode_challenge(blob[at:])


def encode_negotiate_response(
    dialect: int = 0x0311,
    security_mode: int = SIGNING_ENABLED | SIGNING_REQUIRED,
    server_guid: bytes = b"\x11" * 16,
    capabilities: int = 0x07,
    system_time: dt.datetime | None = None,
) -> bytes:
    """A framed NEGOTIATE response with no security blob, as a scripted server sends it."""
    from impacket import smb3structs as s

    now = system_time or dt.datetime.now(dt.UTC)
    ticks = int((now - _EPOCH_1601).total_seconds() * 10_000_000)
    resp = s.SMB2Negotiate_Response()
    resp["SecurityMode"] = security_mode
    resp["DialectRevision"] = dialect
    resp["ServerGuid"] = server_guid
    resp["Capabilities"] = capabilities
    resp["MaxTransactSize"] = resp["MaxReadSize"] = resp["MaxWriteSize"] = 65536
    resp["SystemTime"] = ticks
    resp["SecurityBufferOffset"] = HEADER_SIZE + 64
    resp["SecurityBufferLength"] = 0
    resp["Buffer"] = b""
    from impacket.smb3structs import SMB2Packet

    pkt = SMB2Packet()
    pkt["Command"] = CMD_NEGOTIATE
    pkt["Flags"] = 1  # SMB2_FLAGS_SERVER_TO_REDIR
    pkt["Data"] = resp.getData()
    return frame(bytes(pkt.getData()))
