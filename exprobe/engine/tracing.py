"""The hop phase of a run (`--trace`): trace the ports of failing checks (or of every
check) and say where each one breaks.

After the checks, for each selected result: a TCP trace to its very port
(`exprobe.net.trace`), and, when the same address has a port that connected in this run,
a trace to that port too, the reference path.  `exprobe.hops.locate` compares them; the
result gets `trace` (hops, reference, break).  Each distinct (address, port) is traced
once.  Limits: `per_host` traces in flight per address, at most `concurrency` sockets in
flight in all, and each TTL's connect passes the run's `rate` limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from exprobe.engine.scheduler import Limits, RateLimiter
from exprobe.hops import Break, distance, locate
from exprobe.net.connect import HOPS_SUPPORTED
from exprobe.net.trace import Reply, trace
from exprobe.result import CheckResult, RunReport
from exprobe.status import Status

MODES = ("failing", "all")
UNSUPPORTED = "hop location needs Linux (IP_RECVERR); no hop is named"
# Not a path problem: nothing to trace.
_UNTRACED = {Status.SUCCESS, Status.DNS_ERROR, Status.INTERNAL_ERROR, Status.SKIPPED}
_NAME_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class TraceOptions:
    """What `--trace`, `--max-hops` and `--resolve-hops` asked for."""

    mode: str = "failing"  # failing | all
    max_hops: int = 30
    resolve: bool = False
    timeout: float = 3.0  # per TTL: the run's connect timeout
    source: str | None = None


def selected(results: Iterable[CheckResult], mode: str) -> list[CheckResult]:
    """The results whose port gets a trace."""
    return [
        r
        for r in results
        if r.address is not None and (mode == "all" or r.status not in _UNTRACED)
    ]


def reference_port(results: Iterable[CheckResult], address: str, port: int) -> int | None:
    """A port of `address` that connected in this run (lowest; a success first)."""
    connected = sorted(
        (r.status is not Status.SUCCESS, r.port)
        for r in results
        if r.address == address and r.port != port and r.connect_ms is not None
    )
    return connected[0][1] if connected else None


async def trace_report(report: RunReport, opts: TraceOptions, limits: Limits) -> list[str]:
    """Trace the selected results of `report` and attach `trace` to each; the warnings
    for the user (the platform cannot do it)."""
    results = report.all_results()
    chosen = selected(results, opts.mode)
    if not chosen:
        return []
    if not HOPS_SUPPORTED:
        report.replace_results(
            {id(r): dataclasses.replace(r, trace={"error": UNSUPPORTED}) for r in chosen}
        )
        return [UNSUPPORTED]
    by_addr: dict[str | None, list[CheckResult]] = {}
    for r in results:
        by_addr.setdefault(r.address, []).append(r)
    wanted: set[tuple[str, int]] = set()
    for r in chosen:
        wanted.add((r.address or "", r.port))
        ref = reference_port(by_addr[r.address], r.address or "", r.port)
        if ref is not None:
            wanted.add((r.address or "", ref))
    traces = await _run_traces(sorted(wanted), opts, limits)
    if opts.resolve:
        await _name_hops(traces)
    connected = {(r.address, r.port) for r in results if r.connect_ms is not None}
    per_host: dict[str, dict[tuple[str, int], list[Reply]]] = {}
    for key, replies in traces.items():
        per_host.setdefault(key[0], {})[key] = replies
    new: dict[int, CheckResult] = {}
    for r in chosen:
        addr = r.address or ""
        hops = traces[(addr, r.port)]
        ref = farthest(per_host[addr], connected, addr, r.port)
        ref_hops = traces.get((addr, ref)) if ref is not None else None
        brk = locate(hops, addr, r.port, ref_hops, ref)
        found = trace_dict(r.port, opts, hops, ref, ref_hops, brk)
        new[id(r)] = dataclasses.replace(r, trace=found)
    report.replace_results(new)
    return []


def farthest(
    traces: dict[tuple[str, int], list[Reply]],
    connected: set[tuple[str | None, int]],
    address: str,
    port: int,
) -> int | None:
    """The reference for `port`: of the traced ports of `address` that connected, the one
    answered from farthest away (the server; a nearer answer is a middlebox's)."""
    best: tuple[int, int] | None = None
    for (addr, other), hops in traces.items():
        if addr != address or other == port or (addr, other) not in connected:
            continue
        d = distance(hops)
        if d is not None and (best is None or (-d, other) < (-best[0], best[1])):
            best = (d, other)
    return best[1] if best is not None else None


def trace_dict(
    port: int,
    opts: TraceOptions,
    hops: list[Reply],
    ref_port: int | None,
    ref_hops: list[Reply] | None,
    brk: Break | None,
) -> dict[str, Any]:
    """The `trace` of a result (docs/report.schema.json)."""
    d: dict[str, Any] = {
        "port": port,
        "max_hops": opts.max_hops,
        "hops": [h.to_dict() for h in trimmed(hops)],
        "reference": None,
        "break": brk.to_dict() if brk is not None else None,
    }
    if ref_port is not None and ref_hops is not None:
        d["reference"] = {
            "port": ref_port,
            "server_hops": distance(ref_hops),
            "hops": [h.to_dict() for h in trimmed(ref_hops)],
        }
    return d


def trimmed(hops: list[Reply]) -> list[Reply]:
    """The replies up to the first answer from the far end, or up to one silent TTL past
    the last that answered: the rest says nothing more."""
    end = next((h.ttl for h in hops if h.kind in ("open", "reset", "icmp")), None)
    if end is None:
        answered = max((h.ttl for h in hops if h.kind != "silent"), default=0)
        end = min(answered + 1, len(hops))
    return [h for h in hops if h.ttl <= end]


async def _run_traces(
    wanted: list[tuple[str, int]], opts: TraceOptions, limits: Limits
) -> dict[tuple[str, int], list[Reply]]:
    limiter = RateLimiter(limits.rate) if limits.rate else None
    gate = limiter.wait if limiter is not None else None
    in_flight = asyncio.Semaphore(max(1, limits.concurrency // max(1, opts.max_hops)))
    per_host: dict[str, asyncio.Semaphore] = {}
    out: dict[tuple[str, int], list[Reply]] = {}

    async def one(address: str, port: int) -> None:
        host = per_host.setdefault(address, asyncio.Semaphore(max(1, limits.per_host)))
        async with in_flight, host:
            out[(address, port)] = await trace(
                address, port, max_hops=opts.max_hops, wait=opts.timeout,
                source=opts.source, gate=gate,
            )  # fmt: skip

    await asyncio.gather(*(one(a, p) for a, p in wanted))
    return out


async def _name_hops(traces: dict[tuple[str, int], list[Reply]]) -> None:
    """Reverse names for every hop address (--resolve-hops), bounded in time."""
    loop = asyncio.get_running_loop()
    addrs = {h.address for hops in traces.values() for h in hops if h.address}
    names: dict[str, str] = {}

    async def one(addr: str) -> None:
        try:
            async with asyncio.timeout(_NAME_TIMEOUT):
                host, _ = await loop.getnameinfo((addr, 0), socket.NI_NAMEREQD)
        except (OSError, TimeoutError):
            return
        names[addr] = host

    await asyncio.gather(*(one(a) for a in addrs))
    for key, hops in traces.items():
        traces[key] = [
            dataclasses.replace(h, name=names[h.address]) if h.address in names else h
            for h in hops
        ]
