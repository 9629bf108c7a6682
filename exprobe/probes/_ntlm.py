"""The opt-in `ntlm` step of the mail probes: the NTLM identity a server gives away
before any credential is sent (what nmap's `smtp-ntlm-info`, `imap-ntlm-info` and
`pop3-ntlm-info` read).

SASL NTLM over SMTP (RFC 4954 `AUTH NTLM`), IMAP (RFC 3501 `AUTHENTICATE NTLM`) and POP3
(RFC 5034 `AUTH NTLM`) runs the same way: the command, an empty (or, from Exchange,
"NTLM supported") continuation, our NEGOTIATE in base64, the server's CHALLENGE in
base64 in the next continuation; then `*` cancels the exchange (each RFC's way to abort
an authentication), and nothing else is sent.  Never a credential.

The CHALLENGE is decoded by `exprobe.wire.ntlm`: NetBIOS and DNS computer and domain
names, the forest, the Windows build, and the server's clock (skew).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from exprobe.errors import ProtocolError
from exprobe.net.stream import Stream
from exprobe.probes._text import first_line
from exprobe.probes.base import ProbeContext
from exprobe.wire import ntlm


@dataclass(frozen=True, slots=True)
class SaslReply:
    """A reply during SASL: a continuation (`334 ...`, `+ ...`) with its text, or the
    final answer (`go_on` False) in words."""

    go_on: bool
    text: str


SaslReader = Callable[[], Awaitable[SaslReply]]

_NAME_LIMIT = 100


async def ntlm_step(
    stream: Stream, ctx: ProbeContext, *, offered: bool, command: str, read: SaslReader
) -> None:
    """The `ntlm` step: the identity as `facts.ntlm`.  Not offered: `{"offered": false}`
    and nothing sent.  Refused: a warning, not a failure (the rest of the check stands).
    A malformed CHALLENGE ends the check as `protocol-error`."""
    ctx.step("ntlm")
    if not offered:
        ctx.facts["ntlm"] = {"offered": False}
        stream.note("NTLM is not offered: nothing to ask")
        return
    await stream.write_line(command)
    first = await read()
    if not first.go_on:
        _refused(ctx, first.text)
        return
    # The first continuation is empty ("334 ", "+ ") or, from Exchange, words
    # ("334 NTLM supported"): nothing to decode in it.
    await stream.write_line(ntlm.negotiate_b64())
    second = await read()
    if not second.go_on:
        _refused(ctx, second.text)
        return
    try:
        challenge = ntlm.decode_challenge_b64(second.text.strip())
    except ProtocolError as exc:
        await _cancel(stream, read)
        raise ProtocolError(
            f"NTLM: not a CHALLENGE message ({exc.message})",
            facts={"ntlm_challenge": first_line(second.text, 120)},
        ) from None
    await _cancel(stream, read)
    facts: dict[str, Any] = {"offered": True}
    for key, value in challenge.facts().items():
        facts[key] = first_line(value, _NAME_LIMIT) if isinstance(value, str) else value
    ctx.facts["ntlm"] = facts
    named = facts.get("dns_computer") or facts.get("netbios_computer") or "no computer name"
    stream.note(f"NTLM identity: {named}")


def _refused(ctx: ProbeContext, said: str) -> None:
    ctx.facts["ntlm"] = {"offered": True, "refused": first_line(said, 120)}
    ctx.warn(f"NTLM is offered but the exchange was refused: {first_line(said, 120)}")


async def _cancel(stream: Stream, read: SaslReader) -> None:
    """`*` ends the exchange (RFC 4954 §4, RFC 3501 §6.2.2, RFC 5034 §4); the server's
    answer (a 501, a BAD, an -ERR) is read and not judged."""
    await stream.write_line("*")
    await read()
