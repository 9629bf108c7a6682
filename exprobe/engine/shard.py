"""One event loop per core: a big run split across forked worker processes.

A Python event loop is one core.  A sweep of tens of thousands of checks is CPU-bound
(each check is a few system calls and some Python), so on a machine with several cores
`Session` forks one shard per core.  This process plans the checks and hands them out
(`_Dispatcher`), holding `concurrency` as one limit over all shards: every check of an
address with checks unanswered goes to the same shard (so the per-host limit holds
there), a new address to the least busy shard (so a shard whose slots are held by
slow, filtered targets gets fewer).  A shard runs what it is given through the
ordinary worker pool and sends the results back; this process hands each to the same
sink as a single-process run: JSON Lines, progress.  Both directions are
length-prefixed JSON arrays (never pickle: results carry network text); the shards
drop the target list right after the fork and never walk this process's objects.

Used for streamed runs (`Session.keep_results` false: --format jsonl), where results
pass through this process and are gone; a kept report is held and rendered here alone,
and each shard's private copy of the runtime (~25 MB) would cost more than it saves.
Not used either when a rate limit is set (one process paces connection starts exactly),
for small runs (forking costs more than it saves), for runs on few addresses (a port
scan of one host is one shard's work), or where there is no `fork`.  The environment
variable EXPROBE_SHARDS overrides the choice (1: never shard).  Derived checks (the
endpoint mapper's ports) run in the shard that found them.
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
from exprobe.engine.scheduler import Limits, Pool, Runner
from exprobe.probes import get as get_probe
from exprobe.probes.base import CheckSpec, Params, make_params
from exprobe.result import CheckResult
from exprobe.status import PortState, Status

SHARD_MIN_CHECKS = 5_000  # below this a single loop finishes before forking pays off
SHARD_MIN_ADDRESSES = 64  # per shard: fewer, and the split by address is lopsided
MAX_SHARDS = 8
_FRAME = struct.Struct("!I")
_BATCH = 256  # results per frame, at most
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


class _Frames(asyncio.Protocol):
    """One end of a pipe read as length-prefixed JSON frames: `on_frame(kind, payload)`
    for each, `on_eof()` at the end."""

    def __init__(self, on_frame: Callable[[str, Any], None], on_eof: Callable[[], None]) -> None:
        self._buf = bytearray()
        self._on_frame = on_frame
        self._on_eof = on_eof

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf.extend(data)
        while len(buf) >= _FRAME.size:
            (size,) = _FRAME.unpack_from(buf)
            if len(buf) < _FRAME.size + size:
                break
            kind, payload = json.loads(bytes(buf[_FRAME.size : _FRAME.size + size]))
            del buf[: _FRAME.size + size]
            self._on_frame(kind, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_eof()


class _Closed(asyncio.Protocol):
    """The writing end of a pipe: only says when everything written has gone."""

    def __init__(self, closed: asyncio.Future[None]) -> None:
        self._closed = closed

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


def _frame(kind: str, payload: object) -> bytes:
    # default=str: a fact JSON cannot hold is sent as its text, as the JSON report shows it.
    data = json.dumps([kind, payload], default=str, ensure_ascii=False, separators=(",", ":"))
    raw = data.encode("utf-8", "surrogatepass")
    return _FRAME.pack(len(raw)) + raw


# Results cross the pipe as JSON arrays of their fields (enums as their values, tuples as
# arrays): the C JSON codec is as fast as pickling plain tuples, and nothing derived from
# network input is ever unpickled.
_FIELDS = tuple(f.name for f in fields(CheckResult))
_STATUS_AT, _STATE_AT = _FIELDS.index("status"), _FIELDS.index("port_state")
_ADDRESS_AT, _TARGET_AT = _FIELDS.index("address"), _FIELDS.index("target")
_PARENT_AT = _FIELDS.index("parent")
_get_fields = attrgetter(*_FIELDS)
_STATUS = Status._value2member_map_
_STATE = PortState._value2member_map_
_TUPLES_AT = tuple(_FIELDS.index(n) for n in ("warnings", "steps", "transcript"))


def _to_tuple(r: CheckResult) -> tuple[Any, ...]:
    t = list(_get_fields(r))
    t[_STATUS_AT] = r.status.value
    t[_STATE_AT] = r.port_state.value
    return tuple(t)


def _from_tuple(t: list[Any]) -> CheckResult:
    values = list(t)
    values[_STATUS_AT] = _STATUS[t[_STATUS_AT]]
    values[_STATE_AT] = _STATE[t[_STATE_AT]]
    for i in _TUPLES_AT:
        values[i] = tuple(values[i])
    return CheckResult(*values)


# Checks cross the other way as arrays too, their parameters by number: each distinct
# `Params` is sent once, as its fields, and rebuilt by its probe's own type.


def _check_tuple(c: CheckSpec, params: int) -> list[Any]:
    return [
        c.id, c.probe, c.address, c.port, params, c.target, c.server_name, c.parent,
        c.labels, c.meta,
    ]  # fmt: skip


def _check_from(t: list[Any], params: list[Params]) -> CheckSpec:
    cid, probe, address, port, p, target, server_name, parent, labels, meta = t
    return CheckSpec(
        cid, probe, address, port, params[p], target, server_name, parent,
        tuple((k, v) for k, v in labels), tuple((k, v) for k, v in meta),
    )  # fmt: skip


def _params_from(probe: str, values: dict[str, Any]) -> Params:
    return make_params(get_probe(probe).params_type, values, f"shard: {probe} parameters")


# -- the shard (child) ----------------------------------------------------------------------


async def _child_main(run: Runner, limits: Limits, rfd: int, wfd: int) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    closed: asyncio.Future[None] = loop.create_future()
    out, _ = await loop.connect_write_pipe(lambda: _Closed(closed), os.fdopen(wfd, "wb"))
    batch: list[tuple[Any, ...]] = []
    timer: list[asyncio.Handle | None] = [None]

    def flush() -> None:
        timer[0] = None
        if batch:
            out.write(_frame("results", batch))
            batch.clear()

    def sink(outcome: Outcome) -> None:
        batch.append(_to_tuple(outcome.result))
        if len(batch) >= _BATCH:
            flush()
        elif timer[0] is None:
            # At the end of this loop pass: the dispatcher hands out more as results
            # come back.
            timer[0] = loop.call_soon(flush)

    pool = Pool(None, run, limits, sink, None)
    params: list[Params] = []

    def on_frame(kind: str, payload: Any) -> None:
        if kind == "checks":
            pool.feed([_check_from(t, params) for t in payload])
        elif kind == "params":
            params.append(_params_from(payload[0], payload[1]))
        elif kind == "close":
            pool.close()

    def on_eof() -> None:  # the parent closed the pipe (or died): finish what was fed
        pool.close()

    inp, _ = await loop.connect_read_pipe(lambda: _Frames(on_frame, on_eof), os.fdopen(rfd, "rb"))
    try:
        await pool.run()
    except asyncio.CancelledError:
        pass  # interrupted: send what finished, then leave
    except Exception as exc:
        flush()
        out.write(_frame("error", f"{type(exc).__name__}: {exc}"))
    finally:
        inp.close()
        if timer[0] is not None:
            timer[0].cancel()
        flush()
        out.close()  # after what is buffered has been written
        await closed


def _run_child(
    loop_type: type[asyncio.AbstractEventLoop], run: Runner, limits: Limits, rfd: int, wfd: int
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
            runner.run(_child_main(run, limits, rfd, wfd))
    except BaseException:
        code = 1
    finally:
        os._exit(code)  # no atexit handlers, no flushing of the parent's buffers


# -- the dispatcher (parent) ----------------------------------------------------------------


class _Remote:
    """A forked shard, as the dispatcher sees it: checks go down its request pipe."""

    def __init__(self, out: asyncio.WriteTransport) -> None:
        self._out = out
        self._params: dict[Params, int] = {}

    def send(self, batch: list[CheckSpec]) -> None:
        rows = []
        for check in batch:
            p = self._params.get(check.params)
            if p is None:  # sent once, before the first check that refers to it
                p = self._params[check.params] = len(self._params)
                values = {f.name: getattr(check.params, f.name) for f in fields(check.params)}
                self._out.write(_frame("params", [check.probe, values]))
            rows.append(_check_tuple(check, p))
        self._out.write(_frame("checks", rows))

    def close(self) -> None:
        self._out.write(_frame("close", None))


class _Dispatcher:
    """Hands checks to the shards, at most `window` unanswered in all (--concurrency,
    held across the shards as one limit).  All checks of an address that has any
    unanswered go to the same shard (the per-host limit holds there); a new address goes
    to the shard with the fewest unanswered, so a shard whose slots are held by slow
    (filtered) targets is given the rest, as one loop's free slots would be."""

    def __init__(self, checks: Iterable[CheckSpec], window: int, links: list[_Remote]) -> None:
        self._it = iter(checks)
        self._window = max(1, window)
        self._links = links
        self._per_shard = [0] * len(links)
        self._unanswered = 0
        self._sticky: dict[str, list[int]] = {}  # address -> [shard, unanswered]
        self._held: CheckSpec | None = None  # waits for room in its address's shard
        self.stopped = False

    def pump(self) -> None:
        if self.stopped:
            return
        batches: list[list[CheckSpec]] = [[] for _ in self._links]
        per_shard = self._per_shard
        while True:
            check = self._held or next(self._it, None)
            self._held = None
            if check is None:
                self.stopped = True
                break
            key = check.address or check.target
            entry = self._sticky.get(key)
            shard = entry[0] if entry else min(range(len(per_shard)), key=per_shard.__getitem__)
            if self._unanswered >= self._window:
                self._held = check
                break
            if entry:
                entry[1] += 1
            else:
                self._sticky[key] = [shard, 1]
            batches[shard].append(check)
            per_shard[shard] += 1
            self._unanswered += 1
        for link, batch in zip(self._links, batches, strict=True):
            if batch:
                link.send(batch)
        if self.stopped:
            for link in self._links:
                link.close()

    def answered(self, key: str) -> None:
        entry = self._sticky[key]
        self._per_shard[entry[0]] -= 1
        self._unanswered -= 1
        entry[1] -= 1
        if not entry[1]:
            del self._sticky[key]

    def stop(self) -> None:
        self.stopped = True


async def run_sharded(
    checks: Iterable[CheckSpec],
    run: Runner,
    limits: Limits,
    shards: int,
    deliver: Callable[[CheckResult], None],
    *,
    forget: Callable[[], None] | None = None,
) -> None:
    """Run `checks` in `shards` forked processes, at most `limits.concurrency` in flight
    across them, and `deliver` each result here as it arrives.  On cancellation
    (or a failure here) the shards are told to stop (SIGTERM) and what they finished is
    still delivered before the error propagates.

    `forget` runs in each child right after the fork, to drop what only this process
    needs (the target list): this process dirties those pages as it plans, so a child
    that kept them would hold a second copy of them for the whole run."""
    loop = asyncio.get_running_loop()
    # --concurrency is held here, over all shards: a static share per shard would let
    # one shard's slots fill with filtered targets (each held for the connect timeout)
    # while the other's sit idle, adding whole timeout rounds to the run.  A shard is
    # never handed more than it may run at once, so its own limit never binds.
    window = limits.concurrency
    local = Limits(concurrency=window, per_host=limits.per_host)
    pids: list[int] = []
    ends: list[tuple[int, int]] = []  # this side's (request write, result read) per shard
    # Objects made so far are never freed by the children: keep their collector off them
    # (a collection touches every object header, copying the pages the fork shares).
    gc.freeze()
    try:
        for _ in range(shards):
            req_r, req_w = os.pipe()
            res_r, res_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child's coverage is not collected
                # Only its own two ends: an earlier shard must see EOF when we close ours.
                for fd in (req_w, res_r, *(fd for pair in ends for fd in pair)):
                    os.close(fd)
                if forget is not None:
                    forget()
                _run_child(type(loop), run, local, req_r, res_w)
            os.close(req_r)
            os.close(res_w)
            pids.append(pid)
            ends.append((req_w, res_r))
    finally:
        gc.unfreeze()
    transports: list[asyncio.BaseTransport] = []
    waits: list[asyncio.Future[None]] = []
    errors: list[str] = []
    dispatcher: _Dispatcher | None = None

    # A failure here (the sink: a closed stdout) surfaces in a protocol callback: carry it
    # out to this coroutine rather than to the loop's exception handler.
    failed: asyncio.Future[None] = loop.create_future()

    def frames(done: asyncio.Future[None]) -> _Frames:
        def on_frame(kind: str, payload: Any) -> None:
            if kind != "results":
                errors.append(str(payload))
                return
            assert dispatcher is not None
            try:
                for values in payload:
                    if values[_PARENT_AT] is None:  # dispatched here, not derived there
                        dispatcher.answered(values[_ADDRESS_AT] or values[_TARGET_AT])
                    deliver(_from_tuple(values))
                dispatcher.pump()
            except Exception as exc:
                dispatcher.stop()
                if not failed.done():
                    failed.set_exception(exc)

        def on_eof() -> None:
            if not done.done():
                done.set_result(None)

        return _Frames(on_frame, on_eof)

    links: list[_Remote] = []
    try:
        for req_w, res_r in ends:
            out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(req_w, "wb"))
            transports.append(out)
            links.append(_Remote(out))
            done: asyncio.Future[None] = loop.create_future()
            waits.append(done)
            inp, _ = await loop.connect_read_pipe(_factory(frames(done)), os.fdopen(res_r, "rb"))
            transports.append(inp)
        dispatcher = _Dispatcher(checks, window, links)
        dispatcher.pump()
        everything: asyncio.Future[Any] = asyncio.gather(*waits)
        await asyncio.wait([everything, failed], return_when=asyncio.FIRST_COMPLETED)
        if failed.done():
            failed.result()  # raises
    except BaseException:
        # Interrupted, or this side failed (the sink): stop everything, keep what finished.
        if dispatcher is not None:
            dispatcher.stop()
        _signal_all(pids, signal.SIGTERM)
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(_EXIT_GRACE_S):
                await asyncio.shield(asyncio.gather(*waits, return_exceptions=True))
        raise
    finally:
        for t in transports:
            t.close()
        codes = await _reap(pids)
    errors += [f"shard process exited with status {c}" for c in codes if c]
    if errors:
        raise RuntimeError(f"a shard failed: {errors[0]}")


def _factory(protocol: _Frames) -> Callable[[], _Frames]:
    return lambda: protocol


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
