"""`smtp`: greeting, EHLO (HELO fallback), extensions, optional STARTTLS, QUIT.

RFC 5321 (SMTP), RFC 3207 (STARTTLS), RFC 1870 (SIZE), RFC 4954 (AUTH); implicit TLS
on 465 (RFC 8314).  Also recognises two middleboxes: Cisco PIX/ASA SMTP inspection,
which masks the greeting (`220 ****...`), and ASA ESMTP inspection, which overwrites
STARTTLS in the EHLO reply with `XXXXXXXA`.

Params: `tls` (none | starttls | implicit), `ehlo_name` (the name sent with EHLO and
HELO; default `exprobe.invalid`: a name that is clearly a probe's and leaks nothing
about the machine; set it to the host's FQDN for servers that check the HELO name),
`ntlm` (read the server's NTLM identity with `AUTH NTLM`, no credential; see _ntlm.py).

Steps: greeting, ehlo (helo after a 5xx), [starttls, tls-handshake, ehlo-tls], [ntlm],
quit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from exprobe.errors import ApplicationError, ProtocolError
from exprobe.net.stream import Stream
from exprobe.probes._ntlm import SaslReply, ntlm_step
from exprobe.probes._text import (
    STRIPPED_WARNING,
    first_line,
    goodbye,
    read_smtp_reply,
    require_starttls,
    tls_summary,
)
from exprobe.probes.base import Params, ProbeContext, register
from exprobe.wire.textproto import EhloInfo, SmtpReply, is_masked_banner, parse_ehlo

# A domain (letters, digits, dots, hyphens) or an address literal such as [192.0.2.1]:
# never anything that could smuggle a second command into the EHLO line.
_EHLO_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Za-z:.]{1,60}\]")

MASKED_BANNER_WARNING = (
    "SMTP greeting is masked with asterisks: the signature of Cisco PIX/ASA SMTP "
    "inspection (fixup smtp / inspect esmtp, 'Mailguard') in the path"
)


@dataclass(frozen=True, slots=True)
class SmtpParams(Params):
    """`tls`: none, starttls or implicit; `ehlo_name`: the name given in EHLO/HELO;
    `ntlm`: read the NTLM identity (AUTH NTLM, cancelled after the CHALLENGE);
    `expect_extensions`: EHLO keywords the server should list (a warning names those
    missing, e.g. Exchange's X-EXPS that an SMTP inspection device removes)."""

    ehlo_name: str = "exprobe.invalid"
    ntlm: bool = False
    expect_extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        Params.__post_init__(self)
        if not _EHLO_NAME.fullmatch(self.ehlo_name):
            raise ValueError(
                f"ehlo_name {self.ehlo_name!r} is not a domain name or an address literal"
            )


@register(
    "smtp",
    SmtpParams,
    default_port=25,
    tls_ports={"implicit": 465},
    summary="SMTP greeting, EHLO extensions, optional STARTTLS (RFC 5321, 3207)",
    tls_capable=True,
)
async def smtp(stream: Stream, params: SmtpParams, ctx: ProbeContext) -> None:
    """Greeting 220, EHLO (HELO on 5xx), extension facts, [STARTTLS + EHLO], QUIT."""
    ctx.step("greeting")
    greeting = await read_smtp_reply(stream)
    ctx.facts["banner"] = first_line(greeting.describe())
    if len(greeting.lines) > 1:
        ctx.facts["banner_lines"] = [first_line(t) for t in greeting.lines]
    masked = greeting.code == 220 and is_masked_banner(greeting.text)
    ctx.facts["banner_masked"] = masked
    if greeting.code != 220:
        if 400 <= greeting.code < 600:
            raise ApplicationError(f"greeting refused service: {greeting.describe()}")
        raise ProtocolError(f"not an SMTP greeting (expected 220): {greeting.describe()}")

    info = await _hello(stream, params, ctx, "ehlo")
    if params.tls != "implicit":
        ctx.facts["starttls_offered"] = bool(info and info.starttls)
    if masked:
        outcome = (
            f"EHLO answered 250 with {len(info.extensions)} extensions"
            if info is not None
            else "EHLO was refused and only HELO worked (the inspection passes RFC 821 only)"
        )
        ctx.warn(f"{MASKED_BANNER_WARNING}; {outcome}")
    if info is not None and info.starttls_stripped:
        ctx.facts["starttls_stripped"] = True
        ctx.warn(
            f"{STRIPPED_WARNING} (the EHLO reply shows 'XXXXXXXA' where STARTTLS "
            "would be: Cisco ASA ESMTP inspection)"
        )

    if params.tls == "starttls":
        ctx.step("starttls")
        require_starttls(
            ctx,
            bool(info and info.starttls),
            stripped=masked or bool(info and info.starttls_stripped),
        )
        await stream.write_line("STARTTLS")
        reply = await read_smtp_reply(stream)
        if reply.code != 220:
            if 400 <= reply.code < 600:
                raise ApplicationError(f"STARTTLS refused: {reply.describe()}")
            raise ProtocolError(f"unexpected reply to STARTTLS: {reply.describe()}")
        await ctx.start_tls(stream)
        info = await _hello(stream, params, ctx, "ehlo-tls", allow_helo=False)
        if info is not None:
            ctx.facts["ehlo_extensions_tls"] = info.extensions

    if params.expect_extensions:
        _expected_extensions(ctx, params.expect_extensions)

    if params.ntlm:
        offered = info is not None and "NTLM" in info.auth_mechanisms
        await ntlm_step(stream, ctx, offered=offered, command="AUTH NTLM",
                        read=lambda: _sasl_reply(stream))  # fmt: skip

    ctx.step("quit")
    await goodbye(stream, "QUIT", lambda: read_smtp_reply(stream))
    extensions = f"{len(info.extensions)} EHLO extensions" if info is not None else "HELO only"
    tls = ", STARTTLS ok" if params.tls == "starttls" else ""
    ctx.summary = f"{ctx.facts['banner']} ({extensions}{tls}{tls_summary(ctx)})"


def _expected_extensions(ctx: ProbeContext, wanted: tuple[str, ...]) -> None:
    """Warn about the expected EHLO keywords that neither EHLO (before or after STARTTLS)
    listed: Exchange offers X-ANONYMOUSTLS before TLS only."""
    listed: set[str] = set()
    for key in ("ehlo_extensions", "ehlo_extensions_tls"):
        listed.update(k.upper() for k in ctx.facts.get(key) or {})
    missing = [w for w in wanted if w.upper() not in listed]
    if missing:
        ctx.facts["ehlo_missing"] = missing
        ctx.warn(
            f"EHLO does not list {', '.join(missing)}: not the expected server, or an SMTP"
            " inspection device in the path removed them"
        )


async def _hello(
    stream: Stream, params: SmtpParams, ctx: ProbeContext, step: str, *, allow_helo: bool = True
) -> EhloInfo | None:
    """EHLO; on a 5xx (a pre-ESMTP server or an RFC 821-only filter) fall back to HELO.

    Returns the parsed extensions, or None when only HELO worked.
    """
    ctx.step(step)
    await stream.write_line(f"EHLO {params.ehlo_name}")
    reply = await read_smtp_reply(stream)
    if reply.code == 250:
        info = parse_ehlo(reply)
        if step == "ehlo":
            ctx.facts["ehlo_domain"] = first_line(info.domain)
            ctx.facts["ehlo_extensions"] = info.extensions
            ctx.facts["helo_fallback"] = False
        # The last EHLO wins: after STARTTLS it is what a submitting client would use.
        ctx.facts["auth_mechanisms"] = info.auth_mechanisms
        ctx.facts["size_limit"] = info.size_limit
        if info.masked:
            ctx.facts["ehlo_masked_keywords"] = list(info.masked)
        if info.unparsed:
            ctx.facts["ehlo_unparsed_lines"] = [first_line(u) for u in info.unparsed[:10]]
        return info
    _check_hello_reply("EHLO", reply, expect_5xx_ok=allow_helo)
    ctx.facts["ehlo_refused"] = reply.describe()
    ctx.step("helo")
    await stream.write_line(f"HELO {params.ehlo_name}")
    reply = await read_smtp_reply(stream)
    if reply.code != 250:
        _check_hello_reply("HELO", reply, expect_5xx_ok=False)
    ctx.facts["helo_fallback"] = True
    return None


async def _sasl_reply(stream: Stream) -> SaslReply:
    reply = await read_smtp_reply(stream)
    return SaslReply(reply.code == 334, reply.text if reply.code == 334 else reply.describe())


def _check_hello_reply(command: str, reply: SmtpReply, *, expect_5xx_ok: bool) -> None:
    """Raise for a reply to EHLO/HELO that ends the check; return on a 5xx to EHLO."""
    if 500 <= reply.code < 600 and expect_5xx_ok:
        return
    if 400 <= reply.code < 600:
        raise ApplicationError(f"{command} refused: {reply.describe()}")
    raise ProtocolError(f"unexpected reply to {command}: {reply.describe()}")
