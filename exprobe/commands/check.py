"""`exprobe check HOST PROBE`: one check in detail, transcript and facts, like check_smtp -v."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from exprobe.cli import app, family_of, make_console, run_async
from exprobe.commands.common import (
    EngineArgs,
    make_resolver,
    parse_check_option,
    trace_options,
)
from exprobe.commands.run import (
    DnsServerOpt,
    MaxHopsOpt,
    ResolveHopsOpt,
    TlsVersionsOpt,
    TraceOpt,
)
from exprobe.engine.session import Session
from exprobe.errors import InputError
from exprobe.report.output import emit
from exprobe.report.safe import printable
from exprobe.report.table import state_text, status_text, traces_group
from exprobe.result import CheckResult
from exprobe.targets import parse_target


@app.command()
def check(
    host: Annotated[str, typer.Argument(help="Host name or address.")],
    probe: Annotated[
        str,
        typer.Argument(
            help="Probe name: tcp, banner, smtp, pop3, imap, nntp, ldap, rfc1006, msrpc-epm."
        ),
    ],
    port: Annotated[
        int | None, typer.Option("--port", help="Port (default: the probe's).", show_default=False)
    ] = None,
    tls: Annotated[str, typer.Option("--tls", help="none, starttls or implicit.")] = "none",
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    timeout: Annotated[
        float, typer.Option("--timeout", help="Whole-check deadline, seconds.")
    ] = 10.0,
    connect_timeout: Annotated[
        float, typer.Option("--connect-timeout", help="TCP connect deadline, seconds.")
    ] = 3.0,
    source: Annotated[
        str | None,
        typer.Option("--source", help="Bind this local source address.", show_default=False),
    ] = None,
    ipv4: Annotated[bool, typer.Option("-4", help="IPv4 only.")] = False,
    ipv6: Annotated[bool, typer.Option("-6", help="IPv6 only.")] = False,
    tls_verify: Annotated[
        bool,
        typer.Option(
            "--tls-verify", help="An untrusted or mismatched certificate fails the check."
        ),
    ] = False,
    ca_file: Annotated[
        str | None,
        typer.Option("--ca-file", help="Trust these CA certificates (PEM).", show_default=False),
    ] = None,
    cert_warn_days: Annotated[int, typer.Option("--cert-warn-days")] = 14,
    no_color: Annotated[bool, typer.Option("--no-color")] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Probe parameter PARAM=VALUE (repeatable), e.g. --set bind_dn=cn=x,dc=y.", show_default=False),
    ] = None,
    path: Annotated[
        str | None,
        typer.Option("--path", help="Shorthand for --set path=PATH (http).", show_default=False),
    ] = None,
    trace: TraceOpt = None,
    max_hops: MaxHopsOpt = 30,
    resolve_hops: ResolveHopsOpt = False,
    tls_versions: TlsVersionsOpt = False,
    dns_server: DnsServerOpt = None,
) -> None:
    """Run one check and show every step, the transcript and the facts."""
    if fmt not in ("table", "json"):
        raise InputError(f"--format {fmt!r}: `check` prints table or json")
    values: dict[str, str] = {}
    for item in set_ or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or key.strip() == "tls":
            raise InputError(f"--set {item!r}: expected PARAM=VALUE (use --tls for tls)")
        values[key.strip()] = value
    if path is not None:
        values["path"] = path
    spec = f"{probe}:{port if port is not None else ''}:{tls}"
    if tls_versions:
        values["tls_versions"] = "true"
    definition = parse_check_option(spec, values)
    target = parse_target(host)
    opts, limits = EngineArgs(
        timeout=timeout,
        connect_timeout=connect_timeout,
        source=source,
        tls_verify=tls_verify,
        ca_file=ca_file,
        cert_warn_days=cert_warn_days,
        verbose=True,
        per_host=4,
    ).build(1024)
    tracing = trace_options(trace, max_hops, resolve_hops, opts)
    opts = dataclasses.replace(opts, dns_server=dns_server)
    session = Session(
        [target], [definition], opts, limits, family_of(ipv4, ipv6), trace=tracing,
        resolver=make_resolver(dns_server),
    )  # fmt: skip
    report = run_async(session.run())
    for note in session.notes:
        print(f"exprobe: {note}", file=sys.stderr)
    results = report.all_results()
    if fmt == "json":
        emit(json.dumps(report.to_dict(verbose=True), indent=2, ensure_ascii=False, default=str),
             None)
    else:
        console = make_console(no_color)
        for r in results:
            show_result(console, r)
        traces = traces_group(results)
        if traces is not None:
            console.print(traces)
        if not results and report.targets and report.targets[0].error:
            console.print(Text(printable(report.targets[0].error), style="magenta"))
    ok = bool(results) and all(r.ok for r in results)
    raise typer.Exit(0 if ok else 1)


def show_result(console: object, r: CheckResult) -> None:
    from rich.console import Console

    assert isinstance(console, Console)
    console.print(
        Text.assemble(
            (f"{r.probe} ", "bold"),
            f"{r.endpoint} ",
            state_text(r),
            " ",
            status_text(r),
            f"  {r.elapsed_ms:.0f} ms",
        )
    )
    if r.failed_step:
        console.print(
            Text(f"failed at step: {r.failed_step}: {printable(r.message, 300)}", style="red")
        )
    elif r.message:
        console.print(Text(printable(r.message, 300)))
    if r.steps:
        console.print(
            Text(
                "steps: "
                + " → ".join(
                    f"{s['step']} ({s['elapsed_ms']} ms)"
                    if s.get("elapsed_ms") is not None
                    else s["step"]
                    for s in r.steps
                ),
                style="dim",
            )
        )
    if r.transcript:
        console.print(Text("transcript:", style="bold"))
        for line in r.transcript:
            console.print(Text("  " + printable(line, 300)))
    if r.facts:
        table = Table(show_header=False, show_edge=False, pad_edge=False, box=None)
        table.add_column("fact", style="cyan")
        table.add_column("value", overflow="fold")
        for k, v in r.facts.items():
            if k == "traceback":
                continue
            value = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
            table.add_row(k, Text(printable(value, 600)))
        console.print(Text("facts:", style="bold"))
        console.print(table)
    for w in r.warnings:
        console.print(Text("warning: " + printable(w, 300), style="yellow"))
