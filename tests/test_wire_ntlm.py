"""exprobe.wire.ntlm: the NTLMSSP CHALLENGE codec: MS-NLMP's own example, a round trip
through the encoder used by scripted peers, impacket's reading of the same bytes, and
"any bytes -> a challenge or ProtocolError"."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exprobe.errors import ProtocolError
from exprobe.wire import ntlm

# MS-NLMP 4.2.4.3: the NTLMv2 example's CHALLENGE_MESSAGE (target "Domain", computer
# "Server", VERSION 6.0.6000, no timestamp).
SPEC_CHALLENGE = bytes.fromhex(
    "4e544c4d53535000020000000c000c003800000033828ae20123456789abcdef"
    "00000000000000002400240044000000060070170000000f53006500720076006500720002000c00"
    "44006f006d00610069006e0001000c0053006500720076006500720000000000"
)


def test_spec_example() -> None:
    ch = ntlm.decode_challenge(SPEC_CHALLENGE)
    assert ch.netbios_domain == "Domain"
    assert ch.netbios_computer == "Server"
    assert ch.os_version == "6.0.6000"
    assert ch.dns_computer is None
    assert ch.timestamp is None
    assert ch.facts() == {
        "netbios_computer": "Server",
        "netbios_domain": "Domain",
        "os_version": "6.0.6000",
        "target_name": "Server",
    }


def test_negotiate_is_a_type1_asking_for_target_info() -> None:
    msg = ntlm.negotiate_message()
    assert msg[:8] == b"NTLMSSP\x00"
    assert struct.unpack_from("<I", msg, 8)[0] == 1
    flags = struct.unpack_from("<I", msg, 12)[0]
    assert flags & 0x00000004  # NTLMSSP_REQUEST_TARGET
    assert flags & 0x00000200  # NTLMSSP_NEGOTIATE_NTLM
    assert base64.b64decode(ntlm.negotiate_b64()) == msg


def test_round_trip_and_clock_skew() -> None:
    when = dt.datetime(2026, 12, 3, 12, 0, 0, tzinfo=dt.UTC)
    raw = ntlm.encode_challenge(
        netbios_computer="EXCH1",
        netbios_domain="CONTOSO",
        dns_computer="exch1.contoso.com",
        dns_domain="contoso.com",
        os_version=(10, 0, 20348),
        timestamp=when,
    )
    ch = ntlm.decode_challenge(raw)
    facts = ch.facts(now=when - dt.timedelta(seconds=90))
    assert facts == {
        "netbios_computer": "EXCH1",
        "netbios_domain": "CONTOSO",
        "dns_computer": "exch1.contoso.com",
        "dns_domain": "contoso.com",
        "dns_tree": "contoso.com",
        "os_version": "10.0.20348",
        "target_name": "CONTOSO",
        "server_time": "2026-12-03T12:00:00+00:00",
        "clock_skew_s": 90.0,
    }
    # impacket reads the same bytes the same way (an independent decoder).
    from impacket import ntlm as imp

    msg = imp.NTLMAuthChallenge(raw)
    av = imp.AV_PAIRS(msg["TargetInfoFields"])
    assert av[imp.NTLMSSP_AV_DNS_HOSTNAME][1].decode("utf-16-le") == "exch1.contoso.com"
    assert av[imp.NTLMSSP_AV_HOSTNAME][1].decode("utf-16-le") == "EXCH1"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an NTLMSSP message"),
        (b"HTTP/1.1 401", "not an NTLMSSP message"),
        (SPEC_CHALLENGE[:20], "NTLMSSP message is not a CHALLENGE"),
        (SPEC_CHALLENGE[:8] + b"\x01\x00\x00\x00" + SPEC_CHALLENGE[12:], "NTLMSSP message is not a CHALLENGE"),
        (b"NTLMSSP\x00" + bytes(70_000), "NTLM challenge of 70008 bytes (limit 65536)"),
        # Target info whose first pair claims 0xffff bytes.
        (SPEC_CHALLENGE[:0x44] + b"\x02\x00\xff\xff" + SPEC_CHALLENGE[0x48:], "NTLM target info: an AV pair runs past its end"),
        # Target info cut before its MsvAvEOL.
        (SPEC_CHALLENGE[:-4], "NTLM target info has no MsvAvEOL"),
    ],
)
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as err:
        ntlm.decode_challenge(data)
    assert str(err.value) == message


def test_not_base64() -> None:
    with pytest.raises(ProtocolError, match=r"^NTLM challenge is not base64$"):
        ntlm.decode_challenge_b64("TlRMTVNT*")


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_protocol_error(tail: bytes) -> None:
    for data in (tail, SPEC_CHALLENGE[:32] + tail, SPEC_CHALLENGE[: len(tail) % 120] + tail):
        with contextlib.suppress(ProtocolError):
            ch = ntlm.decode_challenge(data)
            assert isinstance(ch.facts(), dict)
