"""`--format nagios`: the monitoring-plugins conventions (Nagios, Icinga, Naemon, Checkmk).

First line `EXPROBE <STATE> - <summary> | <perfdata>`, then long output, one line per
failing scenario (or check), violated expectation and warning.  Perfdata items follow
the plugin guidelines, `'label'=value[UOM];[warn];[crit];[min];[max]`: the time of each
check in seconds (`s`), each certificate's days left, the scenario counts and the run
time.  Exit codes 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN:

- CRITICAL: a scenario failed (a check failed when there is no profile), a target did
  not resolve, or, when expectations are given, an expectation is violated (and then
  only that: a scenario that fails by design is fine);
- UNKNOWN: the run was interrupted or exprobe failed internally (bad input exits 3 too:
  see `exprobe.cli.main`);
- WARNING: everything passed but something warned (a certificate about to expire, an
  untrusted certificate, STARTTLS missing, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from exprobe.hops import break_where
from exprobe.report.safe import printable
from exprobe.result import CheckResult, RunReport
from exprobe.status import Status

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
# How states combine: the worst wins, in this order.
_RANK = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}
SUMMARY_ITEMS = 3  # failures named on the status line; the rest go to long output


@dataclass(slots=True)
class Verdict:
    state: int = OK
    summary: str = ""
    lines: list[str] = field(default_factory=list)

    def raise_to(self, state: int) -> None:
        if _RANK[state] > _RANK[self.state]:
            self.state = state


def clean(text: object, limit: int = 300) -> str:
    """One safe line: no control characters, no `|` (it starts perfdata in every line)."""
    return printable(text, limit).replace("|", "/")


def _where(r: CheckResult) -> str:
    return r.address or r.target


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _warnings(report: RunReport) -> list[str]:
    """Every warning once per address (a scenario repeats its checks' warnings)."""
    out: list[str] = []
    seen: set[tuple[str, str]] = set()
    for r in report.all_results():
        for w in r.warnings:
            if (_where(r), w) not in seen:
                seen.add((_where(r), w))
                out.append(f"{_where(r)}:{r.port} {r.id}: {w}")
    for x in report.all_verdicts():
        where = x.address or x.target
        for w in x.warnings:
            # A scenario repeats its checks' warnings, sometimes prefixed ("563: TLS: ...").
            if any(a == where and w.endswith(cw) for a, cw in seen):
                continue
            seen.add((where, w))
            out.append(f"{where} {x.id}: {w}")
    return out


def _counts(items: Iterable[str]) -> list[tuple[str, int]]:
    """How many of each, in first-seen order."""
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return list(out.items())


def evaluate(report: RunReport, *, verbose: bool = False) -> Verdict:
    """The plugin state, the status-line summary and the long-output lines."""
    v = Verdict()
    results = report.all_results()
    verdicts = report.all_verdicts()
    warnings = _warnings(report)
    internal = [r for r in results if r.status is Status.INTERNAL_ERROR]
    unresolved = [t for t in report.targets if t.error]
    problems: list[str] = []  # named on the status line, worst first

    if report.expectations is not None:
        bad = [e for e in report.expectations if not e.get("met")]
        for e in bad:
            v.raise_to(CRITICAL)
            where = e.get("address") or e.get("target")
            text = (
                f"{e.get('expectation')} at {where}: expected {_expected(e)}, "
                f"observed {e.get('observed')}"
            )
            problems.append(text)
            v.lines.append(f"VIOLATED {clean(text)}: {clean(e.get('evidence', ''))}")
        n = len(report.expectations)
        base = (
            f"{len(bad)} of {_plural(n, 'expectation')} violated"
            if bad
            else f"{_plural(n, 'expectation')} met"
        )
        if verbose:
            v.lines += [
                f"MET {clean(e.get('expectation'))} at "
                f"{clean(e.get('address') or e.get('target'))}: "
                f"{clean(_expected(e))}: {clean(e.get('evidence', ''))}"
                for e in report.expectations
                if e.get("met")
            ]
    elif verdicts:
        failed = [x for x in verdicts if x.failed]
        for x in failed:
            v.raise_to(CRITICAL)
            text = f"{x.title} at {x.address or x.target}: {x.reason}"
            problems.append(text)
            v.lines.append(f"FAIL {clean(x.title)} [{clean(x.id)}] at "
                           f"{clean(x.address or x.target)}: {clean(x.reason)}")
        for x in verdicts:
            if x.passed or x.failed:
                continue
            if x.verdict == "unknown":  # it may be on behind a filter: worth a look
                v.raise_to(WARNING)
            v.lines.append(f"{x.verdict.upper()} {clean(x.title)} [{clean(x.id)}] at "
                           f"{clean(x.address or x.target)}: {clean(x.reason)}")
        if verbose:
            v.lines += [
                f"PASS {clean(x.title)} [{clean(x.id)}] at {clean(x.address or x.target)}"
                + (f" via {clean(x.via)}" if x.via else "")
                for x in verdicts
                if x.passed
            ]
        addrs = len({x.address for x in verdicts})
        others = [x for x in verdicts if not x.passed and not x.failed]
        if failed:
            base = f"{len(failed)} of {_plural(len(verdicts), 'scenario')} fail"
        elif others:
            # Skipped, not enabled, unknown: said, never counted as passing.
            kinds = ", ".join(f"{n} {k}" for k, n in _counts(x.verdict for x in others))
            passed = len(verdicts) - len(others)
            base = (f"{passed} of {_plural(len(verdicts), 'scenario')} pass on"
                    f" {_plural(addrs, 'address')} ({kinds})")  # fmt: skip
        else:
            base = f"{_plural(len(verdicts), 'scenario')} pass on {_plural(addrs, 'address')}"
    else:
        failed_r = [r for r in results if not r.ok and r.status is not Status.SKIPPED]
        for r in failed_r:
            if r.status is not Status.INTERNAL_ERROR:
                v.raise_to(CRITICAL)
            text = f"{r.id} at {_where(r)}: {r.status.value}"
            if r.message:
                text += f" ({r.message})"
            problems.append(text)
            step = f" at step {r.failed_step}" if r.failed_step else ""
            v.lines.append(f"FAIL {clean(r.id)} {clean(_where(r))}:{r.port} "
                           f"{r.status.value}/{r.port_state.value}{step}: {clean(r.message)}")
        if verbose:
            v.lines += [
                f"OK {clean(r.id)} {clean(_where(r))}:{r.port}: {clean(r.message)}"
                for r in results
                if r.ok
            ]
        addrs = len({r.address for r in results})
        base = (
            f"{len(failed_r)} of {_plural(len(results), 'check')} fail"
            if failed_r
            else f"{_plural(len(results), 'check')} succeed on {_plural(addrs, 'address')}"
        )
        if not results and not unresolved:
            v.raise_to(UNKNOWN)
            base = "nothing was checked"

    for t in unresolved:
        v.raise_to(CRITICAL)
        if report.expectations is None and not verdicts:
            continue  # already named by its dns-error checks
        v.lines.append(f"ERROR {clean(t.target)}: {clean(t.error)}")
    if internal:
        v.raise_to(UNKNOWN)
        v.lines.append(f"UNKNOWN {len(internal)} check(s) failed inside exprobe (a bug): "
                       + clean(internal[0].message))
    if report.interrupted:
        v.raise_to(UNKNOWN)
        v.lines.insert(0, "UNKNOWN the run was interrupted; results are partial")
        problems.insert(0, "run interrupted")
    if warnings:
        v.raise_to(WARNING)
        v.lines += [f"WARN {clean(w)}" for w in warnings]
    v.lines += hop_lines(results)

    summary = base
    if problems:
        shown = "; ".join(clean(p, 160) for p in problems[:SUMMARY_ITEMS])
        more = len(problems) - SUMMARY_ITEMS
        summary += f": {shown}" + (f" (+{more} more)" if more > 0 else "")
    if warnings:
        summary += f", {_plural(len(warnings), 'warning')}"
        if v.state == WARNING:
            summary += f": {clean(warnings[0], 160)}"
    v.summary = summary
    return v


def hop_lines(results: list[CheckResult]) -> list[str]:
    """`HOP smtp 10.0.0.5:25 drop at hop 2 (10.1.0.1), exact: dropped by ...` for each
    traced check whose path breaks (--trace)."""
    lines = []
    for r in results:
        brk = (r.trace or {}).get("break")
        if not isinstance(brk, dict):
            continue
        sure = "exact" if brk.get("exact") else "ambiguous"
        lines.append(f"HOP {clean(r.id)} {clean(_where(r))}:{r.port} {clean(break_where(brk))},"
                     f" {sure}: {clean(brk.get('summary'))}")  # fmt: skip
    return lines


def _expected(e: dict[str, object]) -> str:
    if "scenario" in e:
        return f"{e['scenario']} {'to pass' if e.get('kind') == 'pass' else 'to fail'}"
    if "port" in e:
        return f"{e['port']} {e.get('expected')}"
    return str(e.get("expected", ""))


# -- perfdata ------------------------------------------------------------------------------


def perf_label(text: str) -> str:
    """A quoted label: `'` doubled, `=` (never allowed in a label) replaced."""
    return "'" + printable(text, 120).replace("=", "_").replace("'", "''").replace("|", "/") + "'"


def perf_number(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def perfdata(report: RunReport) -> list[str]:
    """`'label'=value[UOM];warn;crit;min;max` items (empty trailing fields dropped)."""
    items: list[str] = []
    seen: set[str] = set()

    def add(label: str, value: str) -> None:
        quoted = perf_label(label)
        if quoted not in seen:
            seen.add(quoted)
            items.append(f"{quoted}={value}")

    for r in report.all_results():
        add(f"{_where(r)} {r.id}", f"{perf_number(r.elapsed_ms / 1000)}s;;;0")
    for r in report.all_results():
        days = r.facts.get("cert_days_left")
        if isinstance(days, int) and not isinstance(days, bool):
            add(f"{_where(r)}:{r.port} cert_days", str(days))
    verdicts = report.all_verdicts()
    if verdicts:
        n = len(verdicts)
        passed = sum(x.passed for x in verdicts)
        failed = sum(x.failed for x in verdicts)
        add("scenarios_pass", f"{passed};;;0;{n}")
        add("scenarios_fail", f"{failed};;;0;{n}")
        if passed + failed < n:  # skipped, not enabled or unknown
            add("scenarios_other", f"{n - passed - failed};;;0;{n}")
    if report.duration_ms is not None:
        add("run_time", f"{perf_number(report.duration_ms / 1000)}s;;;0")
    return items


def render(report: RunReport, *, verbose: bool = False) -> str:
    v = evaluate(report, verbose=verbose)
    first = f"EXPROBE {STATE_NAMES[v.state]} - {v.summary}"
    perf = perfdata(report)
    if perf:
        first += " | " + " ".join(perf)
    return "\n".join([first, *v.lines]) + "\n"


def exit_code(report: RunReport) -> int:
    return evaluate(report).state


def unknown_line(message: str) -> str:
    """The status line for bad input or an internal failure (exit 3)."""
    return f"EXPROBE UNKNOWN - {clean(message, 400)}\n"
