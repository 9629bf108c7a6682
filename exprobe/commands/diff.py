"""`exprobe diff BEFORE.json AFTER.json`: what changed between two runs."""

from __future__ import annotations

import io
from typing import Annotated

import typer
from rich.console import Console

from exprobe.cli import app, make_console
from exprobe.diff import FORMATS, diff_reports, load_report, render_diff
from exprobe.errors import InputError
from exprobe.report.output import check_writable, emit


@app.command()
def diff(
    before: Annotated[str, typer.Argument(help="The earlier report (exprobe run --format json).")],
    after: Annotated[str, typer.Argument(help="The later report.")],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="table, json or markdown (for a change ticket).")
    ] = "table",
    output: Annotated[
        str | None,
        typer.Option("-o", "--output", help="Write to this file (atomically).", show_default=False),
    ] = None,
    no_color: Annotated[
        bool, typer.Option("--no-color", help="No colour (NO_COLOR is honoured too).")
    ] = False,
) -> None:
    """Compare two JSON reports: what flipped, regressions first.

    Scenario verdicts that flipped, check statuses that changed, addresses that appeared
    or vanished, endpoint-mapper ports that moved.

    Exit 1 when anything regressed, 0 otherwise, 2 for unreadable or invalid reports.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if output:
        check_writable(output)
    changes = diff_reports(load_report(before), load_report(after))
    rendered = render_diff(changes, fmt)
    if fmt != "table":
        emit(rendered, output)
    elif output:
        buf = io.StringIO()
        Console(file=buf, no_color=True, color_system=None, width=160, markup=False,
                highlight=False, emoji=False).print(rendered)
        emit(buf.getvalue(), output)
    else:
        make_console(no_color).print(rendered)
    raise typer.Exit(1 if changes.regressions else 0)
