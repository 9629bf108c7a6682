"""exprobe.wire.ldap: known byte vectors, a cross-check against ldap3's own RFC 4511
schema, framing bounds, round-trips, and "any bytes → a message or ProtocolError"."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exprobe.errors import ProtocolError
from exprobe.wire import ldap as w

# Well-known encodings (what ldapsearch sends; RFC 4511 BER, definite lengths).
ANON_BIND_V3_ID1 = bytes.fromhex("300c020101600702010304008000")
STARTTLS_ID1 = bytes.fromhex("301d02010177188016") + b"1.3.6.1.4.1.1466.20037"
UNBIND_ID3 = bytes.fromhex("30050201034200")
BIND_OK_ID1 = bytes.fromhex("300c02010161070a010004000400")
# searchResEntry id 2, dn "", namingContexts: dc=lab,dc=test, as ldap3 encodes it.
ENTRY_ID2 = bytes.fromhex(
    "302d0201026428040030243022040e6e616d696e67436f6e74657874733110040e64633d6c61622c64633d74657374"
)


def ldap3_schema() -> Any:
    """ldap3's independent RFC 4511 ASN.1 classes (its import warns under pyasn1 0.6)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ldap3.protocol import rfc4511

    return rfc4511


def ldap3_decode(data: bytes) -> Any:
    from pyasn1.codec.ber import decoder

    msg, rest = decoder.decode(data, asn1Spec=ldap3_schema().LDAPMessage())
    assert rest == b""
    return msg


# -- known vectors ---------------------------------------------------------------------


def test_anonymous_bind_is_the_well_known_encoding() -> None:
    assert w.encode_bind(1) == ANON_BIND_V3_ID1


def test_starttls_and_unbind_vectors() -> None:
    assert w.encode_starttls(1) == STARTTLS_ID1
    assert w.encode_unbind(3) == UNBIND_ID3


def test_server_side_vectors() -> None:
    assert w.encode_bind_response(1) == BIND_OK_ID1
    assert w.encode_search_entry(2, "", {"namingContexts": ["dc=lab,dc=test"]}) == ENTRY_ID2


def test_decode_known_bind_response() -> None:
    msg = w.decode_message(BIND_OK_ID1)
    assert (msg.message_id, msg.op, msg.result_code, msg.result_name) == (
        1,
        "bindResponse",
        0,
        "success",
    )
    assert msg.result_text == "0 success"


def test_decode_known_entry() -> None:
    msg = w.decode_message(ENTRY_ID2)
    assert msg.op == "searchResEntry"
    assert msg.result_code is None
    (entry,) = msg.entries
    assert entry.dn == ""
    assert entry.attributes == {"namingContexts": ("dc=lab,dc=test",)}
    assert entry.get("NAMINGCONTEXTS") == ("dc=lab,dc=test",)
    assert entry.get("vendorName") == ()


def test_result_names() -> None:
    assert w.result_name(49) == "invalidCredentials"
    assert w.result_name(2) == "protocolError"
    assert w.result_name(52) == "unavailable"
    assert w.result_name(9999) == "unknown"
    msg = w.decode_message(w.encode_bind_response(5, 49, diagnostic="AcceptSecurityContext"))
    assert msg.result_text == "49 invalidCredentials"
    assert msg.diagnostic_message == "AcceptSecurityContext"


# -- cross-check against ldap3's schema --------------------------------------------------


def test_requests_decode_with_ldap3_schema() -> None:
    bind = ldap3_decode(w.encode_bind(7, version=2, dn="uid=x,dc=y", password="pw"))
    assert int(bind["messageID"]) == 7
    req = bind["protocolOp"]["bindRequest"]
    assert int(req["version"]) == 2
    assert bytes(req["name"]) == b"uid=x,dc=y"
    assert bytes(req["authentication"]["simple"]) == b"pw"

    search = ldap3_decode(w.encode_rootdse_search(2))["protocolOp"]["searchRequest"]
    assert bytes(search["baseObject"]) == b""
    assert int(search["scope"]) == 0
    assert search["filter"].getName() == "present"
    assert bytes(search["filter"]["present"]) == b"objectClass"
    assert tuple(bytes(a).decode() for a in search["attributes"]) == w.ROOTDSE_ATTRIBUTES

    ext = ldap3_decode(w.encode_starttls(3))["protocolOp"]["extendedReq"]
    assert bytes(ext["requestName"]) == w.STARTTLS_OID.encode()


def test_ldap3_encoded_bind_request_decodes() -> None:
    from pyasn1.codec.ber import encoder

    r = ldap3_schema()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ldap3.operation.bind import bind_operation

    op = r.ProtocolOp()
    op["bindRequest"] = bind_operation(3, "SIMPLE", "cn=admin,dc=lab,dc=test", "labadmin")
    m = r.LDAPMessage()
    m["messageID"] = r.MessageID(9)
    m["protocolOp"] = op
    msg = w.decode_message(bytes(encoder.encode(m)))
    assert (msg.op, msg.message_id, msg.version, msg.name, msg.auth) == (
        "bindRequest",
        9,
        3,
        "cn=admin,dc=lab,dc=test",
        "simple",
    )
    assert msg.password == b"labadmin"
    assert "labadmin" not in repr(msg)  # the decoded password stays out of reprs


def test_notice_of_disconnection_round_trip() -> None:
    data = w.encode_extended_response(
        0, 2, diagnostic="bye", response_name=w.NOTICE_OF_DISCONNECTION_OID
    )
    msg = w.decode_message(data)
    assert (msg.message_id, msg.op, msg.result_code, msg.response_name) == (
        0,
        "extendedResp",
        2,
        w.NOTICE_OF_DISCONNECTION_OID,
    )


# -- framing ----------------------------------------------------------------------------


def test_frame_length_needs_more_then_complete() -> None:
    data = ANON_BIND_V3_ID1
    assert w.frame_length(b"") is None
    assert w.frame_length(data[:1]) is None
    assert w.frame_length(data[:5]) is None
    assert w.frame_length(data) == len(data)
    assert w.frame_length(data + b"\x30\x00") == len(data)


def test_bytes_needed_walks_a_long_form_header() -> None:
    entry = w.encode_search_entry(1, "", {"x": ["y" * 300]})
    assert entry[1] == 0x82  # two length bytes follow
    assert w.bytes_needed(b"") == 2
    assert w.bytes_needed(entry[:1]) == 1
    assert w.bytes_needed(entry[:2]) == 2
    assert w.bytes_needed(entry[:4]) == len(entry) - 4
    assert w.bytes_needed(entry) == 0
    assert w.bytes_needed(entry + b"\x30") == 0


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x30\x84\x80\x00\x00\x00", "2147483648 bytes"),  # 2^31
        (b"\x30\x84\xff\xff\xff\xff", "limit"),
        (b"\x30\x83\x10\x00\x01", "limit"),  # 1 MiB + 1 content byte
        (b"\x30\x80", "indefinite"),
        (b"\x30\x89\x01\x00\x00\x00\x00\x00\x00\x00\x00", "length field of 9 bytes"),
        (b"HTTP/1.1 400", "first byte 0x48"),
        (b"\x02\x01\x01", "first byte 0x02"),
    ],
)
def test_absurd_frames_are_refused_before_reading(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        w.frame_length(data)
    with pytest.raises(ProtocolError, match=reason):
        w.bytes_needed(data)


def test_limit_is_a_parameter() -> None:
    data = w.encode_search_entry(1, "", {"x": ["y" * 300]})
    assert w.frame_length(data, limit=len(data)) == len(data)
    with pytest.raises(ProtocolError, match="limit"):
        w.frame_length(data, limit=len(data) - 1)
    with pytest.raises(ProtocolError, match="limit"):
        w.decode_message(data, limit=len(data) - 1)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (ANON_BIND_V3_ID1[:-1], "truncated"),
        (ANON_BIND_V3_ID1 + b"\x00", "bytes after"),
        (bytes.fromhex("3000"), "malformed"),
        (bytes.fromhex("3003020101"), "malformed"),  # id only, no protocolOp
        (bytes.fromhex("30050201017f00"), "malformed"),  # unknown protocolOp tag
    ],
)
def test_malformed_messages(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        w.decode_message(data)


def test_encoder_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="message id"):
        w.encode_bind(-1)
    with pytest.raises(ValueError, match="message id"):
        w.encode_unbind(2**31)
    with pytest.raises(ValueError, match="version"):
        w.encode_bind(1, version=0)
    with pytest.raises(ValueError, match="scope"):
        w.encode_search(1, "", scope=3)


# -- round-trips (hypothesis) -----------------------------------------------------------

ids = st.integers(min_value=0, max_value=2**31 - 1)
texts = st.text(max_size=40)
codes = st.sampled_from(sorted(w.RESULT_NAMES)) | st.integers(min_value=0, max_value=5000)


@given(ids, st.sampled_from([2, 3]), texts, st.binary(max_size=40))
def test_bind_round_trip(mid: int, version: int, dn: str, password: bytes) -> None:
    msg = w.decode_message(w.encode_bind(mid, version=version, dn=dn, password=password))
    assert (msg.op, msg.message_id, msg.version, msg.name, msg.auth, msg.password) == (
        "bindRequest",
        mid,
        version,
        dn,
        "simple",
        password,
    )


@given(ids, st.lists(st.text(min_size=1, max_size=20), max_size=5), texts)
def test_search_round_trip(mid: int, attrs: list[str], base: str) -> None:
    msg = w.decode_message(w.encode_search(mid, base, attributes=attrs))
    assert (msg.op, msg.message_id, msg.name, msg.attributes) == (
        "searchRequest",
        mid,
        base,
        tuple(attrs),
    )


@given(ids, codes, texts, texts)
def test_result_round_trips(mid: int, code: int, dn: str, diag: str) -> None:
    for encode, op in (
        (w.encode_bind_response, "bindResponse"),
        (w.encode_search_done, "searchResDone"),
        (w.encode_extended_response, "extendedResp"),
    ):
        msg = w.decode_message(encode(mid, code, matched_dn=dn, diagnostic=diag))
        assert (msg.op, msg.message_id, msg.result_code, msg.matched_dn) == (op, mid, code, dn)
        assert msg.diagnostic_message == diag


@given(
    ids,
    texts,
    st.dictionaries(
        st.text(min_size=1, max_size=12),
        st.lists(st.text(max_size=20), min_size=1, max_size=4),
        max_size=5,
    ),
)
def test_entry_round_trip(mid: int, dn: str, attrs: dict[str, list[str]]) -> None:
    msg = w.decode_message(w.encode_search_entry(mid, dn, attrs))
    (entry,) = msg.entries
    assert entry.dn == dn
    # BER SET OF: the encoder sorts values, so compare as multisets.
    assert {k: sorted(v) for k, v in entry.attributes.items()} == {
        k: sorted(v) for k, v in attrs.items()
    }


# -- hostile bytes ----------------------------------------------------------------------

VALID = [
    ANON_BIND_V3_ID1,
    BIND_OK_ID1,
    ENTRY_ID2,
    STARTTLS_ID1,
    UNBIND_ID3,
    w.encode_rootdse_search(2),
    w.encode_search_done(2, 32, diagnostic="no such object"),
    w.encode_extended_response(3, 0, response_name=w.STARTTLS_OID),
]


def _outcome(data: bytes) -> None:
    try:
        msg = w.decode_message(data)
    except ProtocolError:
        return
    assert isinstance(msg, w.LdapMessage)
    assert isinstance(msg.op, str)


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_protocol_error(data: bytes) -> None:
    _outcome(data)
    _outcome(b"\x30" + bytes([len(data) & 0x7F]) + data[:127])
    try:
        n = w.frame_length(data)
        assert n is None or 2 <= n <= len(data)
        assert w.bytes_needed(data) >= 0
    except ProtocolError:
        pass


@settings(max_examples=400)
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_messages_decode_or_protocol_error(
    data: bytes, flips: list[tuple[int, int]]
) -> None:
    buf = bytearray(data)
    for pos, value in flips:
        buf[pos % len(buf)] = value
    _outcome(bytes(buf))


def test_deep_nesting_is_a_protocol_error() -> None:
    body = b"\x30\x80" * 20000  # indefinite-length SEQUENCEs nested beyond any recursion limit
    data = b"\x30\x83" + len(body).to_bytes(3, "big") + body
    with pytest.raises(ProtocolError):
        w.decode_message(data)
