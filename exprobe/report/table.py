"""Human output: rich tables.  Network text is shown as `Text`, never parsed as markup."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from exprobe.report.safe import printable
from exprobe.result import CheckResult, RunReport, ScenarioVerdict, TargetReport, scenario_rollup
from exprobe.status import PortState, Status

STATE_STYLE = {
    PortState.OPEN: "green",
    PortState.CLOSED: "yellow",
    PortState.FILTERED: "red",
    PortState.UNKNOWN: "magenta",
}
STATUS_STYLE = {
    Status.SUCCESS: "green",
    Status.CONNECTION_REFUSED: "yellow",
    Status.CONNECTION_TIMEOUT: "red",
    Status.UNREACHABLE: "red",
    Status.IO_TIMEOUT: "red",
    Status.INTERCEPTED: "bold yellow",
    Status.DNS_ERROR: "magenta",
    Status.INTERNAL_ERROR: "bold magenta",
    Status.SKIPPED: "dim",
}


def status_text(r: CheckResult) -> Text:
    return Text(r.status.value, style=STATUS_STYLE.get(r.status, "bold red"))


def state_text(r: CheckResult) -> Text:
    return Text(r.port_state.value, style=STATE_STYLE[r.port_state])


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.2f}s" if v >= 1000 else f"{v:.0f}ms" if v >= 10 else f"{v:.1f}ms"


def checks_table(results: list[CheckResult], *, verbose: bool = False) -> Table:
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    for col in ("target", "address", "port", "check", "state", "status", "time", "detail"):
        table.add_column(col, no_wrap=col != "detail", overflow="fold")
    for r in results:
        detail = r.message if r.ok or not r.failed_step else f"{r.failed_step}: {r.message}"
        brk = (r.trace or {}).get("break")
        if isinstance(brk, dict):
            detail += f"  → {brk.get('summary')}"
        if r.warnings:
            detail += "  ⚠ " + "; ".join(r.warnings[:2])
        table.add_row(
            Text(printable(r.target, 40)),
            Text(r.address or "-"),
            str(r.port),
            Text(r.id),
            state_text(r),
            status_text(r),
            _ms(r.elapsed_ms),
            Text(printable(detail, 400 if verbose else 120)),
        )
    return table


VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "unknown": "bold yellow",
                 "not-enabled": "dim", "skipped": "dim"}  # fmt: skip


def verdict_text(v: ScenarioVerdict) -> Text:
    return Text(v.verdict.upper(), style=VERDICT_STYLE.get(v.verdict, "bold red"))


ROLLUP_STYLE = {"all": "bold green", "some": "bold yellow", "none": "bold red"}


def _rollup_row(table: Table, t: TargetReport, sid: str, title: str, rollup: str) -> None:
    verdicts = [v for v in t.scenarios if v.id == sid]
    passed = sum(v.passed for v in verdicts)
    table.add_row(
        Text(printable(t.target, 40)),
        Text(f"{len(verdicts)} addresses", style="dim"),
        Text(printable(title, 60)),
        Text(rollup.upper(), style=ROLLUP_STYLE.get(rollup, "")),
        Text(f"passes on {passed} of {len(verdicts)} addresses"),
    )


def _check_line(cid: str, r: CheckResult | None) -> Text:
    if r is None:
        return Text(f"{cid}: not run", style="dim")
    line = Text.assemble(
        (cid, "bold"), f"  {r.probe} {r.port}  ", state_text(r), " ", status_text(r)
    )
    if r.failed_step and not r.ok:
        line.append(f"  at {r.failed_step}")
    if r.message:
        line.append(f"  {printable(r.message, 160)}", style="" if r.ok else "red")
    return line


def scenario_tree(v: ScenarioVerdict, by_id: dict[tuple[str | None, str], CheckResult]) -> Tree:
    """-v: one scenario verdict with its deciding checks, warnings and hints."""
    head = Text.assemble(verdict_text(v), " ", printable(v.title), f"  {v.address or '-'}")
    if v.via:
        head.append(f"  via {printable(v.via)}", style="dim")
    tree = Tree(head)
    tree.add(Text(printable(v.reason, 400), style="red" if v.failed else ""))
    for cid in v.checks:
        tree.add(_check_line(cid, by_id.get((v.address, cid))))
    for w in v.warnings:
        tree.add(Text("warning: " + printable(w, 300), style="yellow"))
    for h in v.hints:
        tree.add(Text("hint: " + printable(h, 400), style="cyan"))
    return tree


def scenarios_table(report: RunReport, *, verbose: bool = False) -> Table | Group:
    """Target x scenario (x address): the verdict in colour and the reason.

    A target with several addresses gets one row per address and a line saying whether
    the scenario passes on all, some or none of them.
    """
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    for col in ("target", "address", "scenario", "verdict", "reason"):
        table.add_column(col, no_wrap=col not in ("reason", "scenario"), overflow="fold")
    by_id: dict[tuple[str | None, str], CheckResult] = {}
    for t in report.targets:
        for r in t.results:
            by_id[(r.address, r.id)] = r
    trees: list[Tree] = []
    for t in report.targets:
        rollup = scenario_rollup(t.scenarios) if len(t.addresses) > 1 else {}
        for i, v in enumerate(t.scenarios):
            reason = v.reason
            if v.warnings:
                reason += "  ⚠ " + "; ".join(v.warnings[:2])
            table.add_row(
                Text(printable(t.target, 40)),
                Text(v.address or "-"),
                Text(printable(v.title, 60)),
                verdict_text(v),
                Text(printable(reason, 400), style="red" if v.failed else ""),
            )
            last_of_id = i + 1 == len(t.scenarios) or t.scenarios[i + 1].id != v.id
            if v.id in rollup and last_of_id:
                _rollup_row(table, t, v.id, v.title, rollup[v.id])
            if verbose:
                trees.append(scenario_tree(v, by_id))
    if trees:
        return Group(table, *trees)
    return table


_REPLY_WORDS = {"hop": "time exceeded", "open": "SYN-ACK", "reset": "RST", "silent": "*"}


def hop_line(hop: dict[str, Any]) -> str:
    """`2  10.1.0.1 (r2.example)  0.4ms  time exceeded` from one trace reply."""
    reply = str(hop.get("reply"))
    label = _REPLY_WORDS.get(reply, reply)
    icmp = hop.get("icmp")
    if isinstance(icmp, dict):
        label = f"{icmp.get('name')} (ICMP {icmp.get('type')}/{icmp.get('code')})"
    addr = hop.get("address") or ""
    name = f" ({hop['name']})" if hop.get("name") else ""
    rtt = _ms(hop.get("rtt_ms")) if hop.get("rtt_ms") is not None else ""
    return f"{hop.get('ttl'):>3}  {addr}{name}  {rtt}  {label}".rstrip()


def traces_group(results: list[CheckResult]) -> Group | None:
    """Each traced port's hops, the reference path's length and the break."""
    parts: list[Any] = []
    for r in results:
        tr = r.trace
        if not tr:
            continue
        head = f"trace to {r.endpoint} ({r.id}, {r.status.value})"
        if tr.get("error"):
            parts.append(Text(f"{head}: {printable(str(tr['error']))}", style="yellow"))
            continue
        parts.append(Text(head, style="bold"))
        for hop in tr.get("hops", []):
            parts.append(Text(printable(hop_line(hop), 200)))
        ref = tr.get("reference")
        if isinstance(ref, dict):
            hops = ref.get("server_hops")
            far = f"{hops} hops" if hops is not None else "no answer"
            parts.append(Text(f"  reference: port {ref.get('port')} reaches the server in {far}",
                              style="dim"))  # fmt: skip
        brk = tr.get("break")
        if isinstance(brk, dict):
            sure = "" if brk.get("exact") else " (ambiguous)"
            parts.append(Text(printable(f"  break{sure}: {brk.get('summary')}", 300), style="red"))
            parts.append(Text(printable(f"  evidence: {brk.get('evidence')}", 400), style="dim"))
        else:
            parts.append(Text("  no break: the port answers from the server's distance",
                              style="green"))  # fmt: skip
    return Group(*parts) if parts else None


def render_table(report: RunReport, console: Console, *, verbose: bool = False) -> None:
    """The whole report for a terminal."""
    if report.all_verdicts():
        console.print(scenarios_table(report, verbose=verbose))
        if verbose:
            console.print()
            console.print(checks_table(report.all_results(), verbose=True))
    else:
        console.print(checks_table(report.all_results(), verbose=verbose))
    traces = traces_group(report.all_results())
    if traces is not None:
        console.print()
        console.print(traces)
    for t in report.targets:
        if t.error:
            console.print(Text(f"{printable(t.target)}: {printable(t.error)}", style="magenta"))
    s = report.summary()
    parts = [f"{n} {k}" for k, n in s["by_status"].items()]
    line = f"{s['checks']} checks on {s['addresses']} addresses"
    if parts:
        line += ": " + ", ".join(parts)
    if "scenarios" in s:
        line += "; scenarios " + ", ".join(f"{n} {k}" for k, n in s["scenarios"].items())
    if report.interrupted:
        line += " (interrupted)"
    console.print(Text(line, style="dim"))
    if report.expectations is not None:
        from exprobe.expect import expectations_table

        console.print()
        console.print(expectations_table(report.expectations))
