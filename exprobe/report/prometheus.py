"""`--format prometheus`: the text exposition format (node_exporter's textfile collector,
`exprobe serve`), written by `prometheus_client` rather than by hand.

Every per-check metric carries the same labels, `target` (as given), `address`, `port`,
`check` (the check id) and `probe`, so series stay stable from run to run; status and
port state are one-hot (`status`/`state` label, one series per value, exactly one is 1),
so `exprobe_check_status{status="connection-timeout"} == 1` alerts without churn.

    exprobe_check_success                 1 when the check succeeded
    exprobe_check_duration_seconds        whole check, connect included
    exprobe_check_status{status=...}      one-hot over the status values
    exprobe_check_port_state{state=...}   one-hot over open, closed, filtered, unknown
    exprobe_check_warnings                number of warnings
    exprobe_cert_expiry_timestamp_seconds certificate notAfter (per target, address, port, check)
    exprobe_breaks_at_hop{kind,hop_address,exact}  the hop where a traced port's path breaks
    exprobe_scenario_pass                 1 when the scenario passes (target, address, scenario)
    exprobe_expectation_met               1 when met (target, address, expectation, kind, item)
    exprobe_run_duration_seconds, exprobe_run_timestamp_seconds, exprobe_run_interrupted
    exprobe_probe_success                 (exporter only) every scenario / check passed
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from exprobe.result import RunReport
from exprobe.status import PortState, Status

CHECK_LABELS = ("target", "address", "port", "check", "probe")
CERT_LABELS = ("target", "address", "port", "check")
SCENARIO_LABELS = ("target", "address", "scenario")
EXPECTATION_LABELS = ("target", "address", "expectation", "kind", "item")


def _timestamp(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def probe_success(report: RunReport) -> bool:
    """No scenario failed (or, without scenarios, every check succeeded): as the exit
    code, a scenario skipped (no host for its role), not enabled or unknown is no failure."""
    if report.interrupted:
        return False
    if report.expectations is not None:
        return all(e.get("met") for e in report.expectations)
    verdicts = report.all_verdicts()
    if verdicts:
        return not any(v.failed for v in verdicts)
    results = report.all_results()
    return bool(results) and all(r.ok for r in results)


def families(report: RunReport, *, probe: bool = False) -> Iterator[Any]:
    """The metric families of one report (gauges)."""
    from prometheus_client.core import GaugeMetricFamily

    success = GaugeMetricFamily(
        "exprobe_check_success", "1 when the check succeeded, else 0.", labels=CHECK_LABELS
    )
    duration = GaugeMetricFamily(
        "exprobe_check_duration_seconds",
        "Time the check took, connect included.",
        labels=CHECK_LABELS,
    )
    status = GaugeMetricFamily(
        "exprobe_check_status",
        "How the check ended: 1 for its status, 0 for the others.",
        labels=(*CHECK_LABELS, "status"),
    )
    state = GaugeMetricFamily(
        "exprobe_check_port_state",
        "The TCP port's state as nmap names it: 1 for the observed state, 0 for the others.",
        labels=(*CHECK_LABELS, "state"),
    )
    warnings = GaugeMetricFamily(
        "exprobe_check_warnings", "Number of warnings the check raised.", labels=CHECK_LABELS
    )
    cert = GaugeMetricFamily(
        "exprobe_cert_expiry_timestamp_seconds",
        "When the server's certificate expires (notAfter), Unix time.",
        labels=CERT_LABELS,
    )
    hops = GaugeMetricFamily(
        "exprobe_breaks_at_hop",
        "The hop (TTL distance) where the path to the check's port breaks (--trace); 0 when"
        " the hop is unknown. Absent when not traced or not broken.",
        labels=[*CHECK_LABELS, "kind", "hop_address", "exact"],
    )
    seen: set[tuple[str, ...]] = set()
    seen_cert: set[tuple[str, ...]] = set()
    for t in report.targets:
        for r in t.results:
            labels = (t.target, r.address or "", str(r.port), r.id, r.probe)
            if labels in seen:
                continue
            seen.add(labels)
            success.add_metric(labels, 1.0 if r.ok else 0.0)
            duration.add_metric(labels, round(r.elapsed_ms / 1000, 6))
            for s in Status:
                status.add_metric((*labels, s.value), 1.0 if r.status is s else 0.0)
            for p in PortState:
                state.add_metric((*labels, p.value), 1.0 if r.port_state is p else 0.0)
            warnings.add_metric(labels, float(len(r.warnings)))
            expiry = _timestamp(r.facts.get("cert_not_after"))
            if expiry is not None and labels[:4] not in seen_cert:
                seen_cert.add(labels[:4])
                cert.add_metric(labels[:4], expiry)
            brk = (r.trace or {}).get("break")
            if isinstance(brk, dict):
                hop = brk.get("hop")
                extra = (str(brk.get("kind")), str(brk.get("address") or ""),
                         "true" if brk.get("exact") else "false")  # fmt: skip
                hops.add_metric((*labels, *extra), float(hop) if isinstance(hop, int) else 0.0)
    yield from (success, duration, status, state, warnings, cert)
    if hops.samples:  # only runs with --trace have it
        yield hops

    scenario = GaugeMetricFamily(
        "exprobe_scenario_pass",
        "1 when the scenario would work through this path, else 0.",
        labels=SCENARIO_LABELS,
    )
    verdict = GaugeMetricFamily(
        "exprobe_scenario_verdict",
        "1 for the scenario's verdict (pass, fail, unknown, not-enabled, skipped).",
        labels=(*SCENARIO_LABELS, "verdict"),
    )
    seen_s: set[tuple[str, ...]] = set()
    for t in report.targets:
        for v in t.scenarios:
            skey = (t.target, v.address or "", v.id)
            if skey not in seen_s:
                seen_s.add(skey)
                scenario.add_metric(skey, 1.0 if v.passed else 0.0)
                verdict.add_metric((*skey, v.verdict), 1.0)
    yield scenario
    if verdict.samples:
        yield verdict

    if report.expectations is not None:
        met = GaugeMetricFamily(
            "exprobe_expectation_met",
            "1 when the expectation holds, else 0.",
            labels=EXPECTATION_LABELS,
        )
        seen_e: set[tuple[str, ...]] = set()
        for e in report.expectations:
            item = str(e.get("scenario", e.get("port", "")))
            key = (
                str(e.get("target", "")),
                str(e.get("address") or ""),
                str(e.get("expectation", "")),
                str(e.get("kind", "")),
                item,
            )
            if key not in seen_e:
                seen_e.add(key)
                met.add_metric(key, 1.0 if e.get("met") else 0.0)
        yield met

    yield GaugeMetricFamily(
        "exprobe_run_duration_seconds",
        "Wall time of the whole run.",
        value=round((report.duration_ms or 0.0) / 1000, 6),
    )
    finished = _timestamp(report.finished_at) or _timestamp(report.started_at)
    if finished is not None:
        yield GaugeMetricFamily(
            "exprobe_run_timestamp_seconds",
            "When the run finished, Unix time (alert when it gets old).",
            value=finished,
        )
    yield GaugeMetricFamily(
        "exprobe_run_interrupted",
        "1 when the run was interrupted and its results are partial.",
        value=1.0 if report.interrupted else 0.0,
    )
    if probe:
        yield GaugeMetricFamily(
            "exprobe_probe_success",
            "1 when no selected scenario failed (or every check passed).",
            value=1.0 if probe_success(report) else 0.0,
        )


class ReportCollector:
    """A `prometheus_client` collector over one finished report."""

    def __init__(self, report: RunReport, *, probe: bool = False) -> None:
        self._report = report
        self._probe = probe

    def collect(self) -> Iterator[Any]:
        yield from families(self._report, probe=self._probe)


def render_bytes(report: RunReport, *, probe: bool = False) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReportCollector(report, probe=probe))
    data: bytes = generate_latest(registry)
    return data


def render(report: RunReport, *, verbose: bool = False) -> str:
    """`--format prometheus` (`verbose` changes nothing: the metrics are the metrics)."""
    return render_bytes(report).decode("utf-8")
