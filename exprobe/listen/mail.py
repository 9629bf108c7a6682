"""Line-protocol responders: SMTP, POP3, IMAP4 and NNTP, each the smallest correct dialogue.

Each answers its greeting, capability listing, STARTTLS and goodbye as the RFCs say,
names exprobe in its banner so nobody mistakes a rehearsal for the real server, and
declines everything else with the protocol's own "not here" reply.  A mail or news
client that really tries to deliver gets a temporary failure (so nothing bounces).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from exprobe.listen.core import Conn, Hangup, LineTooLong, Responder

MAX_ERRORS = 10  # unknown commands before we hang up on a scanner
MAX_COMMANDS = 200  # commands per connection, whatever they are
TAG = "exprobe listen (rehearsal, not a real {kind} server)"


def _text(line: bytes, limit: int = 60) -> str:
    return line[:limit].decode("latin-1")


def _split(line: bytes) -> tuple[str, str]:
    verb, _, arg = _text(line, 512).strip().partition(" ")
    return verb.upper(), arg.strip()


@dataclass(frozen=True, slots=True)
class Dialect:
    """What one line protocol answers.  The dialogue around it (`_converse`) is the same
    for all four: greet, read bounded lines, STARTTLS, goodbye, decline, count errors."""

    greeting: Callable[[Conn], list[str]]
    too_long: list[str]
    starttls: str  # the verb
    tls_go: str
    tls_active: str
    tls_unavailable: str
    quit: str  # the verb
    goodbye: Callable[[Conn], list[str]]
    declined: frozenset[str]  # logged by name only: their arguments may be passwords
    decline: Callable[[Conn], str]
    too_many: str
    unknown: str
    # Protocol-specific verbs: (what the log says, the reply lines), or None if unknown.
    answer: Callable[[Conn, str, str], tuple[str, list[str]] | None]
    hang_up_on_decline: bool = False
    tagged: bool = False  # IMAP: every command and final reply carries the client's tag


async def _converse(conn: Conn, d: Dialect) -> None:
    await conn.write_lines(d.greeting(conn))
    errors = 0
    for _ in range(MAX_COMMANDS):
        try:
            line = await conn.read_line()
        except LineTooLong:
            conn.did("line too long")
            await conn.write_lines(d.too_long)
            raise
        tag = ""
        if d.tagged:
            raw_tag, _, line = line.strip().partition(b" ")
            if _IMAP_TAG.match(raw_tag):
                tag = raw_tag.decode("ascii") + " "
        verb, arg = _split(line)
        if d.tagged and (not tag or not verb):
            errors += 1
            conn.did("untagged garbage")
            if errors >= MAX_ERRORS:
                await conn.write_line(d.too_many)
                raise Hangup("too many bad commands")
            await conn.write_line("* BAD expected: tag SP command")
            continue
        if verb == d.starttls:
            conn.did(verb)
            if not conn.tls_available:
                await conn.write_line(
                    tag + (d.tls_active if conn.tls_active else d.tls_unavailable)
                )
                continue
            await conn.write_line(tag + d.tls_go)
            await conn.start_tls()  # SMTP: the client must say EHLO again (RFC 3207 §4.2)
        elif verb == d.quit:
            conn.did(verb)
            *untagged, last = d.goodbye(conn)
            await conn.write_lines([*untagged, tag + last])
            conn.record.outcome = "said goodbye"
            return
        elif verb in d.declined:
            conn.did(verb)
            await conn.write_line(tag + d.decline(conn))
            if d.hang_up_on_decline:
                raise Hangup(f"declined {verb} (rehearsal: no mail accepted)")
        elif (answered := d.answer(conn, verb, arg)) is not None:
            action, lines = answered
            conn.did(action)
            *untagged, last = lines
            await conn.write_lines([*untagged, tag + last])
        else:
            errors += 1
            conn.did(f"unknown {verb[:20]!r}")
            if errors >= MAX_ERRORS:
                await conn.write_line(d.too_many)
                raise Hangup("too many unknown commands")
            await conn.write_line(tag + d.unknown)
    raise Hangup(f"more than {MAX_COMMANDS} commands")


# What Exchange lists after these keywords (research note §c: "X-EXPS GSSAPI NTLM").
EXTENSION_TEXT = {"X-EXPS": "X-EXPS GSSAPI NTLM"}
BEFORE_TLS_ONLY = frozenset({"X-ANONYMOUSTLS"})  # Exchange offers it before TLS only
BASE_EXTENSIONS = frozenset({"SIZE", "PIPELINING", "8BITMIME", "STARTTLS", "ENHANCEDSTATUSCODES"})


def _smtp_answer(
    conn: Conn, verb: str, arg: str, extra: tuple[str, ...] = ()
) -> tuple[str, list[str]] | None:
    if verb == "EHLO":
        ext = ["SIZE 10240000", "PIPELINING", "8BITMIME"]
        for kw in extra:
            if kw.upper() in BASE_EXTENSIONS:
                continue
            if kw.upper() in BEFORE_TLS_ONLY and conn.tls_active:
                continue
            ext.append(EXTENSION_TEXT.get(kw.upper(), kw))
        if conn.tls_available:
            ext.append("STARTTLS")
        ext.append("ENHANCEDSTATUSCODES")
        lines = [f"{conn.name} greets {arg or 'you'} (exprobe rehearsal)", *ext]
        last = len(lines) - 1
        return f"EHLO {arg}".rstrip(), [
            f"250{'-' if i < last else ' '}{t}" for i, t in enumerate(lines)
        ]
    if verb == "HELO":
        return f"HELO {arg}".rstrip(), [f"250 {conn.name} (exprobe rehearsal)"]
    if verb in ("NOOP", "RSET"):
        return verb, ["250 2.0.0 OK"]
    return None


SMTP = Dialect(
    greeting=lambda c: [f"220 {c.name} ESMTP {TAG.format(kind='mail')}"],
    too_long=["500 5.5.6 line too long"],
    starttls="STARTTLS",
    tls_go="220 2.0.0 Ready to start TLS",
    tls_active="503 5.5.1 TLS already active",
    tls_unavailable="454 4.7.0 TLS not available",
    quit="QUIT",
    goodbye=lambda c: [f"221 2.0.0 {c.name} closing (exprobe rehearsal)"],
    declined=frozenset(
        ("MAIL", "RCPT", "DATA", "BDAT", "AUTH", "X-EXPS", "X-ANONYMOUSTLS", "VRFY", "EXPN", "ETRN")
    ),
    # A real sender that reaches the rehearsal must queue, not bounce: 421.
    decline=lambda c: f"421 4.3.2 {c.name} is an exprobe rehearsal listener, not a mail server",
    hang_up_on_decline=True,
    too_many="421 4.7.0 too many errors",
    unknown="500 5.5.2 command not recognized",
    answer=_smtp_answer,
)


def _pop3_answer(conn: Conn, verb: str, arg: str) -> tuple[str, list[str]] | None:
    if verb == "CAPA":
        caps = ["+OK capability list follows"]
        if conn.tls_available:
            caps.append("STLS")
        return verb, [*caps, "IMPLEMENTATION exprobe-listen", "."]
    if verb == "NOOP":
        return verb, ["+OK"]
    return None


POP3 = Dialect(
    greeting=lambda c: [f"+OK {c.name} POP3 {TAG.format(kind='mail')}"],
    too_long=["-ERR line too long"],
    starttls="STLS",
    tls_go="+OK begin TLS negotiation",
    tls_active="-ERR TLS already active",
    tls_unavailable="-ERR TLS not available",
    quit="QUIT",
    goodbye=lambda c: [f"+OK {c.name} signing off (exprobe rehearsal)"],
    declined=frozenset(("USER", "PASS", "APOP", "AUTH", "STAT", "LIST", "RETR", "UIDL", "TOP")),
    decline=lambda c: "-ERR [SYS/TEMP] exprobe rehearsal listener: no mailboxes here",
    too_many="-ERR too many errors",
    unknown="-ERR unknown command",
    answer=_pop3_answer,
)


_IMAP_TAG = re.compile(rb"^[!#$&'*,./0-9:;<=>?@A-Z\[\]^_`a-z|~-]{1,64}$")


def _imap_caps(conn: Conn) -> str:
    caps = ["IMAP4rev1"]
    if conn.tls_available:
        caps.append("STARTTLS")
    caps.append("LOGINDISABLED")
    return " ".join(caps)


def _imap_answer(conn: Conn, verb: str, arg: str) -> tuple[str, list[str]] | None:
    if verb == "CAPABILITY":
        return verb, [f"* CAPABILITY {_imap_caps(conn)}", "OK CAPABILITY done"]
    if verb == "NOOP":
        return verb, ["OK NOOP done"]
    return None


IMAP = Dialect(
    greeting=lambda c: [f"* OK [CAPABILITY {_imap_caps(c)}] {c.name} {TAG.format(kind='mail')}"],
    too_long=["* BAD line too long", "* BYE too much"],
    starttls="STARTTLS",
    tls_go="OK begin TLS negotiation now",
    tls_active="BAD TLS already active",
    tls_unavailable="NO TLS not available",
    quit="LOGOUT",
    goodbye=lambda c: [f"* BYE {c.name} logging out (exprobe rehearsal)", "OK LOGOUT done"],
    declined=frozenset(("LOGIN", "AUTHENTICATE", "SELECT", "EXAMINE", "ID", "ENABLE")),
    decline=lambda c: "NO [UNAVAILABLE] exprobe rehearsal listener: no mailboxes here",
    too_many="* BYE too many errors",
    unknown="BAD unknown command",
    answer=_imap_answer,
    tagged=True,
)


def _nntp_answer(conn: Conn, verb: str, arg: str) -> tuple[str, list[str]] | None:
    if verb == "CAPABILITIES":
        caps = ["101 Capability list:", "VERSION 2", "READER", "POST"]
        if conn.tls_available:
            caps.append("STARTTLS")
        return verb, [*caps, "IMPLEMENTATION exprobe-listen", "."]
    if verb == "MODE" and arg.upper() == "READER":
        return "MODE READER", ["200 reader mode, posting allowed (exprobe rehearsal)"]
    if verb == "DATE":
        return verb, ["111 " + time.strftime("%Y%m%d%H%M%S", time.gmtime())]
    return None


NNTP = Dialect(
    greeting=lambda c: [f"200 {c.name} NNTP {TAG.format(kind='news')}; posting allowed"],
    too_long=["501 line too long"],
    starttls="STARTTLS",
    tls_go="382 Continue with TLS negotiation",
    tls_active="502 TLS already active",
    tls_unavailable="580 TLS not available",
    quit="QUIT",
    goodbye=lambda c: ["205 closing connection (exprobe rehearsal)"],
    declined=frozenset(("GROUP", "LIST", "ARTICLE", "POST", "AUTHINFO", "NEWNEWS", "HEAD", "BODY")),
    decline=lambda c: "403 exprobe rehearsal listener: no news here",
    too_many="400 too many errors",
    unknown="500 unknown command",
    answer=_nntp_answer,
)


async def smtp(conn: Conn) -> None:
    """SMTP (RFC 5321) with STARTTLS (RFC 3207): 220, EHLO/HELO, STARTTLS, NOOP, RSET, QUIT."""
    await _converse(conn, SMTP)


def smtp_with(extensions: tuple[str, ...]) -> Responder:
    """`smtp` whose EHLO also lists `extensions` (a profile's `expect_extensions`: the
    X-ANONYMOUSTLS and X-EXPS of Exchange's transport ports), so that a device in the path
    that strips them is caught before the servers exist.  Listed, not implemented: AUTH
    and X-EXPS get the same 421 as any delivery attempt."""
    if not extensions:
        return smtp
    dialect = dataclasses.replace(SMTP, answer=functools.partial(_smtp_answer, extra=extensions))

    async def respond(conn: Conn) -> None:
        await _converse(conn, dialect)

    return respond


async def pop3(conn: Conn) -> None:
    """POP3 (RFC 1939) with CAPA (RFC 2449) and STLS (RFC 2595): +OK, CAPA, STLS, NOOP, QUIT."""
    await _converse(conn, POP3)


async def imap(conn: Conn) -> None:
    """IMAP4rev1 (RFC 3501): * OK [CAPABILITY ...], CAPABILITY, STARTTLS, NOOP, LOGOUT."""
    await _converse(conn, IMAP)


async def nntp(conn: Conn) -> None:
    """NNTP (RFC 3977) with STARTTLS (RFC 4642): 200, CAPABILITIES, STARTTLS 382, QUIT 205."""
    await _converse(conn, NNTP)


async def tcp(conn: Conn) -> None:
    """No protocol: accept, say nothing, and close when the peer does (or falls silent)."""
    conn.did("connected")
    for _ in range(64):
        data = await conn.read_some(4096)
        if not data:
            conn.record.outcome = "peer closed"
            return
        if "sent data" not in conn.record.actions:
            conn.did("sent data")
    raise Hangup("kept sending to a TCP-only port")
