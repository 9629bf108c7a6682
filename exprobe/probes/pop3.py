"""`pop3`: greeting, CAPA, optional STLS, QUIT.

RFC 1939 (POP3, APOP), RFC 2449 (CAPA), RFC 2595 (STLS); implicit TLS on 995 (RFC 8314).

Params: `tls` (none | starttls | implicit).  With `starttls` the probe sends STLS.
`ntlm`: read the server's NTLM identity with `AUTH NTLM` (RFC 5034), no credential.

Steps: greeting, capa, [starttls, tls-handshake, capa-tls], [ntlm], quit.  A server without
CAPA (RFC 1939 only) answers it with -ERR: that is a fact, not a failure.
"""

from __future__ import annotations

from dataclasses import dataclass

from exprobe.errors import ApplicationError
from exprobe.net.stream import Stream
from exprobe.probes._ntlm import SaslReply, ntlm_step
from exprobe.probes._text import first_line, goodbye, read_dot_block, require_starttls, tls_summary
from exprobe.probes.base import Params, ProbeContext, register
from exprobe.wire.textproto import apop_timestamp, parse_capability_lines, parse_pop3_status


@dataclass(frozen=True, slots=True)
class Pop3Params(Params):
    """`tls`: none, starttls (STLS) or implicit; `ntlm`: read the NTLM identity."""

    ntlm: bool = False


@register(
    "pop3",
    Pop3Params,
    default_port=110,
    tls_ports={"implicit": 995},
    summary="POP3 greeting, CAPA, optional STLS (RFC 1939, 2449, 2595)",
    tls_capable=True,
)
async def pop3(stream: Stream, params: Pop3Params, ctx: ProbeContext) -> None:
    """+OK greeting (APOP timestamp), CAPA, [STLS + CAPA], QUIT."""
    ctx.step("greeting")
    line = await stream.read_line()
    ctx.facts["banner"] = first_line(line)
    status = parse_pop3_status(line)
    if not status.ok:
        raise ApplicationError(f"greeting refused service: {status.describe()}")
    stamp = apop_timestamp(status.text)
    ctx.facts["apop"] = stamp is not None
    if stamp is not None:
        ctx.facts["apop_timestamp"] = first_line(stamp)

    caps = await _capa(stream, ctx, "capa")
    if params.tls != "implicit":
        ctx.facts["starttls_offered"] = None if caps is None else "STLS" in caps

    if params.tls == "starttls":
        ctx.step("starttls")
        require_starttls(ctx, None if caps is None else "STLS" in caps, command="STLS")
        await stream.write_line("STLS")
        status = parse_pop3_status(await stream.read_line())
        if not status.ok:
            raise ApplicationError(f"STLS refused: {status.describe()}")
        await ctx.start_tls(stream)
        caps = await _capa(stream, ctx, "capa-tls")

    if params.ntlm:
        sasl = (caps or {}).get("SASL", "").upper().split()
        await ntlm_step(stream, ctx, offered="NTLM" in sasl, command="AUTH NTLM",
                        read=lambda: _sasl_reply(stream))  # fmt: skip

    ctx.step("quit")
    await goodbye(stream, "QUIT", stream.read_line)
    n = f"{len(caps)} capabilities" if caps is not None else "no CAPA"
    tls = ", STLS ok" if params.tls == "starttls" else ""
    ctx.summary = f"{ctx.facts['banner']} ({n}{tls}{tls_summary(ctx)})"


async def _sasl_reply(stream: Stream) -> SaslReply:
    """`+ DATA` continues the exchange (RFC 5034 §4); a status line ends it."""
    line = await stream.read_line()
    if line == b"+" or line.startswith(b"+ "):
        return SaslReply(True, line[2:].decode("ascii", "replace"))
    return SaslReply(False, parse_pop3_status(line).describe())


async def _capa(stream: Stream, ctx: ProbeContext, step: str) -> dict[str, str] | None:
    """CAPA (RFC 2449): the capability tags, or None when the server has no CAPA."""
    ctx.step(step)
    await stream.write_line("CAPA")
    status = parse_pop3_status(await stream.read_line())
    key = "capabilities" if step == "capa" else "capabilities_tls"
    if not status.ok:
        ctx.facts["capa_supported"] = False
        stream.note("no CAPA: an RFC 1939-only server")
        return None
    lines = await read_dot_block(stream)
    caps = parse_capability_lines(lines)
    ctx.facts["capa_supported"] = True
    ctx.facts[key] = [first_line(x) for x in lines if x.strip()]
    ctx.facts["auth_mechanisms"] = caps.get("SASL", "").split()
    ctx.facts["user_login"] = "USER" in caps
    return caps
