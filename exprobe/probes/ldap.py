"""`ldap`: bind, read the rootDSE, optionally StartTLS and a simple bind (RFC 4511, 4512, 4513).

Parameters:
    tls: "none", "starttls" (the StartTLS extended operation) or "implicit" (LDAPS, 636).
    bind_dn: a DN for an authenticated simple bind after the anonymous one (optional).
    password_env / password_file: where that bind's password comes from (exactly one);
        never the command line.  The password is sent only over TLS unless
        allow_plaintext is true, and never appears in facts, transcript or messages.
    allow_plaintext: permit the authenticated bind without TLS.
    version: 3 (falls back to 2 on protocolError) or 2.
    ntlm: after the rootDSE (and any bind), a SASL bind whose token is an NTLMSSP
        NEGOTIATE, to read the NTLM identity from the server's CHALLENGE (Active
        Directory; no credential is sent, the bind is abandoned at the challenge).

`ldap-gc` is the same probe for an Active Directory Global Catalog: 3268 plain, 3269
LDAPS (`--tls implicit`); it warns when the rootDSE is not a ready Global Catalog's.

Steps:
    bind       anonymous simple bind, LDAPv3; a protocolError answer is retried as LDAPv2
               on the same connection (Exchange 5.0's directory speaks only v2)
    rootdse    base "" / scope base / (objectClass=*) search for the rootDSE attributes
    starttls   (tls=starttls) the StartTLS extended operation, then `tls-handshake`
    auth-bind  (bind_dn) simple bind as bind_dn with the password
    ntlm       (ntlm) SASL bind (NTLM if the rootDSE lists it, else GSS-SPNEGO) with an
               NTLMSSP NEGOTIATE; the CHALLENGE in serverSaslCreds names the server
    unbind     UnbindRequest, the polite goodbye

A non-zero resultCode ends the check as application-error naming the code
("49 invalidCredentials"); anything that is not LDAP is a protocol-error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

from exprobe.errors import ApplicationError, ProbeError, ProtocolError
from exprobe.net.stream import Stream
from exprobe.probes.base import Params, ProbeContext, register
from exprobe.probes.smb import identity_facts
from exprobe.status import Status
from exprobe.wire.ldap import (
    NOTICE_OF_DISCONNECTION_OID,
    STARTTLS_OID,
    Entry,
    LdapMessage,
    bytes_needed,
    decode_message,
    encode_bind,
    encode_rootdse_search,
    encode_sasl_bind,
    encode_starttls,
    encode_unbind,
)
from exprobe.wire.ntlm import decode_challenge, negotiate_message

REDACTED = "<password redacted>"
# A rootDSE is a few KiB; pyasn1 needs ~10 ms per KiB of hostile tiny elements, so a
# small cap keeps a malicious server from pinning the event loop.
MAX_MESSAGE = 64 * 1024
MAX_SEARCH_MESSAGES = 8  # a base-scope search yields one entry, maybe references, a done
MAX_VALUES = 64  # values kept per rootDSE attribute
MAX_VALUE_CHARS = 256
MAX_DIAGNOSTIC = 200
MAX_PASSWORD_FILE = 4096

# rootDSE attribute -> fact name; single-valued ones keep only their first value.
_LIST_FACTS = {
    "namingContexts": "naming_contexts",
    "supportedLDAPVersion": "supported_ldap_versions",
    "supportedSASLMechanisms": "supported_sasl_mechanisms",
    "supportedExtension": "supported_extensions",
}
_SINGLE_FACTS = {
    "defaultNamingContext": "default_naming_context",
    "dnsHostName": "dns_host_name",
    "vendorName": "vendor_name",
    "vendorVersion": "vendor_version",
    "subschemaSubentry": "subschema_subentry",
    "serverName": "server_name",
}
# Active Directory's functional levels (MS-ADTS 6.1.4.4, msDS-Behavior-Version).
_LEVEL_FACTS = {
    "domainFunctionality": "domain_functionality",
    "forestFunctionality": "forest_functionality",
    "domainControllerFunctionality": "dc_functionality",
}
FUNCTIONAL_LEVELS = {
    0: "2000",
    1: "2003 interim",
    2: "2003",
    3: "2008",
    4: "2008 R2",
    5: "2012",
    6: "2012 R2",
    7: "2016",
    10: "2025",
}
CLOCK_SKEW_LIMIT_S = 300  # Kerberos to this DC fails past 5 minutes


@dataclass(frozen=True, slots=True)
class LdapParams(Params):
    """Parameters of the `ldap` probe (see the module docstring)."""

    bind_dn: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    allow_plaintext: bool = False
    version: int = 3
    ntlm: bool = False

    def __post_init__(self) -> None:
        Params.__post_init__(self)
        if self.version not in (2, 3):
            raise ValueError(f"version must be 2 or 3, not {self.version!r}")
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        has_secret = bool(self.password_env or self.password_file)
        if has_secret and not self.bind_dn:
            raise ValueError("password_env/password_file need bind_dn")
        if self.bind_dn and not has_secret:
            raise ValueError(
                "bind_dn needs password_env or password_file (a password is never "
                "taken from the command line)"
            )
        if self.bind_dn and self.tls == "none" and not self.allow_plaintext:
            raise ValueError(
                "bind_dn with tls=none would send the password in clear text: use "
                "tls=starttls or tls=implicit, or set allow_plaintext=true"
            )


class CredentialError(ProbeError):
    """The password could not be read locally: nothing was sent, the peer is not at fault."""

    status = Status.INTERNAL_ERROR


def read_password(params: LdapParams) -> str:
    """The bind password from the environment variable or file the params name."""
    if params.password_env:
        value = os.environ.get(params.password_env)
        if value is None:
            raise CredentialError(f"environment variable {params.password_env} is not set")
    else:
        path = params.password_file or ""
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_PASSWORD_FILE + 1)
        except OSError as exc:
            raise CredentialError(
                f"cannot read password file {path}: {exc.strerror or type(exc).__name__}"
            ) from None
        if len(raw) > MAX_PASSWORD_FILE:
            raise CredentialError(f"password file {path} is larger than {MAX_PASSWORD_FILE} bytes")
        value = raw.decode("utf-8", "replace")
        # Files written by `echo` end in a newline that is not part of the password.
        value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        # RFC 4513 5.1.2: a DN with an empty password is an *unauthenticated* bind,
        # which many servers accept without checking anything.
        raise CredentialError("the bind password is empty")
    return value


class _Conversation:
    """Message ids, bounded reads, transcript lines, and redaction of the password."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.last_id = 0
        self.secret: str | None = None

    def next_id(self) -> int:
        self.last_id += 1
        return self.last_id

    def redact(self, text: str) -> str:
        if self.secret and self.secret in text:
            return text.replace(self.secret, REDACTED)
        return text

    async def send(self, data: bytes, note: str) -> None:
        await self.stream.write(data, note=note)

    async def read(self) -> LdapMessage:
        buf = b""
        # tag + first length byte, the long-form length bytes, the content: 3 reads.
        for _ in range(4):
            need = bytes_needed(buf, MAX_MESSAGE)
            if need == 0:
                break
            buf += await self.stream.read_exact(need)
        try:
            msg = decode_message(buf, MAX_MESSAGE)
        except ProtocolError as exc:
            if self.secret and self.secret in exc.message:
                raise ProtocolError(self.redact(exc.message)) from None
            raise
        self.stream.transcript.add("S", self.redact(describe(msg)))
        return msg

    async def expect(self, message_id: int, ops: frozenset[str]) -> LdapMessage:
        msg = await self.read()
        if msg.message_id == 0 and msg.op == "extendedResp":
            # RFC 4511 4.4.1: an unsolicited Notice of Disconnection, then the server closes.
            what = "Notice of Disconnection"
            if msg.response_name not in (None, NOTICE_OF_DISCONNECTION_OID):
                what = f"unsolicited notification {msg.response_name}"
            raise ApplicationError(self.failure(f"server sent a {what}", msg))
        if msg.message_id != message_id:
            raise ProtocolError(
                f"answer to message {msg.message_id} ({msg.op}), expected {message_id}"
            )
        if msg.op not in ops:
            wanted = " or ".join(sorted(ops))
            raise ProtocolError(f"got {msg.op} to message {message_id}, expected {wanted}")
        return msg

    def failure(self, what: str, msg: LdapMessage) -> str:
        text = f"{what}: {msg.result_text}"
        diag = " ".join(msg.diagnostic_message.split())
        if diag:
            text += f": {self.redact(diag)[:MAX_DIAGNOSTIC]}"
        return text


def describe(msg: LdapMessage) -> str:
    """One transcript line for a message the server sent."""
    head = f"{msg.op}(id={msg.message_id})"
    if msg.result_code is not None:
        head += f" {msg.result_text}"
        diag = " ".join(msg.diagnostic_message.split())
        if diag:
            head += f": {diag[:MAX_DIAGNOSTIC]}"
    for entry in msg.entries:
        names = ", ".join(list(entry.attributes)[:12])
        head += f' dn="{entry.dn[:MAX_VALUE_CHARS]}" [{names}]'
    if msg.referrals:
        head += f" referrals: {', '.join(r[:100] for r in msg.referrals[:4])}"
    return head


def _clip(value: str) -> str:
    return value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "..."


def generalized_time(text: str) -> dt.datetime | None:
    """An LDAP GeneralizedTime ("20261204013426.0Z") as UTC; None if it is not one."""
    head = text.strip().removesuffix("Z").split(".")[0]
    try:
        return dt.datetime.strptime(head[:14], "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def rootdse_facts(entry: Entry, now: dt.datetime | None = None) -> dict[str, Any]:
    """Facts from a rootDSE entry, bounded in count and length: the generic ones, and
    Active Directory's (Global Catalog readiness, functional levels, clock skew)."""
    facts: dict[str, Any] = {}
    for attr, fact in _LIST_FACTS.items():
        values = entry.get(attr)
        if values:
            facts[fact] = [_clip(v) for v in values[:MAX_VALUES]]
    for attr, fact in _SINGLE_FACTS.items():
        values = entry.get(attr)
        if values:
            facts[fact] = _clip(values[0])
    facts["starttls_offered"] = STARTTLS_OID in entry.get("supportedExtension")
    ready = entry.get("isGlobalCatalogReady")
    if ready:
        facts["global_catalog_ready"] = ready[0].strip().upper() == "TRUE"
    for attr, fact in _LEVEL_FACTS.items():
        values = entry.get(attr)
        if values and values[0].strip().isdigit() and len(values[0].strip()) < 6:
            level = int(values[0])
            facts[fact] = level
            facts[fact + "_name"] = FUNCTIONAL_LEVELS.get(level, f"level {level}")
    current = entry.get("currentTime")
    if current:
        when = generalized_time(current[0])
        if when is not None:
            now = now or dt.datetime.now(dt.UTC)
            facts["server_time"] = when.isoformat(timespec="seconds")
            facts["clock_skew_s"] = round((when - now).total_seconds(), 1) + 0.0
    return facts


_BIND = frozenset({"bindResponse"})
_SEARCH = frozenset({"searchResEntry", "searchResRef", "searchResDone"})
_EXTENDED = frozenset({"extendedResp"})


@register(
    "ldap-gc",
    LdapParams,
    default_port=3268,
    tls_ports={"implicit": 3269},
    summary="Active Directory Global Catalog (LDAP 3268, LDAPS 3269): rootDSE readiness",
    tls_capable=True,
)
async def ldap_gc(stream: Stream, params: LdapParams, ctx: ProbeContext) -> None:
    """The `ldap` probe against a Global Catalog: warns unless isGlobalCatalogReady."""
    await ldap(stream, params, ctx)
    ready = ctx.facts.get("global_catalog_ready")
    if ready is None:
        ctx.warn("the rootDSE has no isGlobalCatalogReady: not an Active Directory GC")
    elif not ready:
        ctx.warn("isGlobalCatalogReady is FALSE: the GC has not finished its first sync")


@register(
    "ldap",
    LdapParams,
    default_port=389,
    tls_ports={"implicit": 636},
    summary="LDAP bind and rootDSE read (RFC 4511), StartTLS or LDAPS",
    tls_capable=True,
)
async def ldap(stream: Stream, params: LdapParams, ctx: ProbeContext) -> None:
    """Anonymous bind, rootDSE, optional StartTLS and simple bind, NTLM identity, unbind."""
    conv = _Conversation(stream)

    # 1. anonymous bind, with the LDAPv2 fallback
    ctx.step("bind")
    version = params.version
    reply = await _bind(conv, version)
    if reply.result_code == 2 and version == 3:
        ctx.facts["bind_v3_result"] = reply.result_text
        stream.note("protocolError to an LDAPv3 bind: retrying as LDAPv2 (Exchange 5.0)")
        version = 2
        reply = await _bind(conv, version)
    if reply.result_code != 0:
        raise ApplicationError(conv.failure(f"anonymous LDAPv{version} bind refused", reply))
    ctx.facts["ldap_version_used"] = version

    # 2. rootDSE
    ctx.step("rootdse")
    mid = conv.next_id()
    await conv.send(
        encode_rootdse_search(mid),
        f'searchRequest(id={mid}) base "" scope base (objectClass=*): rootDSE',
    )
    entry: Entry | None = None
    for _ in range(MAX_SEARCH_MESSAGES):
        reply = await conv.expect(mid, _SEARCH)
        if reply.op == "searchResEntry" and entry is None:
            entry = reply.entries[0]
        if reply.op == "searchResDone":
            break
    else:
        raise ProtocolError(f"no searchResDone after {MAX_SEARCH_MESSAGES} search messages")
    if reply.result_code != 0:
        if version == 3:
            raise ApplicationError(conv.failure("rootDSE search refused", reply))
        # The rootDSE is an LDAPv3 notion (RFC 4512 5.1): a v2 server may not have one.
        ctx.warn(f"no rootDSE over LDAPv2 ({reply.result_text})")
    if entry is not None:
        ctx.facts.update(rootdse_facts(entry))
        skew = ctx.facts.get("clock_skew_s")
        if skew is not None and abs(skew) > CLOCK_SKEW_LIMIT_S:
            ctx.warn(f"clock skew {skew:+.0f} s with the directory (Kerberos fails past 300 s)")
    elif reply.result_code == 0:
        ctx.warn("the server returned no rootDSE entry (access control?)")

    # 3. StartTLS
    if params.tls == "starttls":
        ctx.step("starttls")
        mid = conv.next_id()
        await conv.send(encode_starttls(mid), f"extendedReq(id={mid}) StartTLS {STARTTLS_OID}")
        reply = await conv.expect(mid, _EXTENDED)
        if reply.result_code != 0:
            what = "StartTLS refused"
            if entry is not None and not ctx.facts.get("starttls_offered"):
                what += " (the rootDSE does not list StartTLS)"
            raise ApplicationError(conv.failure(what, reply))
        await ctx.start_tls(stream)

    # 4. authenticated simple bind
    if params.bind_dn:
        ctx.step("auth-bind")
        conv.secret = read_password(params)
        if stream.tls_object is None and not params.allow_plaintext:
            # LdapParams refuses this combination; this guard keeps it true regardless.
            raise CredentialError("refusing to send the password without TLS")
        mid = conv.next_id()
        dn = params.bind_dn
        await conv.send(
            encode_bind(mid, version=version, dn=dn, password=conv.secret),
            f"bindRequest(id={mid}) LDAPv{version} simple dn={dn} password {REDACTED}",
        )
        reply = await conv.expect(mid, _BIND)
        if reply.result_code != 0:
            raise ApplicationError(conv.failure(f"bind as {dn} refused", reply))
        ctx.facts["bound_as"] = dn

    # 5. NTLM identity
    if params.ntlm:
        ctx.step("ntlm")
        await _ntlm(conv, ctx, version)

    # 6. goodbye
    ctx.step("unbind")
    mid = conv.next_id()
    # An unbind has no answer, and a server that already hung up changes nothing.
    with contextlib.suppress(OSError):
        await conv.send(encode_unbind(mid), f"unbindRequest(id={mid})")
    ctx.summary = _summary(ctx.facts, version, params)


async def _ntlm(conv: _Conversation, ctx: ProbeContext, version: int) -> None:
    """SASL bind with an NTLMSSP NEGOTIATE; the CHALLENGE's identity as facts.  A server
    that does not answer with a challenge is a warning, not a failure."""
    offered = ctx.facts.get("supported_sasl_mechanisms") or []
    if not ({"NTLM", "GSS-SPNEGO"} & set(offered)) and offered:
        ctx.facts["ntlm"] = {"offered": False}
        conv.stream.note("the rootDSE lists neither NTLM nor GSS-SPNEGO: nothing to ask")
        return
    # AD and Samba list NTLM and GSS-SPNEGO; both accept a bare NTLMSSP token.
    mech = "NTLM" if "NTLM" in offered else "GSS-SPNEGO"
    mid = conv.next_id()
    await conv.send(
        encode_sasl_bind(mid, mech, negotiate_message(), version=version),
        f"bindRequest(id={mid}) SASL {mech} NTLMSSP NEGOTIATE (no credentials)",
    )
    reply = await conv.expect(mid, _BIND)
    creds = reply.server_sasl_creds
    if reply.result_code != 14 or not creds:
        said = conv.failure(f"SASL {mech} bind", reply)[:120]
        ctx.facts["ntlm"] = {"offered": True, "mechanism": mech, "refused": said}
        ctx.warn(f"NTLM is offered but the exchange was refused: {said}")
        return
    ntlm = identity_facts(decode_challenge(creds))
    ctx.facts["ntlm"] = {**ntlm, "mechanism": mech}


async def _bind(conv: _Conversation, version: int) -> LdapMessage:
    mid = conv.next_id()
    await conv.send(
        encode_bind(mid, version=version), f"bindRequest(id={mid}) LDAPv{version} anonymous"
    )
    return await conv.expect(mid, _BIND)


def _summary(facts: dict[str, Any], version: int, params: LdapParams) -> str:
    parts = [f"LDAPv{version}"]
    contexts = facts.get("naming_contexts") or []
    if contexts:
        parts.append(", ".join(contexts[:3]) + (" ..." if len(contexts) > 3 else ""))
    if facts.get("vendor_name"):
        parts.append(str(facts["vendor_name"]))
    if facts.get("dns_host_name"):
        parts.append(str(facts["dns_host_name"]))
    if "global_catalog_ready" in facts:
        parts.append("GC ready" if facts["global_catalog_ready"] else "GC not ready")
    if params.tls == "starttls":
        parts.append(f"StartTLS {facts.get('tls_version', '')}".strip())
    elif params.tls == "implicit":
        parts.append(f"LDAPS {facts.get('tls_version', '')}".strip())
    elif facts.get("starttls_offered"):
        parts.append("StartTLS offered")
    if facts.get("bound_as"):
        parts.append(f"bound as {facts['bound_as']}")
    return "; ".join(parts)
