"""JSON (whole report) and JSON Lines (one object per finished check, streamed)."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from exprobe.result import CheckResult, RunReport


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2, default=str)


def render_json(report: RunReport, *, verbose: bool = True) -> str:
    return dumps(report.to_dict(verbose=verbose)) + "\n"


class JsonLinesWriter:
    """Writes each result as one line the moment it finishes, flushed, so a run killed
    half-way still leaves every finished result behind."""

    def __init__(self, stream: IO[str] | None = None, *, verbose: bool = False) -> None:
        self._out = stream or sys.stdout
        self._verbose = verbose

    def result(self, r: CheckResult) -> None:
        d = {"type": "check", **r.to_dict(verbose=self._verbose)}
        self._out.write(json.dumps(d, ensure_ascii=False, default=str) + "\n")
        self._out.flush()

    def record(self, kind: str, payload: dict[str, Any]) -> None:
        self._out.write(
            json.dumps({"type": kind, **payload}, ensure_ascii=False, default=str) + "\n"
        )
        self._out.flush()


def render(report: RunReport, *, verbose: bool = False) -> str:
    """`--format json`: the whole report (transcripts and steps only with -v)."""
    return render_json(report, verbose=verbose)
