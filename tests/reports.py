"""Build `RunReport`s by hand for reporter, diff and expectation tests."""

from __future__ import annotations

from typing import Any

from exprobe.result import CheckResult, RunReport, ScenarioVerdict, TargetReport
from exprobe.status import PortState, Status

STATE_OF = {
    Status.SUCCESS: PortState.OPEN,
    Status.CONNECTION_REFUSED: PortState.CLOSED,
    Status.CONNECTION_TIMEOUT: PortState.FILTERED,
    Status.UNREACHABLE: PortState.FILTERED,
    Status.DNS_ERROR: PortState.UNKNOWN,
    Status.SKIPPED: PortState.UNKNOWN,
}


def result(
    cid: str,
    port: int,
    status: Status = Status.SUCCESS,
    *,
    address: str | None = "10.0.0.5",
    target: str | None = None,
    probe: str = "tcp",
    state: PortState | None = None,
    message: str = "",
    elapsed_ms: float = 12.5,
    facts: dict[str, Any] | None = None,
    warnings: tuple[str, ...] = (),
    parent: str | None = None,
    failed_step: str | None = None,
) -> CheckResult:
    ok = status is Status.SUCCESS
    return CheckResult(
        id=cid,
        probe=probe,
        target=target or address or "host",
        address=address,
        port=port,
        status=status,
        port_state=state or STATE_OF.get(status, PortState.OPEN),
        failed_step=failed_step if failed_step is not None else (None if ok else "connect"),
        elapsed_ms=elapsed_ms,
        connect_ms=1.0 if ok else None,
        started_at="2026-01-01T00:00:00.000Z",
        message=message or ("connected" if ok else status.value),
        facts=facts or {},
        warnings=warnings,
        parent=parent,
    )


def verdict(
    sid: str,
    passed: bool,
    *,
    address: str | None = "10.0.0.5",
    target: str = "10.0.0.5",
    reason: str | None = None,
    title: str | None = None,
    checks: tuple[str, ...] = (),
    via: str | None = None,
    warnings: tuple[str, ...] = (),
    hints: tuple[str, ...] = (),
) -> ScenarioVerdict:
    title = title or sid.replace("-", " ").title()
    return ScenarioVerdict(
        id=sid,
        title=title,
        target=target,
        address=address,
        verdict="pass" if passed else "fail",
        reason=reason or (f"{title} passes" if passed else f"{title} fails: 135 filtered"),
        checks=checks,
        via=via,
        hints=hints,
        warnings=warnings,
    )


def target(
    name: str,
    results: list[CheckResult] = (),  # type: ignore[assignment]
    scenarios: list[ScenarioVerdict] = (),  # type: ignore[assignment]
    *,
    addresses: list[str] | None = None,
    labels: dict[str, str] | None = None,
    error: str | None = None,
) -> TargetReport:
    if addresses is None:
        addresses = sorted({r.address for r in results if r.address}) or ([] if error else [name])
    return TargetReport(
        target=name,
        labels=labels or {},
        addresses=addresses,
        error=error,
        results=list(results),
        scenarios=list(scenarios),
    )


def report(*targets: TargetReport, interrupted: bool = False) -> RunReport:
    return RunReport(
        started_at="2026-01-01T00:00:00.000Z",
        finished_at="2026-01-01T00:00:01.500Z",
        duration_ms=1500.0,
        vantage={"hostname": "probe-1", "source_address": None},
        targets=list(targets),
        interrupted=interrupted,
    )
