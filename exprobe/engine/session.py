"""One run from targets to a report: resolve, plan, schedule, collect.

This glues the pieces without knowing any protocol: results stream to `on_result`
as they finish (JSON Lines, progress) and are collected into a `RunReport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exprobe.engine.plan import CheckDef, plan
from exprobe.engine.runner import Outcome, RunOptions, run_check
from exprobe.engine.scheduler import Limits, schedule
from exprobe.probes.base import CheckSpec
from exprobe.result import CheckResult, RunReport, TargetReport, now_iso
from exprobe.targets import Resolved, Target, resolve

ResultSink = Callable[[CheckResult], None]
DNS_CONCURRENCY = 64


@dataclass(slots=True)
class Session:
    """Everything a run needs to know, and the report it fills."""

    targets: list[Target]
    defs: list[CheckDef]
    opts: RunOptions = field(default_factory=RunOptions)
    limits: Limits = field(default_factory=Limits)
    family: int = socket.AF_UNSPEC
    keep_results: bool = True
    report: RunReport = field(default_factory=lambda: RunReport(started_at=now_iso()))
    total_planned: int = 0

    async def resolve_all(self) -> list[Resolved]:
        sem = asyncio.Semaphore(DNS_CONCURRENCY)

        async def one(t: Target) -> Resolved:
            async with sem:
                return await resolve(t, self.family)

        return list(await asyncio.gather(*(one(t) for t in self.targets)))

    async def run(self, on_result: ResultSink | None = None) -> RunReport:
        """Run every check; on cancellation keep what finished and mark the report."""
        t0 = time.perf_counter()
        rep = self.report
        rep.vantage = {
            "hostname": socket.gethostname(),
            "source_address": self.opts.source,
        }
        by_key: dict[tuple[str | None, str], CheckResult] = {}
        try:
            resolved = await self.resolve_all()
            target_reports = [
                TargetReport(r.target.text, dict(r.target.labels), list(r.addresses), r.error)
                for r in resolved
            ]
            rep.targets = target_reports
            self.total_planned = sum(
                max(1, len(r.addresses)) * max(1, len(self.defs)) for r in resolved
            )

            opts = self.opts

            async def runner(spec: CheckSpec) -> Outcome:
                return await run_check(spec, opts)

            checks = plan(resolved, self.defs, port_offset=opts.port_offset)
            async for outcome in schedule(checks, runner, self.limits):
                r = outcome.result
                if on_result is not None:
                    on_result(r)
                if self.keep_results:
                    by_key[(r.address, r.id) if r.address else (r.target, r.id)] = r
        except asyncio.CancelledError:
            rep.interrupted = True
            task = asyncio.current_task()
            if task is not None:
                # We handled the cancellation (Ctrl-C / SIGTERM): report what finished.
                with contextlib.suppress(AttributeError):
                    task.uncancel()
        finally:
            self._attach(by_key)
            rep.finished_at = now_iso()
            rep.duration_ms = round((time.perf_counter() - t0) * 1000, 3)
        return rep

    def _attach(self, by_key: dict[tuple[str | None, str], CheckResult]) -> None:
        """Give each target report its results, in a stable order (address, then port)."""
        per_addr: dict[str | None, list[CheckResult]] = {}
        for (addr, _cid), r in by_key.items():
            per_addr.setdefault(addr, []).append(r)
        for rs in per_addr.values():
            rs.sort(key=lambda r: (r.parent is not None, r.port, r.id))
        for t in self.report.targets:
            if t.error:
                t.results = per_addr.get(t.target, [])
            else:
                t.results = [r for a in t.addresses for r in per_addr.get(a, [])]
