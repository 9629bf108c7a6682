"""NTLMSSP NEGOTIATE and CHALLENGE messages (MS-NLMP 2.2.1.1, 2.2.1.2): the identity an
NTLM endpoint gives away before any credential is sent.

A client that sends a NEGOTIATE (type 1) with no names gets back a CHALLENGE (type 2)
whose target information names the server's NetBIOS and DNS computer, domain and forest,
and, when the VERSION flag is set, the Windows build; its MsvAvTimestamp is the server's
clock.  That is what nmap's `*-ntlm-info` scripts read, and what exprobe records.

impacket's `ntlm` structures are the codec.  They raise `struct.error`, `IndexError` and
friends on hostile input; `decode_challenge` turns every such failure into
`ProtocolError` and bounds what it accepts.

Client side: `negotiate_message()`, `decode_challenge(data)`.
Server side (scripted peers, `exprobe listen`): `encode_challenge(...)`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import struct
from dataclasses import dataclass
from typing import Any

from exprobe.errors import ProtocolError

SIGNATURE = b"NTLMSSP\x00"
MAX_CHALLENGE = 64 * 1024
"""Largest CHALLENGE accepted (bytes); a real one is a few hundred."""

# MS-NLMP 2.2.2.1 AV_PAIR ids.
AV_EOL = 0
AV_NB_COMPUTER = 1
AV_NB_DOMAIN = 2
AV_DNS_COMPUTER = 3
AV_DNS_DOMAIN = 4
AV_DNS_TREE = 5
AV_FLAGS = 6
AV_TIMESTAMP = 7

_NAMES = {
    AV_NB_COMPUTER: "netbios_computer",
    AV_NB_DOMAIN: "netbios_domain",
    AV_DNS_COMPUTER: "dns_computer",
    AV_DNS_DOMAIN: "dns_domain",
    AV_DNS_TREE: "dns_tree",
}

# FILETIME: 100 ns ticks since 1601-01-01 UTC.
_EPOCH_1601 = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class NtlmChallenge:
    """What a CHALLENGE message says about the server that sent it."""

    flags: int
    target_name: str | None
    netbios_computer: str | None = None
    netbios_domain: str | None = None
    dns_computer: str | None = None
    dns_domain: str | None = None
    dns_tree: str | None = None
    os_version: str | None = None  # "10.0.17763": the Windows build, not Exchange's
    timestamp: dt.datetime | None = None  # the server's clock (MsvAvTimestamp)

    def facts(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """The identity as report facts (absent names left out), with the clock skew in
        seconds (server minus this machine) when the server sent its time."""
        out: dict[str, Any] = {}
        for name in (*_NAMES.values(), "os_version", "target_name"):
            value = getattr(self, name)
            if value:
                out[name] = value
        if self.timestamp is not None:
            now = now or dt.datetime.now(dt.UTC)
            out["server_time"] = self.timestamp.isoformat(timespec="seconds")
            out["clock_skew_s"] = round((self.timestamp - now).total_seconds(), 1)
        return out


def negotiate_message() -> bytes:
    """A NEGOTIATE (type 1) with no workstation or domain name: asks for the target info."""
    from impacket import ntlm

    return bytes(ntlm.getNTLMSSPType1("", "", use_ntlmv2=True).getData())


def negotiate_b64() -> str:
    """`negotiate_message()` in base64, as HTTP, SMTP, IMAP and POP3 carry it."""
    return base64.b64encode(negotiate_message()).decode("ascii")


def decode_challenge_b64(text: str | bytes) -> NtlmChallenge:
    """`decode_challenge` of a base64 token; ProtocolError if it is not base64."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("NTLM challenge is not base64") from exc
    return decode_challenge(data)


def decode_challenge(data: bytes) -> NtlmChallenge:
    """Decode a CHALLENGE (type 2); ProtocolError on anything else or anything malformed."""
    if len(data) > MAX_CHALLENGE:
        raise ProtocolError(f"NTLM challenge of {len(data)} bytes (limit {MAX_CHALLENGE})")
    if not data.startswith(SIGNATURE):
        raise ProtocolError("not an NTLMSSP message")
    if len(data) < 32 or struct.unpack_from("<I", data, 8)[0] != 2:
        raise ProtocolError("NTLMSSP message is not a CHALLENGE")
    from impacket import ntlm

    try:
        msg = ntlm.NTLMAuthChallenge()
        msg.fromString(data)
        flags = int(msg["flags"])
        target = _utf16(bytes(msg["domain_name"] or b""))
        info = bytes(msg["TargetInfoFields"] or b"")
        version = bytes(msg["Version"] or b"") if flags & ntlm.NTLMSSP_NEGOTIATE_VERSION else b""
    except (struct.error, IndexError, KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed NTLM challenge: {type(exc).__name__}") from exc
    pairs = _av_pairs(info)
    names = {field: _utf16(pairs[av]) for av, field in _NAMES.items() if av in pairs}
    os_version = None
    if len(version) >= 4:
        major, minor, build = struct.unpack_from("<BBH", version)
        os_version = f"{major}.{minor}.{build}"
    return NtlmChallenge(
        flags=flags,
        target_name=target or None,
        os_version=os_version,
        timestamp=_filetime(pairs.get(AV_TIMESTAMP)),
        **names,
    )


def _av_pairs(info: bytes) -> dict[int, bytes]:
    """The AV_PAIR list (MS-NLMP 2.2.2.1) up to MsvAvEOL; the first of a repeated id wins.

    Walked here rather than by impacket's `AV_PAIRS`, which loops on `struct.error`-prone
    slices and cannot tell a truncated list from a complete one."""
    pairs: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(info):
        av_id, length = struct.unpack_from("<HH", info, pos)
        pos += 4
        if av_id == AV_EOL:
            return pairs
        if pos + length > len(info):
            raise ProtocolError("NTLM target info: an AV pair runs past its end")
        pairs.setdefault(av_id, info[pos : pos + length])
        pos += length
    if info:
        raise ProtocolError("NTLM target info has no MsvAvEOL")
    return pairs


def _utf16(raw: bytes) -> str:
    return raw.decode("utf-16-le", errors="replace").rstrip("\x00")


def _filetime(raw: bytes | None) -> dt.datetime | None:
    if raw is None or len(raw) != 8:
        return None
    ticks = struct.unpack("<Q", raw)[0]
    try:
        return _EPOCH_1601 + dt.timedelta(microseconds=ticks // 10)
    except OverflowError:
        return None


def encode_challenge(
    *,
    netbios_computer: str,
    netbios_domain: str,
    dns_computer: str,
    dns_domain: str,
    dns_tree: str | None = None,
    os_version: tuple[int, int, int] = (10, 0, 17763),
    timestamp: dt.datetime | None = None,
) -> bytes:
    """A CHALLENGE (type 2) naming a server, as Windows sends it (for scripted peers)."""
    from impacket import ntlm

    flags = (
        ntlm.NTLMSSP_NEGOTIATE_UNICODE
        | ntlm.NTLMSSP_REQUEST_TARGET
        | ntlm.NTLMSSP_NEGOTIATE_NTLM
        | ntlm.NTLMSSP_NEGOTIATE_ALWAYS_SIGN
        | ntlm.NTLMSSP_TARGET_TYPE_DOMAIN
        | ntlm.NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY
        | ntlm.NTLMSSP_NEGOTIATE_TARGET_INFO
        | ntlm.NTLMSSP_NEGOTIATE_VERSION
        | ntlm.NTLMSSP_NEGOTIATE_128
        | ntlm.NTLMSSP_NEGOTIATE_56
    )
    when = timestamp or dt.datetime.now(dt.UTC)
    ticks = int((when - _EPOCH_1601).total_seconds() * 10_000_000)
    values = {
        AV_NB_DOMAIN: netbios_domain,
        AV_NB_COMPUTER: netbios_computer,
        AV_DNS_DOMAIN: dns_domain,
        AV_DNS_COMPUTER: dns_computer,
        AV_DNS_TREE: dns_tree or dns_domain,
    }
    info = b"".join(
        struct.pack("<HH", av, len(v.encode("utf-16-le"))) + v.encode("utf-16-le")
        for av, v in values.items()
    )
    info += struct.pack("<HHQ", AV_TIMESTAMP, 8, ticks) + struct.pack("<HH", AV_EOL, 0)
    target = netbios_domain.encode("utf-16-le")
    version = struct.pack("<BBH3xB", *os_version, 0x0F)
    head = 56  # fixed part (48) + VERSION (8)
    return (
        SIGNATURE
        + struct.pack("<IHHI", 2, len(target), len(target), head)
        + struct.pack("<I", flags)
        + os.urandom(8)
        + bytes(8)
        + struct.pack("<HHI", len(info), len(info), head + len(target))
        + version
        + target
        + info
    )
