"""One run from targets to a report: resolve, plan, schedule, collect.

This glues the pieces without knowing any protocol: results stream to `on_result`
as they finish (JSON Lines, progress) and are collected into a `RunReport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from exprobe.engine.plan import CheckDef, plan, role_of
from exprobe.engine.runner import RunOptions, run_check
from exprobe.engine.scheduler import Limits, run_pool
from exprobe.engine.shard import run_sharded, shard_count
from exprobe.engine.tracing import TraceOptions, trace_report
from exprobe.net.dns import Resolver
from exprobe.probes import get as get_probe
from exprobe.probes.base import CheckSpec
from exprobe.result import CheckResult, RunReport, TargetReport, now_iso
from exprobe.status import Status
from exprobe.targets import Resolved, Target, resolve, resolve_literal

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
    trace: TraceOptions | None = None  # --trace: the hop phase after the checks
    resolver: Resolver | None = None  # --dns-server: names resolved there, not by getaddrinfo
    notes: list[str] = field(default_factory=list)  # for the user (stderr)
    primary_role: str | None = None  # a profile with roles: each target gets its role's checks

    async def resolve_names(self) -> dict[int, Resolved]:
        """The addresses of the targets that are names (by index in `targets`), looked
        up concurrently (bounded).  Literal targets need no lookup at all."""
        names = [i for i, t in enumerate(self.targets) if t.is_name]
        out: dict[int, Resolved] = {}
        if self.defs and not any(get_probe(d.probe).connects for d in self.defs):
            # Only lookup probes (autodiscover): they resolve what they need themselves;
            # the target's own name need not resolve.
            return {i: Resolved(self.targets[i], []) for i in names}
        if names:
            sem = asyncio.Semaphore(DNS_CONCURRENCY)

            async def one(i: int) -> None:
                async with sem:
                    out[i] = await resolve(self.targets[i], self.family, self.resolver)

            await asyncio.gather(*(one(i) for i in names))
        return out

    def resolved(self, names: dict[int, Resolved], *, expand: bool) -> Iterator[Resolved]:
        """Every target with its addresses, in order, made as it is asked for."""
        for i, t in enumerate(self.targets):
            r = names.get(i)
            yield r if r is not None else resolve_literal(t, self.family, expand=expand)

    async def resolve_all(self) -> list[Resolved]:
        """Every target's addresses (see `resolved`)."""
        return list(self.resolved(await self.resolve_names(), expand=True))

    async def run(self, on_result: ResultSink | None = None) -> RunReport:
        """Run every check; on cancellation keep what finished and mark the report."""
        t0 = time.perf_counter()
        rep = self.report
        rep.vantage = {
            "hostname": socket.gethostname(),
            "source_address": self.opts.source,
        }
        by_key: dict[tuple[str | None, str], CheckResult] = {}
        keep = self.keep_results
        attached = False
        try:
            names = await self.resolve_names()
            source: Callable[[], Iterable[Resolved]]
            if keep:
                resolved = list(self.resolved(names, expand=True))
                rep.targets = [_target_report(r) for r in resolved]
                source = functools.partial(iter, resolved)
            else:
                # Streaming: nothing per literal target is kept (the report's targets are
                # the names that did not resolve, for the exit code), and the plan
                # resolves literals as it goes.
                rep.targets = [_target_report(r) for r in names.values() if r.error]
                source = functools.partial(self.resolved, names, expand=False)
            self.total_planned = sum(
                self._n_defs(t) * max(1, names[i].count() if i in names else t.size())
                for i, t in enumerate(self.targets)
            )

            def deliver(r: CheckResult) -> None:
                if on_result is not None:
                    on_result(r)
                if keep:
                    by_key[(r.address, r.id) if r.address else (r.target, r.id)] = r
                elif not r.ok and r.status is not Status.SKIPPED:
                    rep.streamed_failures += 1

            def checks() -> Iterator[CheckSpec]:
                return plan(
                    source(),
                    self.defs,
                    port_offset=self.opts.port_offset,
                    primary_role=self.primary_role,
                )

            runner = functools.partial(run_check, opts=self.opts)
            shards = shard_count(
                self.total_planned, self.limits, self._count_addresses, streamed=not keep
            )
            if shards > 1:
                await run_sharded(
                    checks(), runner, self.limits, shards, deliver, forget=self.targets.clear
                )
            else:
                await run_pool(
                    checks(),
                    runner,
                    self.limits,
                    lambda outcome: deliver(outcome.result),
                    expected=self.total_planned,
                )
            if keep:
                self._attach(by_key)
                attached = True
                summarise(rep)
            if self.trace is not None and keep:
                self.notes += await trace_report(rep, self.trace, self.limits)
        except asyncio.CancelledError:
            rep.interrupted = True
            task = asyncio.current_task()
            if task is not None:
                # We handled the cancellation (Ctrl-C / SIGTERM): report what finished.
                with contextlib.suppress(AttributeError):
                    task.uncancel()
        finally:
            if not attached:
                self._attach(by_key)
            rep.finished_at = now_iso()
            rep.duration_ms = round((time.perf_counter() - t0) * 1000, 3)
        return rep

    def _n_defs(self, t: Target) -> int:
        """How many checks a target gets (its role's, when checks are bound to roles)."""
        if self.primary_role is None:
            return max(1, len(self.defs))
        role = role_of(t.labels, self.primary_role)
        return sum(1 for d in self.defs if (d.role or self.primary_role) == role)

    def _count_addresses(self) -> int:
        """Distinct addresses among the targets (names and CIDR blocks counted by size)."""
        singles: set[str] = set()
        others = 0
        for t in self.targets:
            if t.address is not None:
                singles.add(t.text.partition(":")[0] if t.address.version == 4 else t.text)
            else:
                others += t.size()
        return len(singles) + others

    def _attach(self, by_key: dict[tuple[str | None, str], CheckResult]) -> None:
        """Give each target report its results, in a stable order (address, then port)."""
        per_addr: dict[str | None, list[CheckResult]] = {}
        for (addr, _cid), r in by_key.items():
            per_addr.setdefault(addr, []).append(r)
        for rs in per_addr.values():
            rs.sort(key=lambda r: (r.parent is not None, r.port, r.id))
        # Results at no address of any target: a lookup probe's (keyed by the target) and
        # the checks it derived at other hosts' addresses (autodiscover's methods).
        known = {a for t in self.report.targets for a in t.addresses}
        elsewhere: dict[str, list[CheckResult]] = {}
        for a, rs in per_addr.items():
            if a not in known:
                for r in rs:
                    elsewhere.setdefault(r.target, []).append(r)
        for t in self.report.targets:
            mine = elsewhere.get(t.target, [])
            if t.error:
                t.results = mine
            else:
                t.results = [r for a in t.addresses for r in per_addr.get(a, [])] + mine


def summarise(report: RunReport) -> None:
    """Let each probe that summarises (autodiscover) restate its result from the results
    of the checks it derived."""
    results = report.all_results()
    hooks = {p: get_probe(p).summarise for p in {r.probe for r in results}}
    if not any(hooks.values()):
        return
    # Indexes built once: a sweep of many TLS checks must not search all results for
    # each one's children.  A parent is at the child's address, or (a lookup probe's
    # methods at other hosts) at no address of the same target.
    by_id: dict[tuple[str, str | None, str], CheckResult] = {}
    children: dict[tuple[str, str], list[CheckResult]] = {}
    for r in results:
        by_id[(r.target, r.address, r.id)] = r
        if r.parent is not None:
            children.setdefault((r.target, r.parent), []).append(r)

    def depth(r: CheckResult) -> int:
        n = 0
        while r.parent is not None and n < 64:
            up = by_id.get((r.target, r.address, r.parent)) or by_id.get(
                (r.target, None, r.parent)
            )
            if up is None:
                break
            r, n = up, n + 1
        return n

    # Deepest first, so that a check restated from its derived checks (a TLS version's
    # cipher rounds) is seen restated by its own parent (the TLS check).
    new: dict[int, CheckResult] = {}
    for r in sorted(results, key=depth, reverse=True):
        hook = hooks[r.probe]
        if hook is not None:
            kids = [new.get(id(c), c) for c in children.get((r.target, r.id), [])]
            new[id(r)] = hook(r, kids)
    report.replace_results(new)


def _target_report(r: Resolved) -> TargetReport:
    return TargetReport(r.target.text, dict(r.target.labels), r.addresses, r.error)
