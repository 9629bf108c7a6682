"""Line-protocol responders: SMTP, POP3, IMAP4 and NNTP, each the smallest correct dialogue.

Each answers its greeting, capability listing, STARTTLS and goodbye as the RFCs say,
names exprobe in its banner so nobody mistakes a rehearsal for the real server, and
declines everything else with the protocol's own "not here" reply.  A mail or news
client that really tries to deliver gets a temporary failure (so nothing bounces).
"""

from __future__ import annotations

import re
import time

from exprobe.listen.core import Conn, Hangup, LineTooLong

MAX_ERRORS = 10  # unknown commands before we hang up on a scanner
MAX_COMMANDS = 200  # commands per connection, whatever they are
TAG = "exprobe listen (rehearsal, not a real {kind} server)"


def _text(line: bytes, limit: int = 60) -> str:
    return line[:limit].decode("latin-1")


def _split(line: bytes) -> tuple[str, str]:
    verb, _, arg = _text(line, 512).strip().partition(" ")
    return verb.upper(), arg.strip()


async def smtp(conn: Conn) -> None:
    """SMTP (RFC 5321) with STARTTLS (RFC 3207): 220, EHLO/HELO, STARTTLS, NOOP, RSET, QUIT."""
    await conn.write_line(f"220 {conn.name} ESMTP {TAG.format(kind='mail')}")
    errors = 0
    for _ in range(MAX_COMMANDS):
        try:
            line = await conn.read_line()
        except LineTooLong:
            conn.did("line too long")
            await conn.write_line("500 5.5.6 line too long")
            raise
        verb, arg = _split(line)
        if verb == "EHLO":
            conn.did(f"EHLO {arg}".rstrip())
            ext = ["SIZE 10240000", "PIPELINING", "8BITMIME"]
            if conn.tls_available:
                ext.append("STARTTLS")
            ext.append("ENHANCEDSTATUSCODES")
            first = f"{conn.name} greets {arg or 'you'} (exprobe rehearsal)"
            lines = [first, *ext]
            await conn.write_lines(
                [f"250{'-' if i < len(lines) - 1 else ' '}{t}" for i, t in enumerate(lines)]
            )
        elif verb == "HELO":
            conn.did(f"HELO {arg}".rstrip())
            await conn.write_line(f"250 {conn.name} (exprobe rehearsal)")
        elif verb == "STARTTLS":
            conn.did("STARTTLS")
            if not conn.tls_available:
                await conn.write_line(
                    "503 5.5.1 TLS already active"
                    if conn.tls_active
                    else "454 4.7.0 TLS not available"
                )
                continue
            await conn.write_line("220 2.0.0 Ready to start TLS")
            await conn.start_tls()  # the client must say EHLO again (RFC 3207 §4.2)
        elif verb == "QUIT":
            conn.did("QUIT")
            await conn.write_line(f"221 2.0.0 {conn.name} closing (exprobe rehearsal)")
            conn.record.outcome = "said goodbye"
            return
        elif verb in ("NOOP", "RSET"):
            conn.did(verb)
            await conn.write_line("250 2.0.0 OK")
        elif verb in ("MAIL", "RCPT", "DATA", "BDAT", "AUTH", "VRFY", "EXPN", "ETRN"):
            # A real sender that reaches the rehearsal must queue, not bounce: 421.
            conn.did(verb)
            await conn.write_line(
                f"421 4.3.2 {conn.name} is an exprobe rehearsal listener, not a mail server"
            )
            raise Hangup(f"declined {verb} (rehearsal: no mail accepted)")
        else:
            errors += 1
            conn.did(f"unknown {verb[:20]!r}")
            if errors >= MAX_ERRORS:
                await conn.write_line("421 4.7.0 too many errors")
                raise Hangup("too many unknown commands")
            await conn.write_line("500 5.5.2 command not recognized")
    raise Hangup(f"more than {MAX_COMMANDS} commands")


async def pop3(conn: Conn) -> None:
    """POP3 (RFC 1939) with CAPA (RFC 2449) and STLS (RFC 2595): +OK, CAPA, STLS, NOOP, QUIT."""
    await conn.write_line(f"+OK {conn.name} POP3 {TAG.format(kind='mail')}")
    errors = 0
    for _ in range(MAX_COMMANDS):
        try:
            line = await conn.read_line()
        except LineTooLong:
            conn.did("line too long")
            await conn.write_line("-ERR line too long")
            raise
        verb, _arg = _split(line)
        if verb == "CAPA":
            conn.did("CAPA")
            caps = ["+OK capability list follows"]
            if conn.tls_available:
                caps.append("STLS")
            caps += ["IMPLEMENTATION exprobe-listen", "."]
            await conn.write_lines(caps)
        elif verb == "STLS":
            conn.did("STLS")
            if not conn.tls_available:
                await conn.write_line(
                    "-ERR TLS already active" if conn.tls_active else "-ERR TLS not available"
                )
                continue
            await conn.write_line("+OK begin TLS negotiation")
            await conn.start_tls()
        elif verb == "QUIT":
            conn.did("QUIT")
            await conn.write_line(f"+OK {conn.name} signing off (exprobe rehearsal)")
            conn.record.outcome = "said goodbye"
            return
        elif verb == "NOOP":
            conn.did("NOOP")
            await conn.write_line("+OK")
        elif verb in ("USER", "PASS", "APOP", "AUTH", "STAT", "LIST", "RETR", "UIDL", "TOP"):
            conn.did(verb)  # never the argument: it may be a password
            await conn.write_line("-ERR [SYS/TEMP] exprobe rehearsal listener: no mailboxes here")
        else:
            errors += 1
            conn.did(f"unknown {verb[:20]!r}")
            if errors >= MAX_ERRORS:
                await conn.write_line("-ERR too many errors")
                raise Hangup("too many unknown commands")
            await conn.write_line("-ERR unknown command")
    raise Hangup(f"more than {MAX_COMMANDS} commands")


_IMAP_TAG = re.compile(rb"^[!#$&'*,./0-9:;<=>?@A-Z\[\]^_`a-z|~-]{1,64}$")


def _imap_caps(conn: Conn) -> str:
    caps = ["IMAP4rev1"]
    if conn.tls_available:
        caps.append("STARTTLS")
    caps.append("LOGINDISABLED")
    return " ".join(caps)


async def imap(conn: Conn) -> None:
    """IMAP4rev1 (RFC 3501): * OK [CAPABILITY ...], CAPABILITY, STARTTLS, NOOP, LOGOUT."""
    await conn.write_line(
        f"* OK [CAPABILITY {_imap_caps(conn)}] {conn.name} {TAG.format(kind='mail')}"
    )
    errors = 0
    for _ in range(MAX_COMMANDS):
        try:
            line = await conn.read_line()
        except LineTooLong:
            conn.did("line too long")
            await conn.write_lines(["* BAD line too long", "* BYE too much"])
            raise
        tag, _, rest = line.strip().partition(b" ")
        verb, _arg = _split(rest)
        if not _IMAP_TAG.match(tag) or not verb:
            errors += 1
            conn.did("untagged garbage")
            if errors >= MAX_ERRORS:
                await conn.write_line("* BYE too many errors")
                raise Hangup("too many bad commands")
            await conn.write_line("* BAD expected: tag SP command")
            continue
        t = tag.decode("ascii")
        if verb == "CAPABILITY":
            conn.did("CAPABILITY")
            await conn.write_lines([f"* CAPABILITY {_imap_caps(conn)}", f"{t} OK CAPABILITY done"])
        elif verb == "STARTTLS":
            conn.did("STARTTLS")
            if not conn.tls_available:
                await conn.write_line(
                    f"{t} BAD TLS already active"
                    if conn.tls_active
                    else f"{t} NO TLS not available"
                )
                continue
            await conn.write_line(f"{t} OK begin TLS negotiation now")
            await conn.start_tls()
        elif verb == "LOGOUT":
            conn.did("LOGOUT")
            await conn.write_lines(
                [f"* BYE {conn.name} logging out (exprobe rehearsal)", f"{t} OK LOGOUT done"]
            )
            conn.record.outcome = "said goodbye"
            return
        elif verb == "NOOP":
            conn.did("NOOP")
            await conn.write_line(f"{t} OK NOOP done")
        elif verb in ("LOGIN", "AUTHENTICATE", "SELECT", "EXAMINE", "ID", "ENABLE"):
            conn.did(verb)  # never the arguments: LOGIN carries a password
            await conn.write_line(
                f"{t} NO [UNAVAILABLE] exprobe rehearsal listener: no mailboxes here"
            )
        else:
            errors += 1
            conn.did(f"unknown {verb[:20]!r}")
            if errors >= MAX_ERRORS:
                await conn.write_line("* BYE too many errors")
                raise Hangup("too many unknown commands")
            await conn.write_line(f"{t} BAD unknown command")
    raise Hangup(f"more than {MAX_COMMANDS} commands")


async def nntp(conn: Conn) -> None:
    """NNTP (RFC 3977) with STARTTLS (RFC 4642): 200, CAPABILITIES, STARTTLS 382, QUIT 205."""
    await conn.write_line(f"200 {conn.name} NNTP {TAG.format(kind='news')}; posting allowed")
    errors = 0
    for _ in range(MAX_COMMANDS):
        try:
            line = await conn.read_line()
        except LineTooLong:
            conn.did("line too long")
            await conn.write_line("501 line too long")
            raise
        verb, arg = _split(line)
        if verb == "CAPABILITIES":
            conn.did("CAPABILITIES")
            caps = ["101 Capability list:", "VERSION 2", "READER", "POST"]
            if conn.tls_available:
                caps.append("STARTTLS")
            caps += ["IMPLEMENTATION exprobe-listen", "."]
            await conn.write_lines(caps)
        elif verb == "STARTTLS":
            conn.did("STARTTLS")
            if not conn.tls_available:
                await conn.write_line(
                    "502 TLS already active" if conn.tls_active else "580 TLS not available"
                )
                continue
            await conn.write_line("382 Continue with TLS negotiation")
            await conn.start_tls()
        elif verb == "QUIT":
            conn.did("QUIT")
            await conn.write_line("205 closing connection (exprobe rehearsal)")
            conn.record.outcome = "said goodbye"
            return
        elif verb == "MODE" and arg.upper() == "READER":
            conn.did("MODE READER")
            await conn.write_line("200 reader mode, posting allowed (exprobe rehearsal)")
        elif verb == "DATE":
            conn.did("DATE")
            await conn.write_line("111 " + time.strftime("%Y%m%d%H%M%S", time.gmtime()))
        elif verb in ("GROUP", "LIST", "ARTICLE", "POST", "AUTHINFO", "NEWNEWS", "HEAD", "BODY"):
            conn.did(verb)  # never the arguments: AUTHINFO carries a password
            await conn.write_line("403 exprobe rehearsal listener: no news here")
        else:
            errors += 1
            conn.did(f"unknown {verb[:20]!r}")
            if errors >= MAX_ERRORS:
                await conn.write_line("400 too many errors")
                raise Hangup("too many unknown commands")
            await conn.write_line("500 unknown command")
    raise Hangup(f"more than {MAX_COMMANDS} commands")


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
