"""http and exchange-http against scripted hostile peers on 127.0.0.1.

Endless headers, a 2 GB Content-Length, chunked garbage, slowloris replies, escape codes,
NTLM challenges that are not base64 or lie about their lengths, a connection closed after
the 401, and the middlebox answers that make `intercepted`; each through the real runner
with the exact status and failed step.  The happy paths run against nginx and the scripted
Exchange backends in tests/test_http_lab.py.
"""

from __future__ import annotations

import asyncio
import base64
import tracemalloc

from exprobe.wire import ntlm
from tests.peers.exchange_http import Exchange
from tests.test_probes_text_hostile import Peer, Reader, Writer, run, serving

EX = Exchange("EX1", "corp.example", "15.2.1544.4")


async def head(r: Reader) -> bytes:
    """The client's request head (up to the blank line); b'' at EOF."""
    try:
        return await r.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""


def response(status: int, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def test_endless_headers_are_a_protocol_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        await head(r)
        w.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(10000):
            w.write(b"X-Endless: " + b"a" * 90 + b"\r\n")
            await w.drain()

    async with serving(script) as peer:
        res = await run("http", peer.port)
    assert (res.status.value, res.failed_step) == ("protocol-error", "request")
    assert res.message.startswith("malformed HTTP response: ")


async def test_two_gigabyte_body_is_bounded() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        await head(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2147483648\r\n\r\n")
        for _ in range(2000):
            w.write(b"B" * 65536)
            await w.drain()

    tracemalloc.start()
    async with serving(script) as peer:
        res = await run("http", peer.port)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert res.status.value == "success"
    assert (res.facts["status"], res.facts["body_truncated"]) == (200, True)
    assert peak < 8 * 1024 * 1024


async def test_chunked_garbage_is_a_protocol_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        await head(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nnot-hex\r\n")
        await p.stop.wait()

    async with serving(script) as peer:
        res = await run("http", peer.port)
    assert (res.status.value, res.failed_step) == ("protocol-error", "request")


async def test_slowloris_reply_is_io_timeout() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        await head(r)
        w.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(200):
            w.write(b"X")
            await w.drain()
            await asyncio.sleep(0.05)

    async with serving(script) as peer:
        res = await run("http", peer.port, deadline=0.6)
    assert (res.status.value, res.failed_step) == ("io-timeout", "request")
    assert res.elapsed_ms < 700


async def test_escape_codes_in_headers_are_escaped() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        await head(r)
        w.write(response(200, [("Server", "evil\x1b[2J"), ("X-FEServer", "EX1\x07")]))
        await w.drain()

    async with serving(script) as peer:
        res = await run("http", peer.port)
    assert res.status.value == "success"
    assert res.facts["server"] == "evil\\x1b[2J"
    assert res.facts["exchange_headers"] == {"X-FEServer": "EX1\\x07"}


def ntlm_peer(token: str) -> object:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        await head(r)
        w.write(response(401, [("WWW-Authenticate", "NTLM")]))
        await head(r)
        w.write(response(401, [("WWW-Authenticate", f"NTLM {token}")]))
        await w.drain()
        await p.stop.wait()

    return script


async def test_ntlm_challenge_not_base64() -> None:
    async with serving(ntlm_peer("!!!!")) as peer:  # type: ignore[arg-type]
        res = await run("http", peer.port, ntlm=True)
    assert (res.status.value, res.failed_step, res.message) == (
        "protocol-error", "ntlm", "NTLM challenge is not base64")


async def test_ntlm_challenge_with_lying_lengths() -> None:
    good = bytearray(ntlm.encode_challenge(
        netbios_computer="EX1", netbios_domain="CORP", dns_computer="ex1.corp.example",
        dns_domain="corp.example"))
    good[66:68] = (60000).to_bytes(2, "little")  # the first AV pair's length runs past the end
    async with serving(ntlm_peer(base64.b64encode(bytes(good)).decode())) as peer:  # type: ignore[arg-type]
        res = await run("http", peer.port, ntlm=True)
    assert (res.status.value, res.failed_step) == ("protocol-error", "ntlm")


async def test_ntlm_truncated_challenge() -> None:
    raw = ntlm.encode_challenge(
        netbios_computer="EX1", netbios_domain="CORP", dns_computer="ex1.corp.example",
        dns_domain="corp.example")[:40]
    async with serving(ntlm_peer(base64.b64encode(raw).decode())) as peer:  # type: ignore[arg-type]
        res = await run("http", peer.port, ntlm=True)
    assert (res.status.value, res.failed_step) == ("protocol-error", "ntlm")


async def test_connection_closed_after_the_401_is_a_warning() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        await head(r)
        w.write(response(401, [("WWW-Authenticate", "NTLM"), ("Connection", "close")]))
        await w.drain()

    async with serving(script) as peer:
        res = await run("http", peer.port, ntlm=True)
    assert res.status.value == "success"
    assert list(res.warnings) == ["the server closed the connection after its answer: NTLM identity not read"]


async def test_expect_status() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        await head(r)
        w.write(response(404, []))
        await w.drain()

    async with serving(script) as peer:
        res = await run("http", peer.port, expect_status=(200, 302))
    assert (res.status.value, res.failed_step, res.message) == (
        "application-error", "expect", "HTTP 404 X, expected 200, 302")


# -- exchange-http: what is not Exchange -------------------------------------------------


def canned(status: int, headers: list[tuple[str, str]], body: bytes = b"") -> object:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        while await head(r):
            w.write(response(status, headers, body))
            await w.drain()

    return script


LOGIN = b'<!DOCTYPE html><html><form action="/login"><input type="password" name="p"></form></html>'


async def test_waf_login_page_is_intercepted() -> None:
    script = canned(200, [("Server", "BIG-IP"), ("Content-Type", "text/html")], LOGIN)
    async with serving(script) as peer:  # type: ignore[arg-type]
        res = await run("exchange-http", peer.port, vdir="ews")
    assert (res.status.value, res.failed_step) == ("intercepted", "request")
    assert res.message == "intercepted: GET /EWS/Exchange.asmx answered 200 with a login page that is not Exchange's"
    assert res.facts["interception"] == {
        "status": 200, "server": "BIG-IP", "content_type": "text/html", "login_form": True,
        "reason": "GET /EWS/Exchange.asmx answered 200 with a login page that is not Exchange's",
    }


async def test_rpc_verbs_refused_is_intercepted() -> None:
    script = canned(405, [("Server", "nginx"), ("Content-Type", "text/html")], b"<html>405</html>")
    async with serving(script) as peer:  # type: ignore[arg-type]
        res = await run("exchange-http", peer.port, vdir="rpc")
    assert (res.status.value, res.failed_step) == ("intercepted", "request")
    assert res.facts["rpc_verbs"] == "refused"
    assert res.facts["interception"]["status"] == 405


async def test_ntlm_identity_of_another_server_is_intercepted() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        while req := await head(r):
            if b"healthcheck.htm" in req:
                w.write(response(200, EX.headers(), b"200 OK<br/>ex1.corp.example"))
                continue
            auth = b"Authorization: NTLM " in req
            hdrs = [*EX.headers(), ("WWW-Authenticate", f"NTLM {EX.challenge()}" if auth else "NTLM")]
            w.write(response(401, hdrs))
            await w.drain()

    async with serving(script) as peer:
        res = await run("exchange-http", peer.port, vdir="ews", expect_server="ex1.corp.example")
        assert res.status.value == "success", res.message
        res = await run("exchange-http", peer.port, vdir="ews", expect_server="ex2.corp.example")
    # X-FEServer (a NetBIOS name) already disagrees, at the first answer.
    assert (res.status.value, res.failed_step) == ("intercepted", "request")
    assert res.message == "intercepted: X-FEServer names EX1, not ex2.corp.example"
    assert res.facts["interception"]["expected_server"] == "ex2.corp.example"


async def test_windows_vdir_without_ntlm_is_intercepted() -> None:
    script = canned(401, [*EX.headers(), ("WWW-Authenticate", 'Basic realm="x"')])
    async with serving(script) as peer:  # type: ignore[arg-type]
        res = await run("exchange-http", peer.port, vdir="mapi")
    assert (res.status.value, res.failed_step) == ("intercepted", "request")
    assert res.message == (
        "intercepted: POST /mapi/emsmdb/ answered 401 without NTLM or Negotiate, which Exchange offers there")


async def test_negotiate_only_carries_the_ntlm_token() -> None:
    """Where only Negotiate is offered, the raw NTLMSSP token goes as `Negotiate <b64>`."""
    sent: list[bytes] = []
    connections: list[int] = []

    async def script(r: Reader, w: Writer, p: Peer) -> None:
        connections.append(1)
        while req := await head(r):
            sent.append(req)
            auth = b"Authorization: Negotiate TlRMTVNTUAAB" in req
            hdrs = [*EX.headers(), ("WWW-Authenticate", f"Negotiate {EX.challenge()}" if auth else "Negotiate")]
            w.write(response(401, hdrs))
            await w.drain()

    async with serving(script) as peer:
        res = await run("http", peer.port, path="/EWS/Exchange.asmx", ntlm=True)
    assert res.status.value == "success", res.message
    assert (res.facts["ntlm"]["scheme"], res.facts["ntlm"]["dns_computer"]) == ("Negotiate", "ex1.corp.example")
    assert (len(sent), len(connections)) == (2, 1)  # both requests on one connection
