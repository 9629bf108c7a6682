"""`imap`: greeting, CAPABILITY, optional STARTTLS, LOGOUT.

RFC 3501 (IMAP4rev1) and RFC 9051 (IMAP4rev2), RFC 2595 (STARTTLS); implicit TLS on
993 (RFC 8314).

Params: `tls` (none | starttls | implicit), `ntlm` (read the server's NTLM identity with
`AUTHENTICATE NTLM`, no credential; see _ntlm.py).

Steps: greeting, [capability] (skipped when the greeting carries `[CAPABILITY ...]`),
[starttls, tls-handshake, capability-tls], [ntlm], logout.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from exprobe.errors import ApplicationError, ProtocolError
from exprobe.net.stream import Stream
from exprobe.probes._ntlm import SaslReply, ntlm_step
from exprobe.probes._text import (
    first_line,
    goodbye,
    read_imap_tagged,
    require_starttls,
    tls_summary,
)
from exprobe.probes.base import Params, ProbeContext, register
from exprobe.wire.textproto import (
    MAX_REPLY_LINES,
    ImapResponse,
    imap_auth_mechanisms,
    imap_capabilities,
    parse_imap_response,
)


@dataclass(frozen=True, slots=True)
class ImapParams(Params):
    """`tls`: none, starttls or implicit; `ntlm`: read the NTLM identity."""

    ntlm: bool = False


@register(
    "imap",
    ImapParams,
    default_port=143,
    tls_ports={"implicit": 993},
    summary="IMAP4 greeting, CAPABILITY, optional STARTTLS (RFC 3501, 9051, 2595)",
    tls_capable=True,
)
async def imap(stream: Stream, params: ImapParams, ctx: ProbeContext) -> None:
    """* OK / * PREAUTH greeting, capabilities, [STARTTLS + CAPABILITY], LOGOUT."""
    tags = (f"A{n}" for n in itertools.count(1))
    ctx.step("greeting")
    line = await stream.read_line()
    ctx.facts["banner"] = first_line(line)
    greeting = parse_imap_response(line)
    if not greeting.untagged or greeting.kind not in ("OK", "PREAUTH", "BYE"):
        raise ProtocolError(f"not an IMAP greeting: {first_line(line, 80)!r}")
    if greeting.kind == "BYE":
        raise ApplicationError(f"server refused the connection: {greeting.describe()}")
    ctx.facts["preauth"] = greeting.kind == "PREAUTH"

    caps = imap_capabilities(greeting)
    ctx.facts["capabilities_source"] = "greeting" if caps is not None else "command"
    if caps is None:
        caps = await _capability(stream, ctx, "capability", next(tags))
    _record(ctx, caps, "capabilities")
    if params.tls != "implicit":
        ctx.facts["starttls_offered"] = "STARTTLS" in caps

    if params.tls == "starttls":
        ctx.step("starttls")
        if greeting.kind == "PREAUTH":
            raise ApplicationError(
                "the server pre-authenticated the connection (PREAUTH): STARTTLS is only "
                "allowed before authentication"
            )
        require_starttls(ctx, "STARTTLS" in caps)
        tag = next(tags)
        await stream.write_line(f"{tag} STARTTLS")
        _, done = await read_imap_tagged(stream, tag)
        _check_ok("STARTTLS", done)
        await ctx.start_tls(stream)
        # RFC 3501 §6.2.1: capabilities learned before TLS are void; ask again.
        caps = await _capability(stream, ctx, "capability-tls", next(tags))
        _record(ctx, caps, "capabilities_tls")

    if params.ntlm:
        tag = next(tags)
        await ntlm_step(stream, ctx, offered="NTLM" in imap_auth_mechanisms(caps),
                        command=f"{tag} AUTHENTICATE NTLM",
                        read=lambda: _sasl_reply(stream, tag))  # fmt: skip

    ctx.step("logout")
    tag = next(tags)
    await goodbye(stream, f"{tag} LOGOUT", lambda: read_imap_tagged(stream, tag, bye_ok=True))
    tls = ", STARTTLS ok" if params.tls == "starttls" else ""
    # The greeting without its (long) capability code reads better in one line.
    said = first_line(f"* {greeting.kind} {greeting.text}".rstrip())
    ctx.summary = f"{said} ({len(caps)} capabilities{tls}{tls_summary(ctx)})"


async def _capability(stream: Stream, ctx: ProbeContext, step: str, tag: str) -> list[str]:
    ctx.step(step)
    await stream.write_line(f"{tag} CAPABILITY")
    untagged, done = await read_imap_tagged(stream, tag)
    _check_ok("CAPABILITY", done)
    for resp in [*untagged, done]:
        caps = imap_capabilities(resp)
        if caps is not None:
            return caps
    raise ProtocolError("CAPABILITY completed without a capability list")


async def _sasl_reply(stream: Stream, tag: str) -> SaslReply:
    """A continuation (`+ ...`) or the tagged end of the AUTHENTICATE command."""
    for _ in range(MAX_REPLY_LINES):
        resp = parse_imap_response(await stream.read_line())
        if resp.tag == "+":
            return SaslReply(True, resp.text)
        if resp.tag == tag:
            return SaslReply(False, resp.describe())
        if resp.tag != "*":
            raise ProtocolError(f"response for an unknown tag: {resp.describe()}")
    raise ProtocolError(f"no answer to AUTHENTICATE after {MAX_REPLY_LINES} lines")


def _check_ok(command: str, done: ImapResponse) -> None:
    if done.kind != "OK":
        raise ApplicationError(f"{command} refused: {done.describe()}")


def _record(ctx: ProbeContext, caps: list[str], key: str) -> None:
    ctx.facts[key] = [first_line(c, 100) for c in caps]
    ctx.facts["auth_mechanisms"] = imap_auth_mechanisms(caps)
    ctx.facts["login_disabled"] = "LOGINDISABLED" in caps
