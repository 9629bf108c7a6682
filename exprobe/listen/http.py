"""The server side of HTTP/1.1 for listeners and scripted peers: h11, bounded, keep-alive.

`HttpServerSession` is sans-I/O: `receive(data)` takes the bytes a client sent and
returns the bytes to send back; a `Handler` turns each request into an `Answer`.  h11
frames requests and refuses malformed ones; this module adds what a server facing
strangers needs: a bounded header block (431), a bounded request body (read and dropped
up to `max_body` to keep the connection, else answered and closed: the 1 GiB
`RPC_IN_DATA` of an RPC over HTTP channel is answered, never read), a bounded number of
requests per connection, and a plain 400 for anything that is not HTTP.

`responder(handler)` runs a session over a listener connection (`exprobe.listen.core`);
the scripted Exchange backend of the lab tests drives the same session over its own
streams (tests/peers/exchange_http.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import h11

from exprobe.listen.core import Conn, Hangup, Responder

MAX_HEADER_BYTES = 16 * 1024  # request line + headers; a browser's are under 8 KiB
MAX_BODY = 64 * 1024  # request body read (and dropped) to keep the connection open
MAX_REQUESTS = 100  # requests on one keep-alive connection (IIS allows more; no client needs it)
READ_SIZE = 16 * 1024
TARGET_CHARS = 80  # of a request target, in the log


@dataclass(frozen=True, slots=True)
class Request:
    """A request as a handler sees it: method, target, headers (lower-case names)."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    http_version: str = "1.1"

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        low = name.lower()
        return next((v for k, v in self.headers if k == low), None)

    @property
    def path(self) -> str:
        """The target without its query, lower-case (IIS paths are case-insensitive)."""
        return self.target.split("?", 1)[0].lower()


@dataclass(frozen=True, slots=True)
class Answer:
    """A response: status, headers (Content-Length is added), body, and a log note."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    note: str = ""  # what the log says beyond the status ("NTLM CHALLENGE", ...)


Handler = Callable[[Request], Answer]


def _bad_request(status: int, why: str) -> bytes:
    reason = {400: "Bad Request", 431: "Request Header Fields Too Large"}.get(status, "Error")
    body = f"{status} {reason}: {why}\r\n".encode("latin-1", "replace")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


@dataclass(slots=True)
class HttpServerSession:
    """One connection's HTTP conversation, sans I/O: bytes in, bytes out."""

    handler: Handler
    max_header_bytes: int = MAX_HEADER_BYTES
    max_body: int = MAX_BODY
    max_requests: int = MAX_REQUESTS
    closed: bool = False
    outcome: str = ""  # why the session ended ("" while open)
    actions: list[str] = field(default_factory=list)  # one per request, for the log
    requests: int = 0
    _conn: h11.Connection | None = None
    _body_seen: int = 0

    def __post_init__(self) -> None:
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)

    def take_actions(self) -> list[str]:
        """The log entries added since the last call."""
        out, self.actions = self.actions, []
        return out

    def receive(self, data: bytes) -> bytes:
        """Feed what the client sent (b'' at its EOF); return what to send back."""
        conn = self._conn
        assert conn is not None
        if self.closed:
            return b""
        try:
            conn.receive_data(data)
        except RuntimeError:  # data after the client's EOF: h11 refuses, so do we
            self._close("sent data after closing")
            return b""
        out: list[bytes] = []
        while not self.closed:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if not data:  # EOF in the middle of a request: nobody left to answer
                    self._close("peer closed mid-request")
                    break
                status = exc.error_status_hint if exc.error_status_hint in (400, 431) else 400
                why = "header block too large" if status == 431 else "not HTTP"
                self.actions.append(f"{why} → {status}")
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    out.append(_bad_request(status, why))
                self._close(f"{why} ({str(exc)[:60]})")
                break
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.Request):
                out.append(self._answer(conn, event))
            elif isinstance(event, h11.Data):
                self._body_seen += len(event.data)
                if self._body_seen > self.max_body:
                    self._close(f"request body over {self.max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                self._next_cycle(conn)
            elif isinstance(event, h11.ConnectionClosed):
                self._close("peer closed")
            else:  # pragma: no cover - h11 has no other server-side events
                self._close("unexpected HTTP event")
        return b"".join(out)

    def _answer(self, conn: h11.Connection, event: h11.Request) -> bytes:
        self.requests += 1
        req = Request(
            event.method.decode("ascii", "replace"),
            event.target.decode("ascii", "replace"),
            tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers),
            event.http_version.decode("ascii", "replace"),
        )
        ans = self.handler(req)
        length = req.header("content-length")
        announced = int(length) if length is not None and length.isdigit() else 0
        chunked = "chunked" in (req.header("transfer-encoding") or "").lower()
        # A body we will not read (too long to drain): answer, then close the connection
        # instead of reading a gigabyte of RPC channel to keep it alive.
        close = announced > self.max_body or (chunked and self.max_body == 0)
        close = close or self.requests >= self.max_requests
        # As bytes: h11 would encode str values as ASCII, and an echoed header may not be.
        headers = [
            (k.encode("latin-1", "replace"), v.encode("latin-1", "replace"))
            for k, v in (*ans.headers, ("Content-Length", str(len(ans.body))))
        ]
        if close:
            headers.append((b"Connection", b"close"))
        body = b"" if req.method == "HEAD" or ans.status in (204, 304) else ans.body
        # No reason phrase, as the lab's Exchange answers have always been (clients read
        # the code; the phrase is optional, RFC 9112 §4).
        out = conn.send(h11.Response(status_code=ans.status, headers=headers)) or b""
        if body:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        shown = req.target
        if len(shown) > TARGET_CHARS:
            shown = shown[: TARGET_CHARS - 1] + "…"
        note = f" ({ans.note})" if ans.note else ""
        self.actions.append(f"{req.method[:16]} {shown} → {ans.status}{note}")
        self._body_seen = 0
        if close or conn.our_state is h11.MUST_CLOSE:
            self._close("answered")
        return out

    def _next_cycle(self, conn: h11.Connection) -> None:
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        elif conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            self._close("answered")

    def _close(self, why: str) -> None:
        self.closed = True
        self.outcome = self.outcome or why


def responder(handler: Handler, *, max_body: int = MAX_BODY) -> Responder:
    """A listener responder that answers HTTP/1.1 requests with `handler`."""

    async def http(conn: Conn) -> None:
        session = HttpServerSession(handler, max_body=max_body)
        while not session.closed:
            data = await conn.read_some(READ_SIZE)
            out = session.receive(data)
            for action in session.take_actions():
                conn.did(action)
            if out:
                await conn.write(out)
            if not data and not session.closed:
                session.outcome = "peer closed"
                break
        if session.outcome.startswith(("not HTTP", "header block too large", "request body")):
            raise Hangup(session.outcome)
        conn.record.outcome = session.outcome or "answered"

    return http
