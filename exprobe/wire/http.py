"""HTTP/1.1 requests and responses over h11 (RFC 9110, 9112), bounded, for probes.

h11 is the codec: it frames requests, parses status lines, headers, Content-Length and
chunked bodies, and refuses malformed ones (`h11.RemoteProtocolError`).  This module
adds the bounds a probe needs (header block, body bytes, interim responses), turns every
h11 failure into `ProtocolError`, and reads what Exchange says about itself: the
`WWW-Authenticate` schemes (RFC 9110 §11.6.1) with their tokens, and the headers that
name the frontend, the backend and the build.

`HttpConnection` is sans-I/O: `request()` gives the bytes to send, `feed()` takes the
bytes received and returns the `HttpResponse` once complete; `next_cycle()` readies the
connection for the next request on the same keep-alive connection (NTLM needs it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import h11

from exprobe.errors import ProtocolError

MAX_HEADER_BYTES = 32 * 1024
"""Largest status line + header block accepted; IIS's own default limit is 64 KiB, an
Exchange 401 is about 1 KiB."""
MAX_BODY = 64 * 1024
"""Body bytes kept; the rest is not read (the connection is then not reused)."""
MAX_INTERIM = 8
"""1xx responses skipped before the final one."""
VALUE_CHARS = 400
"""Longest header value kept in facts."""

EXCHANGE_HEADERS = (
    "X-OWA-Version",
    "X-FEServer",
    "X-BEServer",
    "X-CalculatedBETarget",
    "X-DiagInfo",
    "X-BackEndHttpStatus",
    "X-CasErrorCode",
    "X-ServerApplication",
    "MS-Server-ActiveSync",
    "request-id",
)
"""Headers Exchange sets (research note §b.3): their presence says Exchange answered."""

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(value: str, limit: int = VALUE_CHARS) -> str:
    """A header value safe to print: control characters escaped, length bounded."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(slots=True)
class HttpResponse:
    """A final response: status, headers (names lower-case, values latin-1) and body."""

    status: int
    reason: str
    http_version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    body_truncated: bool = False
    interim: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        key = name.lower()
        return next((v for k, v in self.headers if k == key), None)

    def header_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for k, v in self.headers if k == key]

    def exchange_headers(self) -> dict[str, str]:
        """The Exchange headers present, under their canonical names, values cleaned."""
        out: dict[str, str] = {}
        for name in EXCHANGE_HEADERS:
            value = self.header(name)
            if value is not None:
                out[name] = clean(value)
        return out

    def challenges(self) -> list[Challenge]:
        return parse_www_authenticate(self.header_all("www-authenticate"))

    def text(self, limit: int = 4096) -> str:
        """The start of the body as text (latin-1, never fails)."""
        return self.body[:limit].decode("latin-1")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a WWW-Authenticate header: the scheme, and its token68 or params."""

    scheme: str
    token: str | None = None
    params: tuple[tuple[str, str], ...] = ()


def _split_commas(value: str) -> list[str]:
    """Split at commas outside quoted strings."""
    parts: list[str] = []
    cur: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _param(item: str) -> tuple[str, str] | None:
    name, eq, value = item.partition("=")
    if not eq or not _TOKEN.match(name.strip()):
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return name.strip().lower(), value


def parse_www_authenticate(values: list[str], limit: int = 32) -> list[Challenge]:
    """The challenges of one or more WWW-Authenticate values (RFC 9110 §11.6.1).

    `Negotiate, NTLM` is two challenges; `Basic realm="a, b", NTLM` is two, the comma
    in the quoted realm notwithstanding.  At most `limit` challenges are kept.
    """
    out: list[Challenge] = []
    for value in values:
        for item in _split_commas(value):
            word, _, rest = item.partition(" ")
            if "=" not in word and _TOKEN.match(word):
                rest = rest.strip()
                if not rest:
                    out.append(Challenge(word))
                elif (p := _param(rest)) is not None and not rest.endswith("="):
                    out.append(Challenge(word, params=(p,)))
                else:
                    out.append(Challenge(word, token=rest))
            elif out and (p := _param(item)) is not None:
                prev = out[-1]
                out[-1] = Challenge(prev.scheme, prev.token, (*prev.params, p))
            if len(out) >= limit:
                return out
    return out


def schemes(challenges: list[Challenge]) -> list[str]:
    """The scheme names, in order, without repeats (as sent: `NTLM`, `Negotiate`, `Basic`)."""
    seen: list[str] = []
    for c in challenges:
        if c.scheme.lower() not in (s.lower() for s in seen):
            seen.append(c.scheme)
    return seen


def token_for(challenges: list[Challenge], scheme: str) -> str | None:
    """The token68 sent with `scheme` (case-insensitive), e.g. an NTLM CHALLENGE."""
    return next(
        (c.token for c in challenges if c.scheme.lower() == scheme.lower() and c.token), None
    )


class HttpConnection:
    """One HTTP/1.1 client connection's state (h11), with the probe's bounds."""

    def __init__(
        self, *, max_header_bytes: int = MAX_HEADER_BYTES, max_body: int = MAX_BODY
    ) -> None:
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_bytes)
        self._max_body = max_body
        self._response: HttpResponse | None = None
        self._body = bytearray()
        self._interim: list[int] = []
        self._seen = 0
        self.body_complete = False

    def request(
        self,
        method: str,
        target: str,
        host: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        *,
        content_length: int | None = None,
    ) -> bytes:
        """The bytes of a request.  `content_length` announces a length without sending
        a body (RPC over HTTP channels, whose bodies flow for hours): the request is then
        left open on our side and the connection cannot be reused."""
        hdrs: list[tuple[str, str]] = [("Host", host)]
        hdrs += [(k, v) for k, v in (headers or []) if k.lower() not in ("host", "content-length")]
        if content_length is not None:
            hdrs.append(("Content-Length", str(content_length)))
        elif body is not None or method in ("POST", "PUT"):
            hdrs.append(("Content-Length", str(len(body or b""))))
        try:
            data = self._conn.send(h11.Request(method=method, target=target, headers=hdrs))
            if not content_length:
                if body:
                    data += self._conn.send(h11.Data(data=body))
                data += self._conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise ValueError(f"bad request: {exc}") from exc
        return data or b""

    def feed(self, data: bytes) -> HttpResponse | None:
        """Bytes received (b'' at EOF); the response once complete (or its body bound hit).

        Raises `ProtocolError` for what is not HTTP, for an oversized header block and for
        a broken body framing; `EOFError` when the peer closed before any response."""
        if self._seen == 0 and data and not b"HTTP/".startswith(data[:5]):
            raise ProtocolError(f"not an HTTP response: {clean(data[:40].decode('latin-1'))}")
        self._seen += len(data)
        try:
            self._conn.receive_data(data)
            while True:
                event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    return None
                if isinstance(event, h11.InformationalResponse):
                    self._interim.append(event.status_code)
                    if len(self._interim) > MAX_INTERIM:
                        raise ProtocolError(f"more than {MAX_INTERIM} interim (1xx) responses")
                elif isinstance(event, h11.Response):
                    self._response = HttpResponse(
                        status=event.status_code,
                        reason=event.reason.decode("latin-1"),
                        http_version=event.http_version.decode("ascii", "replace"),
                        headers=[
                            (k.decode("latin-1").lower(), v.decode("latin-1"))
                            for k, v in event.headers
                        ],
                        interim=list(self._interim),
                    )
                elif isinstance(event, h11.Data):
                    room = self._max_body - len(self._body)
                    self._body += event.data[: max(room, 0)]
                    if len(event.data) > room:
                        return self._finish(truncated=True)
                elif isinstance(event, h11.EndOfMessage):
                    self.body_complete = True
                    return self._finish(truncated=False)
                elif isinstance(event, h11.ConnectionClosed):
                    if self._response is None:
                        raise EOFError("closed before any response")
                    return self._finish(truncated=False)
                else:  # pragma: no cover - h11 has no other client-side events
                    raise ProtocolError(f"unexpected HTTP event {type(event).__name__}")
        except h11.RemoteProtocolError as exc:
            if not data and self._seen == 0:
                raise EOFError("closed before any response") from exc
            if not data:
                raise ProtocolError(f"response cut short after {self._seen} bytes") from exc
            raise ProtocolError(f"malformed HTTP response: {exc}") from exc

    def _finish(self, *, truncated: bool) -> HttpResponse:
        assert self._response is not None
        self._response.body = bytes(self._body)
        self._response.body_truncated = truncated
        return self._response

    @property
    def reusable(self) -> bool:
        """Both sides finished a keep-alive exchange: another request may follow."""
        return bool(self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE)

    def next_cycle(self) -> None:
        """Ready for the next request on the same connection (only when `reusable`)."""
        self._conn.start_next_cycle()
        self._response = None
        self._body = bytearray()
        self._interim = []
        self._seen = 0
        self.body_complete = False
