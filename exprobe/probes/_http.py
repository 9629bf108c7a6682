"""An HTTP/1.1 client over the check's own `Stream`, shared by the `http` and
`exchange-http` probes.

The runner owns the socket, the deadline and the TLS handshake (`tls = implicit`); this
client only frames requests and reads responses through `exprobe.wire.http` (h11), on
one keep-alive connection: NTLM's NEGOTIATE and CHALLENGE must travel on the same one.
A response that did not leave the connection reusable (`Connection: close`, a body cut
at its bound, a request left open) ends the client: a further request is refused rather
than silently sent on a new connection the runner did not open.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from exprobe.errors import ApplicationError, ProtocolError
from exprobe.net.stream import Stream
from exprobe.probes.base import ProbeContext
from exprobe.wire import ntlm
from exprobe.wire.http import HttpConnection, HttpResponse, clean, schemes, token_for

READ_SIZE = 16384


class HttpClient:
    """Requests on one connection; `host` is the Host header (and the name in notes)."""

    def __init__(self, stream: Stream, host: str) -> None:
        self.stream = stream
        self.host = host
        self._conn = HttpConnection()
        self._used = False
        self.requests = 0

    @property
    def reusable(self) -> bool:
        return not self._used or self._conn.reusable

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        *,
        content_length: int | None = None,
    ) -> HttpResponse:
        """Send one request and read its response (bounded; EOFError if the peer closed
        before answering, ProtocolError for what is not HTTP)."""
        if self._used:
            if not self._conn.reusable:
                raise ProtocolError("the server closed the connection: no further request")
            self._conn.next_cycle()
        self._used = True
        self.requests += 1
        try:
            data = self._conn.request(
                method, target, self.host, headers, body, content_length=content_length
            )
        except ValueError as exc:
            raise ApplicationError(f"cannot send this request: {exc}") from exc
        head = data.split(b"\r\n", 1)[0].decode("latin-1")
        await self.stream.write(data, note=f"{head} ({len(data)} bytes)")
        while True:
            chunk = await self.stream.read_some(READ_SIZE)
            resp = self._conn.feed(chunk)
            if resp is not None:
                self.stream.transcript.add(
                    "S", f"HTTP/{resp.http_version} {resp.status} {clean(resp.reason, 80)}"
                )
                return resp
            if not chunk:  # pragma: no cover - feed(b'') always ends or raises
                raise EOFError("closed before the response ended")


def response_facts(resp: HttpResponse) -> dict[str, Any]:
    """The facts every HTTP check records about a response."""
    facts: dict[str, Any] = {"status": resp.status}
    for name in ("location", "server", "content-type"):
        value = resp.header(name)
        if value is not None:
            facts[name.replace("-", "_")] = clean(value)
    challenges = resp.challenges()
    facts["www_authenticate"] = [clean(s, 40) for s in schemes(challenges)]
    ex = resp.exchange_headers()
    if ex:
        facts["exchange_headers"] = ex
    if resp.body_truncated:
        facts["body_truncated"] = True
    return facts


NTLM_SCHEMES = ("NTLM", "Negotiate")


async def ntlm_identity(
    client: HttpClient,
    method: str,
    target: str,
    offered: list[str],
    headers: list[tuple[str, str]] | None = None,
    ctx: ProbeContext | None = None,
) -> dict[str, Any] | None:
    """Send an NTLMSSP NEGOTIATE with the first of NTLM/Negotiate the server offered and
    return the CHALLENGE's identity facts (plus `scheme`), or None when neither is offered.

    Raises ProtocolError when the answer carries no decodable CHALLENGE."""
    scheme = next((s for s in NTLM_SCHEMES if s.lower() in (o.lower() for o in offered)), None)
    if scheme is None:
        return None
    auth = [("Authorization", f"{scheme} {ntlm.negotiate_b64()}")]
    resp = await client.request(method, target, [*(headers or []), *auth])
    token = token_for(resp.challenges(), scheme)
    if resp.status != 401 or token is None:
        raise ProtocolError(
            f"NTLM NEGOTIATE answered with {resp.status} and no {scheme} challenge",
            facts={"ntlm_status": resp.status},
        )
    facts = ntlm.decode_challenge_b64(token).facts(dt.datetime.now(dt.UTC))
    facts["scheme"] = scheme
    return facts
