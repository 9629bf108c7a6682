"""`exprobe trace HOST --port N [--port M ...]`: where does the path to each port break?

A TCP connect check on each port, then a TCP trace to each port (every TTL in flight at
once, no raw socket), each compared with the trace of a port of the same host that
answers (the reference path).  The same as `exprobe run HOST --port N ... --trace all`,
shown hop by hop.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.text import Text

from exprobe.cli import app, family_of, make_console, raise_nofile_limit, run_async
from exprobe.commands.common import EngineArgs, adhoc_defs, trace_options
from exprobe.commands.run import (
    ConnectTimeoutOpt,
    Ipv4Opt,
    Ipv6Opt,
    MaxHopsOpt,
    NoColorOpt,
    PerHostOpt,
    RateOpt,
    ResolveHopsOpt,
    SourceOpt,
)
from exprobe.engine.session import Session
from exprobe.errors import InputError
from exprobe.report.output import emit
from exprobe.report.safe import printable
from exprobe.report.table import checks_table, traces_group
from exprobe.targets import parse_target


@app.command()
def trace(
    host: Annotated[str, typer.Argument(help="Host name or address.")],
    port: Annotated[
        list[int] | None,
        typer.Option("--port", help="Trace to this TCP port (repeatable).", show_default=False),
    ] = None,
    max_hops: MaxHopsOpt = 30,
    resolve_hops: ResolveHopsOpt = False,
    connect_timeout: ConnectTimeoutOpt = 3.0,
    per_host: PerHostOpt = 4,
    rate: RateOpt = None,
    source: SourceOpt = None,
    ipv4: Ipv4Opt = False,
    ipv6: Ipv6Opt = False,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    no_color: NoColorOpt = False,
) -> None:
    """Trace the path to each PORT of HOST and name the hop that breaks it."""
    if fmt not in ("table", "json"):
        raise InputError(f"--format {fmt!r}: `trace` prints table or json")
    if not port:
        raise InputError("trace: give at least one --port")
    target = parse_target(host)
    if target.port is not None:
        raise InputError(f"trace: give the port with --port, not in {host!r}")
    if target.size() != 1 and not target.is_name:
        raise InputError(f"trace: {host!r} is a range; trace one host at a time")
    defs = adhoc_defs(port, [])
    opts, limits = EngineArgs(
        timeout=connect_timeout + 1,
        connect_timeout=connect_timeout,
        per_host=per_host,
        rate=rate,
        source=source,
    ).build(raise_nofile_limit())
    tracing = trace_options("all", max_hops, resolve_hops, opts)
    session = Session([target], defs, opts, limits, family_of(ipv4, ipv6), trace=tracing)
    report = run_async(session.run())
    for note in session.notes:
        print(f"exprobe: {note}", file=sys.stderr)
    results = report.all_results()
    if fmt == "json":
        emit(json.dumps(report.to_dict(verbose=False), indent=2, ensure_ascii=False, default=str),
             None)
    else:
        console = make_console(no_color)
        console.print(checks_table(results))
        traces = traces_group(results)
        if traces is not None:
            console.print()
            console.print(traces)
        for t in report.targets:
            if t.error:
                console.print(Text(printable(f"{t.target}: {t.error}"), style="magenta"))
    broken = [r for r in results if not r.ok or (r.trace or {}).get("break")]
    if report.targets and report.targets[0].error:
        raise typer.Exit(1)
    raise typer.Exit(1 if broken or not results else 0)
