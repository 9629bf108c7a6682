"""`kerberos`: an AS-REQ for a principal that cannot exist; the KDC's KRB-ERROR proves a
live KDC and gives its realm and clock (RFC 4120, TCP 88).

Parameters:
    tls: only "none" (Kerberos over TCP has no TLS).
    realm: the realm to ask in; empty (the default) derives it from the target's name
        (dc1.ad.example.com -> AD.EXAMPLE.COM), or EXPROBE.INVALID for an address.

Steps:
    as-req     send an AS-REQ for a random principal `exprobe-<hex>` (no pre-authentication,
               no credential of any kind) and krbtgt/REALM
    krb-error  read the reply: a KRB-ERROR with any error code is success (the code is a
               fact); KDC_ERR_C_PRINCIPAL_UNKNOWN and KDC_ERR_PREAUTH_REQUIRED are the answers
               of a KDC for the realm; KDC_ERR_WRONG_REALM and the others are warned about.
               An AS-REP (the random name exists without pre-authentication) is success
               with a warning; anything else is protocol-error.

Facts: error_code, error_name, realm (the KDC's), realm_requested, server_time,
clock_skew_s (server minus this machine; a warning past 300 s), sname, e_text.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

from exprobe.errors import ProtocolError
from exprobe.net.stream import Stream
from exprobe.probes.base import Params, ProbeContext, register
from exprobe.wire.kerberos import (
    CLOCK_SKEW_LIMIT_S,
    RECORD_HEADER,
    decode_reply,
    encode_as_req,
    record_length,
)

FALLBACK_REALM = "EXPROBE.INVALID"
# What a KDC of the realm answers a nonexistent (or pre-auth-needing) client.
EXPECTED_ERRORS = {"KDC_ERR_C_PRINCIPAL_UNKNOWN", "KDC_ERR_PREAUTH_REQUIRED"}


@dataclass(frozen=True, slots=True)
class KerberosParams(Params):
    """Parameters of the `kerberos` probe (see the module docstring)."""

    realm: str = ""

    def __post_init__(self) -> None:
        Params.__post_init__(self)
        if self.tls != "none":
            raise ValueError(f'kerberos has no TLS: tls must be "none", not {self.tls!r}')
        if self.realm and (len(self.realm) > 255 or not self.realm.isprintable()):
            raise ValueError(f"realm {self.realm[:40]!r} is not a realm name")


def default_realm(name: str | None) -> str:
    """The realm a host name suggests: its domain part, upper-cased."""
    if not name:
        return FALLBACK_REALM
    try:
        ipaddress.ip_address(name.strip("[]"))
        return FALLBACK_REALM
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    return ".".join(labels[1:]).upper() if len(labels) > 2 else name.rstrip(".").upper()


@register(
    "kerberos",
    KerberosParams,
    default_port=88,
    summary="Kerberos KDC (RFC 4120): AS-REQ for a nonexistent principal, read the KRB-ERROR",
)
async def kerberos(stream: Stream, params: KerberosParams, ctx: ProbeContext) -> None:
    """AS-REQ for a random principal → KRB-ERROR: realm, error, server time, clock skew."""
    realm = params.realm or default_realm(ctx.check.server_name or ctx.check.target)
    client = f"exprobe-{secrets.token_hex(6)}"
    ctx.facts["realm_requested"] = realm

    ctx.step("as-req")
    await stream.write(
        encode_as_req(client, realm, secrets.randbits(31)),
        note=f"AS-REQ cname={client} realm={realm} sname=krbtgt/{realm} (no pre-auth)",
    )

    ctx.step("krb-error")
    length = record_length(await stream.read_exact(RECORD_HEADER))
    reply = decode_reply(await stream.read_exact(length))
    if reply.kind == "AS-REP":
        stream.transcript.add("S", f"AS-REP crealm={reply.realm}")
        ctx.facts["krb_message"] = "AS-REP"
        ctx.facts["realm"] = reply.realm
        ctx.warn(f"the KDC issued a ticket for the random principal {client} (no pre-auth)")
        ctx.summary = f"KDC for {reply.realm}: AS-REP for a random name"
        return
    err = reply.error
    if err is None:  # decode_reply gives a KRB-ERROR its error; this keeps mypy honest
        raise ProtocolError("KRB-ERROR without content")
    stream.transcript.add(
        "S",
        f"KRB-ERROR {err.error_code} {err.error_name} realm={err.realm} "
        f"stime={err.server_time.isoformat(timespec='seconds')}"
        + (f" e-text={err.e_text!r}" if err.e_text else ""),
    )
    facts = err.facts()
    ctx.facts.update(facts)
    skew = facts["clock_skew_s"]
    if abs(skew) > CLOCK_SKEW_LIMIT_S:
        ctx.warn(
            f"clock skew {skew:+.0f} s with the KDC: Kerberos fails past "
            f"{CLOCK_SKEW_LIMIT_S} s (KRB_AP_ERR_SKEW)"
        )
    if err.error_name not in EXPECTED_ERRORS:
        ctx.warn(f"the KDC answered {err.error_name}, not principal-unknown or pre-auth-required")
    if err.realm and err.realm.upper() != realm.upper():
        ctx.warn(f"the KDC answered for realm {err.realm}, asked for {realm}")
    ctx.summary = f"KDC for {err.realm}: {err.error_name}, clock skew {skew:+.1f} s"
