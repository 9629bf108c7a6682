"""Reporters: turn a `RunReport` into tables, JSON and monitoring formats.

Reporters know no scheduler; the machine formats are looked up here by name and
imported lazily, so a table run never pays for Prometheus or JUnit code.
"""

from __future__ import annotations

import importlib

from exprobe.result import RunReport

# format -> module with `render(report, *, verbose) -> str` and optionally `exit_code(report)`
FORMAT_MODULES = {
    "json": "exprobe.report.jsonfmt",
    "table": "exprobe.report.plain",
    "nagios": "exprobe.report.nagios",
    "prometheus": "exprobe.report.prometheus",
    "junit": "exprobe.report.junit",
}


def render(fmt: str, report: RunReport, *, verbose: bool = False) -> str:
    mod = importlib.import_module(FORMAT_MODULES[fmt])
    text: str = mod.render(report, verbose=verbose)
    return text


def status_exit_code(fmt: str, report: RunReport, failed_expectations: bool = False) -> int:
    """0 nothing failed, 1 something failed; monitoring formats use their own conventions.

    A scenario skipped (no host for a role), not enabled or unknown (a service shipped
    switched off) is not a failure."""
    mod_name = FORMAT_MODULES.get(fmt)
    if mod_name:
        mod = importlib.import_module(mod_name)
        custom = getattr(mod, "exit_code", None)
        if custom is not None:
            code: int = custom(report)
            return code
    if report.expectations is not None:
        return 1 if failed_expectations else 0
    verdicts = report.all_verdicts()
    if verdicts:
        return 0 if not any(v.failed for v in verdicts) and not failed_expectations else 1
    ok = (
        all(r.ok for r in report.all_results())
        and not any(t.error for t in report.targets)
        and not report.streamed_failures
    )
    return 0 if ok and not failed_expectations else 1
