"""smtp, pop3, imap and nntp against scripted hostile peers on 127.0.0.1.

Each unhappy path (silence, drip, garbage, floods, early close, resets, error replies,
middleboxes, plaintext after STARTTLS, escape codes in a banner) runs through the real
runner (`run_check`) or the CLI and asserts the exact status and failed step.  The
happy paths are tested against real servers in tests/test_probes_text_lab.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from exprobe.engine.runner import RunOptions, run_check
from exprobe.probes import load_all
from exprobe.probes.base import CheckSpec
from exprobe.probes.smtp import MASKED_BANNER_WARNING
from exprobe.result import CheckResult
from tests.helpers import LoopbackServer, exprobe

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Script = Callable[[Reader, Writer, "Peer"], Awaitable[None]]

PROBES = ("smtp", "pop3", "imap", "nntp")
GREETING = {
    "smtp": b"220 mx.test ESMTP ready\r\n",
    "pop3": b"+OK POP3 ready\r\n",
    "imap": b"* OK IMAP4rev1 ready\r\n",
    "nntp": b"200 news.test ready (posting ok)\r\n",
}
# The step each probe is in right after its first command.
FIRST_COMMAND_STEP = {"smtp": "ehlo", "pop3": "capa", "imap": "capability", "nntp": "capabilities"}


class Peer:
    """An asyncio server on 127.0.0.1 that runs `script` for each connection and keeps
    every line the client sent."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: list[bytes] = []
        self.port = 0
        self.stop = asyncio.Event()  # set at exit: scripts waiting "forever" return
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Peer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.stop.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def _handle(self, reader: Reader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with asyncio.timeout(15):  # a bound for the peer itself
                await self.script(reader, writer, self)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.transport.abort()
            self._tasks.discard(task)

    async def line(self, reader: Reader) -> bytes:
        """The client's next line (recorded); b'' at EOF."""
        data = await reader.readline()
        self.received.append(data)
        return data


def reset(writer: Writer) -> None:
    """Close with an RST (SO_LINGER 0), as inspection devices do."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def run(
    probe: str, port: int, tls: str = "none", deadline: float = 3.0, **params: Any
) -> CheckResult:
    spec = load_all()[probe]
    check = CheckSpec(
        id=f"{probe}:{port}",
        probe=probe,
        address="127.0.0.1",
        port=port,
        params=spec.params_type(tls=tls, **params),  # type: ignore[call-arg]
        target="127.0.0.1",
    )
    outcome = await run_check(check, RunOptions(timeout=deadline, connect_timeout=1.0))
    return outcome.result


@contextlib.asynccontextmanager
async def serving(script: Script) -> AsyncIterator[Peer]:
    async with Peer(script) as peer:
        yield peer


async def forever(p: Peer) -> None:
    """Say nothing more until the test is over."""
    await p.stop.wait()


# -- silence, drip, garbage, floods -------------------------------------------------------


@pytest.mark.parametrize("probe", PROBES)
async def test_silent_peer_is_io_timeout_at_greeting(probe: str) -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        await forever(p)

    async with serving(script) as peer:
        res = await run(probe, peer.port, deadline=0.5)
    assert (res.status.value, res.port_state.value, res.failed_step) == (
        "io-timeout",
        "open",
        "greeting",
    )


@pytest.mark.parametrize("probe", PROBES)
async def test_silent_after_first_command_is_io_timeout_there(probe: str) -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(GREETING[probe])
        await p.line(r)
        await forever(p)

    async with serving(script) as peer:
        res = await run(probe, peer.port, deadline=0.5)
    assert (res.status.value, res.failed_step) == ("io-timeout", FIRST_COMMAND_STEP[probe])
    assert res.facts["banner"] == GREETING[probe].decode().strip()


@pytest.mark.parametrize("probe", PROBES)
async def test_drip_cannot_outlive_the_deadline(probe: str) -> None:
    timeout = 1.0

    async def script(r: Reader, w: Writer, p: Peer) -> None:
        for byte in GREETING[probe][:-2] + b"x" * 200:  # never a line end
            if p.stop.is_set():
                return
            w.write(bytes([byte]))
            await w.drain()
            await asyncio.sleep(0.2)

    async with serving(script) as peer:
        res = await run(probe, peer.port, deadline=timeout)
    assert (res.status.value, res.failed_step) == ("io-timeout", "greeting")
    assert res.elapsed_ms < (timeout + 0.5) * 1000


GARBAGE = b"\x00\xff\xfe\x80garbage\x1b[31m\x9b\x16\x03\x01\x02\x00\x01\x00\r\n"


@pytest.mark.parametrize("probe", PROBES)
async def test_binary_garbage_is_protocol_error(probe: str) -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(GARBAGE * 3)
        await forever(p)

    async with serving(script) as peer:
        res = await run(probe, peer.port)
    assert (res.status.value, res.failed_step) == ("protocol-error", "greeting")
    assert res.message.startswith("not a")


async def _flood(w: Writer, chunk: bytes, total: int) -> None:
    sent = 0
    while sent < total:  # bounded: `total` bytes at most
        w.write(chunk)
        await w.drain()
        sent += len(chunk)


@pytest.mark.parametrize("probe", PROBES)
async def test_ten_megabyte_line_is_protocol_error_in_bounded_memory(probe: str) -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(GREETING[probe][:4])
        await _flood(w, b"A" * 65536, 10 * 1024 * 1024)

    async with serving(script) as peer:
        tracemalloc.start()
        try:
            res = await run(probe, peer.port)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (res.status.value, res.failed_step) == ("protocol-error", "greeting")
    assert "line longer than" in res.message
    # Peer and client together: far below the 10 MiB the peer tried to send.
    assert peak < 2 * 1024 * 1024


async def test_ten_megabytes_of_continuation_lines_is_protocol_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        await _flood(w, b"220-" + b"x" * 1020 + b"\r\n", 10 * 1024 * 1024)

    async with serving(script) as peer:
        res = await run("smtp", peer.port)
    assert (res.status.value, res.failed_step) == ("protocol-error", "greeting")
    assert "longer than 256 lines" in res.message


async def test_ten_megabytes_of_capa_is_protocol_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(GREETING["pop3"])
        await p.line(r)
        w.write(b"+OK\r\n")
        await _flood(w, b"X-CAP " + b"y" * 1000 + b"\r\n", 10 * 1024 * 1024)

    async with serving(script) as peer:
        res = await run("pop3", peer.port)
    assert (res.status.value, res.failed_step) == ("protocol-error", "capa")


async def test_endless_untagged_imap_responses_are_protocol_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(GREETING["imap"])
        await p.line(r)
        await _flood(w, b"* OK still going\r\n", 2 * 1024 * 1024)

    async with serving(script) as peer:
        res = await run("imap", peer.port)
    assert (res.status.value, res.failed_step) == ("protocol-error", "capability")


async def test_imap_literal_larger_than_the_budget_is_protocol_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(GREETING["imap"])
        await p.line(r)
        w.write(b"* CAPABILITY {999999999}\r\n")
        await forever(p)

    async with serving(script) as peer:
        res = await run("imap", peer.port)
    assert (res.status.value, res.failed_step) == ("protocol-error", "capability")


# -- closes and resets --------------------------------------------------------------------


@pytest.mark.parametrize("probe", PROBES)
async def test_early_close_is_connection_closed(probe: str) -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.close()

    async with serving(script) as peer:
        res = await run(probe, peer.port)
    assert (res.status.value, res.port_state.value, res.failed_step) == (
        "connection-closed",
        "open",
        "greeting",
    )


@pytest.mark.parametrize("probe", PROBES)
async def test_reset_right_after_connect(probe: str) -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        reset(w)

    async with serving(script) as peer:
        res = await run(probe, peer.port)
    assert (res.status.value, res.failed_step) == ("connection-closed", "greeting")
    assert "inspection device" in res.facts["closed_note"]


@pytest.mark.parametrize("probe", PROBES)
async def test_reset_after_the_first_command(probe: str) -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(GREETING[probe])
        await p.line(r)
        reset(w)

    async with serving(script) as peer:
        res = await run(probe, peer.port)
    assert (res.status.value, res.failed_step) == ("connection-closed", FIRST_COMMAND_STEP[probe])
    assert "inspection device" in res.facts["closed_note"]


# -- error replies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probe", "greeting"),
    [
        ("smtp", b"421 mx.test Service not available, closing channel\r\n"),
        ("smtp", b"554 mx.test no SMTP service here\r\n"),
        ("smtp", b"554-mx.test go away\r\n554 really\r\n"),
        ("pop3", b"-ERR [SYS/TEMP] too many connections\r\n"),
        ("imap", b"* BYE server shutting down\r\n"),
        ("nntp", b"400 service temporarily unavailable\r\n"),
        ("nntp", b"502 you have no permission to talk\r\n"),
    ],
)
async def test_refusing_greeting_is_application_error(probe: str, greeting: bytes) -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(greeting)
        await forever(p)

    async with serving(script) as peer:
        res = await run(probe, peer.port)
    assert (res.status.value, res.failed_step) == ("application-error", "greeting")
    # A multi-line greeting's banner is its first line's text under the reply code.
    assert res.facts["banner"] == greeting.split(b"\r\n")[0].decode().replace("554-", "554 ")


@pytest.mark.parametrize(
    ("probe", "greeting"),
    [
        ("smtp", b"+OK POP3 ready\r\n"),
        ("smtp", b"200 news.test ready\r\n"),  # NNTP on port 25
        ("pop3", b"220 mx.test ESMTP\r\n"),
        ("imap", b"220 mx.test ESMTP\r\n"),
        ("imap", b"A1 OK tagged greeting\r\n"),
        ("nntp", b"* OK IMAP4rev1\r\n"),
        ("nntp", b"220 mx.test ESMTP\r\n"),  # 220 is not an NNTP greeting
        ("nntp", b"HTTP/1.1 400 Bad Request\r\n"),
    ],
)
async def test_another_protocol_is_protocol_error(probe: str, greeting: bytes) -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(greeting)
        await forever(p)

    async with serving(script) as peer:
        res = await run(probe, peer.port)
    assert (res.status.value, res.failed_step) == ("protocol-error", "greeting")


async def test_smtp_ehlo_refused_falls_back_to_helo() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(b"220 old.test Microsoft Exchange Internet Mail Service 5.0\r\n")
        await p.line(r)
        w.write(b"500 Command not recognized\r\n")
        await p.line(r)
        w.write(b"250 old.test\r\n")
        await p.line(r)
        w.write(b"221 bye\r\n")

    async with serving(script) as peer:
        res = await run("smtp", peer.port, ehlo_name="probe.example")
    assert res.status.value == "success", res.message
    assert [s["step"] for s in res.steps] == ["connect", "greeting", "ehlo", "helo", "quit"]
    assert peer.received[:3] == [b"EHLO probe.example\r\n", b"HELO probe.example\r\n", b"QUIT\r\n"]
    assert res.facts["helo_fallback"] is True
    assert res.facts["ehlo_refused"] == "500 Command not recognized"
    assert res.facts["starttls_offered"] is False
    assert "HELO only" in res.message


async def test_smtp_ehlo_and_helo_refused_is_application_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(b"220 mx.test\r\n")
        await p.line(r)
        w.write(b"502 no\r\n")
        await p.line(r)
        w.write(b"550 not you either\r\n")
        await forever(p)

    async with serving(script) as peer:
        res = await run("smtp", peer.port)
    assert (res.status.value, res.failed_step) == ("application-error", "helo")


async def test_smtp_ehlo_4xx_is_application_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(b"220 mx.test\r\n")
        await p.line(r)
        w.write(b"421 4.3.2 shutting down\r\n")
        await forever(p)

    async with serving(script) as peer:
        res = await run("smtp", peer.port)
    assert (res.status.value, res.failed_step) == ("application-error", "ehlo")


async def test_smtp_starttls_not_offered_is_application_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(b"220 mx.test ESMTP\r\n")
        await p.line(r)
        w.write(b"250-mx.test\r\n250 PIPELINING\r\n")
        await forever(p)

    async with serving(script) as peer:
        res = await run("smtp", peer.port, tls="starttls")
    assert (res.status.value, res.failed_step) == ("application-error", "starttls")
    assert res.message == "STARTTLS was requested but the server does not offer it"
    assert res.warnings == ()  # nothing suggests a middlebox here


async def test_smtp_starttls_refused_is_application_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(b"220 mx.test ESMTP\r\n")
        await p.line(r)
        w.write(b"250-mx.test\r\n250 STARTTLS\r\n")
        await p.line(r)
        w.write(b"454 4.7.0 TLS not available due to local problem\r\n")
        await forever(p)

    async with serving(script) as peer:
        res = await run("smtp", peer.port, tls="starttls")
    assert (res.status.value, res.failed_step) == ("application-error", "starttls")
    assert "454" in res.message


async def test_pop3_capa_err_is_a_fact_and_stls_err_is_application_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(b"+OK old POP3 <1896.697170952@dbc.mtview.ca.us>\r\n")
        await p.line(r)
        w.write(b"-ERR unknown command\r\n")
        await p.line(r)
        w.write(b"-ERR STLS not supported\r\n")
        await forever(p)

    async with serving(script) as peer:
        res = await run("pop3", peer.port, tls="starttls")
    assert (res.status.value, res.failed_step) == ("application-error", "starttls")
    assert peer.received[:2] == [b"CAPA\r\n", b"STLS\r\n"]  # no CAPA: STLS tried anyway
    assert res.facts["capa_supported"] is False
    assert res.facts["starttls_offered"] is None
    assert res.facts["apop"] is True
    assert res.facts["apop_timestamp"] == "<1896.697170952@dbc.mtview.ca.us>"


async def test_pop3_stls_not_in_capa_is_application_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(b"+OK ready\r\n")
        await p.line(r)
        w.write(b"+OK\r\nUSER\r\nTOP\r\n.\r\n")
        await forever(p)

    async with serving(script) as peer:
        res = await run("pop3", peer.port, tls="starttls")
    assert (res.status.value, res.failed_step) == ("application-error", "starttls")
    assert res.message == "STLS was requested but the server does not offer it"
    assert res.facts["capabilities"] == ["USER", "TOP"]
    assert res.facts["user_login"] is True


async def test_imap_bye_during_capability_is_application_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(b"* OK ready\r\n")
        await p.line(r)
        w.write(b"* BYE too many connections from your address\r\n")
        await forever(p)

    async with serving(script) as peer:
        res = await run("imap", peer.port)
    assert (res.status.value, res.failed_step) == ("application-error", "capability")
    assert "too many connections" in res.message


async def test_imap_preauth_with_starttls_is_application_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(b"* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] logged in as you\r\n")
        await forever(p)

    async with serving(script) as peer:
        res = await run("imap", peer.port, tls="starttls")
    assert (res.status.value, res.failed_step) == ("application-error", "starttls")
    assert res.facts["preauth"] is True


async def test_imap_starttls_no_is_application_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
        line = await p.line(r)
        tag = line.split()[0]
        w.write(b"* OK noise\r\n" + tag + b" NO [UNAVAILABLE] TLS is broken today\r\n")
        await forever(p)

    async with serving(script) as peer:
        res = await run("imap", peer.port, tls="starttls")
    assert (res.status.value, res.failed_step) == ("application-error", "starttls")
    assert res.facts["capabilities_source"] == "greeting"
    assert peer.received[0].endswith(b" STARTTLS\r\n")


async def test_imap_logout_answered_by_a_close_is_still_success() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(b"* OK ready\r\n")
        tag = (await p.line(r)).split()[0]
        w.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n")
        await p.line(r)
        w.write(b"* BYE\r\n")
        w.close()

    async with serving(script) as peer:
        res = await run("imap", peer.port)
    assert res.status.value == "success", res.message
    assert res.facts["capabilities"] == ["IMAP4REV1", "AUTH=PLAIN"]
    assert res.facts["capabilities_source"] == "command"
    assert res.facts["auth_mechanisms"] == ["PLAIN"]
    assert peer.received[1].endswith(b" LOGOUT\r\n")


async def test_nntp_old_server_without_capabilities_and_no_posting() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(
            b"201 Microsoft Exchange Internet News Service Version 5.5 (posting prohibited)\r\n"
        )
        await p.line(r)
        w.write(b"500 command not recognized\r\n")
        await p.line(r)
        w.write(b"205 closing connection - goodbye!\r\n")

    async with serving(script) as peer:
        res = await run("nntp", peer.port)
    assert res.status.value == "success", res.message
    assert res.facts["posting_allowed"] is False
    assert res.facts["capabilities_supported"] is False
    assert res.facts["starttls_offered"] is None
    assert peer.received[:2] == [b"CAPABILITIES\r\n", b"QUIT\r\n"]


async def test_nntp_starttls_580_is_application_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(GREETING["nntp"])
        await p.line(r)
        w.write(b"101 Capability list:\r\nVERSION 2\r\nREADER\r\nSTARTTLS\r\n.\r\n")
        await p.line(r)
        w.write(b"580 Can not initiate TLS negotiation\r\n")
        await forever(p)

    async with serving(script) as peer:
        res = await run("nntp", peer.port, tls="starttls")
    assert (res.status.value, res.failed_step) == ("application-error", "starttls")
    assert res.facts["capabilities"] == ["VERSION 2", "READER", "STARTTLS"]
    assert res.facts["nntp_version"] == "2"


# -- middleboxes --------------------------------------------------------------------------

MASKED = b"220 *************************************0****2******0*******2002*******2***0*00\r\n"


async def test_masked_banner_with_ehlo_refused() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(MASKED)
        await p.line(r)
        w.write(b"500 5.5.1 Command unrecognized\r\n")  # PIX turns EHLO into XXXX
        await p.line(r)
        w.write(b"250 mx.test\r\n")
        await p.line(r)
        w.write(b"221 bye\r\n")

    async with serving(script) as peer:
        res = await run("smtp", peer.port)
    assert res.status.value == "success", res.message
    assert res.facts["banner_masked"] is True
    assert res.facts["helo_fallback"] is True
    assert len(res.warnings) == 1
    assert res.warnings[0].startswith(MASKED_BANNER_WARNING)
    assert "Cisco PIX/ASA" in res.warnings[0]
    assert "EHLO was refused and only HELO worked" in res.warnings[0]


async def test_masked_banner_with_ehlo_answered_and_starttls_requested() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(MASKED)
        await p.line(r)
        w.write(b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        await forever(p)

    async with serving(script) as peer:
        res = await run("smtp", peer.port, tls="starttls")
    assert (res.status.value, res.failed_step) == ("application-error", "starttls")
    assert res.message.startswith("STARTTLS appears to be stripped by a middlebox")
    assert any("EHLO answered 250 with 2 extensions" in w for w in res.warnings)
    assert "STARTTLS appears to be stripped by a middlebox" in res.warnings
    assert res.facts["starttls_stripped"] is True


ASA_EHLO = b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 36700160\r\n250-XXXXXXXA\r\n250 8BITMIME\r\n"


async def test_xxxxxxxa_without_starttls_request_is_a_warning() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(GREETING["smtp"])
        await p.line(r)
        w.write(ASA_EHLO)
        await p.line(r)
        w.write(b"221 bye\r\n")

    async with serving(script) as peer:
        res = await run("smtp", peer.port)
    assert res.status.value == "success", res.message
    assert res.facts["starttls_stripped"] is True
    assert res.facts["starttls_offered"] is False
    assert res.facts["ehlo_masked_keywords"] == ["XXXXXXXA"]
    assert res.facts["size_limit"] == 36700160
    assert len(res.warnings) == 1
    assert res.warnings[0].startswith("STARTTLS appears to be stripped by a middlebox")
    assert "XXXXXXXA" in res.warnings[0]


async def test_xxxxxxxa_with_starttls_request_is_application_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(GREETING["smtp"])
        await p.line(r)
        w.write(ASA_EHLO)
        await forever(p)

    async with serving(script) as peer:
        res = await run("smtp", peer.port, tls="starttls")
    assert (res.status.value, res.failed_step) == ("application-error", "starttls")
    assert res.message.startswith("STARTTLS appears to be stripped by a middlebox")
    assert any(w.startswith("STARTTLS appears to be stripped") for w in res.warnings)
    assert b"STARTTLS\r\n" not in peer.received


# -- plaintext where TLS should start -----------------------------------------------------

STARTTLS_DIALOGUES: dict[str, list[tuple[bytes, bytes]]] = {
    # (what the peer says, then it reads one line) ... the last reply is the "go ahead".
    "smtp": [(b"220 mx.test\r\n", b""), (b"250-mx.test\r\n250 STARTTLS\r\n", b""),
             (b"220 2.0.0 Ready to start TLS\r\n", b"")],
    "pop3": [(b"+OK ready\r\n", b""), (b"+OK\r\nSTLS\r\n.\r\n", b""), (b"+OK Begin TLS\r\n", b"")],
    "imap": [(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n", b""),
             (b"A1 OK Begin TLS negotiation now\r\n", b"")],
    "nntp": [(b"200 ready\r\n", b""), (b"101 caps\r\nVERSION 2\r\nSTARTTLS\r\n.\r\n", b""),
             (b"382 Continue with TLS negotiation\r\n", b"")],
}  # fmt: skip


async def _to_go_ahead(probe: str, r: Reader, w: Writer, p: Peer) -> None:
    steps = STARTTLS_DIALOGUES[probe]
    for i, (say, _) in enumerate(steps):
        w.write(say)
        if i < len(steps) - 1:
            await p.line(r)


@pytest.mark.parametrize("probe", PROBES)
async def test_plaintext_with_the_go_ahead_is_tls_error(probe: str) -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        steps = STARTTLS_DIALOGUES[probe]
        for say, _ in steps[:-1]:
            w.write(say)
            await p.line(r)
        # The go-ahead and an injected reply in one segment (response injection).
        w.write(steps[-1][0] + b"250 injected before TLS\r\n")
        await forever(p)

    async with serving(script) as peer:
        res = await run(probe, peer.port, tls="starttls")
    assert (res.status.value, res.failed_step) == ("tls-error", "tls-handshake")
    assert "plaintext after agreeing to start TLS" in res.message


@pytest.mark.parametrize("probe", PROBES)
async def test_plaintext_flood_after_the_go_ahead_is_tls_error_within_the_deadline(
    probe: str,
) -> None:
    """The go-ahead, then plaintext as fast as the socket takes it: whether the flood is
    seen before the handshake (injection) or read as a record (not TLS), the check ends
    as a TLS error, not past its deadline."""

    async def script(r: Reader, w: Writer, p: Peer) -> None:
        await _to_go_ahead(probe, r, w, p)
        chunk = b"250 injected before TLS\r\n" * 2048  # ~50 KB
        for _ in range(80):  # bounded: at most ~4 MB, each write waits at most 1 s
            w.write(chunk)
            try:
                await asyncio.wait_for(w.drain(), 1.0)
            except (TimeoutError, ConnectionError):
                break
        await forever(p)

    async with serving(script) as peer:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        res = await run(probe, peer.port, tls="starttls", deadline=5.0)
        took = loop.time() - t0
    assert (res.status.value, res.failed_step) == ("tls-error", "tls-handshake")
    assert took < 5.0 + 0.5, took  # the deadline, and the loop's slack in a busy suite


@pytest.mark.parametrize("probe", PROBES)
async def test_plaintext_instead_of_a_handshake_is_tls_error(probe: str) -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        await _to_go_ahead(probe, r, w, p)
        hello = await r.read(5)  # the ClientHello's record header
        assert hello[:1] == b"\x16"
        w.write(b"this is not TLS, it is plain text\r\n")
        await forever(p)

    async with serving(script) as peer:
        res = await run(probe, peer.port, tls="starttls")
    assert (res.status.value, res.failed_step) == ("tls-error", "tls-handshake")
    assert res.message.startswith("TLS handshake failed")


async def test_implicit_tls_against_plaintext_is_tls_error() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        await r.read(5)
        w.write(GREETING["imap"])
        await forever(p)

    async with serving(script) as peer:
        res = await run("imap", peer.port, tls="implicit")
    assert (res.status.value, res.failed_step) == ("tls-error", "tls-handshake")


# -- terminal safety ----------------------------------------------------------------------

HOSTILE_BANNER = b"220 [bold red]x[/] \x1b]0;title\x07\x1b[2J mx.test\r\n"


def _hostile_smtp(conn: socket.socket) -> None:
    conn.settimeout(5)
    conn.sendall(HOSTILE_BANNER)
    f = conn.makefile("rb")
    for _ in range(5):  # EHLO, QUIT; bounded
        line = f.readline(1024)
        if not line:
            return
        if line.startswith(b"EHLO"):
            conn.sendall(b"250-mx.test \x1b[5m[link=http://x]y[/link]\r\n250 \x1b]8;;x\x07SIZE\r\n")
        elif line.startswith(b"QUIT"):
            conn.sendall(b"221 \x1b[2J bye\r\n")
            return


@pytest.mark.parametrize("command", ["check", "run"])
def test_banner_markup_and_escapes_are_shown_literally(command: str) -> None:
    with LoopbackServer(_hostile_smtp) as srv:
        if command == "check":
            out = exprobe("check", "127.0.0.1", "smtp", "--port", str(srv.port), "--no-color")
        else:
            out = exprobe("run", "127.0.0.1", "--check", f"smtp:{srv.port}", "--no-color")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "\x1b" not in out.stdout
    assert "\x1b" not in out.stderr
    assert "\x07" not in out.stdout
    assert "[bold red]x[/]" in out.stdout  # markup shown, not interpreted
    assert "\\x1b]0;title\\x07\\x1b[2J" in out.stdout  # escapes shown as text
    if command == "check":
        assert "[link=http://x]y[/link]" in out.stdout


def test_ehlo_name_cannot_smuggle_a_command() -> None:
    out = exprobe("check", "127.0.0.1", "smtp", "--port", "9", "--set", "ehlo_name=x\r\nVRFY root")
    assert out.returncode == 2
    assert out.stdout == ""
    assert "ehlo_name" in out.stderr
    assert "is not a domain name or an address literal" in out.stderr
