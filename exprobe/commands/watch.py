"""`exprobe watch`: re-run on an interval and show what flips, while a firewall change is made.

Every (target, address, scenario), or (target, address, check) without a profile, is a
row with its verdict or status and the time of its last change; rows that changed in the
latest run are highlighted.  On a terminal this is a rich Live view; otherwise each
change is printed as a line (for logs).  Ctrl-C (or SIGTERM) ends it cleanly with a
summary of every change seen, exit 0.  `--until-pass` ends it (exit 0) as soon as
everything passes; `--until-stable N` when N consecutive runs changed nothing (exit 0
if everything passes then, else 1); `--max-runs N` after N runs (same exit codes).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from exprobe.cli import app, family_of, make_console, raise_nofile_limit, run_async
from exprobe.commands.common import (
    EngineArgs,
    ProfilePlan,
    adhoc_defs,
    bind_roles,
    check_port_offset,
    gather_targets,
    profile_plan,
    trace_options,
)
from exprobe.commands.run import (
    CaFileOpt,
    CertWarnDaysOpt,
    CheckOpt,
    ConcurrencyOpt,
    ConnectTimeoutOpt,
    Ipv4Opt,
    Ipv6Opt,
    MaxHopsOpt,
    NoColorOpt,
    PerHostOpt,
    PortOffsetOpt,
    PortOpt,
    ProfileOpt,
    RateOpt,
    ResolveHopsOpt,
    RetriesOpt,
    RoleOpt,
    ScenarioOpt,
    SetOpt,
    SourceOpt,
    TargetsArg,
    TargetsFile,
    TimeoutOpt,
    TlsVerifyOpt,
    TraceOpt,
    VantageOpt,
    YesOpt,
)
from exprobe.engine.session import Session
from exprobe.errors import InputError
from exprobe.hops import break_where
from exprobe.report.safe import printable
from exprobe.report.table import VERDICT_STYLE
from exprobe.result import RunReport

Key = tuple[str, str | None, str]  # target, address, scenario or check id


@dataclass(slots=True)
class Observation:
    """One row's value in one run."""

    value: str  # verdict ("pass"/"fail") or status
    ok: bool
    title: str
    reason: str


@dataclass(slots=True)
class Row:
    key: Key
    title: str
    value: str
    ok: bool
    reason: str
    since: float  # wall-clock time of the last change (or of the first sighting)
    changes: int = 0
    changed_run: int = 0  # the run that last changed it (0: never)
    previous: str | None = None


@dataclass(frozen=True, slots=True)
class Flip:
    """A row that changed between two consecutive runs."""

    when: float
    run: int
    key: Key
    before: str
    after: str
    ok: bool
    reason: str


def observe(report: RunReport) -> dict[Key, Observation]:
    """The rows of one run: scenario verdicts when there are any, else check statuses."""
    out: dict[Key, Observation] = {}
    if report.all_verdicts():
        for t in report.targets:
            for v in t.scenarios:
                # A scenario skipped or shipped switched off is not a failure (as for run).
                out[(t.target, v.address, v.id)] = Observation(
                    v.verdict, not v.failed, v.title, v.reason
                )
        return out
    for t in report.targets:
        for r in t.results:
            value = r.status.value if r.ok else f"{r.status.value}/{r.port_state.value}"
            reason = r.message
            brk = (r.trace or {}).get("break")
            if isinstance(brk, dict):  # --trace: a break that moves is a change too
                value += f", {break_where(brk)}"
                reason += f"; {brk.get('summary')}"
            out[(t.target, r.address, r.id)] = Observation(value, r.ok, r.id, reason)
        if t.error and not t.results:
            out[(t.target, None, "resolve")] = Observation("dns-error", False, "resolve", t.error)
    return out


@dataclass(slots=True)
class WatchState:
    """Rows, their history, and the stop conditions' counters."""

    rows: dict[Key, Row] = field(default_factory=dict)
    flips: list[Flip] = field(default_factory=list)
    runs: int = 0
    stable_runs: int = 0  # consecutive runs (after the first) that changed nothing
    last_run_at: float = 0.0
    last_run_s: float = 0.0

    def update(self, obs: dict[Key, Observation], now: float) -> list[Flip]:
        self.runs += 1
        new: list[Flip] = []
        for key, o in obs.items():
            row = self.rows.get(key)
            if row is None:
                self.rows[key] = Row(key, o.title, o.value, o.ok, o.reason, now)
                if self.runs > 1:
                    new.append(Flip(now, self.runs, key, "absent", o.value, o.ok, o.reason))
                    self.rows[key].changes, self.rows[key].changed_run = 1, self.runs
                    self.rows[key].previous = "absent"
                continue
            if row.value != o.value:
                new.append(Flip(now, self.runs, key, row.value, o.value, o.ok, o.reason))
                row.previous, row.value, row.ok = row.value, o.value, o.ok
                row.since, row.changes, row.changed_run = now, row.changes + 1, self.runs
            row.reason, row.title = o.reason, o.title
        for key, row in self.rows.items():
            if key not in obs and row.value != "absent":
                new.append(Flip(now, self.runs, key, row.value, "absent", False, "not in this run"))
                row.previous, row.value, row.ok = row.value, "absent", False
                row.since, row.changes, row.changed_run = now, row.changes + 1, self.runs
                row.reason = "not in this run"
        self.flips.extend(new)
        self.stable_runs = 0 if new or self.runs == 1 else self.stable_runs + 1
        return new

    def all_pass(self) -> bool:
        current = [r for r in self.rows.values() if r.value != "absent"]
        return bool(current) and all(r.ok for r in current)


def _clock(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _value_text(value: str, ok: bool) -> Text:
    if value in VERDICT_STYLE:
        return Text(value.upper(), style=VERDICT_STYLE[value])
    return Text(value, style="green" if ok else "red")


def render_view(state: WatchState, *, scenarios: bool, footer: str) -> Group:
    """The live view: a header, one row per (target, address, item), flips highlighted."""
    head = Text.assemble(
        ("exprobe watch", "bold"),
        f" · run {state.runs}",
        f" at {_clock(state.last_run_at)} ({state.last_run_s:.1f}s)" if state.runs else "",
        f" · {len(state.flips)} changes seen",
        f" · {footer}" if footer else "",
    )
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    for col in ("target", "address", "scenario" if scenarios else "check",
                "verdict" if scenarios else "status", "since", "changes", "last change"):
        table.add_column(col, no_wrap=True, overflow="ellipsis")
    for row in state.rows.values():
        fresh = row.changed_run == state.runs and row.changes > 0
        value = _value_text(row.value, row.ok)
        last = Text("")
        if row.previous is not None:
            last = Text(f"{row.previous} → {row.value} at {_clock(row.since)}",
                        style=("bold " if fresh else "") + ("green" if row.ok else "red"))
        if fresh:
            value.stylize("reverse")
            last.append("  ◀ changed", style="bold yellow")
        table.add_row(
            Text(printable(row.key[0], 40)),
            Text(row.key[1] or "-"),
            Text(printable(row.title, 50)),
            value,
            _clock(row.since),
            str(row.changes),
            last,
        )
    return Group(head, table)


def summary_view(state: WatchState, why: str) -> Group:
    """Printed at the end: every change seen, in order."""
    passing = sum(1 for r in state.rows.values() if r.ok)
    head = Text(
        f"{why}: {state.runs} runs, {len(state.flips)} changes; "
        f"now {passing} of {len(state.rows)} pass",
        style="bold",
    )
    if not state.flips:
        return Group(head, Text("no changes seen", style="dim"))
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    for col in ("time", "run", "target", "address", "item", "change", "reason"):
        table.add_column(col, no_wrap=col != "reason", overflow="fold")
    for f in state.flips:
        row = state.rows[f.key]
        table.add_row(
            _clock(f.when),
            str(f.run),
            Text(printable(f.key[0], 40)),
            Text(f.key[1] or "-"),
            Text(printable(row.title, 50)),
            Text(f"{f.before} → {f.after}", style="green" if f.ok else "red"),
            Text(printable(f.reason, 200)),
        )
    return Group(head, table)


def flip_line(f: Flip, title: str) -> Text:
    return Text.assemble(
        f"{_clock(f.when)} run {f.run}: ",
        Text(printable(f.key[0], 40)),
        f" {f.key[1] or '-'} ",
        Text(printable(title, 50)),
        " ",
        (f"{f.before} → {f.after}", "green" if f.ok else "red"),
        Text(f"  {printable(f.reason, 200)}" if f.reason else ""),
    )


@dataclass(slots=True)
class WatchPlan:
    session_args: dict[str, Any]
    scenarios: list[Any]
    interval: float
    until_pass: bool
    until_stable: int | None
    max_runs: int | None
    judging: Any = None  # exprobe.profile.model.Judging, with a profile


async def _watch(plan: WatchPlan, console: Console) -> tuple[WatchState, str, int]:
    """The loop; returns the state, why it ended, and the exit code."""
    state = WatchState()
    stop = asyncio.Event()
    current: dict[str, asyncio.Task[RunReport]] = {}
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        stop.set()
        task = current.get("run")
        if task is not None:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)

    live_cm: Any = contextlib.nullcontext()
    live = None
    if console.is_terminal:
        from rich.live import Live

        live = Live(console=console, auto_refresh=False, transient=False,
                    vertical_overflow="ellipsis")
        live_cm = live
    scenarios = bool(plan.scenarios)

    def show(footer: str) -> None:
        if live is not None:
            live.update(render_view(state, scenarios=scenarios, footer=footer), refresh=True)

    why, code = "stopped (Ctrl-C)", 0
    with live_cm:
        show("first run…")
        while not stop.is_set():
            t0 = time.monotonic()
            session = Session(**plan.session_args)
            task = asyncio.create_task(session.run())
            current["run"] = task
            try:
                report = await task
            except asyncio.CancelledError:
                break
            finally:
                current.pop("run", None)
            if stop.is_set() or report.interrupted:
                break  # a partial run would show flips that did not happen
            if plan.scenarios:
                from exprobe.engine.evaluate import evaluate

                evaluate(report, plan.scenarios, plan.judging)
            state.last_run_at, state.last_run_s = time.time(), time.monotonic() - t0
            first = state.runs == 0
            flips = state.update(observe(report), time.time())
            if live is None:
                if first:
                    console.print(render_view(state, scenarios=scenarios, footer=""))
                for f in flips:
                    console.print(flip_line(f, state.rows[f.key].title))
            if plan.until_pass and state.all_pass():
                why, code = "everything passes", 0
                break
            if plan.until_stable is not None and state.stable_runs >= plan.until_stable:
                why = f"stable for {plan.until_stable} runs"
                code = 0 if state.all_pass() else 1
                break
            if plan.max_runs is not None and state.runs >= plan.max_runs:
                why = f"{plan.max_runs} runs done"
                code = 0 if state.all_pass() else 1
                break
            deadline = t0 + plan.interval
            while not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                show(f"next run in {left:.0f}s · Ctrl-C to stop")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=min(1.0, left))
        show(why)
    return state, why, code


@app.command()
def watch(
    targets: TargetsArg = None,
    targets_file: TargetsFile = None,
    port: PortOpt = None,
    check: CheckOpt = None,
    profile: ProfileOpt = None,
    scenario: ScenarioOpt = None,
    set_: SetOpt = None,
    vantage: VantageOpt = None,
    role: RoleOpt = None,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds from the start of one run to the next.")
    ] = 10.0,
    until_pass: Annotated[
        bool, typer.Option("--until-pass", help="Stop (exit 0) as soon as everything passes.")
    ] = False,
    until_stable: Annotated[
        int | None,
        typer.Option(
            "--until-stable",
            help="Stop when N consecutive runs changed nothing (exit 0 if all pass, else 1).",
            show_default=False,
        ),
    ] = None,
    max_runs: Annotated[
        int | None,
        typer.Option("--max-runs", help="Stop after N runs (exit 0 if all pass, else 1).",
                     show_default=False),
    ] = None,
    timeout: TimeoutOpt = 10.0,
    connect_timeout: ConnectTimeoutOpt = 3.0,
    retries: RetriesOpt = 0,
    concurrency: ConcurrencyOpt = None,
    per_host: PerHostOpt = 4,
    rate: RateOpt = None,
    source: SourceOpt = None,
    ipv4: Ipv4Opt = False,
    ipv6: Ipv6Opt = False,
    tls_verify: TlsVerifyOpt = False,
    ca_file: CaFileOpt = None,
    cert_warn_days: CertWarnDaysOpt = 14,
    port_offset: PortOffsetOpt = 0,
    yes: YesOpt = False,
    trace: TraceOpt = None,
    max_hops: MaxHopsOpt = 30,
    resolve_hops: ResolveHopsOpt = False,
    no_color: NoColorOpt = False,
) -> None:
    """Re-run TARGETS on an interval and show every scenario (or check) live.

    Each row shows the time of its last change; Ctrl-C ends with a summary of every
    change seen."""
    if interval < 0.1:
        raise InputError("--interval must be at least 0.1 seconds")
    if until_stable is not None and until_stable < 1:
        raise InputError("--until-stable must be at least 1")
    if max_runs is not None and max_runs < 1:
        raise InputError("--max-runs must be at least 1")
    family = family_of(ipv4, ipv6)
    if profile and (port or check):
        raise InputError("-p/--profile and --port/--check exclude each other")
    if (scenario or set_ or vantage or role) and not profile:
        raise InputError("--scenario, --set, --vantage and --role need -p/--profile")
    scenarios: list[Any] = []
    pplan: ProfilePlan | None = None
    if profile:
        pplan = profile_plan(profile, sets=set_, scenarios=scenario, vantage=vantage)
        defs, scenarios = pplan.defs, pplan.scenarios
    else:
        defs = adhoc_defs(port or [], check or [])
    check_port_offset(defs, port_offset)
    target_list = gather_targets(targets or [], targets_file or [], yes=yes)
    if pplan is not None:
        target_list = bind_roles(pplan, target_list, role)
    if not defs and not any(t.port for t in target_list):
        raise InputError("nothing to check: give --port, --check, -p PROFILE, or host:port targets")
    engine = EngineArgs(
        timeout=timeout,
        connect_timeout=connect_timeout,
        retries=retries,
        concurrency=concurrency,
        per_host=per_host,
        rate=rate,
        source=source,
        tls_verify=tls_verify,
        ca_file=ca_file,
        cert_warn_days=cert_warn_days,
        port_offset=port_offset,
    )
    opts, limits = engine.build(raise_nofile_limit())
    plan = WatchPlan(
        session_args={
            "targets": target_list,
            "defs": defs,
            "opts": opts,
            "limits": limits,
            "family": family,
            "trace": trace_options(trace, max_hops, resolve_hops, opts),
            "primary_role": pplan.primary_role if pplan is not None else None,
        },
        scenarios=scenarios,
        judging=pplan.judging if pplan is not None else None,
        interval=interval,
        until_pass=until_pass,
        until_stable=until_stable,
        max_runs=max_runs,
    )
    console = make_console(no_color)
    state, why, code = run_async(_watch(plan, console))
    console.print(summary_view(state, why))
    raise typer.Exit(code)
