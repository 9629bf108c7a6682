"""Fan checks out over a pool of worker tasks; stream results as they finish.

The scheduler knows no protocol.  It bounds work globally (`concurrency`), per address
(`per_host`) and in new connections per second (`rate`), pulls checks lazily from an
iterator (so a /16 never sits in memory as 65,536 objects), and feeds follow-up checks
that a result asks for (the endpoint mapper's ports) back into the queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass

from exprobe.engine.runner import Outcome
from exprobe.probes.base import CheckSpec

Runner = Callable[[CheckSpec], Awaitable[Outcome]]


@dataclass(frozen=True, slots=True)
class Limits:
    concurrency: int = 256
    per_host: int = 4
    rate: float | None = None  # new connections per second, all addresses together


class _RateLimiter:
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


class _HostGate:
    """At most `limit` checks in flight per address; idle entries are dropped."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._sems: dict[str, asyncio.Semaphore] = {}
        self._users: collections.Counter[str] = collections.Counter()

    async def acquire(self, key: str) -> None:
        sem = self._sems.get(key)
        if sem is None:
            sem = self._sems[key] = asyncio.Semaphore(self._limit)
        self._users[key] += 1
        try:
            await sem.acquire()
        except BaseException:
            self._release_user(key)
            raise

    def release(self, key: str) -> None:
        self._sems[key].release()
        self._release_user(key)

    def _release_user(self, key: str) -> None:
        self._users[key] -= 1
        if self._users[key] <= 0:
            del self._users[key]
            del self._sems[key]


async def schedule(
    checks: Iterable[CheckSpec], run: Runner, limits: Limits
) -> AsyncIterator[Outcome]:
    """Yield each check's outcome as it finishes, derived checks included."""
    source: Iterator[CheckSpec] = iter(checks)
    extra: collections.deque[CheckSpec] = collections.deque()
    done: asyncio.Queue[Outcome | None] = asyncio.Queue(maxsize=max(64, limits.concurrency))
    gate = _HostGate(max(1, limits.per_host))
    limiter = _RateLimiter(limits.rate) if limits.rate else None
    wakeup = asyncio.Event()
    state = {"busy": 0, "exhausted": False}

    def next_check() -> CheckSpec | None:
        if extra:
            return extra.popleft()
        if not state["exhausted"]:
            item = next(source, None)
            if item is not None:
                return item
            state["exhausted"] = True
        return None

    async def worker() -> None:
        while True:
            check = next_check()
            if check is None:
                if state["busy"] == 0:
                    wakeup.set()  # let sleeping workers see the end
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            state["busy"] += 1
            key = check.address or check.target
            try:
                await gate.acquire(key)
                try:
                    if limiter is not None:
                        await limiter.wait()
                    outcome = await run(check)
                finally:
                    gate.release(key)
                extra.extend(outcome.derived)
                await done.put(outcome)
            finally:
                state["busy"] -= 1
                wakeup.set()

    async def pool() -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(max(1, limits.concurrency)):
                    tg.create_task(worker())
        finally:
            await done.put(None)  # the end, even when a worker failed

    pool_task = asyncio.create_task(pool())
    try:
        while True:
            outcome = await done.get()
            if outcome is None:
                break
            yield outcome
        await pool_task
    finally:
        if not pool_task.done():
            pool_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pool_task
