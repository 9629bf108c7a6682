"""`nntp`: greeting, CAPABILITIES, optional STARTTLS, QUIT.

RFC 3977 (NNTP), RFC 4642 (STARTTLS); implicit TLS on 563 (RFC 4642 §1, "nntps").

Params: `tls` (none | starttls | implicit).

Steps: greeting, capabilities, [starttls, tls-handshake, capabilities-tls], quit.  A
server from before RFC 3977 (RFC 977, as in Exchange 5.x) answers CAPABILITIES with
500: that is a fact, not a failure.
"""

from __future__ import annotations

from dataclasses import dataclass

from exprobe.errors import ApplicationError, ProtocolError
from exprobe.net.stream import Stream
from exprobe.probes._text import first_line, goodbye, read_dot_block, require_starttls, tls_summary
from exprobe.probes.base import Params, ProbeContext, register
from exprobe.wire.textproto import parse_capability_lines, parse_nntp_status


@dataclass(frozen=True, slots=True)
class NntpParams(Params):
    """`tls`: none, starttls or implicit."""


@register(
    "nntp",
    NntpParams,
    default_port=119,
    tls_ports={"implicit": 563},
    summary="NNTP greeting, CAPABILITIES, optional STARTTLS (RFC 3977, 4642)",
    tls_capable=True,
)
async def nntp(stream: Stream, params: NntpParams, ctx: ProbeContext) -> None:
    """200/201 greeting (posting allowed or not), CAPABILITIES, [STARTTLS], QUIT."""
    ctx.step("greeting")
    line = await stream.read_line()
    ctx.facts["banner"] = first_line(line)
    status = parse_nntp_status(line)
    if status.code not in (200, 201):
        if 400 <= status.code < 600:  # 400 temporarily, 502 permanently unavailable
            raise ApplicationError(f"greeting refused service: {status.describe()}")
        raise ProtocolError(f"not an NNTP greeting (expected 200 or 201): {status.describe()}")
    ctx.facts["posting_allowed"] = status.code == 200

    caps = await _capabilities(stream, ctx, "capabilities")
    if params.tls != "implicit":
        ctx.facts["starttls_offered"] = None if caps is None else "STARTTLS" in caps

    if params.tls == "starttls":
        ctx.step("starttls")
        require_starttls(ctx, None if caps is None else "STARTTLS" in caps)
        await stream.write_line("STARTTLS")
        status = parse_nntp_status(await stream.read_line())
        if status.code != 382:
            if 400 <= status.code < 600:  # 580 cannot start TLS, 502 not permitted
                raise ApplicationError(f"STARTTLS refused: {status.describe()}")
            raise ProtocolError(f"unexpected reply to STARTTLS: {status.describe()}")
        await ctx.start_tls(stream)
        caps = await _capabilities(stream, ctx, "capabilities-tls")

    ctx.step("quit")
    await goodbye(stream, "QUIT", stream.read_line)
    n = f"{len(caps)} capabilities" if caps is not None else "no CAPABILITIES"
    tls = ", STARTTLS ok" if params.tls == "starttls" else ""
    ctx.summary = f"{ctx.facts['banner']} ({n}{tls}{tls_summary(ctx)})"


async def _capabilities(stream: Stream, ctx: ProbeContext, step: str) -> dict[str, str] | None:
    """CAPABILITIES (RFC 3977 §5.2): the capability lines, or None on an RFC 977 server."""
    ctx.step(step)
    await stream.write_line("CAPABILITIES")
    status = parse_nntp_status(await stream.read_line())
    if status.code != 101:
        if status.code in (500, 501):  # unknown command: a server from before RFC 3977
            ctx.facts["capabilities_supported"] = False
            stream.note("no CAPABILITIES: a server from before RFC 3977")
            return None
        if 400 <= status.code < 600:
            raise ApplicationError(f"CAPABILITIES refused: {status.describe()}")
        raise ProtocolError(f"unexpected reply to CAPABILITIES: {status.describe()}")
    lines = await read_dot_block(stream)
    caps = parse_capability_lines(lines)
    ctx.facts["capabilities_supported"] = True
    key = "capabilities" if step == "capabilities" else "capabilities_tls"
    ctx.facts[key] = [first_line(x) for x in lines if x.strip()]
    version = caps.get("VERSION", "").split()
    if version:
        ctx.facts["nntp_version"] = first_line(version[0], 20)
    ctx.facts["auth_mechanisms"] = caps.get("SASL", "").split()
    if "AUTHINFO" in caps:
        ctx.facts["authinfo"] = caps["AUTHINFO"].split()
    return caps
