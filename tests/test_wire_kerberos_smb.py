"""The Kerberos and SMB2 codecs (exprobe/wire/kerberos.py, exprobe/wire/smb.py): what
they send, what they accept, and that hostile bytes only ever raise ProtocolError."""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import struct

import pytest

from exprobe.errors import ProtocolError
from exprobe.wire import kerberos as k
from exprobe.wire import smb as s
from exprobe.wire.ntlm import encode_challenge

WHEN = dt.datetime(2026, 12, 4, 1, 2, 3, tzinfo=dt.UTC)


def test_as_req_names_the_random_client_and_krbtgt_without_padata() -> None:
    from impacket.krb5.asn1 import AS_REQ
    from pyasn1.codec.der import decoder

    data = k.encode_as_req("exprobe-abc", "AD.EXAMPLE", 0x7FFFFFFF + 5, now=WHEN)
    assert k.record_length(data[:4]) == len(data) - 4
    req, rest = decoder.decode(data[4:], asn1Spec=AS_REQ())
    assert rest == b""
    body = req["req-body"]
    assert [str(c) for c in body["cname"]["name-string"]] == ["exprobe-abc"]
    assert [str(c) for c in body["sname"]["name-string"]] == ["krbtgt", "AD.EXAMPLE"]
    assert str(body["realm"]) == "AD.EXAMPLE"
    assert int(body["nonce"]) == 4  # masked to 31 bits
    assert [int(e) for e in body["etype"]] == [18, 17, 23]
    assert not req["padata"].hasValue()


def test_krb_error_round_trip() -> None:
    reply = k.decode_reply(k.encode_krb_error(25, "AD.EXAMPLE", WHEN, 123456, "needs preauth"))
    assert reply.kind == "KRB-ERROR"
    err = reply.error
    assert err is not None
    assert (err.error_code, err.error_name, err.realm) == (25, "KDC_ERR_PREAUTH_REQUIRED",
                                                           "AD.EXAMPLE")  # fmt: skip
    assert err.server_time == WHEN + dt.timedelta(microseconds=123456)
    facts = err.facts(now=WHEN)
    assert facts["clock_skew_s"] == 0.1
    assert facts["server_time"] == "2026-12-04T01:02:03+00:00"
    assert (facts["sname"], facts["e_text"]) == ("krbtgt/AD.EXAMPLE", "needs preauth")


@pytest.mark.parametrize(
    ("head", "reason"),
    [(b"\x80\x00\x00\x01", "reserved bit"), (b"\x00\x01\x00\x01", "limit 65536"),
     (b"\x00\x00\x00", "truncated"), (b"\x00\x00\x00\x00", "empty")],
)  # fmt: skip
def test_record_length_refusals(head: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        k.record_length(head)


def test_negotiate_request_offers_five_dialects_with_contexts() -> None:
    from impacket.smb3structs import SMB2Negotiate, SMB2Packet

    data = s.encode_negotiate(b"G" * 16)
    assert s.frame_length(data[:4]) == len(data) - 4
    pkt = SMB2Packet(data[4:])
    assert pkt["Command"] == 0
    neg = SMB2Negotiate(pkt["Data"])
    assert neg["DialectCount"] == 5
    assert neg["ClientGuid"] == b"G" * 16
    # The first negotiate context (pre-authentication integrity) at the announced offset.
    offset = struct.unpack_from("<I", data, 4 + 64 + 28)[0]
    assert struct.unpack_from("<H", data, 4 + offset)[0] == 1
    assert offset % 8 == 0


def test_negotiate_response_round_trip() -> None:
    raw = s.encode_negotiate_response(0x0311, 3, bytes(range(16)), 0x7F, WHEN)
    neg = s.decode_negotiate(raw[4:])
    facts = neg.facts(now=WHEN)
    assert facts["dialect"] == "3.1.1"
    assert (facts["signing_enabled"], facts["signing_required"]) == (True, True)
    assert facts["capabilities"] == ["DFS", "LEASING", "LARGE_MTU", "MULTI_CHANNEL",
                                     "PERSISTENT_HANDLES", "DIRECTORY_LEASING", "ENCRYPTION"]  # fmt: skip
    assert (facts["server_time"], facts["clock_skew_s"]) == ("2026-12-04T01:02:03+00:00", 0.0)


def test_ntlm_in_blob() -> None:
    assert s.ntlm_in_blob(b"\xa1\x03\x0a\x01\x01") is None
    token = encode_challenge(netbios_computer="A", netbios_domain="B", dns_computer="a.b",
                             dns_domain="b")  # fmt: skip
    found = s.ntlm_in_blob(b"\xa1\x82\x01\x00" + token)
    assert found is not None
    assert (found.netbios_computer, found.dns_domain) == ("A", "b")


def _mutations(valid: bytes, rng: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        data = bytearray(valid)
        op = rng.randrange(3)
        if op == 0:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1:  # truncate
            del data[rng.randrange(len(data)) :]
        else:  # insert junk
            at = rng.randrange(len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 40))
        out.append(bytes(data))
    return out


def test_mutated_krb_errors_only_raise_protocol_error() -> None:
    rng = random.Random(15)
    valid = k.encode_krb_error(6, "AD.EXAMPLE", WHEN, 5, "text")
    for data in _mutations(valid, rng, 1500):
        with contextlib.suppress(ProtocolError):
            k.decode_reply(data)


def test_mutated_smb_answers_only_raise_protocol_error() -> None:
    rng = random.Random(15)
    neg = s.encode_negotiate_response()[4:]
    token = encode_challenge(netbios_computer="A", netbios_domain="B", dns_computer="a.b",
                             dns_domain="b")  # fmt: skip
    head = bytearray(neg[:64])
    struct.pack_into("<HI", head, 12, 1, 0)  # SESSION_SETUP
    struct.pack_into("<I", head, 8, s.STATUS_MORE_PROCESSING_REQUIRED)
    setup = bytes(head) + struct.pack("<HHHH", 9, 0, 72, len(token)) + token
    for data in _mutations(neg, rng, 1500):
        with contextlib.suppress(ProtocolError):
            s.decode_negotiate(data)
    for data in _mutations(setup, rng, 1500):
        with contextlib.suppress(ProtocolError):
            s.decode_session_setup(data)
