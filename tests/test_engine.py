"""The engine without the CLI: runner envelope, derived checks, probe bugs, parser fuzzing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exprobe.engine.plan import CheckDef
from exprobe.engine.runner import RunOptions, run_check
from exprobe.engine.scheduler import Limits
from exprobe.engine.session import Session
from exprobe.errors import InputError
from exprobe.net.stream import Stream
from exprobe.probes import load_all
from exprobe.probes.base import REGISTRY, CheckSpec, Params, ProbeContext, register
from exprobe.status import PortState, Status
from exprobe.targets import parse_target


@dataclass(frozen=True, slots=True)
class FollowParams(Params):
    follow_port: int = 0


@pytest.fixture
def test_probes() -> Iterator[None]:
    """Two probes that exist only in these tests: one that derives, one that crashes."""
    load_all()

    @register("test-follow", FollowParams, default_port=None)
    async def follow(stream: Stream, params: FollowParams, ctx: ProbeContext) -> None:
        ctx.step("greeting")
        await stream.read_line()
        ctx.derive(CheckSpec(
            f"{ctx.check.id}/next", "tcp", ctx.check.address, params.follow_port,
            load_all()["tcp"].params_type(), ctx.check.target, parent=ctx.check.id,
            meta=(("component", "is"),),
        ))

    @register("test-crash", Params, default_port=None)
    async def crash(stream: Stream, params: Params, ctx: ProbeContext) -> None:
        ctx.step("explode")
        raise KeyError("a bug")

    yield
    del REGISTRY["test-follow"], REGISTRY["test-crash"]


class _Server:
    """A loopback server that sends `payload`, waits for the client to hang up, and
    lets the test wait for every handler before the loop closes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.handlers: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            w.write(self.payload)
            await w.drain()
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(r.read(100), 2)
        finally:
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()

    async def __aenter__(self) -> _Server:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()


async def test_derived_checks_run_and_link_back(test_probes: None) -> None:
    async with _Server(b"hello\r\n") as srv, _Server(b"") as other:
        port, other_port = srv.port, other.port
        defs = [CheckDef("follow", "test-follow", FollowParams(follow_port=other_port), port)]
        session = Session([parse_target("127.0.0.1")], defs, RunOptions(timeout=5), Limits())
        report = await session.run()
    results = {r.id: r for r in report.all_results()}
    assert set(results) == {"follow", "follow/next"}
    assert results["follow"].status is Status.SUCCESS
    derived = results["follow/next"]
    assert (derived.status, derived.parent, derived.port) == (Status.SUCCESS, "follow", other_port)


async def test_a_probe_bug_is_internal_error_for_that_check_only(test_probes: None) -> None:
    async with _Server(b"hello\r\n") as srv:
        port = srv.port
        defs = [
            CheckDef("crash", "test-crash", Params(), port),
            CheckDef("tcp", "tcp", load_all()["tcp"].params_type(), port),
        ]
        session = Session([parse_target("127.0.0.1")], defs, RunOptions(timeout=5, verbose=True),
                          Limits())
        report = await session.run()
    results = {r.id: r for r in report.all_results()}
    crash = results["crash"]
    assert (crash.status, crash.port_state, crash.failed_step) == (
        Status.INTERNAL_ERROR, PortState.OPEN, "explode")
    assert crash.message == "bug in exprobe: KeyError: 'a bug'"
    assert "KeyError" in crash.facts["traceback"]
    assert results["tcp"].status is Status.SUCCESS


async def test_silent_peer_ends_at_the_deadline() -> None:
    async with _Server(b"") as srv:
        port = srv.port
        spec = CheckSpec("b", "banner", "127.0.0.1", port, load_all()["banner"].params_type(),
                         "127.0.0.1")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        out = await run_check(spec, RunOptions(timeout=0.5))
        took = loop.time() - t0
    r = out.result
    assert (r.status, r.port_state, r.failed_step) == (Status.IO_TIMEOUT, PortState.OPEN, "banner")
    assert took < 0.6


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_target_parser_never_raises_anything_but_input_error(text: str) -> None:
    message = None
    try:
        t = parse_target(text)
    except InputError as exc:
        message = str(exc)
    if message is None:
        assert t.host or t.address or t.network
    else:
        assert message.startswith("command line: ")
        assert "\n" not in message
