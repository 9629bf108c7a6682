"""One event loop per core: a big run split across forked worker processes.

A Python event loop is one core.  A sweep of tens of thousands of checks is CPU-bound
(each check is a few system calls and some Python), so on a machine with several cores
`Session` forks one shard per core.  Each shard runs the ordinary worker pool over its
share of the addresses (`plan.shard_of`: all checks of an address in one shard, so the
per-host limit still holds) with its share of `concurrency`, and streams its results
back through a pipe as JSON batches (never pickle: results carry network text).  The
parent hands each result to the same sink as a single-process run: JSON Lines, progress,
the report.

Used for streamed runs (`Session.keep_results` false: --format jsonl), where results
pass through this process and are gone; a kept report is held and rendered here alone,
and each shard's private copy of the runtime (~25 MB) would cost more than it saves.
Not used either when a rate limit is set (one process paces connection starts exactly),
for small runs (forking costs more than it saves), for runs on few addresses (a port
scan of one host is one shard's work), or where there is no `fork`.  The environment
variable EXPROBE_SHARDS overrides the choice (1: never shard).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import fields
from operator import attrgetter
from typing import Any

from exprobe.engine.runner import Outcome
from exprobe.engine.scheduler import Limits, Runner, run_pool
from exprobe.probes.base import CheckSpec
from exprobe.result import CheckResult
from exprobe.status import PortState, Status

SHARD_MIN_CHECKS = 5_000  # below this a single loop finishes before forking pays off
SHARD_MIN_ADDRESSES = 64  # per shard: fewer, and the split by address is lopsided
MAX_SHARDS = 8
_FRAME = struct.Struct("!I")
_BATCH = 256  # results per frame, at most
_FLUSH_S = 0.02  # and at least this often
_EXIT_GRACE_S = 5.0


def shard_count(
    planned: int, limits: Limits, addresses: Callable[[], int], *, streamed: bool
) -> int:
    """How many processes to run `planned` checks in (1: this one).  `addresses()`
    counts the distinct addresses (asked only for a big run): shards split addresses,
    so a port scan of one host would leave all but one shard idle."""
    forced = os.environ.get("EXPROBE_SHARDS", "").strip()
    if forced:
        try:
            return max(1, min(int(forced), MAX_SHARDS))
        except ValueError:
            return 1
    if not streamed or not hasattr(os, "fork") or limits.rate or planned < SHARD_MIN_CHECKS:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    shards = max(1, min(cpus, MAX_SHARDS))
    if shards > 1 and addresses() < SHARD_MIN_ADDRESSES * shards:
        return 1
    return shards


class _Reader(asyncio.Protocol):
    """Parent side of one shard's pipe: frames in, results out."""

    def __init__(self, deliver: Callable[[CheckResult], None], done: asyncio.Future[None]) -> None:
        self._buf = bytearray()
        self._deliver = deliver
        self._done = done
        self.error: str | None = None

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf.extend(data)
        while len(buf) >= _FRAME.size:
            (size,) = _FRAME.unpack_from(buf)
            if len(buf) < _FRAME.size + size:
                break
            kind, payload = json.loads(bytes(buf[_FRAME.size : _FRAME.size + size]))
            del buf[: _FRAME.size + size]
            if kind == "results":
                for values in payload:
                    self._deliver(_from_tuple(values))
            else:
                self.error = str(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_result(None)


class _Writer(asyncio.Protocol):
    """Child side of the pipe: only says when everything written has gone."""

    def __init__(self, closed: asyncio.Future[None]) -> None:
        self._closed = closed

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


# Results cross the pipe as JSON arrays of their fields (enums as their values, tuples as
# arrays): the C JSON codec is as fast as pickling plain tuples, and nothing derived from
# network input is ever unpickled.
_FIELDS = tuple(f.name for f in fields(CheckResult))
_STATUS_AT, _STATE_AT = _FIELDS.index("status"), _FIELDS.index("port_state")
_get_fields = attrgetter(*_FIELDS)
_STATUS = Status._value2member_map_
_STATE = PortState._value2member_map_
_TUPLES_AT = tuple(_FIELDS.index(n) for n in ("warnings", "steps", "transcript"))


def _to_tuple(r: CheckResult) -> tuple[Any, ...]:
    t = list(_get_fields(r))
    t[_STATUS_AT] = r.status.value
    t[_STATE_AT] = r.port_state.value
    return tuple(t)


def _from_tuple(t: tuple[Any, ...]) -> CheckResult:
    values = list(t)
    values[_STATUS_AT] = _STATUS[t[_STATUS_AT]]
    values[_STATE_AT] = _STATE[t[_STATE_AT]]
    for i in _TUPLES_AT:
        values[i] = tuple(values[i])
    return CheckResult(*values)


def _frame(kind: str, payload: object) -> bytes:
    if kind == "results":
        assert isinstance(payload, list)
        payload = [_to_tuple(r) for r in payload]
    # default=str: a fact JSON cannot hold is sent as its text, as the JSON report shows it.
    data = json.dumps([kind, payload], default=str, ensure_ascii=False, separators=(",", ":"))
    raw = data.encode("utf-8", "surrogatepass")
    return _FRAME.pack(len(raw)) + raw


async def _child_main(checks: Iterable[CheckSpec], run: Runner, limits: Limits, wfd: int) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    closed: asyncio.Future[None] = loop.create_future()
    transport, _ = await loop.connect_write_pipe(lambda: _Writer(closed), os.fdopen(wfd, "wb"))
    batch: list[CheckResult] = []
    timer: list[asyncio.TimerHandle | None] = [None]

    def flush() -> None:
        timer[0] = None
        if batch:
            transport.write(_frame("results", batch))
            batch.clear()

    def sink(outcome: Outcome) -> None:
        batch.append(outcome.result)
        if len(batch) >= _BATCH:
            flush()
        elif timer[0] is None:
            timer[0] = loop.call_later(_FLUSH_S, flush)

    try:
        await run_pool(checks, run, limits, sink)
    except asyncio.CancelledError:
        pass  # interrupted: send what finished, then leave
    except Exception as exc:
        flush()
        transport.write(_frame("error", f"{type(exc).__name__}: {exc}"))
    finally:
        if timer[0] is not None:
            timer[0].cancel()
        flush()
        transport.close()  # after what is buffered has been written
        await closed


def _run_child(
    loop_type: type[asyncio.AbstractEventLoop],
    checks: Iterable[CheckSpec],
    run: Runner,
    limits: Limits,
    wfd: int,
) -> None:
    """In the forked child: leave the parent's loop alone, run a fresh one, exit."""
    code = 0
    try:
        # The parent's loop routes signals into its own self-pipe: undo that first.
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        gc.enable()
        asyncio.events._set_running_loop(None)
        factory: Callable[[], asyncio.AbstractEventLoop] | None = None
        if loop_type.__module__.startswith("uvloop"):
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_child_main(checks, run, limits, wfd))
    except BaseException:
        code = 1
    finally:
        os._exit(code)  # no atexit handlers, no flushing of the parent's buffers


async def run_sharded(
    make_checks: Callable[[tuple[int, int]], Iterable[CheckSpec]],
    run: Runner,
    limits: Limits,
    shards: int,
    deliver: Callable[[CheckResult], None],
) -> None:
    """Run `make_checks((i, shards))` in forked process i, for each i; `deliver` each
    result in this process as it arrives.  On cancellation, the shards are told to stop
    (SIGTERM), what they finished is still delivered, then CancelledError propagates."""
    loop = asyncio.get_running_loop()
    share = Limits(
        concurrency=max(1, limits.concurrency // shards),
        per_host=limits.per_host,
        rate=limits.rate,
    )
    pids: list[int] = []
    readers: list[_Reader] = []
    waits: list[asyncio.Future[None]] = []
    transports: list[asyncio.BaseTransport] = []
    # Objects made so far are never freed by the children: keep their collector off them
    # (a collection touches every object header, copying the pages the fork shares).
    gc.freeze()
    try:
        for index in range(shards):
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child's coverage is not collected
                os.close(rfd)
                _run_child(type(loop), make_checks((index, shards)), run, share, wfd)
            os.close(wfd)
            pids.append(pid)
            done: asyncio.Future[None] = loop.create_future()
            reader = _Reader(deliver, done)
            transport, _ = await loop.connect_read_pipe(_constant(reader), os.fdopen(rfd, "rb"))
            readers.append(reader)
            waits.append(done)
            transports.append(transport)
    finally:
        gc.unfreeze()
    try:
        await asyncio.gather(*waits)
    except asyncio.CancelledError:
        _signal_all(pids, signal.SIGTERM)
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(_EXIT_GRACE_S):
                await asyncio.shield(asyncio.gather(*waits))
        raise
    finally:
        for t in transports:
            t.close()
        codes = await _reap(pids)
    errors = [r.error for r in readers if r.error]
    errors += [f"shard process exited with status {c}" for c in codes if c]
    if errors:
        raise RuntimeError(f"a shard failed: {errors[0]}")


def _constant(reader: _Reader) -> Callable[[], _Reader]:
    return lambda: reader


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)  # our own children, by PID


async def _reap(pids: list[int]) -> list[int]:
    """Wait for the shards to exit (they do right after their pipe closes); their exit
    codes.  A shard still there after the grace period is killed."""
    codes: dict[int, int] = {}
    deadline = time.monotonic() + _EXIT_GRACE_S
    while len(codes) < len(pids):
        for pid in pids:
            if pid in codes:
                continue
            try:
                done, status = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG
            except ChildProcessError:
                done, status = pid, 0
            if done:
                codes[pid] = os.waitstatus_to_exitcode(status)
        if len(codes) == len(pids):
            break
        if time.monotonic() > deadline:
            _signal_all([p for p in pids if p not in codes], signal.SIGKILL)
            deadline = time.monotonic() + _EXIT_GRACE_S
        await asyncio.sleep(0.01)
    return [codes[p] for p in pids]
