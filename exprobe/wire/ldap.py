"""LDAPv3 messages (RFC 4511): encode the few requests a probe sends, decode any message.

BER comes from pyasn1's codec over impacket's RFC 4511 structures
(`impacket.ldap.ldapasn1`); nothing here hand-rolls BER except the framing, which a
codec cannot do for us: deciding, from the first bytes of a stream, how long the next
LDAPMessage is, and refusing absurd lengths before reading them.

Client side: `encode_bind`, `encode_rootdse_search`, `encode_starttls`, `encode_unbind`.
Server side (scripted peers, `exprobe listen`): `encode_bind_response`,
`encode_search_entry`, `encode_search_done`, `encode_extended_response`.
Both sides: `frame_length` / `bytes_needed` (framing) and `decode_message`, which turns
any bytes into an `LdapMessage` or raises `ProtocolError`, never anything else.

pyasn1 and impacket are imported inside the functions: they cost ~40 ms at start-up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exprobe.errors import ProtocolError

MAX_MESSAGE = 1 << 20
"""Largest LDAPMessage accepted by default (bytes, header included)."""

STARTTLS_OID = "1.3.6.1.4.1.1466.20037"
NOTICE_OF_DISCONNECTION_OID = "1.3.6.1.4.1.1466.20036"

ROOTDSE_ATTRIBUTES: tuple[str, ...] = (
    "namingContexts",
    "defaultNamingContext",
    "dnsHostName",
    "supportedLDAPVersion",
    "supportedSASLMechanisms",
    "supportedExtension",
    "vendorName",
    "vendorVersion",
    "subschemaSubentry",
    # Active Directory (MS-ADTS 3.1.1.3.2): a Global Catalog, its levels and its clock.
    "isGlobalCatalogReady",
    "domainFunctionality",
    "forestFunctionality",
    "domainControllerFunctionality",
    "serverName",
    "currentTime",
)

# RFC 4511 appendix A, plus the codes later RFCs registered (3909, 4370, 4528, 4533).
RESULT_NAMES: dict[int, str] = {
    0: "success",
    1: "operationsError",
    2: "protocolError",
    3: "timeLimitExceeded",
    4: "sizeLimitExceeded",
    5: "compareFalse",
    6: "compareTrue",
    7: "authMethodNotSupported",
    8: "strongerAuthRequired",
    10: "referral",
    11: "adminLimitExceeded",
    12: "unavailableCriticalExtension",
    13: "confidentialityRequired",
    14: "saslBindInProgress",
    16: "noSuchAttribute",
    17: "undefinedAttributeType",
    18: "inappropriateMatching",
    19: "constraintViolation",
    20: "attributeOrValueExists",
    21: "invalidAttributeSyntax",
    32: "noSuchObject",
    33: "aliasProblem",
    34: "invalidDNSyntax",
    36: "aliasDereferencingProblem",
    48: "inappropriateAuthentication",
    49: "invalidCredentials",
    50: "insufficientAccessRights",
    51: "busy",
    52: "unavailable",
    53: "unwillingToPerform",
    54: "loopDetect",
    64: "namingViolation",
    65: "objectClassViolation",
    66: "notAllowedOnNonLeaf",
    67: "notAllowedOnRDN",
    68: "entryAlreadyExists",
    69: "objectClassModsProhibited",
    71: "affectsMultipleDSAs",
    80: "other",
    118: "canceled",
    119: "noSuchOperation",
    120: "tooLate",
    121: "cannotCancel",
    122: "assertionFailed",
    123: "authorizationDenied",
    4096: "e-syncRefreshRequired",
}

# protocolOp alternatives that carry an LDAPResult (resultCode, matchedDN, diagnosticMessage).
RESULT_OPS = frozenset(
    {
        "bindResponse",
        "searchResDone",
        "modifyResponse",
        "addResponse",
        "delResponse",
        "modDNResponse",
        "compareResponse",
        "extendedResp",
    }
)

_MAX_ID = 2**31 - 1


def result_name(code: int) -> str:
    """The RFC name of an LDAP resultCode ("invalidCredentials"), or "unknown"."""
    return RESULT_NAMES.get(code, "unknown")


@dataclass(frozen=True, slots=True)
class Entry:
    """One SearchResultEntry: its DN and its attributes (values decoded as UTF-8)."""

    dn: str
    attributes: Mapping[str, tuple[str, ...]]

    def get(self, name: str) -> tuple[str, ...]:
        """Values of attribute `name`, matched case-insensitively (LDAP names are)."""
        low = name.lower()
        for key, values in self.attributes.items():
            if key.lower() == low:
                return values
        return ()


@dataclass(frozen=True, slots=True)
class LdapMessage:
    """One decoded LDAPMessage, request or response, reduced to what exprobe needs."""

    message_id: int
    op: str  # the RFC 4511 protocolOp name: "bindResponse", "searchResEntry", ...
    # LDAPResult (responses in RESULT_OPS)
    result_code: int | None = None
    matched_dn: str = ""
    diagnostic_message: str = ""
    referrals: tuple[str, ...] = ()
    # searchResEntry (one entry) / extendedResp, intermediateResponse
    entries: tuple[Entry, ...] = ()
    response_name: str | None = None
    # requests, for scripted servers: bind, search, extended
    version: int | None = None
    name: str = ""  # bind DN, or a search's baseObject
    auth: str | None = None  # "simple", "sasl", ...
    password: bytes | None = field(default=None, repr=False)
    server_sasl_creds: bytes | None = None  # bindResponse: a SASL mechanism's answer
    request_name: str | None = None
    attributes: tuple[str, ...] = ()

    @property
    def result_name(self) -> str | None:
        return None if self.result_code is None else result_name(self.result_code)

    @property
    def result_text(self) -> str:
        """`49 invalidCredentials`, the way exprobe reports a resultCode."""
        if self.result_code is None:
            return self.op
        return f"{self.result_code} {result_name(self.result_code)}"


# -- framing ----------------------------------------------------------------------------


def _header(buf: bytes, limit: int) -> tuple[int, int] | None:
    """(header length, content length) of the LDAPMessage starting `buf`; None: need more."""
    if not buf:
        return None
    if buf[0] != 0x30:
        raise ProtocolError(f"not an LDAP message: first byte 0x{buf[0]:02x}, expected 0x30")
    if len(buf) < 2:
        return None
    first = buf[1]
    if first < 0x80:
        return 2, first
    if first == 0x80:
        # RFC 4511 section 5.1: only the definite form of length encoding is used.
        raise ProtocolError("LDAP message with indefinite length (not allowed by RFC 4511)")
    count = first & 0x7F
    if count > 8:
        raise ProtocolError(f"LDAP message length field of {count} bytes")
    if len(buf) < 2 + count:
        return None
    length = int.from_bytes(buf[2 : 2 + count], "big")
    if 2 + count + length > limit:
        raise ProtocolError(f"LDAP message of {length} bytes announced (limit {limit})")
    return 2 + count, length


def frame_length(buf: bytes, limit: int = MAX_MESSAGE) -> int | None:
    """Length of the first complete LDAPMessage in `buf`, or None if more bytes are needed.

    Raises `ProtocolError` at once for a first byte that is not SEQUENCE, an indefinite
    length, or a length above `limit` (so a peer announcing 2 GiB costs nothing).
    """
    hdr = _header(buf, limit)
    if hdr is None:
        return None
    total = hdr[0] + hdr[1]
    return total if len(buf) >= total else None


def bytes_needed(buf: bytes, limit: int = MAX_MESSAGE) -> int:
    """How many more bytes to read before `buf` holds a complete message (0: it does).

    Never asks for bytes beyond the first message, so a reader can use exact reads.
    """
    if len(buf) < 2:
        _header(buf, limit)  # validates the first byte when there is one
        return 2 - len(buf)
    hdr = _header(buf, limit)
    if hdr is None:
        return 2 + (buf[1] & 0x7F) - len(buf)
    return max(0, hdr[0] + hdr[1] - len(buf))


# -- encoding ---------------------------------------------------------------------------


def _check_id(message_id: int) -> None:
    if not 0 <= message_id <= _MAX_ID:
        raise ValueError(f"LDAP message id {message_id} outside 0..2^31-1")


def _message(message_id: int, op: Any) -> bytes:
    from impacket.ldap import ldapasn1
    from pyasn1.codec.ber import encoder

    _check_id(message_id)
    msg = ldapasn1.LDAPMessage()
    msg["messageID"] = message_id
    msg["protocolOp"].setComponentByType(op.getTagSet(), op)
    return bytes(encoder.encode(msg))


def _utf8(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def encode_bind(
    message_id: int, *, version: int = 3, dn: str = "", password: str | bytes = b""
) -> bytes:
    """A simple BindRequest; anonymous when `dn` and `password` are empty (RFC 4513 5.1.1)."""
    from impacket.ldap import ldapasn1

    if not 1 <= version <= 127:
        raise ValueError(f"LDAP version {version} outside 1..127")
    req = ldapasn1.BindRequest()
    req["version"] = version
    req["name"] = _utf8(dn)
    req["authentication"]["simple"] = _utf8(password)
    return _message(message_id, req)


def encode_sasl_bind(
    message_id: int, mechanism: str, credentials: bytes | None = None, *, version: int = 3
) -> bytes:
    """A SASL BindRequest (RFC 4513 5.2): `mechanism` with optional `credentials`."""
    from impacket.ldap import ldapasn1

    req = ldapasn1.BindRequest()
    req["version"] = version
    req["name"] = b""
    sasl = req["authentication"]["sasl"]
    sasl["mechanism"] = _utf8(mechanism)
    if credentials is not None:
        sasl["credentials"] = credentials
    return _message(message_id, req)


def encode_search(
    message_id: int,
    base: str,
    *,
    scope: int = 0,
    present: str = "objectClass",
    attributes: Iterable[str] = (),
    size_limit: int = 0,
    time_limit: int = 0,
) -> bytes:
    """A SearchRequest with a presence filter `(present=*)`; scope 0 base, 1 one, 2 sub."""
    from impacket.ldap import ldapasn1

    if scope not in (0, 1, 2):
        raise ValueError(f"search scope {scope} is not 0, 1 or 2")
    req = ldapasn1.SearchRequest()
    req["baseObject"] = _utf8(base)
    req["scope"] = scope
    req["derefAliases"] = 0  # neverDerefAliases
    req["sizeLimit"] = size_limit
    req["timeLimit"] = time_limit
    req["typesOnly"] = False
    req["filter"]["present"] = _utf8(present)
    req["attributes"].setComponents(*(_utf8(a) for a in attributes))
    return _message(message_id, req)


def encode_rootdse_search(message_id: int, attributes: Iterable[str] = ROOTDSE_ATTRIBUTES) -> bytes:
    """The rootDSE read (RFC 4512 5.1): base "", scope base, filter (objectClass=*)."""
    return encode_search(message_id, "", scope=0, attributes=attributes, size_limit=1)


def encode_extended(message_id: int, oid: str, value: bytes | None = None) -> bytes:
    """An ExtendedRequest named by `oid`, with an optional value."""
    from impacket.ldap import ldapasn1

    req = ldapasn1.ExtendedRequest()
    req["requestName"] = oid.encode("ascii")
    if value is not None:
        req["requestValue"] = value
    return _message(message_id, req)


def encode_starttls(message_id: int) -> bytes:
    """The StartTLS extended request (RFC 4511 4.14.1, OID 1.3.6.1.4.1.1466.20037)."""
    return encode_extended(message_id, STARTTLS_OID)


def encode_unbind(message_id: int) -> bytes:
    """An UnbindRequest (RFC 4511 4.3): the polite goodbye; it has no response."""
    from impacket.ldap import ldapasn1

    return _message(message_id, ldapasn1.UnbindRequest(""))


# -- server side ------------------------------------------------------------------------


def _fill_result(op: Any, result_code: int, matched_dn: str, diagnostic: str) -> None:
    op["resultCode"] = result_code
    op["matchedDN"] = _utf8(matched_dn)
    op["diagnosticMessage"] = _utf8(diagnostic)


def encode_bind_response(
    message_id: int,
    result_code: int = 0,
    *,
    matched_dn: str = "",
    diagnostic: str = "",
    sasl_creds: bytes | None = None,
) -> bytes:
    """A BindResponse (server side), with serverSaslCreds when `sasl_creds` is given."""
    from impacket.ldap import ldapasn1

    op = ldapasn1.BindResponse()
    _fill_result(op, result_code, matched_dn, diagnostic)
    if sasl_creds is not None:
        op["serverSaslCreds"] = sasl_creds
    return _message(message_id, op)


def encode_search_entry(
    message_id: int, dn: str, attributes: Mapping[str, Iterable[str | bytes]]
) -> bytes:
    """A SearchResultEntry (server side)."""
    from impacket.ldap import ldapasn1

    op = ldapasn1.SearchResultEntry()
    op["objectName"] = _utf8(dn)
    for name, values in attributes.items():
        attr = ldapasn1.PartialAttribute()
        attr["type"] = _utf8(name)
        attr["vals"].setComponents(*(_utf8(v) for v in values))
        op["attributes"].append(attr)
    return _message(message_id, op)


def encode_search_done(
    message_id: int, result_code: int = 0, *, matched_dn: str = "", diagnostic: str = ""
) -> bytes:
    """A SearchResultDone (server side)."""
    from impacket.ldap import ldapasn1

    op = ldapasn1.SearchResultDone()
    _fill_result(op, result_code, matched_dn, diagnostic)
    return _message(message_id, op)


def encode_extended_response(
    message_id: int,
    result_code: int = 0,
    *,
    matched_dn: str = "",
    diagnostic: str = "",
    response_name: str | None = None,
    response_value: bytes | None = None,
) -> bytes:
    """An ExtendedResponse (server side); message id 0 + NOTICE_OF_DISCONNECTION_OID
    makes the unsolicited Notice of Disconnection (RFC 4511 4.4.1)."""
    from impacket.ldap import ldapasn1

    op = ldapasn1.ExtendedResponse()
    _fill_result(op, result_code, matched_dn, diagnostic)
    if response_name is not None:
        op["responseName"] = response_name.encode("ascii")
    if response_value is not None:
        op["responseValue"] = response_value
    return _message(message_id, op)


# -- decoding ---------------------------------------------------------------------------


def decode_message(data: bytes, limit: int = MAX_MESSAGE) -> LdapMessage:
    """Decode exactly one LDAPMessage.  Any malformed input raises `ProtocolError`."""
    hdr = _header(data, limit)
    if hdr is None or len(data) < hdr[0] + hdr[1]:
        raise ProtocolError(f"truncated LDAP message ({len(data)} bytes)")
    if len(data) > hdr[0] + hdr[1]:
        raise ProtocolError(f"{len(data) - hdr[0] - hdr[1]} bytes after the LDAP message")
    try:
        return _decode(data)
    except ProtocolError:
        raise
    except Exception as exc:
        # pyasn1 signals bad BER with its own errors, but a hostile message can also
        # surface as ValueError, TypeError or RecursionError from deep inside it: every
        # failure on untrusted bytes is the peer's protocol error, never our crash.
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ProtocolError(f"malformed LDAP message: {reason}") from exc


def _text(value: Any) -> str:
    return bytes(value).decode("utf-8", "replace")


def _decode(data: bytes) -> LdapMessage:
    from impacket.ldap import ldapasn1
    from pyasn1.codec.ber import decoder

    msg, rest = decoder.decode(data, asn1Spec=ldapasn1.LDAPMessage())
    if rest:
        raise ProtocolError(f"{len(rest)} bytes after the LDAP message")
    message_id = int(msg["messageID"])
    choice = msg["protocolOp"]
    op_name = str(choice.getName())
    op = choice.getComponent()
    out: dict[str, Any] = {}

    if op_name in RESULT_OPS:
        out["result_code"] = int(op["resultCode"])
        out["matched_dn"] = _text(op["matchedDN"])
        out["diagnostic_message"] = _text(op["diagnosticMessage"])
        if op["referral"].isValue:
            out["referrals"] = tuple(_text(u) for u in op["referral"])
    if op_name == "bindResponse" and op["serverSaslCreds"].isValue:
        out["server_sasl_creds"] = bytes(op["serverSaslCreds"])
    if op_name == "extendedResp" and op["responseName"].isValue:
        out["response_name"] = _text(op["responseName"])
    # Active Directory puts the responseName of a Notice of Disconnection at the
    # message level, outside the ExtendedResponse (impacket models that quirk).
    if "response_name" not in out and msg["responseName"].isValue:
        out["response_name"] = _text(msg["responseName"])

    if op_name == "searchResEntry":
        attrs: dict[str, tuple[str, ...]] = {}
        for attr in op["attributes"]:
            key = _text(attr["type"])
            attrs[key] = attrs.get(key, ()) + tuple(_text(v) for v in attr["vals"])
        out["entries"] = (Entry(_text(op["objectName"]), attrs),)
    elif op_name == "searchResRef":
        out["referrals"] = tuple(_text(u) for u in op)
    elif op_name == "intermediateResponse" and op["responseName"].isValue:
        out["response_name"] = _text(op["responseName"])
    elif op_name == "bindRequest":
        out["version"] = int(op["version"])
        out["name"] = _text(op["name"])
        auth = op["authentication"]
        out["auth"] = str(auth.getName())
        if out["auth"] == "simple":
            out["password"] = bytes(auth.getComponent())
    elif op_name == "searchRequest":
        out["name"] = _text(op["baseObject"])
        out["attributes"] = tuple(_text(a) for a in op["attributes"])
    elif op_name == "extendedReq":
        out["request_name"] = _text(op["requestName"])
    return LdapMessage(message_id, op_name, **out)
