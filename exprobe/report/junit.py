"""`--format junit`: JUnit XML for CI pipelines that gate firewall changes on exprobe.

One `<testsuite>` per target; one `<testcase>` per address × scenario (per address ×
check when there is no profile), failing with the verdict's reason as its message.
A check that ended in `internal-error` is an `<error>` (exprobe's fault, not the
network's); `skipped` is `<skipped/>`.  With expectations, a suite `expectations` holds
one test case per expectation record, and a scenario or port that an expectation says
must fail or be closed passes as expected instead of failing the build.
"""

from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET
from typing import Any

from exprobe.report.safe import printable
from exprobe.result import CheckResult, RunReport, ScenarioVerdict, TargetReport
from exprobe.status import Status

_PORT_KINDS = ("closed", "filtered", "not_open")


# Characters XML 1.0 cannot carry that printable() leaves alone (lone surrogates, U+FFFE/F).
_NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")


def _xml_text(text: object, limit: int = 4000) -> str:
    """One line; printable() escapes the control characters, _NOT_XML the rest."""
    return _NOT_XML.sub(lambda m: f"\\u{ord(m.group()):04x}", printable(text, limit))


def _xml_block(text: str, limit: int = 8000) -> str:
    """Several lines, each made safe on its own (newlines kept)."""
    return "\n".join(_xml_text(line, 1000) for line in text.splitlines())[:limit]


def _seconds(ms: float | None) -> str:
    return f"{(ms or 0.0) / 1000:.3f}"


class _Expected:
    """What the expectations say must fail: scenarios and ports, per target and address."""

    def __init__(self, records: list[dict[str, Any]] | None) -> None:
        self.fail: dict[tuple[str, str | None, str], str] = {}
        self.checks: dict[tuple[str, str | None, str], str] = {}
        for e in records or []:
            if not e.get("met"):
                continue
            key_t, key_a = str(e.get("target")), e.get("address")
            if e.get("kind") == "fail" and "scenario" in e:
                self.fail[(key_t, key_a, str(e["scenario"]))] = str(e.get("expectation"))
            elif e.get("kind") in _PORT_KINDS:
                for cid in e.get("checks") or []:
                    self.checks[(key_t, key_a, str(cid))] = str(e.get("expectation"))


def _scenario_case(
    suite: ET.Element, t: TargetReport, v: ScenarioVerdict, expected: _Expected
) -> tuple[int, int, int]:
    case = ET.SubElement(
        suite,
        "testcase",
        {
            "classname": f"exprobe.{_xml_text(t.target, 200)}",
            "name": f"{_xml_text(v.id, 100)} @ {v.address or '-'}",
            "time": "0.000",
        },
    )
    details = [f"scenario: {v.title}", f"verdict: {v.verdict}", f"reason: {v.reason}"]
    if v.via:
        details.append(f"via: {v.via}")
    details += [f"check: {c}" for c in v.checks]
    details += [f"hint: {h}" for h in v.hints]
    details += [f"warning: {w}" for w in v.warnings]
    body = _xml_block("\n".join(details))
    if v.passed:
        ET.SubElement(case, "system-out").text = body
        return 0, 0, 0
    if not v.failed:  # skipped, not-enabled, unknown: reported, not failed
        ET.SubElement(case, "skipped", {"message": _xml_text(f"{v.verdict}: {v.reason}", 500)})
        ET.SubElement(case, "system-out").text = body
        return 0, 0, 1
    by = expected.fail.get((t.target, v.address, v.id))
    if by is not None:
        ET.SubElement(case, "system-out").text = f"fails as expected ({by})\n{body}"
        return 0, 0, 0
    fail = ET.SubElement(case, "failure", {"message": _xml_text(v.reason, 500), "type": "fail"})
    fail.text = body
    return 1, 0, 0


def _check_case(
    suite: ET.Element, t: TargetReport, r: CheckResult, expected: _Expected
) -> tuple[int, int, int]:
    case = ET.SubElement(
        suite,
        "testcase",
        {
            "classname": f"exprobe.{_xml_text(t.target, 200)}",
            "name": f"{_xml_text(r.id, 100)} @ {r.address or '-'}",
            "time": _seconds(r.elapsed_ms),
        },
    )
    lines = [f"{r.endpoint} {r.status.value}/{r.port_state.value}"]
    if r.failed_step:
        lines.append(f"failed step: {r.failed_step}")
    if r.message:
        lines.append(f"message: {r.message}")
    lines += [f"warning: {w}" for w in r.warnings]
    body = _xml_block("\n".join(lines))
    if r.ok:
        ET.SubElement(case, "system-out").text = body
        return 0, 0, 0
    if r.status is Status.SKIPPED:
        ET.SubElement(case, "skipped", {"message": _xml_text(r.message or "skipped", 500)})
        return 0, 0, 1
    if r.status is Status.INTERNAL_ERROR:
        err = ET.SubElement(
            case, "error", {"message": _xml_text(r.message, 500), "type": r.status.value}
        )
        err.text = body
        return 0, 1, 0
    by = expected.checks.get((t.target, r.address, r.id))
    if by is not None and r.status in (
        Status.CONNECTION_REFUSED,
        Status.CONNECTION_TIMEOUT,
        Status.UNREACHABLE,
    ):
        ET.SubElement(case, "system-out").text = f"not reachable, as expected ({by})\n{body}"
        return 0, 0, 0
    message = f"{r.status.value}" + (f" at {r.failed_step}" if r.failed_step else "")
    if r.message:
        message += f": {r.message}"
    fail = ET.SubElement(
        case, "failure", {"message": _xml_text(message, 500), "type": r.status.value}
    )
    fail.text = body
    return 1, 0, 0


def _expectation_suite(root: ET.Element, records: list[dict[str, Any]], stamp: str) -> int:
    failures = 0
    suite = ET.SubElement(
        root,
        "testsuite",
        {"name": "expectations", "tests": str(len(records)), "timestamp": stamp},
    )
    for e in records:
        item = e.get("scenario", e.get("port", ""))
        case = ET.SubElement(
            suite,
            "testcase",
            {
                "classname": f"exprobe.expectations.{_xml_text(e.get('expectation'), 100)}",
                "name": f"{_xml_text(e.get('target'), 100)} @ {e.get('address') or '-'}: "
                f"{_xml_text(item, 60)} {_xml_text(e.get('expected'), 40)}",
                "time": "0.000",
            },
        )
        evidence = _xml_text(e.get("evidence", ""))
        if e.get("met"):
            ET.SubElement(case, "system-out").text = evidence
        else:
            failures += 1
            fail = ET.SubElement(
                case,
                "failure",
                {
                    "message": _xml_text(
                        f"expected {e.get('expected')}, observed {e.get('observed')}", 500
                    ),
                    "type": "expectation",
                },
            )
            fail.text = evidence
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    return failures


def render(report: RunReport, *, verbose: bool = False) -> str:
    """The report as JUnit XML (UTF-8, with an XML declaration)."""
    expected = _Expected(report.expectations)
    root = ET.Element("testsuites", {"name": "exprobe"})
    stamp = (report.started_at or "").rstrip("Z")
    host = report.vantage.get("hostname") or socket.gethostname()
    totals = [0, 0, 0, 0]  # tests, failures, errors, skipped
    for t in report.targets:
        suite = ET.SubElement(
            root,
            "testsuite",
            {"name": _xml_text(t.target, 200), "timestamp": stamp, "hostname": str(host)},
        )
        tests = failures = errors = skipped = 0
        if t.scenarios:
            for v in t.scenarios:
                f, e, s = _scenario_case(suite, t, v, expected)
                tests, failures, errors, skipped = tests + 1, failures + f, errors + e, skipped + s
        else:
            for r in t.results:
                f, e, s = _check_case(suite, t, r, expected)
                tests, failures, errors, skipped = tests + 1, failures + f, errors + e, skipped + s
        if t.error and not t.results and not t.scenarios:
            case = ET.SubElement(
                suite,
                "testcase",
                {"classname": f"exprobe.{_xml_text(t.target, 200)}", "name": "resolve"},
            )
            attrs = {"message": _xml_text(t.error, 500), "type": "dns-error"}
            ET.SubElement(case, "failure", attrs)
            tests, failures = tests + 1, failures + 1
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", str(errors))
        suite.set("skipped", str(skipped))
        suite.set("time", _seconds(sum(r.elapsed_ms for r in t.results)))
        for i, n in enumerate((tests, failures, errors, skipped)):
            totals[i] += n
    if report.expectations is not None:
        totals[1] += _expectation_suite(root, report.expectations, stamp)
        totals[0] += len(report.expectations)
    root.set("tests", str(totals[0]))
    root.set("failures", str(totals[1]))
    root.set("errors", str(totals[2]))
    root.set("skipped", str(totals[3]))
    root.set("time", _seconds(report.duration_ms))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
