"""exprobe.net.dns without the lab: server parsing, and scripted DNS servers for what
dnsmasq does not do on demand (SERVFAIL) and for hostile answers (garbage, silence)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dns.message
import dns.rcode
import pytest

from exprobe.errors import InputError
from exprobe.net.dns import Resolver, parse_server


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("10.0.0.53", ("10.0.0.53", 53)), ("10.0.0.53:5353", ("10.0.0.53", 5353)),
     ("[fd00::53]:5353", ("fd00::53", 5353)), ("fd00::53", ("fd00::53", 53))],
)  # fmt: skip
def test_parse_server(text: str, parsed: tuple[str, int]) -> None:
    assert parse_server(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [("ns1.example", "--dns-server 'ns1.example': not an IP address"),
     ("10.0.0.53:x", "--dns-server '10.0.0.53:x': port 'x' is not a number"),
     ("10.0.0.53:0", "--dns-server '10.0.0.53:0': port 0 is not in 1-65535"),
     ("[fd00::53]x", "--dns-server '[fd00::53]x': expected ADDR[:PORT] or [V6]:PORT")],
)  # fmt: skip
def test_parse_server_rejects(text: str, message: str) -> None:
    with pytest.raises(InputError) as e:
        parse_server(text)
    assert str(e.value) == message


@contextmanager
def udp_server(answer: Callable[[bytes], bytes | None]) -> Iterator[int]:
    """A UDP DNS server on 127.0.0.1 answering each query with `answer(query)` (None:
    silence); bounded to 200 queries and the test's life."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        for _ in range(200):
            if stop.is_set():
                return
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            reply = answer(data)
            if reply is not None:
                sock.sendto(reply, peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        sock.close()


def rcode(code: int) -> Callable[[bytes], bytes]:
    def answer(query: bytes) -> bytes:
        reply = dns.message.make_response(dns.message.from_wire(query))
        reply.set_rcode(code)
        return reply.to_wire()

    return answer


@pytest.mark.parametrize(
    ("code", "error"), [(dns.rcode.SERVFAIL, "servfail"), (dns.rcode.REFUSED, "refused"),
                        (dns.rcode.NXDOMAIN, "nxdomain")],
)  # fmt: skip
def test_failures_are_named(code: int, error: str) -> None:
    with udp_server(rcode(code)) as port:
        ans = asyncio.run(Resolver(f"127.0.0.1:{port}", timeout=2).addresses("x.lab"))
    assert ans.error == error
    assert ans.records == ()


@pytest.mark.parametrize(
    ("answer", "error"),
    # dnspython drops what does not parse as the answer to its query and waits on:
    # garbage, silence and a truncated answer all end as a timeout, within the lifetime.
    [(lambda q: b"\xff" * 40, "timeout"),
     (lambda q: None, "timeout"),
     (lambda q: q[:2] + b"\x81\x80" + b"\x00\x01\x00\x05" + bytes(8), "timeout")],
)  # fmt: skip
def test_hostile_answers_end_in_a_named_failure(
    answer: Callable[[bytes], bytes | None], error: str
) -> None:
    t0 = time.monotonic()
    with udp_server(answer) as port:
        ans = asyncio.run(Resolver(f"127.0.0.1:{port}", timeout=1).query("x.lab", "A"))
    assert ans.error == error
    assert time.monotonic() - t0 < 3
