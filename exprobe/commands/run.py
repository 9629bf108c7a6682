"""`exprobe run`: probe targets with ad hoc checks or a profile's scenarios."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from exprobe.cli import (
    FORMATS,
    app,
    family_of,
    install_interrupts,
    make_console,
    raise_nofile_limit,
    run_async,
)
from exprobe.commands.common import (
    EngineArgs,
    ProfilePlan,
    adhoc_defs,
    bind_roles,
    check_port_offset,
    gather_targets,
    make_resolver,
    profile_plan,
    trace_options,
    with_tls_versions,
)
from exprobe.engine.session import Session
from exprobe.errors import InputError
from exprobe.report import render, status_exit_code
from exprobe.report.jsonfmt import JsonLinesWriter
from exprobe.report.output import check_writable, emit
from exprobe.result import CheckResult, RunReport

# Typer option declarations shared with `watch`.
TargetsArg = Annotated[
    list[str] | None,
    typer.Argument(help="Host names, addresses, [v6]:port, CIDR blocks.", show_default=False),
]
TargetsFile = Annotated[
    list[str] | None,
    typer.Option(
        "-T",
        "--targets-file",
        help="File of targets (one per line, # comments, key=value labels).",
        show_default=False,
    ),
]
PortOpt = Annotated[
    list[int] | None,
    typer.Option("--port", help="TCP connect check on this port (repeatable).", show_default=False),
]
CheckOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--check",
        help="PROBE[:PORT[:TLS]], e.g. smtp:25:starttls (repeatable).",
        show_default=False,
    ),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "-p",
        "--profile",
        help="Profile name (see `exprobe profiles list`) or TOML file.",
        show_default=False,
    ),
]
ScenarioOpt = Annotated[
    list[str] | None,
    typer.Option("--scenario", help="Only this scenario (repeatable).", show_default=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override a profile check parameter: CHECK.PARAM=VALUE.", show_default=False
    ),
]
VantageOpt = Annotated[
    str | None,
    typer.Option(
        "--vantage",
        help="Where you stand (the profile's names: client, internet, mbx, ...): only the"
        " scenarios that apply from there.",
        show_default=False,
    ),
]
RoleOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--role",
        help="Bind a role the profile's scenarios need to a host: NAME=HOST, e.g."
        " dc=dc1.corp.example (repeatable).",
        show_default=False,
    ),
]


# Engine and output options, shared with `watch` and `serve`.
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Whole-check deadline, seconds.")]
ConnectTimeoutOpt = Annotated[
    float, typer.Option("--connect-timeout", help="TCP connect deadline, seconds.")
]
RetriesOpt = Annotated[
    int, typer.Option("--retries", help="Extra connect attempts after a connect timeout.")
]
ConcurrencyOpt = Annotated[
    int | None,
    typer.Option(
        "--concurrency",
        help="Checks in flight at once (default 512, capped by the open-file limit).",
        show_default=False,
    ),
]
PerHostOpt = Annotated[int, typer.Option("--per-host", help="Checks in flight per address.")]
RateOpt = Annotated[
    float | None,
    typer.Option(
        "--rate",
        help="New connections per second (all addresses together).",
        show_default=False,
    ),
]
SourceOpt = Annotated[
    str | None,
    typer.Option("--source", help="Bind this local source address.", show_default=False),
]
Ipv4Opt = Annotated[bool, typer.Option("-4", help="IPv4 addresses only.")]
Ipv6Opt = Annotated[bool, typer.Option("-6", help="IPv6 addresses only.")]
TlsVerifyOpt = Annotated[
    bool,
    typer.Option("--tls-verify", help="An untrusted or mismatched certificate fails the check."),
]
CaFileOpt = Annotated[
    str | None,
    typer.Option("--ca-file", help="Trust these CA certificates (PEM).", show_default=False),
]
CertWarnDaysOpt = Annotated[
    int,
    typer.Option(
        "--cert-warn-days", help="Warn when a certificate expires within this many days."
    ),
]
PortOffsetOpt = Annotated[
    int,
    typer.Option(
        "--port-offset", help="Add N to every port (mirrors `exprobe listen --port-offset`)."
    ),
]
YesOpt = Annotated[
    bool,
    typer.Option(
        "--yes",
        help="Consent to large scans (> 65,536 addresses, public ranges wider than /24).",
    ),
]
TraceOpt = Annotated[
    str | None,
    typer.Option(
        "--trace",
        help="Locate the breaking hop: a TCP trace to the port of each failing check"
        " (`--trace all`: every check).",
        show_default=False,
    ),
]
MaxHopsOpt = Annotated[int, typer.Option("--max-hops", help="Longest trace (TTL), with --trace.")]
ResolveHopsOpt = Annotated[
    bool, typer.Option("--resolve-hops", help="Reverse DNS names of the hops, with --trace.")
]
DnsServerOpt = Annotated[
    str | None,
    typer.Option(
        "--dns-server",
        help="Resolve names (targets, autodiscover's records) at this DNS server: ADDR[:PORT].",
        show_default=False,
    ),
]
TlsVersionsOpt = Annotated[
    bool,
    typer.Option(
        "--tls-versions",
        help="Every TLS check also tries TLS 1.0, 1.1, 1.2 and 1.3 alone (derived checks).",
    ),
]
NoColorOpt = Annotated[
    bool, typer.Option("--no-color", help="No colour (NO_COLOR is honoured too).")
]


def make_engine_args(**kw: Any) -> EngineArgs:
    return EngineArgs(**kw)


@app.command()
def run(
    targets: TargetsArg = None,
    targets_file: TargetsFile = None,
    port: PortOpt = None,
    check: CheckOpt = None,
    profile: ProfileOpt = None,
    scenario: ScenarioOpt = None,
    set_: SetOpt = None,
    vantage: VantageOpt = None,
    role: RoleOpt = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="table, json, jsonl, nagios, prometheus or junit.")
    ] = "table",
    output: Annotated[
        str | None,
        typer.Option(
            "-o", "--output", help="Write the report to this file (atomically).", show_default=False
        ),
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
    expect: Annotated[
        str | None,
        typer.Option(
            "--expect",
            help="Expectations (TOML) that must hold from this vantage point.",
            show_default=False,
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="Compare with an earlier JSON report and show what changed.",
            show_default=False,
        ),
    ] = None,
    yes: YesOpt = False,
    trace: TraceOpt = None,
    max_hops: MaxHopsOpt = 30,
    resolve_hops: ResolveHopsOpt = False,
    tls_versions: TlsVersionsOpt = False,
    dns_server: DnsServerOpt = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "-v", "--verbose", help="Details: checks under scenarios, transcripts in JSON."
        ),
    ] = False,
    no_color: NoColorOpt = False,
) -> None:
    """Probe TARGETS and report each check (or each scenario, with -p)."""
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if output:
        check_writable(output)
    family = family_of(ipv4, ipv6)
    if profile and (port or check):
        raise InputError("-p/--profile and --port/--check exclude each other")
    if (scenario or set_ or vantage or role) and not profile:
        raise InputError("--scenario, --set, --vantage and --role need -p/--profile")

    scenarios: list[Any] = []
    profile_info: dict[str, Any] | None = None
    pplan: ProfilePlan | None = None
    if profile:
        pplan = profile_plan(profile, sets=set_, scenarios=scenario, vantage=vantage)
        defs, scenarios, profile_info = pplan.defs, pplan.scenarios, pplan.info
    else:
        defs = adhoc_defs(port or [], check or [])
    if tls_versions:
        defs = with_tls_versions(defs)
    expectations = None
    if expect:
        from exprobe.expect import load_expectations

        expectations = load_expectations(expect)
        expectations.check_scenarios(bool(profile), [s.id for s in scenarios] if profile else None)
        # Ports named by expectations get a TCP connect check unless a check covers them.
        defs = expectations.add_port_checks(defs, port_offset)
    check_port_offset(defs, port_offset)
    target_list = gather_targets(targets or [], targets_file or [], yes=yes)
    if pplan is not None:
        target_list = bind_roles(pplan, target_list, role)
    if profile and any(t.port for t in target_list):
        raise InputError(
            "-p/--profile: give targets without a port; the profile's checks name their"
            " ports (change one with --set CHECK.port=N)"
        )
    if not defs and not any(t.port for t in target_list):
        raise InputError("nothing to check: give --port, --check, -p PROFILE, or host:port targets")

    before = None
    if baseline:
        from exprobe.diff import load_report

        before = load_report(baseline)

    fd_limit = raise_nofile_limit()
    engine = make_engine_args(
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
        verbose=verbose,
        port_offset=port_offset,
    )
    opts, limits = engine.build(fd_limit)
    tracing = trace_options(trace, max_hops, resolve_hops, opts)
    make_resolver(dns_server)  # a bad --dns-server is exit 2 before anything is probed
    opts = dataclasses.replace(opts, dns_server=dns_server)
    session = Session(
        target_list,
        defs,
        opts,
        limits,
        family,
        keep_results=not (
            fmt == "jsonl"
            and not scenarios
            and expectations is None
            and before is None
            and tracing is None
        ),
        trace=tracing,
        resolver=make_resolver(dns_server),
        primary_role=pplan.primary_role if pplan is not None else None,
    )
    session.report.profile = profile_info
    report, signum = execute(session, fmt=fmt, output=output, verbose=verbose, no_color=no_color)
    for note in session.notes:
        print(f"exprobe: {note}", file=sys.stderr)

    if scenarios:
        from exprobe.engine.evaluate import evaluate

        evaluate(report, scenarios, pplan.judging if pplan is not None else None)
    failed_expectations = False
    if expectations is not None:
        failed_expectations = not expectations.apply(report)
    if fmt == "table" and not output:
        render_to_terminal(report, verbose, no_color)
    elif fmt != "jsonl":
        emit(render(fmt, report, verbose=verbose), output)
    elif scenarios or expectations is not None or tracing is not None:
        with (
            Path(output).open("a", encoding="utf-8")
            if output
            else contextlib.nullcontext(sys.stdout) as out
        ):
            writer = JsonLinesWriter(out)
            for r in report.all_results():
                if r.trace is not None:
                    writer.record("trace", {"id": r.id, "target": r.target,
                                            "address": r.address, **r.trace})  # fmt: skip
            for t in report.targets:
                for v in t.scenarios:
                    writer.record("scenario", {"target": t.target, **v.to_dict()})
            for e in report.expectations or []:
                writer.record("expectation", e)
            writer.record("summary", report.summary())
    if before is not None:
        from exprobe.diff import diff_reports, render_diff

        changes = diff_reports(before, report.to_dict())
        make_console(no_color, stderr=fmt != "table").print(render_diff(changes, "table"))
        if changes.regressions:
            failed_expectations = True
    if signum:
        raise typer.Exit(128 + signum)
    code = status_exit_code(fmt, report, failed_expectations)
    raise typer.Exit(code)


def render_to_terminal(report: RunReport, verbose: bool, no_color: bool) -> None:
    from exprobe.report.table import render_table

    render_table(report, make_console(no_color), verbose=verbose)


def execute(
    session: Session, *, fmt: str, output: str | None, verbose: bool, no_color: bool
) -> tuple[RunReport, int]:
    """Run the session with streaming output and a progress bar; handle Ctrl-C/SIGTERM."""
    jsonl: JsonLinesWriter | None = None
    jsonl_file = None
    if fmt == "jsonl":
        if output:
            jsonl_file = Path(output).open("w", encoding="utf-8")  # noqa: SIM115 - closed below
        jsonl = JsonLinesWriter(jsonl_file or sys.stdout, verbose=verbose)
    show_progress = sys.stderr.isatty() and fmt != "jsonl"
    signals: dict[str, dict[str, int]] = {}

    async def main() -> RunReport:
        task = asyncio.current_task()
        assert task is not None
        signals["seen"] = install_interrupts(task)
        progress_cm: Any = contextlib.nullcontext()
        advance = None
        if show_progress:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            progress = Progress(
                TextColumn("probing"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=make_console(no_color, stderr=True),
                transient=True,
            )
            progress_cm = progress
            task_id = progress.add_task("checks", total=None)

            def advance() -> None:
                progress.update(task_id, advance=1, total=max(session.total_planned, 1))

        def on_result(r: CheckResult) -> None:
            if jsonl is not None:
                jsonl.result(r)
            if advance is not None:
                advance()

        with progress_cm:
            return await session.run(on_result)

    try:
        report = run_async(main())
    finally:
        if jsonl is not None:
            jsonl.close()
        if jsonl_file is not None:
            jsonl_file.close()
    signum = signals.get("seen", {}).get("signal", 0)
    if signum == 0 and report.interrupted:
        signum = signal.SIGINT
    return report, int(signum)
