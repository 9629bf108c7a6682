"""Kerberos AS-REQ and KRB-ERROR over TCP (RFC 4120 5.4.1, 5.9.1, 7.2.2): enough to ask a
KDC about a principal that cannot exist and read what its refusal says.

A KDC answers an AS-REQ for an unknown client with a KRB-ERROR (KDC_ERR_C_PRINCIPAL_UNKNOWN;
an existing one that needs pre-authentication gives KDC_ERR_PREAUTH_REQUIRED).  Either
proves a live KDC, and the error carries the KDC's realm and its clock (stime, susec):
Kerberos fails when the clocks differ by more than 5 minutes.

impacket's Kerberos ASN.1 (`impacket.krb5.asn1`, pyasn1) is the codec; every failure
on untrusted bytes becomes `ProtocolError`.  Over TCP each message is preceded by a
4-byte big-endian length whose top bit is reserved (RFC 4120 7.2.2).

Client side: `encode_as_req(...)`, `record_length(header)`, `decode_reply(data)`.
Server side (scripted peers): `encode_krb_error(...)`.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass
from typing import Any

from exprobe.errors import ProtocolError

RECORD_HEADER = 4
MAX_REPLY = 64 * 1024
"""Largest reply accepted (bytes); a KRB-ERROR is a few hundred, an AS-REP a few KiB."""
MAX_TEXT = 200
CLOCK_SKEW_LIMIT_S = 300  # RFC 4120 1.2 / Windows' default "maximum tolerance": 5 minutes

# APPLICATION tags of the messages a KDC may answer an AS-REQ with.
_AS_REP_TAG = 0x6B  # [APPLICATION 11]
_KRB_ERROR_TAG = 0x7E  # [APPLICATION 30]


@dataclass(frozen=True, slots=True)
class KrbError:
    """What a KRB-ERROR says."""

    error_code: int
    realm: str
    server_time: dt.datetime
    sname: str = ""
    e_text: str = ""

    @property
    def error_name(self) -> str:
        return error_name(self.error_code)

    def facts(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """Report facts: the error named, the realm, the server's time and the clock skew
        in seconds (server minus this machine)."""
        now = now or dt.datetime.now(dt.UTC)
        out: dict[str, Any] = {
            "krb_message": "KRB-ERROR",
            "error_code": self.error_code,
            "error_name": self.error_name,
            "realm": self.realm,
            "server_time": self.server_time.isoformat(timespec="seconds"),
            "clock_skew_s": round((self.server_time - now).total_seconds(), 1) + 0.0,
        }
        if self.sname:
            out["sname"] = self.sname
        if self.e_text:
            out["e_text"] = self.e_text
        return out


@dataclass(frozen=True, slots=True)
class KdcReply:
    """A decoded reply to an AS-REQ: a KRB-ERROR, or (for a principal that exists without
    pre-authentication) an AS-REP, of which only the realm is read."""

    kind: str  # "KRB-ERROR" or "AS-REP"
    error: KrbError | None = None
    realm: str = ""


def error_name(code: int) -> str:
    """RFC 4120 7.5.9's name of an error code ("KDC_ERR_C_PRINCIPAL_UNKNOWN"), or
    "error N" for a code it does not list."""
    from impacket.krb5 import constants

    try:
        return str(constants.ErrorCodes(code).name)
    except ValueError:
        return f"error {code}"


def record_length(header: bytes) -> int:
    """The length a 4-byte TCP record mark announces; ProtocolError if the reserved bit is
    set (RFC 4120 7.2.2: the KDC must not) or it is zero or over MAX_REPLY."""
    if len(header) != RECORD_HEADER:
        raise ProtocolError(f"truncated Kerberos record mark ({len(header)} bytes)")
    (length,) = struct.unpack(">I", header)
    if length & 0x80000000:
        raise ProtocolError(f"Kerberos record mark with the reserved bit set (0x{length:08x})")
    if length == 0:
        raise ProtocolError("empty Kerberos record")
    if length > MAX_REPLY:
        raise ProtocolError(f"Kerberos record of {length} bytes (limit {MAX_REPLY})")
    return int(length)


def frame(message: bytes) -> bytes:
    """`message` with its TCP record mark."""
    return struct.pack(">I", len(message)) + message


def encode_as_req(client: str, realm: str, nonce: int, now: dt.datetime | None = None) -> bytes:
    """An AS-REQ (with its record mark) for `client`@`realm` and krbtgt/`realm`, no
    pre-authentication, the usual AES and RC4 etypes."""
    from impacket.krb5 import constants
    from impacket.krb5.asn1 import AS_REQ, seq_set, seq_set_iter
    from impacket.krb5.types import KerberosTime, Principal
    from pyasn1.codec.der import encoder

    now = now or dt.datetime.now(dt.UTC)
    req = AS_REQ()
    req["pvno"] = 5
    req["msg-type"] = int(constants.ApplicationTagNumbers.AS_REQ.value)
    body = seq_set(req, "req-body")
    body["kdc-options"] = constants.encodeFlags(
        [constants.KDCOptions.forwardable.value, constants.KDCOptions.renewable.value]
    )
    nt_principal = constants.PrincipalNameType.NT_PRINCIPAL.value
    nt_srv_inst = constants.PrincipalNameType.NT_SRV_INST.value
    seq_set(body, "cname", Principal(client, type=nt_principal).components_to_asn1)
    seq_set(body, "sname", Principal(f"krbtgt/{realm}", type=nt_srv_inst).components_to_asn1)
    body["realm"] = realm
    body["till"] = KerberosTime.to_asn1(now + dt.timedelta(days=1))
    body["rtime"] = KerberosTime.to_asn1(now + dt.timedelta(days=1))
    body["nonce"] = nonce & 0x7FFFFFFF
    etypes = (
        constants.EncryptionTypes.aes256_cts_hmac_sha1_96.value,
        constants.EncryptionTypes.aes128_cts_hmac_sha1_96.value,
        constants.EncryptionTypes.rc4_hmac.value,
    )
    seq_set_iter(body, "etype", tuple(int(e) for e in etypes))
    return frame(bytes(encoder.encode(req)))


def decode_reply(data: bytes) -> KdcReply:
    """Decode one reply (without its record mark); ProtocolError on anything malformed or
    anything that is not a KRB-ERROR or AS-REP."""
    if len(data) > MAX_REPLY:
        raise ProtocolError(f"Kerberos reply of {len(data)} bytes (limit {MAX_REPLY})")
    if not data:
        raise ProtocolError("empty Kerberos reply")
    tag = data[0]
    if tag not in (_KRB_ERROR_TAG, _AS_REP_TAG):
        raise ProtocolError(f"not a KRB-ERROR or AS-REP (first byte 0x{tag:02x})")
    try:
        return _decode(data, tag)
    except ProtocolError:
        raise
    except Exception as exc:
        # pyasn1 signals bad DER with its own errors, but hostile bytes also surface as
        # ValueError, TypeError, IndexError or RecursionError: all the peer's fault.
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ProtocolError(f"malformed Kerberos reply: {reason}") from exc


def _text(value: Any) -> str:
    text = str(value) if value is not None and value.hasValue() else ""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:MAX_TEXT]


def _decode(data: bytes, tag: int) -> KdcReply:
    from impacket.krb5.asn1 import AS_REP, KRB_ERROR
    from pyasn1.codec.der import decoder

    if tag == _AS_REP_TAG:
        rep, rest = decoder.decode(data, asn1Spec=AS_REP())
        if rest:
            raise ProtocolError(f"{len(rest)} bytes after the AS-REP")
        return KdcReply("AS-REP", realm=_text(rep["crealm"]))
    err, rest = decoder.decode(data, asn1Spec=KRB_ERROR())
    if rest:
        raise ProtocolError(f"{len(rest)} bytes after the KRB-ERROR")
    if int(err["pvno"]) != 5 or int(err["msg-type"]) != 30:
        raise ProtocolError(f"KRB-ERROR with pvno {err['pvno']} and msg-type {err['msg-type']}")
    stime = _kerberos_time(str(err["stime"]))
    usec = int(err["susec"])
    if not 0 <= usec <= 999_999:
        raise ProtocolError(f"KRB-ERROR susec {usec} out of range")
    sname = ""
    if err["sname"].hasValue():
        sname = "/".join(_text(c) for c in list(err["sname"]["name-string"])[:4])[:MAX_TEXT]
    return KdcReply(
        "KRB-ERROR",
        error=KrbError(
            error_code=int(err["error-code"]),
            realm=_text(err["realm"]),
            server_time=stime + dt.timedelta(microseconds=usec),
            sname=sname,
            e_text=_text(err["e-text"]),
        ),
    )


def _kerberos_time(text: str) -> dt.datetime:
    """KerberosTime is GeneralizedTime "YYYYMMDDHHMMSSZ" (RFC 4120 5.2.3)."""
    try:
        return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ProtocolError(f"KRB-ERROR stime {text[:40]!r} is not a KerberosTime") from None


def encode_krb_error(
    error_code: int, realm: str, stime: dt.datetime, susec: int = 0, e_text: str = ""
) -> bytes:
    """A KRB-ERROR (without record mark), as a scripted KDC would send it."""
    from impacket.krb5 import constants
    from impacket.krb5.asn1 import KRB_ERROR, seq_set
    from impacket.krb5.types import KerberosTime, Principal
    from pyasn1.codec.der import encoder

    err = KRB_ERROR()
    err["pvno"] = 5
    err["msg-type"] = int(constants.ApplicationTagNumbers.KRB_ERROR.value)
    err["stime"] = KerberosTime.to_asn1(stime)
    err["susec"] = susec
    err["error-code"] = error_code
    err["realm"] = realm
    nt_srv_inst = constants.PrincipalNameType.NT_SRV_INST.value
    seq_set(err, "sname", Principal(f"krbtgt/{realm}", type=nt_srv_inst).components_to_asn1)
    if e_text:
        err["e-text"] = e_text
    return bytes(encoder.encode(err))
