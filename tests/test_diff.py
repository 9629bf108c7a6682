"""`exprobe diff`: flips, status changes, appeared/vanished, EPM ports that moved; input errors."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from exprobe.diff import check_report, diff_reports, load_report, render_diff
from exprobe.errors import InputError
from exprobe.status import Status
from tests.helpers import exprobe
from tests.reports import report, result, target, verdict

S = Status


def d(*targets: Any) -> dict[str, Any]:
    return report(*targets).to_dict()


def keys(changes: Any) -> list[tuple[str, str, str | None, str, str | None, str | None]]:
    return [(c.direction, c.what, c.address, c.item, c.before, c.after) for c in changes.changes]


def test_scenario_flips_regressions_first() -> None:
    before = d(target("10.0.0.5", [result("pop3", 110), result("epm", 135)], [
        verdict("pop3-retrieve", True), verdict("mapi-client", False)]))
    after = d(target("10.0.0.5", [result("pop3", 110), result("epm", 135)], [
        verdict("pop3-retrieve", False, reason="POP3 retrieve fails: 110 refused"),
        verdict("mapi-client", True, via="IS on 1026")]))
    ch = diff_reports(before, after)
    assert keys(ch) == [
        ("regression", "scenario", "10.0.0.5", "pop3-retrieve", "pass", "fail"),
        ("fix", "scenario", "10.0.0.5", "mapi-client", "fail", "pass"),
    ]
    assert [c.item for c in ch.regressions] == ["pop3-retrieve"]
    assert ch.changes[0].detail == "POP3 retrieve fails: 110 refused"
    assert ch.changes[1].detail == "via IS on 1026"
    assert ch.summary() == {"changes": 2, "regressions": 1, "fixes": 1, "other": 0}


def test_check_changes_without_scenarios() -> None:
    before = d(target("10.0.0.5", [
        result("tcp:25", 25), result("tcp:1026", 1026, S.CONNECTION_TIMEOUT),
        result("tcp:102", 102, S.CONNECTION_TIMEOUT), result("tcp:119", 119)]))
    after = d(target("10.0.0.5", [
        result("tcp:25", 25, S.CONNECTION_REFUSED, message="refused (RST)"),
        result("tcp:1026", 1026), result("tcp:102", 102, S.UNREACHABLE),
        result("tcp:119", 119)]))
    ch = diff_reports(before, after)
    assert keys(ch) == [
        ("regression", "check", "10.0.0.5", "tcp:25", "success/open",
         "connection-refused/closed"),
        ("fix", "check", "10.0.0.5", "tcp:1026", "connection-timeout/filtered", "success/open"),
        ("changed", "check", "10.0.0.5", "tcp:102", "connection-timeout/filtered",
         "unreachable/filtered"),
    ]
    assert ch.changes[0].detail == "connect: refused (RST)"
    assert ch.changes[0].regression
    assert not ch.changes[2].regression


def test_a_worse_check_under_passing_scenarios_is_listed_not_a_regression() -> None:
    before = d(target("10.0.0.5", [result("pop3", 110), result("pop3s", 995)],
                      [verdict("pop3-retrieve", True, via="110")]))
    after = d(target("10.0.0.5", [result("pop3", 110, S.CONNECTION_TIMEOUT), result("pop3s", 995)],
                     [verdict("pop3-retrieve", True, via="995")]))
    ch = diff_reports(before, after)
    assert keys(ch) == [("worse", "check", "10.0.0.5", "pop3 (110)", "success/open",
                         "connection-timeout/filtered")]
    assert ch.regressions == []


def test_targets_and_addresses_appear_and_vanish() -> None:
    before = d(
        target("mail.example.test", [result("tcp:25", 25, address=a) for a in ("10.0.0.5",
                                                                              "10.0.0.6")]),
        target("old.example.test", [result("tcp:25", 25, address="10.0.0.9")]),
    )
    after = d(
        target("mail.example.test", [result("tcp:25", 25, address=a) for a in ("10.0.0.5",
                                                                              "10.0.0.7")]),
        target("new.example.test", [result("tcp:25", 25, address="10.0.0.8")]),
    )
    ch = diff_reports(before, after)
    assert sorted(keys(ch)) == sorted([
        ("appeared", "address", "10.0.0.7", "", None, "present"),
        ("vanished", "address", "10.0.0.6", "", "present", None),
        ("appeared", "target", None, "", None, "present"),
        ("vanished", "target", None, "", "present", None),
    ])
    assert {c.target for c in ch.changes if c.what == "target"} == {
        "old.example.test", "new.example.test"}
    assert ch.regressions == []


def test_target_that_stops_resolving_is_a_regression() -> None:
    before = d(target("mail.example.test", [result("tcp:25", 25)]))
    after = d(target("mail.example.test", [
        result("tcp:25", 25, S.DNS_ERROR, address=None, target="mail.example.test")],
        error="name did not resolve"))
    ch = diff_reports(before, after)
    assert keys(ch)[0] == ("regression", "target", None, "", "resolved", "error")
    assert ch.changes[0].detail == "name did not resolve"
    assert ("vanished", "address", "10.0.0.5", "", "present", None) in keys(ch)


def epm_results(port: int, status: Status = S.SUCCESS, component: str = "is") -> list[Any]:
    return [
        result("epm", 135, probe="msrpc-epm"),
        result(f"epm/{component}:{port}", port, status, parent="epm",
               facts={"component": component}),
        result("epm/ds:1025", 1025, parent="epm", facts={"component": "ds"}),
    ]


def test_endpoint_mapper_port_moved() -> None:
    before = d(target("10.0.0.5", epm_results(1026)))
    after = d(target("10.0.0.5", epm_results(1031)))
    ch = diff_reports(before, after)
    assert keys(ch) == [
        ("moved", "endpoint", "10.0.0.5", "epm is", "1026 success/open", "1031 success/open"),
    ]
    assert ch.changes[0].detail == "registered port changed (dynamic unless pinned)"
    # No per-check noise: the moved checks are not also "vanished" and "appeared".
    assert not [c for c in ch.changes if c.what == "check"]


def test_endpoint_moved_to_a_filtered_port_is_a_regression() -> None:
    before = d(target("10.0.0.5", epm_results(1026)))
    after = d(target("10.0.0.5", epm_results(1031, S.CONNECTION_TIMEOUT)))
    (c,) = diff_reports(before, after).changes
    assert (c.direction, c.regression, c.after) == (
        "regression", True, "1031 connection-timeout/filtered")


def test_component_from_the_id_when_facts_lack_it() -> None:
    b = [result("epm/mta:1030", 1030, parent="epm")]
    a = [result("epm/mta:1040", 1040, parent="epm")]
    (c,) = diff_reports(d(target("10.0.0.5", b)), d(target("10.0.0.5", a))).changes
    assert (c.what, c.item, c.before, c.after) == (
        "endpoint", "epm epm/mta", "1030 success/open", "1040 success/open")


def test_identical_reports_no_changes() -> None:
    rep = d(target("10.0.0.5", epm_results(1026), [verdict("mapi-client", True)]))
    ch = diff_reports(rep, json.loads(json.dumps(rep)))
    assert ch.changes == []
    assert ch.regressions == []
    assert render_diff(ch, "markdown").count("no changes") == 1


def test_render_formats() -> None:
    before = d(target("10.0.0.5", [result("tcp:25", 25)], [verdict("smtp", True)]))
    after = d(target("10.0.0.5", [result("tcp:25", 25)], [
        verdict("smtp", False, reason="SMTP | fails \x1b[2J *now*")]))
    ch = diff_reports(before, after)
    data = json.loads(render_diff(ch, "json"))
    assert data["summary"]["regressions"] == 1
    assert data["changes"][0]["item"] == "smtp"
    assert data["changes"][0]["regression"] is True
    md = render_diff(ch, "markdown")
    row = next(line for line in md.splitlines() if line.startswith("| **REGRESSION**"))
    assert row.count("|") - row.count("\\|") == 8  # a network "|" cannot break the table
    assert "\x1b" not in md
    assert "\\x1b" in md
    assert "\\*now\\*" in md
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(render_diff(ch, "table"))
    text = buf.getvalue()
    assert "REGRESSION" in text
    assert "pass → fail" in text
    assert "\x1b" not in text


def write(path: Path, data: Any) -> str:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_load_report_errors(tmp_path: Path) -> None:
    good = d(target("10.0.0.5", [result("tcp:25", 25)]))
    assert load_report(write(tmp_path / "ok.json", good))["schema_version"] == "1.0"
    cases = [
        ("x.json", "{", "not valid JSON (line 1, column 2: Expecting property name enclosed"),
        ("l.json", '{"type": "check", "id": "tcp:25"}\n{"type": "check"}\n',
         "it looks like JSON Lines: diff needs --format json reports"),
        ("a.json", [1], "not an exprobe JSON report (expected an object)"),
        ("n.json", {"targets": []}, "not an exprobe JSON report (no schema_version)"),
        ("v.json", {**good, "schema_version": "2.0"},
         "schema_version '2.0' is not supported (this exprobe reads 1.x)"),
        ("t.json", {**good, "targets": {}}, "targets: expected a list"),
    ]
    for name, data, message in cases:
        path = write(tmp_path / name, data)
        with pytest.raises(InputError) as info:
            load_report(path)
        assert message in str(info.value)
        assert str(info.value).startswith(path)
    bad = json.loads(json.dumps(good))
    bad["targets"][0]["results"][0]["status"] = 3
    with pytest.raises(InputError, match=r"r\.json: targets\[0\]\.results\[0\]\.status: "
                                         r"expected str, got int"):
        load_report(write(tmp_path / "r.json", bad))
    bad["targets"][0]["results"][0].update(status="success", port=True)
    with pytest.raises(InputError, match=r"targets\[0\]\.results\[0\]\.port: expected int, "
                                         r"got bool"):
        check_report(bad, "mem")
    with pytest.raises(InputError, match="cannot read"):
        load_report(str(tmp_path / "missing.json"))


def test_cli_exit_codes(tmp_path: Path) -> None:
    before = write(tmp_path / "b.json", d(target("10.0.0.5", [result("tcp:25", 25)])))
    worse = write(tmp_path / "w.json", d(target("10.0.0.5", [
        result("tcp:25", 25, S.CONNECTION_TIMEOUT)])))
    out = exprobe("diff", before, worse)
    assert out.returncode == 1, out.stderr
    assert "REGRESSION" in out.stdout
    assert "success/open → connection-timeout/filtered" in out.stdout
    out = exprobe("diff", worse, before, "--format", "json")
    assert out.returncode == 0
    assert json.loads(out.stdout)["changes"][0]["direction"] == "fix"
    md = tmp_path / "change.md"
    out = exprobe("diff", before, worse, "--format", "markdown", "-o", str(md))
    assert out.returncode == 1
    assert out.stdout == ""
    assert md.read_text().startswith("### exprobe diff")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "change.md", "w.json"]
    out = exprobe("diff", before, str(tmp_path / "nope.json"))
    assert out.returncode == 2
    assert out.stderr == f"exprobe: error: {tmp_path / 'nope.json'}: cannot read (No such file or directory)\n"
    out = exprobe("diff", before, worse, "--format", "xml")
    assert out.returncode == 2
    assert "expected one of table, json, markdown" in out.stderr
