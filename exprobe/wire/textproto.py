"""Pure parsers for the line-based mail and news protocols: SMTP, POP3, IMAP4 and NNTP.

Every function takes lines as received (bytes or str, without the CR LF) and returns a
value or raises `ProtocolError`; nothing else escapes, whatever the input.  No I/O: the
probes read the lines (bounded) and hand them here.

- SMTP replies (RFC 5321 §4.2): `250-` continuation lines, one final `250 ` line, the
  same code on every line; EHLO keywords (§4.1.1.1) into an extensions dict.
- POP3 (RFC 1939, 2449): `+OK`/`-ERR` status lines, the APOP timestamp, dot-terminated
  multi-line blocks (dot-unstuffed), CAPA lines.
- IMAP4 (RFC 3501, 9051): untagged, tagged and continuation responses, response codes,
  CAPABILITY lists (from `[CAPABILITY ...]` or `* CAPABILITY`).
- NNTP (RFC 3977): status lines and the CAPABILITIES list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from exprobe.errors import ProtocolError

# A reply longer than this many lines is not a reply: it is a peer flooding us.
MAX_REPLY_LINES = 256


def decode(line: bytes | str) -> str:
    """A received line as text: UTF-8 where valid, U+FFFD elsewhere (never raises)."""
    if isinstance(line, str):
        return line
    return line.decode("utf-8", "replace")


def preview(text: str, limit: int = 80) -> str:
    """A short, quoted excerpt of `text` for error messages."""
    cut = text if len(text) <= limit else text[: limit - 1] + "…"
    return repr(cut)


# -- SMTP (RFC 5321 §4.2) -------------------------------------------------------------

_SMTP_LINE = re.compile(r"([1-5][0-9][0-9])(?:([ -])(.*))?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class SmtpLine:
    """One line of an SMTP reply: its code, whether it is the last, and its text."""

    code: int
    last: bool
    text: str


@dataclass(frozen=True, slots=True)
class SmtpReply:
    """A complete (possibly multi-line) SMTP reply."""

    code: int
    lines: tuple[str, ...]  # the text of each line, without code and separator

    @property
    def text(self) -> str:
        """The first line's text: what a human reads as "the reply"."""
        return self.lines[0] if self.lines else ""

    def describe(self) -> str:
        return f"{self.code} {self.text}".rstrip()


def parse_smtp_line(line: bytes | str) -> SmtpLine:
    """`250-SIZE 1000`, `250 OK`, `220` (a code alone is a final line)."""
    s = decode(line)
    m = _SMTP_LINE.fullmatch(s)
    if m is None:
        raise ProtocolError(f"not an SMTP reply line: {preview(s)}")
    sep = m.group(2)
    return SmtpLine(int(m.group(1)), sep != "-", m.group(3) or "")


class SmtpReplyParser:
    """Feed reply lines one at a time; `feed` returns the reply once its last line came.

    Incremental so a reader can stop at the final line without reading further, and
    bounded so a peer cannot make one reply endless.
    """

    def __init__(self, max_lines: int = MAX_REPLY_LINES) -> None:
        self.max_lines = max_lines
        self._code: int | None = None
        self._lines: list[str] = []

    def feed(self, line: bytes | str) -> SmtpReply | None:
        parsed = parse_smtp_line(line)
        if self._code is None:
            self._code = parsed.code
        elif parsed.code != self._code:
            raise ProtocolError(
                f"reply code changed within a multi-line reply ({self._code} then {parsed.code})"
            )
        self._lines.append(parsed.text)
        if parsed.last:
            reply = SmtpReply(self._code, tuple(self._lines))
            self._code, self._lines = None, []
            return reply
        if len(self._lines) >= self.max_lines:
            raise ProtocolError(f"reply longer than {self.max_lines} lines")
        return None


def parse_smtp_reply(lines: Sequence[bytes | str]) -> SmtpReply:
    """Exactly one complete reply from `lines` (nothing before or after it)."""
    parser = SmtpReplyParser()
    for i, line in enumerate(lines):
        reply = parser.feed(line)
        if reply is not None:
            if i != len(lines) - 1:
                raise ProtocolError("lines after the final line of a reply")
            return reply
    raise ProtocolError("incomplete reply (no final line)")


_DIGITS = re.compile(r"[0-9]{1,19}")
_EHLO_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
# Cisco ASA ESMTP inspection overwrites the extensions it does not allow with X's,
# keeping the length and the last letter: STARTTLS becomes XXXXXXXA.
_MASKED_KEYWORD = re.compile(r"X{3,}[A-Z]?")
STRIPPED_STARTTLS = "XXXXXXXA"
# Cisco PIX/ASA "fixup smtp"/Mailguard replaces the greeting's text with asterisks,
# keeping digits and spaces (nmap: "Cisco PIX sanitized smtpd").
_MASKED_BANNER = re.compile(r"[*0-9\s]+")


@dataclass(frozen=True, slots=True)
class EhloInfo:
    """What an EHLO reply says: the server's name and its extensions."""

    domain: str
    greeting: str
    extensions: dict[str, str] = field(default_factory=dict)  # KEYWORD -> parameters
    masked: tuple[str, ...] = ()  # keywords overwritten by a middlebox (XXXXXXXA)
    unparsed: tuple[str, ...] = ()  # lines that are not ehlo-lines

    @property
    def starttls(self) -> bool:
        return "STARTTLS" in self.extensions

    @property
    def starttls_stripped(self) -> bool:
        return STRIPPED_STARTTLS in self.masked

    @property
    def auth_mechanisms(self) -> list[str]:
        return self.extensions.get("AUTH", "").split()

    @property
    def size_limit(self) -> int | None:
        """SIZE's parameter (RFC 1870); None when absent, 0 means "no fixed limit"."""
        if "SIZE" not in self.extensions:
            return None
        value = self.extensions["SIZE"].split()[:1]
        return int(value[0]) if value and _DIGITS.fullmatch(value[0]) else None


def parse_ehlo(reply: SmtpReply) -> EhloInfo:
    """The extensions of a 250 EHLO reply (RFC 5321 §4.1.1.1, ehlo-line)."""
    if reply.code != 250:
        raise ProtocolError(f"not a positive EHLO reply: {reply.describe()}")
    domain, _, greeting = reply.lines[0].strip().partition(" ")
    extensions: dict[str, str] = {}
    masked: list[str] = []
    unparsed: list[str] = []
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        # Pre-RFC 2554 servers (old Exchange among them) announce "AUTH=LOGIN PLAIN"
        # for Outlook Express; treat it as AUTH.
        if "=" in keyword:
            keyword, _, first = keyword.partition("=")
            params = f"{first} {params}".strip()
        if not _EHLO_KEYWORD.fullmatch(keyword):
            unparsed.append(line)
            continue
        keyword = keyword.upper()
        if _MASKED_KEYWORD.fullmatch(keyword):
            masked.append(keyword)
            continue
        params = " ".join(params.split())
        if keyword in extensions and params:
            merged = extensions[keyword].split()
            merged += [p for p in params.split() if p not in merged]
            extensions[keyword] = " ".join(merged)
        else:
            extensions.setdefault(keyword, params)
    return EhloInfo(domain, greeting.strip(), extensions, tuple(masked), tuple(unparsed))


def is_masked_banner(text: str) -> bool:
    """A greeting text of only asterisks, digits and spaces, with some asterisks."""
    return bool(_MASKED_BANNER.fullmatch(text)) and text.count("*") >= 3


# -- POP3 (RFC 1939, 2449) ------------------------------------------------------------

_POP3_STATUS = re.compile(r"(\+OK|-ERR)(?:[ \t](.*))?", re.DOTALL | re.IGNORECASE)
_APOP_TIMESTAMP = re.compile(r"<[^<>\s@]+@[^<>\s]+>")


@dataclass(frozen=True, slots=True)
class Pop3Status:
    """`+OK text` (ok) or `-ERR text`."""

    ok: bool
    text: str

    def describe(self) -> str:
        return f"{'+OK' if self.ok else '-ERR'} {self.text}".rstrip()


def parse_pop3_status(line: bytes | str) -> Pop3Status:
    s = decode(line)
    m = _POP3_STATUS.fullmatch(s)
    if m is None:
        raise ProtocolError(f"not a POP3 status line: {preview(s)}")
    return Pop3Status(m.group(1).upper() == "+OK", (m.group(2) or "").strip())


def apop_timestamp(text: str) -> str | None:
    """The `<process.clock@host>` timestamp of an APOP-capable greeting (RFC 1939 §7)."""
    m = _APOP_TIMESTAMP.search(text)
    return m.group(0) if m else None


class DotBlockParser:
    """A dot-terminated multi-line block (POP3 RFC 1939 §3, NNTP RFC 3977 §3.1.1).

    `feed` returns True at the terminating `.` line; `lines` are then dot-unstuffed.
    """

    def __init__(self, max_lines: int = MAX_REPLY_LINES) -> None:
        self.max_lines = max_lines
        self.lines: list[str] = []
        self.done = False

    def feed(self, line: bytes | str) -> bool:
        if self.done:
            raise ProtocolError("data after the end of a multi-line block")
        s = decode(line)
        if s == ".":
            self.done = True
            return True
        if len(self.lines) >= self.max_lines:
            raise ProtocolError(f"multi-line block longer than {self.max_lines} lines")
        self.lines.append(s[1:] if s.startswith(".") else s)
        return False


def parse_dot_block(lines: Sequence[bytes | str]) -> list[str]:
    """The unstuffed lines of one block; the last line must be the terminating `.`."""
    parser = DotBlockParser()
    for i, line in enumerate(lines):
        if parser.feed(line):
            if i != len(lines) - 1:
                raise ProtocolError("lines after the end of a multi-line block")
            return parser.lines
    raise ProtocolError("multi-line block not terminated by '.'")


def parse_capability_lines(lines: Iterable[str]) -> dict[str, str]:
    """POP3 CAPA / NNTP CAPABILITIES lines: `TAG args...` -> {"TAG": "args"}."""
    caps: dict[str, str] = {}
    for line in lines:
        words = line.split()
        if not words:
            continue
        caps.setdefault(words[0].upper(), " ".join(words[1:]))
    return caps


# -- IMAP4 (RFC 3501 §7, RFC 9051 §7) -------------------------------------------------

# tag = 1*<any ASTRING-CHAR except "+">: printable ASCII minus the atom-specials.
_IMAP_TAG = re.compile(r"[!#$&',\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+")
_IMAP_STATUS = ("OK", "NO", "BAD", "PREAUTH", "BYE")
_LITERAL = re.compile(r"\{([0-9]{1,10})\+?\}$")


@dataclass(frozen=True, slots=True)
class ImapResponse:
    """One IMAP response line.

    `tag` is "*" (untagged), "+" (continuation) or the command's tag; `kind` is the
    status (OK, NO, BAD, PREAUTH, BYE) or the untagged keyword (CAPABILITY, EXISTS, ...);
    `code` is the response code inside `[...]`, `text` the human-readable rest;
    `literal` the size of a `{n}` literal announced at the end of the line.
    """

    tag: str
    kind: str
    code: str | None = None
    text: str = ""
    literal: int | None = None

    @property
    def untagged(self) -> bool:
        return self.tag == "*"

    @property
    def is_status(self) -> bool:
        return self.kind in _IMAP_STATUS

    def describe(self) -> str:
        code = f" [{self.code}]" if self.code is not None else ""
        return f"{self.tag} {self.kind}{code} {self.text}".rstrip()


def parse_imap_response(line: bytes | str) -> ImapResponse:
    """`* OK [CAPABILITY IMAP4rev1 STARTTLS] ready`, `A1 OK done`, `* 3 EXISTS`, `+ go`."""
    s = decode(line)
    m = _LITERAL.search(s)
    literal = int(m.group(1)) if m else None
    head, _, rest = s.partition(" ")
    if head == "+":
        return ImapResponse("+", "CONTINUE", None, rest, literal)
    if head != "*" and not _IMAP_TAG.fullmatch(head):
        raise ProtocolError(f"not an IMAP response: {preview(s)}")
    word, _, rest = rest.partition(" ")
    if head == "*" and _DIGITS.fullmatch(word):  # "* 23 EXISTS": message data
        kind, _, rest = rest.partition(" ")
        return ImapResponse("*", kind.upper(), None, f"{word} {rest}".strip(), literal)
    kind = word.upper()
    if not kind or not kind.isascii() or not kind.replace("-", "").isalnum():
        raise ProtocolError(f"not an IMAP response: {preview(s)}")
    if head != "*" and kind not in ("OK", "NO", "BAD"):
        raise ProtocolError(f"tagged response is not OK, NO or BAD: {preview(s)}")
    code: str | None = None
    if kind in _IMAP_STATUS and rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ProtocolError(f"unterminated response code: {preview(s)}")
        code, rest = rest[1:end], rest[end + 1 :].lstrip(" ")
    return ImapResponse(head, kind, code, rest, literal)


def parse_capability_list(text: str) -> list[str]:
    """Capability atoms, upper-cased (they are case-insensitive), in order, once each."""
    out: list[str] = []
    for atom in text.split():
        atom = atom.upper()
        if atom not in out:
            out.append(atom)
    return out


def imap_capabilities(resp: ImapResponse) -> list[str] | None:
    """The capabilities a response carries (`* CAPABILITY ...` or `[CAPABILITY ...]`)."""
    if resp.untagged and resp.kind == "CAPABILITY":
        return parse_capability_list(resp.text)
    if resp.code is not None:
        name, _, args = resp.code.partition(" ")
        if name.upper() == "CAPABILITY":
            return parse_capability_list(args)
    return None


def imap_auth_mechanisms(capabilities: Iterable[str]) -> list[str]:
    """`AUTH=PLAIN AUTH=LOGIN` -> ["PLAIN", "LOGIN"]."""
    return [c[5:] for c in capabilities if c.startswith("AUTH=") and len(c) > 5]


# -- NNTP (RFC 3977 §3.2, §5.2) -------------------------------------------------------

_NNTP_STATUS = re.compile(r"([1-5][0-9][0-9])(?:[ \t](.*))?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class NntpStatus:
    code: int
    text: str

    def describe(self) -> str:
        return f"{self.code} {self.text}".rstrip()


def parse_nntp_status(line: bytes | str) -> NntpStatus:
    s = decode(line)
    m = _NNTP_STATUS.fullmatch(s)
    if m is None:
        raise ProtocolError(f"not an NNTP status line: {preview(s)}")
    return NntpStatus(int(m.group(1)), (m.group(2) or "").strip())
