"""Fan checks out over a pool of worker tasks; stream results as they finish.

The scheduler knows no protocol.  It bounds work globally (`concurrency`), per address
(`per_host`) and in new connections per second (`rate`), pulls checks lazily from an
iterator (so a /16 never sits in memory as 65,536 objects), and feeds follow-up checks
that a result asks for (the endpoint mapper's ports) back into the queue; a follow-up
asked for on an ancestor's behalf (lb-pool's members) is queued once.

Cheap per check, because a sweep runs tens of thousands a second: a worker takes the
next check, runs it and hands the outcome to a plain callback (no queue, no extra task
switch).  A check whose address is at its `per_host` limit is parked, not waited for,
so the worker moves on; the check that frees the slot hands it straight to the parked
one.  Workers exist only while there is work: they are started up to `concurrency`,
end when nothing is runnable, and are started again when derived or parked checks
become runnable, or (a `Pool` made with checks=None, as a shard's) when more checks
are fed.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from exprobe.engine.runner import Outcome
from exprobe.probes.base import CheckSpec

_YIELD_EVERY = 16

Runner = Callable[[CheckSpec], Awaitable[Outcome]]
Sink = Callable[[Outcome], None]


@dataclass(frozen=True, slots=True)
class Limits:
    concurrency: int = 256
    per_host: int = 4
    rate: float | None = None  # new connections per second, all addresses together


class RateLimiter:
    """Spaces connection starts at least 1/rate apart (a token bucket of depth 1)."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = time.monotonic()
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            if self._next > now:
                await asyncio.sleep(self._next - now)
                now = time.monotonic()
            self._next = max(self._next, now) + self._interval


class Pool:
    """One run of the worker pool (see the module docstring)."""

    def __init__(
        self,
        checks: Iterable[CheckSpec] | None,
        run: Runner,
        limits: Limits,
        sink: Sink,
        expected: int | None,
    ) -> None:
        # Checks come from an iterator, or (checks=None) are fed with feed() until close().
        self._source = iter(checks) if checks is not None else iter(())
        self._feed: collections.deque[CheckSpec] | None = (
            None if checks is not None else collections.deque()
        )
        self._feed_open = checks is None
        self._exhausted = False
        self._run = run
        self._sink = sink
        self._concurrency = max(1, limits.concurrency)
        self._per_host = max(1, limits.per_host)
        self._limiter = RateLimiter(limits.rate) if limits.rate else None
        # The first wave of workers: no more than there are checks.
        self._first_wave = min(self._concurrency, expected) if expected else self._concurrency
        self._inflight: dict[str, int] = {}  # address -> checks running against it
        self._parked: dict[str, collections.deque[CheckSpec]] = {}  # waiting for a slot
        self._n_parked = 0
        # Parking is bounded so that one address with many checks cannot pull the whole
        # (lazy) plan into memory: past the cap, workers wait for slots to free.
        self._park_cap = max(256, 4 * self._concurrency)
        self._handoff: collections.deque[CheckSpec] = collections.deque()  # slot held
        self._derived: collections.deque[CheckSpec] = collections.deque()
        # Checks derived on an ancestor's behalf (lb-pool's members, which every answer
        # from the VIP may name): queued once per (address or target, id).
        self._on_behalf: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._live = 0
        self._finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _take(self) -> CheckSpec | None:
        """The next runnable check, its address slot already taken; None: none now."""
        if self._handoff:
            return self._handoff.popleft()
        while True:
            if self._derived:
                check = self._derived.popleft()
            elif self._exhausted or self._n_parked >= self._park_cap:
                return None
            else:
                nxt = self._next_source()
                if nxt is None:
                    return None
                check = nxt
            key = check.address or check.target
            n = self._inflight.get(key, 0)
            if n < self._per_host:
                self._inflight[key] = n + 1
                return check
            parked = self._parked.get(key)
            if parked is None:
                parked = self._parked[key] = collections.deque()
            parked.append(check)
            self._n_parked += 1

    def _next_source(self) -> CheckSpec | None:
        if self._feed is None:
            nxt = next(self._source, None)
            if nxt is None:
                self._exhausted = True
            return nxt
        if self._feed:
            return self._feed.popleft()
        if not self._feed_open:
            self._exhausted = True
        return None  # more may be fed later

    def feed(self, checks: Iterable[CheckSpec]) -> None:
        """More checks (a pool made with checks=None)."""
        assert self._feed is not None, "a pool made with checks=None"
        assert self._feed_open, "fed after close()"
        self._feed.extend(checks)
        self._spawn()

    def close(self) -> None:
        """No more checks will be fed: the run ends when those fed are done."""
        self._feed_open = False
        if self._live == 0 and not self._finished.done():
            self._finished.set_result(None)

    def _release(self, key: str) -> None:
        parked = self._parked.get(key)
        if parked:
            self._handoff.append(parked.popleft())  # the slot passes on, still taken
            self._n_parked -= 1
            if not parked:
                del self._parked[key]
            return
        n = self._inflight[key] - 1
        if n:
            self._inflight[key] = n
        else:
            del self._inflight[key]

    def _queue_derived(self, outcome: Outcome) -> None:
        """Queue what a check derived.  A check derived on behalf of another than the one
        deriving it (siblings may all ask for it) runs once per address and id."""
        own = outcome.result.id
        for check in outcome.derived:
            if check.parent is not None and check.parent != own:
                key = (check.address or check.target, check.id)
                if key in self._on_behalf:
                    continue
                self._on_behalf.add(key)
            self._derived.append(check)

    def _spawn(self, limit: int | None = None) -> None:
        room = self._concurrency - self._live
        if room <= 0:
            return
        if self._feed is not None:
            room = min(room, len(self._handoff) + len(self._derived) + len(self._feed))
        elif self._exhausted or self._n_parked >= self._park_cap:
            room = min(room, len(self._handoff) + len(self._derived))
        if limit is not None:
            room = min(room, limit)
        loop = asyncio.get_running_loop()
        for _ in range(room):
            task = loop.create_task(self._worker())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self._live += 1

    async def _worker(self) -> None:
        done = 0
        try:
            while True:
                check = self._take()
                if check is None:
                    return
                key = check.address or check.target
                try:
                    if self._limiter is not None:
                        await self._limiter.wait()
                    outcome = await self._run(check)
                finally:
                    self._release(key)
                if outcome.derived:
                    self._queue_derived(outcome)
                self._sink(outcome)
                if self._live < self._concurrency:
                    self._spawn()
                done += 1
                if not done % _YIELD_EVERY:
                    # On loopback a connect completes without suspending: let the loop
                    # run now and then (signals, other workers, output flushes).
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the sink or the runner failed: end the run with it
            if not self._finished.done():
                self._finished.set_exception(exc)
        finally:
            self._live -= 1
            if self._live == 0 and not self._feed_open and not self._finished.done():
                self._finished.set_result(None)

    async def run(self) -> None:
        self._spawn(self._first_wave)
        if self._live == 0 and not self._feed_open:
            return
        try:
            await self._finished
        finally:
            # Interrupted, or one worker failed: stop the others before leaving.
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)


async def run_pool(
    checks: Iterable[CheckSpec],
    run: Runner,
    limits: Limits,
    sink: Sink,
    *,
    expected: int | None = None,
) -> None:
    """Run every check (and every derived one), calling `sink` with each outcome as it
    finishes.  `expected`, when known, is how many checks `checks` holds (a hint)."""
    await Pool(checks, run, limits, sink, expected).run()
