"""Frozen results: one `CheckResult` per check, `ScenarioVerdict`s, and the `RunReport`.

`to_dict` gives the documented JSON shape (docs/report.schema.json); the status strings
are exactly the `Status` values.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, cast

from exprobe import __version__
from exprobe.status import PortState, Status

SCHEMA_VERSION = "1.0"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """How one check ended, with everything learned on the way."""

    id: str
    probe: str
    target: str
    address: str | None
    port: int
    status: Status
    port_state: PortState
    failed_step: str | None
    elapsed_ms: float
    connect_ms: float | None
    started_at: str
    message: str = ""
    tls: str = "none"
    facts: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    steps: tuple[dict[str, Any], ...] = ()
    transcript: tuple[str, ...] = ()
    parent: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    trace: dict[str, Any] | None = None  # the hop trace to this port (--trace)

    @property
    def ok(self) -> bool:
        return self.status is Status.SUCCESS

    def failed_after(self, step: str, message: str, facts: dict[str, Any]) -> CheckResult:
        """This result restated as failed at `step` by what its derived checks found (a
        lookup probe's `summarise`: no Autodiscover method carries, no MX accepts)."""
        return dataclasses.replace(
            self,
            facts=facts,
            status=Status.APPLICATION_ERROR,
            port_state=PortState.UNKNOWN,
            failed_step=step,
            message=message,
        )

    @property
    def endpoint(self) -> str:
        addr = self.address or self.target
        return f"[{addr}]:{self.port}" if ":" in addr else f"{addr}:{self.port}"

    def to_dict(self, *, verbose: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "probe": self.probe,
            "target": self.target,
            "address": self.address,
            "port": self.port,
            "tls": self.tls,
            "status": self.status.value,
            "port_state": self.port_state.value,
            "failed_step": self.failed_step,
            "message": self.message,
            "elapsed_ms": self.elapsed_ms,
            "connect_ms": self.connect_ms,
            "started_at": self.started_at,
            "facts": self.facts,
            "warnings": list(self.warnings),
        }
        if self.parent:
            d["parent"] = self.parent
        if self.labels:
            d["labels"] = self.labels
        if self.trace is not None:
            d["trace"] = self.trace
        if verbose:
            d["steps"] = list(self.steps)
            d["transcript"] = list(self.transcript)
        return d


VERDICTS = ("pass", "fail", "unknown", "not-enabled", "skipped")
"""pass and fail; unknown: a service shipped switched off that is filtered (it may be on);
not-enabled: such a service refused (nothing listens); skipped: a host the scenario needs
(a domain controller, a witness) was not given."""


@dataclass(frozen=True, slots=True)
class ScenarioVerdict:
    """Whether one scenario works from here to one address, and why."""

    id: str
    title: str
    target: str
    address: str | None
    verdict: str  # one of VERDICTS
    reason: str
    checks: tuple[str, ...] = ()
    via: str | None = None
    hints: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    facts: dict[str, Any] = field(default_factory=dict)  # what answered (the build found)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def failed(self) -> bool:
        """A failure to act on (exit 1): not a skip, a service shipped off, or unknown."""
        return self.verdict == "fail"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "address": self.address,
            "verdict": self.verdict,
            "reason": self.reason,
            "checks": list(self.checks),
            "via": self.via,
            "hints": list(self.hints),
            "warnings": list(self.warnings),
            **({"facts": self.facts} if self.facts else {}),
        }


@dataclass(slots=True)
class TargetReport:
    """One target as given, its addresses, and what was found for them."""

    target: str
    labels: dict[str, str] = field(default_factory=dict)
    addresses: list[str] = field(default_factory=list)
    error: str | None = None
    results: list[CheckResult] = field(default_factory=list)
    scenarios: list[ScenarioVerdict] = field(default_factory=list)

    def to_dict(self, *, verbose: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "target": self.target,
            "labels": self.labels,
            "addresses": self.addresses,
            "error": self.error,
            "results": [r.to_dict(verbose=verbose) for r in self.results],
        }
        if self.scenarios:
            d["scenarios"] = [s.to_dict() for s in self.scenarios]
            d["scenario_summary"] = scenario_rollup(self.scenarios)
        return d


def scenario_rollup(verdicts: list[ScenarioVerdict]) -> dict[str, str]:
    """Per scenario id across a target's addresses: "all", "some" or "none" pass."""
    by_id: dict[str, list[bool]] = {}
    for v in verdicts:
        by_id.setdefault(v.id, []).append(v.passed)
    return {sid: "all" if all(ps) else ("some" if any(ps) else "none") for sid, ps in by_id.items()}


_iso_cache: list[Any] = [-1, "", -1, ""]  # second, its text, millisecond, full text


def now_iso() -> str:
    """Now in UTC as `2026-11-28T10:22:00.123Z`: formatted once per second and shared
    within a millisecond, since a sweep asks tens of thousands of times a second and a
    kept report holds one per result."""
    ms = int(time.time() * 1000)
    cache = _iso_cache
    if ms == cache[2]:
        return cast(str, cache[3])
    sec = ms // 1000
    if sec != cache[0]:
        cache[0] = sec
        cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    cache[2] = ms
    cache[3] = text = f"{cache[1]}.{ms % 1000:03d}Z"
    return text


@dataclass(slots=True)
class RunReport:
    """Everything one run found: the contract of `--format json`."""

    started_at: str
    finished_at: str | None = None
    duration_ms: float | None = None
    vantage: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None
    targets: list[TargetReport] = field(default_factory=list)
    interrupted: bool = False
    expectations: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Results streamed and not kept (`--format jsonl`): how many failed, for the exit code.
    streamed_failures: int = 0

    def all_results(self) -> list[CheckResult]:
        seen: set[int] = set()
        out: list[CheckResult] = []
        for t in self.targets:
            for r in t.results:
                if id(r) not in seen:
                    seen.add(id(r))
                    out.append(r)
        return out

    def replace_results(self, new: dict[int, CheckResult]) -> None:
        """Swap results (keyed by `id()` of the old object) wherever a target holds them."""
        for t in self.targets:
            t.results = [new.get(id(r), r) for r in t.results]

    def all_verdicts(self) -> list[ScenarioVerdict]:
        return [v for t in self.targets for v in t.scenarios]

    def summary(self) -> dict[str, Any]:
        results = self.all_results()
        by_status: dict[str, int] = {}
        for r in results:
            by_status[r.status.value] = by_status.get(r.status.value, 0) + 1
        out: dict[str, Any] = {
            "targets": len(self.targets),
            "addresses": len({a for t in self.targets for a in t.addresses}),
            "checks": len(results),
            "by_status": dict(sorted(by_status.items())),
        }
        verdicts = self.all_verdicts()
        if verdicts:
            counts = {k: sum(v.verdict == k for v in verdicts) for k in VERDICTS}
            out["scenarios"] = {k: n for k, n in counts.items() if n or k in ("pass", "fail")}
        if self.expectations is not None:
            out["expectations"] = {
                "met": sum(1 for e in self.expectations if e.get("met")),
                "violated": sum(1 for e in self.expectations if not e.get("met")),
            }
        return out

    def to_dict(self, *, verbose: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "exprobe", "version": __version__},
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_ms": self.duration_ms,
            "interrupted": self.interrupted,
            "vantage": self.vantage,
            "profile": self.profile,
            "targets": [t.to_dict(verbose=verbose) for t in self.targets],
            "summary": self.summary(),
        }
        if self.expectations is not None:
            d["expectations"] = self.expectations
        d.update(self.extra)
        return d
