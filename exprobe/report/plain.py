"""The table format written to a file: the same table, without colour."""

from __future__ import annotations

import io

from rich.console import Console

from exprobe.report.table import render_table
from exprobe.result import RunReport


def render(report: RunReport, *, verbose: bool = False) -> str:
    buf = io.StringIO()
    console = Console(
        file=buf,
        no_color=True,
        color_system=None,
        width=160,
        markup=False,
        highlight=False,
        emoji=False,
    )
    render_table(report, console, verbose=verbose)
    return buf.getvalue()
