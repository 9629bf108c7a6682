"""exprobe.wire.cotp: RFC 1006 TPKT and ISO 8073 class 0 TPDUs: known vectors from the
lab (python-snap7's CC as tshark decoded it), bounds, TSAP syntax, round-trips, and
"any bytes → a TPDU or ProtocolError"."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exprobe.errors import ProtocolError
from exprobe.wire import cotp as c

# research/lab-notes.md: python-snap7's answer to a CR with TSAPs 0100 -> 0102, TPDU 1024
# (tshark: "CC TPDU src-ref: 0x0001 dst-ref: 0x002a").
LAB_CC = bytes.fromhex("0300001611d0002a000100c0010ac1020100c2020102")
# The CR that produced it (src-ref 0x002a, class 0), byte by byte per RFC 1006 / X.224.
LAB_CR = bytes.fromhex("0300001611e00000002a00c0010ac1020100c2020102")
# nmap's RDP-style CR answered by snap7 (lab notes, SF-Port102 fingerprint): no TSAPs.
NMAP_CC = b"\x03\x00\x00\x0e\t\xd0\x00\x00\x00\x01\x00\xc0\x01\n"


def test_lab_cc_vector() -> None:
    t = c.parse_tpkt(LAB_CC)
    assert (t.kind, t.dst_ref, t.src_ref, t.class_option) == ("CC", 0x002A, 0x0001, 0)
    assert t.tpdu_size == 1024
    assert t.calling_tsap == b"\x01\x00"
    assert t.called_tsap == b"\x01\x02"


def test_build_cr_matches_the_lab_cr() -> None:
    cr = c.build_cr(
        src_ref=0x002A, calling_tsap=b"\x01\x00", called_tsap=b"\x01\x02", tpdu_size=1024
    )
    assert cr == LAB_CR
    t = c.parse_tpkt(cr)
    assert (t.kind, t.dst_ref, t.src_ref, t.tpdu_size) == ("CR", 0, 0x002A, 1024)


def test_build_cc_reproduces_snap7_byte_for_byte() -> None:
    assert c.build_cc(c.parse_tpkt(LAB_CR), src_ref=0x0001) == LAB_CC


def test_nmap_cc_vector_without_tsaps() -> None:
    t = c.parse_tpkt(NMAP_CC)
    assert (t.kind, t.src_ref, t.tpdu_size, t.calling_tsap, t.called_tsap) == (
        "CC",
        1,
        1024,
        None,
        None,
    )


def test_dr_with_reason_and_info() -> None:
    data = c.build_dr(0x002A, 0x4578, 3, b"no MTA here")
    assert data == bytes.fromhex("030000181380002a457803e00b") + b"no MTA here"
    t = c.parse_tpkt(data)
    assert (t.kind, t.dst_ref, t.src_ref, t.reason) == ("DR", 0x002A, 0x4578, 3)
    assert t.reason_text == "address unknown"
    assert t.data == b"no MTA here"
    assert c.parse_tpkt(c.build_dr(1, 2)).reason_text.startswith("normal disconnect")
    assert c.dr_reason_text(0x99) == "unknown reason 0x99"


def test_er_with_cause() -> None:
    data = c.build_er(0x002A, 2, b"\xe0")
    assert data == bytes.fromhex("0300000c0770002a02c101e0")
    t = c.parse_tpkt(data)
    assert (t.kind, t.dst_ref, t.cause, t.reason_text) == ("ER", 0x002A, 2, "invalid TPDU type")
    assert t.params == {c.P_INVALID_TPDU: b"\xe0"}


def test_dt() -> None:
    data = c.build_dt(b"\x01\x02")
    assert data == bytes.fromhex("0300000902f0800102")
    t = c.parse_tpkt(data)
    assert (t.kind, t.eot, t.data) == ("DT", True, b"\x01\x02")
    assert c.parse_tpkt(c.build_dt(b"x", eot=False)).eot is False


def test_unknown_tpdu_code_is_reported_not_raised() -> None:
    t = c.parse_tpdu(bytes.fromhex("0230ff"))
    assert t.kind == "0x30"


def test_cc_without_size_and_with_bad_size() -> None:
    no_size = c.parse_tpdu(bytes.fromhex("06d0002a000100"))
    assert no_size.tpdu_size is None
    bad = c.parse_tpdu(bytes.fromhex("09d0002a000100c00120"))
    assert bad.tpdu_size is None
    assert bad.params[c.P_TPDU_SIZE] == b"\x20"


# -- bounds -----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 3, 4, 6])
def test_tpkt_lengths_below_seven_are_refused(length: int) -> None:
    header = bytes((3, 0)) + length.to_bytes(2, "big")
    with pytest.raises(ProtocolError, match=f"TPKT length {length} is too short"):
        c.tpkt_length(header)


def test_tpkt_length_bounds() -> None:
    assert c.tpkt_length(b"\x03\x00\x00\x07") == 7
    assert c.tpkt_length(b"\x03\x00\xff\xff") == 65535
    with pytest.raises(ProtocolError, match="version 2"):
        c.tpkt_length(b"\x02\x00\x00\x16")
    with pytest.raises(ProtocolError, match="truncated"):
        c.tpkt_length(b"\x03\x00")
    with pytest.raises(ValueError, match="exceeds 65535"):
        c.encode_tpkt(b"\x00" * 65532)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (LAB_CC[:-1], "announces 22 bytes, got 21"),
        (LAB_CC + b"\x00", "announces 22 bytes, got 23"),
        (bytes.fromhex("0300000700d000"), "length indicator 0"),
        (bytes.fromhex("03000007ffd000"), "length indicator 255"),
        (bytes.fromhex("0300000711d000"), "exceeds the TPKT"),  # LI 17, 3 bytes follow
        (bytes.fromhex("0300000803d00000"), "CC header too short"),
        (bytes.fromhex("0300000c07d0002a000100c0"), "truncated COTP parameter"),
        (bytes.fromhex("0300000d08d0002a000100c005"), "runs past the header"),
        (bytes.fromhex("0300000802700000"), "ER header too short"),
        (bytes.fromhex("0300000803800000"), "DR header too short"),
    ],
)
def test_malformed_tpkts(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        c.parse_tpkt(data)


def test_cc_length_indicator_cannot_exceed_the_tpkt() -> None:
    # A COTP header that claims more bytes than the TPKT carries ("less than the COTP
    # length") is refused rather than read beyond the frame.
    bad = bytearray(LAB_CC)
    bad[4] = 0x20
    with pytest.raises(ProtocolError, match="exceeds the TPKT"):
        c.parse_tpkt(bytes(bad))


# -- TSAPs and sizes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0x0100", b"\x01\x00"),
        ("0X0102", b"\x01\x02"),
        ("hex:0100", b"\x01\x00"),
        ("HEX:01:02", b"\x01\x02"),
        ("MTA1", b"MTA1"),
        ("0100", b"0100"),  # bare digits are text, as X.400 MTAs write them
        ("ascii:0x01", b"0x01"),
        ("", b""),
        (" MTA2 ", b"MTA2"),
    ],
)
def test_parse_tsap(text: str, value: bytes) -> None:
    assert c.parse_tsap(text) == value


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0x010", "even number of hex digits"),
        ("hex:zz", "even number of hex digits"),
        ("MTA\x1b[31m", "printable ASCII"),
        ("MTAé", "printable ASCII"),
        ("0x" + "00" * 33, "33 bytes, at most 32"),
    ],
)
def test_parse_tsap_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        c.parse_tsap(text)


def test_format_tsap() -> None:
    assert c.format_tsap(b"MTA1") == "MTA1"
    assert c.format_tsap(b"\x01\x00") == "0x0100"
    assert c.format_tsap(b"A B") == "0x412042"  # a space would not survive the text form
    assert c.format_tsap(b"") == "0x"


def test_size_codes() -> None:
    assert [c.size_code(s) for s in c.TPDU_SIZES] == list(range(7, 14))
    for bad in (0, 64, 1000, 16384):
        with pytest.raises(ValueError, match="power of two"):
            c.size_code(bad)


# -- round-trips and hostile bytes (hypothesis) -------------------------------------------

tsaps = st.binary(max_size=32)
refs = st.integers(min_value=0, max_value=0xFFFF)


@given(refs, tsaps, tsaps, st.sampled_from(c.TPDU_SIZES))
def test_cr_cc_round_trip(ref: int, calling: bytes, called: bytes, size: int) -> None:
    cr = c.parse_tpkt(
        c.build_cr(src_ref=ref, calling_tsap=calling, called_tsap=called, tpdu_size=size)
    )
    assert (cr.kind, cr.src_ref, cr.tpdu_size) == ("CR", ref, size)
    assert cr.calling_tsap == (calling or None)
    assert cr.called_tsap == (called or None)
    cc = c.parse_tpkt(c.build_cc(cr, src_ref=7))
    assert (cc.kind, cc.dst_ref, cc.src_ref, cc.tpdu_size) == ("CC", ref, 7, size)
    assert (cc.calling_tsap, cc.called_tsap) == (cr.calling_tsap, cr.called_tsap)


@given(refs, refs, st.integers(0, 255), st.binary(max_size=100))
def test_dr_round_trip(dst: int, src: int, reason: int, info: bytes) -> None:
    t = c.parse_tpkt(c.build_dr(dst, src, reason, info))
    assert (t.kind, t.dst_ref, t.src_ref, t.reason, t.data) == ("DR", dst, src, reason, info)


@given(st.text(max_size=40))
def test_parse_tsap_any_text(text: str) -> None:
    try:
        value = c.parse_tsap(text)
    except ValueError:
        return
    assert len(value) <= c.MAX_TSAP


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_any_bytes_parse_or_protocol_error(data: bytes) -> None:
    for func in (c.parse_tpkt, c.parse_tpdu):
        try:
            t = func(data)
        except ProtocolError:
            continue
        assert isinstance(t, c.Tpdu)
        assert isinstance(t.reason_text, str)
        _ = (t.tpdu_size, t.calling_tsap, t.called_tsap)
    framed = bytes((3, 0)) + (len(data) + 4).to_bytes(2, "big") + data
    with contextlib.suppress(ProtocolError):
        c.parse_tpkt(framed)


@given(st.binary(min_size=4, max_size=4))
def test_any_tpkt_header(header: bytes) -> None:
    try:
        n = c.tpkt_length(header)
    except ProtocolError:
        return
    assert 7 <= n <= 65535
