"""`--format junit`: one test case per target × address × scenario (or check), parsed back."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from exprobe.report import junit
from exprobe.status import PortState, Status
from tests.helpers import LoopbackServer, closed_port, exprobe
from tests.reports import report, result, target, verdict


def parse(text: str) -> ET.Element:
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    return ET.fromstring(text.encode("utf-8"))


def cases(root: ET.Element) -> dict[str, ET.Element]:
    return {c.get("name", ""): c for c in root.iter("testcase")}


def test_one_case_per_address_and_scenario() -> None:
    rep = report(target(
        "mail.example.test",
        [result("epm", 135, address=a) for a in ("10.0.0.5", "10.0.0.6")],
        [
            verdict("mapi-client", False, address="10.0.0.5", target="mail.example.test",
                    reason="MAPI client fails: IS port 1026 filtered (connection-timeout)",
                    hints=("pin the IS port (KB 155831)",)),
            verdict("mapi-client", True, address="10.0.0.6", target="mail.example.test"),
            verdict("pop3-retrieve", True, address="10.0.0.5", target="mail.example.test",
                    via="995"),
            verdict("pop3-retrieve", True, address="10.0.0.6", target="mail.example.test"),
        ],
    ))
    root = parse(junit.render(rep))
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "0")
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "mail.example.test"
    assert suite.get("tests") == "4"
    by = cases(root)
    assert sorted(by) == ["mapi-client @ 10.0.0.5", "mapi-client @ 10.0.0.6",
                          "pop3-retrieve @ 10.0.0.5", "pop3-retrieve @ 10.0.0.6"]
    fail = by["mapi-client @ 10.0.0.5"].find("failure")
    assert fail is not None
    assert fail.get("message") == "MAPI client fails: IS port 1026 filtered (connection-timeout)"
    assert "hint: pin the IS port (KB 155831)" in (fail.text or "")
    assert by["mapi-client @ 10.0.0.6"].find("failure") is None
    assert "via: 995" in (by["pop3-retrieve @ 10.0.0.5"].findtext("system-out") or "")
    assert by["pop3-retrieve @ 10.0.0.5"].get("classname") == "exprobe.mail.example.test"


def test_checks_without_profile_error_and_skipped() -> None:
    rep = report(
        target("10.0.0.5", [
            result("tcp:25", 25, elapsed_ms=1500.0),
            result("tcp:135", 135, Status.CONNECTION_TIMEOUT, message="no answer to SYN"),
            result("smtp", 26, Status.INTERNAL_ERROR, state=PortState.OPEN,
                   message="bug in exprobe: KeyError"),
            result("tcp:99", 99, Status.SKIPPED, message="not run"),
        ]),
        target("gone.example.test", [], error="name did not resolve"),
    )
    root = parse(junit.render(rep))
    assert (root.get("tests"), root.get("failures"), root.get("errors"),
            root.get("skipped")) == ("5", "2", "1", "1")
    by = cases(root)
    assert by["tcp:25 @ 10.0.0.5"].get("time") == "1.500"
    fail = by["tcp:135 @ 10.0.0.5"].find("failure")
    assert fail is not None
    assert fail.get("type") == "connection-timeout"
    assert fail.get("message") == "connection-timeout at connect: no answer to SYN"
    err = by["smtp @ 10.0.0.5"].find("error")
    assert err is not None
    assert err.get("type") == "internal-error"
    assert by["tcp:99 @ 10.0.0.5"].find("skipped") is not None
    dns = by["resolve"].find("failure")
    assert dns is not None
    assert dns.get("message") == "name did not resolve"


def test_expectations_suite_and_failures_by_design() -> None:
    rep = report(target("10.0.0.5", [result("tcp:135", 135, Status.CONNECTION_REFUSED)],
                        [verdict("mapi-client", False)]))
    rep.expectations = [
        {"expectation": "dmz", "kind": "fail", "target": "10.0.0.5", "address": "10.0.0.5",
         "scenario": "mapi-client", "expected": "fail", "observed": "fail", "met": True,
         "evidence": "fail: MAPI client fails: 135 filtered", "checks": []},
        {"expectation": "shut", "kind": "closed", "target": "10.0.0.5", "address": "10.0.0.5",
         "port": 25, "expected": "closed", "observed": "open", "met": False,
         "evidence": "10.0.0.5:25 open: tcp:25 success/open", "checks": ["tcp:25"]},
    ]
    root = parse(junit.render(rep))
    assert (root.get("tests"), root.get("failures")) == ("3", "1")
    by = cases(root)
    mapi = by["mapi-client @ 10.0.0.5"]
    assert mapi.find("failure") is None
    assert (mapi.findtext("system-out") or "").startswith("fails as expected (dmz)")
    suite = next(s for s in root.findall("testsuite") if s.get("name") == "expectations")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    shut = by["10.0.0.5 @ 10.0.0.5: 25 closed"].find("failure")
    assert shut is not None
    assert shut.get("message") == "expected closed, observed open"
    assert shut.text == "10.0.0.5:25 open: tcp:25 success/open"


def test_hostile_text_stays_well_formed() -> None:
    rep = report(target("10.0.0.5", [], [verdict(
        "smtp", False, reason="banner \x00\x1b[2J <x>&amp; \ud800 ]]>")]))
    root = parse(junit.render(rep))
    fail = next(root.iter("failure"))
    assert fail.get("message") == "banner \\x00\\x1b[2J <x>&amp; \\ud800 ]]>"
    assert "\x00" not in junit.render(rep)
    assert "\x1b" not in junit.render(rep)


def test_cli_junit_output_file(tmp_path: Path) -> None:
    closed = closed_port()
    path = tmp_path / "junit.xml"
    with LoopbackServer() as srv:
        out = exprobe("run", "127.0.0.1", "--port", str(srv.port), "--port", str(closed),
                      "--format", "junit", "-o", str(path))
    assert out.returncode == 1
    assert out.stdout == ""
    root = parse(path.read_text())
    by = cases(root)
    assert by[f"tcp:{srv.port} @ 127.0.0.1"].find("failure") is None
    fail = by[f"tcp:{closed} @ 127.0.0.1"].find("failure")
    assert fail is not None
    assert fail.get("type") == "connection-refused"
