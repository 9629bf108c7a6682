"""What the line-based probes (smtp, pop3, imap, nntp) share: bounded multi-line reads,
the STARTTLS precondition, the polite goodbye and the one-line summary.

Every read goes through `Stream.read_line` (line length and byte budget bounded) and
stops after `MAX_REPLY_LINES` lines; the check's deadline belongs to the runner.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

from exprobe.errors import ApplicationError, ProtocolError
from exprobe.net.stream import Stream
from exprobe.probes.base import ProbeContext
from exprobe.wire.textproto import (
    MAX_REPLY_LINES,
    DotBlockParser,
    ImapResponse,
    SmtpReply,
    SmtpReplyParser,
    decode,
    parse_imap_response,
)

STRIPPED_WARNING = "STARTTLS appears to be stripped by a middlebox"


async def read_smtp_reply(stream: Stream) -> SmtpReply:
    """One complete SMTP reply (RFC 5321 §4.2), however many lines, up to the bound."""
    parser = SmtpReplyParser()
    while True:
        reply = parser.feed(await stream.read_line())
        if reply is not None:
            return reply


async def read_dot_block(stream: Stream) -> list[str]:
    """The lines of a dot-terminated block (POP3, NNTP), dot-unstuffed."""
    parser = DotBlockParser()
    while not parser.feed(await stream.read_line()):
        pass
    return parser.lines


async def read_imap_tagged(
    stream: Stream, tag: str, *, bye_ok: bool = False
) -> tuple[list[ImapResponse], ImapResponse]:
    """Untagged responses up to the tagged one for `tag`, and that tagged response.

    An untagged BYE (the server is closing) ends the check as `application-error`,
    except during LOGOUT (`bye_ok`), where it is the expected answer.

    A `{n}` literal at the end of a line is read (within the byte budget) and skipped:
    none of the responses the probe acts on carry one, but a server may send them.
    """
    untagged: list[ImapResponse] = []
    for _ in range(MAX_REPLY_LINES):
        resp = parse_imap_response(await stream.read_line())
        if resp.literal is not None:
            await stream.read_exact(resp.literal)
            stream.note(f"(literal of {resp.literal} bytes skipped)")
        if resp.tag == tag:
            return untagged, resp
        if resp.tag == "+":
            raise ProtocolError(f"unexpected continuation request: {resp.describe()}")
        if resp.tag != "*":
            raise ProtocolError(f"response for an unknown tag: {resp.describe()}")
        if resp.kind == "BYE" and not bye_ok:
            raise ApplicationError(f"server is closing the connection: {resp.describe()}")
        untagged.append(resp)
    raise ProtocolError(f"no tagged response after {MAX_REPLY_LINES} lines")


def require_starttls(
    ctx: ProbeContext, offered: bool | None, *, command: str = "STARTTLS", stripped: bool = False
) -> None:
    """Raise `ApplicationError` unless the server offered the STARTTLS command.

    `offered` None means the server did not say (no capability list): try anyway.
    `stripped` adds the middlebox warning (masked banner, `XXXXXXXA` in EHLO).
    """
    if offered is not False:
        return
    if stripped:
        ctx.warn(STRIPPED_WARNING)
        ctx.facts["starttls_stripped"] = True
        raise ApplicationError(
            f"{STRIPPED_WARNING}: {command} was requested but the server does not offer it"
        )
    raise ApplicationError(f"{command} was requested but the server does not offer it")


async def goodbye(
    stream: Stream, command: str, read_reply: Callable[[], Awaitable[object]]
) -> None:
    """Send QUIT/LOGOUT and await the reply; a peer that just closes is fine too.

    The check's purpose is already met here, so a goodbye answered with a close, a
    reset or nonsense does not fail it; only the deadline still applies.
    """
    try:
        await stream.write_line(command)
        await read_reply()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ProtocolError) as exc:
        stream.note(f"no proper reply to the goodbye ({type(exc).__name__}); that is fine")


def first_line(text: bytes | str, limit: int = 200) -> str:
    s = decode(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def tls_summary(ctx: ProbeContext) -> str:
    version = ctx.facts.get("tls_version")
    return f", {version}" if version else ""
