"""`--format prometheus`: metric names, stable label sets, one-hot status, promtool lint."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exprobe.report import prometheus
from exprobe.status import PortState, Status
from tests.helpers import LoopbackServer, closed_port, exprobe
from tests.reports import report, result, target, verdict

CHECK_LABELS = {"target", "address", "port", "check", "probe"}


def samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        assert fam.type == "gauge", fam.name
        assert fam.documentation, fam.name
        out[fam.name] = list(fam.samples)
    return out


def sample_rep() -> Any:
    rep = report(
        target("mail.example.test", [
            result("smtp", 25, probe="smtp", elapsed_ms=42.0, address="10.0.0.5"),
            result("imaps", 993, probe="imap", address="10.0.0.5",
                   facts={"cert_not_after": "2027-01-02T03:04:05+00:00"},
                   warnings=("TLS: untrusted",)),
            result("epm/is:1026", 1026, Status.CONNECTION_TIMEOUT, address="10.0.0.5",
                   parent="epm"),
        ], [
            verdict("imap-retrieve", True, target="mail.example.test", via="993"),
            verdict("mapi-client", False, target="mail.example.test"),
        ]),
    )
    rep.expectations = [{"expectation": "dmz", "kind": "closed", "target": "mail.example.test",
                         "address": "10.0.0.5", "port": 135, "met": False}]
    return rep


def test_metrics_values_and_labels() -> None:
    s = samples(prometheus.render(sample_rep()))
    assert set(s) == {
        "exprobe_check_success", "exprobe_check_duration_seconds", "exprobe_check_status",
        "exprobe_check_port_state", "exprobe_check_warnings",
        "exprobe_cert_expiry_timestamp_seconds", "exprobe_scenario_pass",
        "exprobe_scenario_verdict", "exprobe_expectation_met", "exprobe_run_duration_seconds",
        "exprobe_run_timestamp_seconds", "exprobe_run_interrupted",
    }
    for name in ("exprobe_check_success", "exprobe_check_duration_seconds",
                 "exprobe_check_warnings"):
        assert all(set(x.labels) == CHECK_LABELS for x in s[name]), name
    success = {x.labels["check"]: x.value for x in s["exprobe_check_success"]}
    assert success == {"smtp": 1.0, "imaps": 1.0, "epm/is:1026": 0.0}
    smtp = next(x for x in s["exprobe_check_duration_seconds"] if x.labels["check"] == "smtp")
    assert smtp.value == 0.042
    assert smtp.labels == {"target": "mail.example.test", "address": "10.0.0.5", "port": "25",
                           "check": "smtp", "probe": "smtp"}
    # One-hot: every status is present for every check, exactly one of them is 1.
    by_check: dict[str, dict[str, float]] = {}
    for x in s["exprobe_check_status"]:
        by_check.setdefault(x.labels["check"], {})[x.labels["status"]] = x.value
    assert all(set(v) == {st.value for st in Status} for v in by_check.values())
    assert {c: [k for k, v in st.items() if v == 1.0] for c, st in by_check.items()} == {
        "smtp": ["success"], "imaps": ["success"], "epm/is:1026": ["connection-timeout"]}
    states = {(x.labels["check"], x.labels["state"]): x.value
              for x in s["exprobe_check_port_state"]}
    assert len(states) == 3 * len(PortState)
    assert states[("epm/is:1026", "filtered")] == 1.0
    assert states[("epm/is:1026", "open")] == 0.0
    (cert,) = s["exprobe_cert_expiry_timestamp_seconds"]
    assert cert.value == 1798859045.0
    assert cert.labels["port"] == "993"
    assert {x.labels["scenario"]: x.value for x in s["exprobe_scenario_pass"]} == {
        "imap-retrieve": 1.0, "mapi-client": 0.0}
    assert {(x.labels["scenario"], x.labels["verdict"]): x.value
            for x in s["exprobe_scenario_verdict"]} == {
        ("imap-retrieve", "pass"): 1.0, ("mapi-client", "fail"): 1.0}
    (exp,) = s["exprobe_expectation_met"]
    assert exp.value == 0.0
    assert exp.labels["item"] == "135"
    assert exp.labels["kind"] == "closed"
    warnings = {x.labels["check"]: x.value for x in s["exprobe_check_warnings"]}
    assert warnings["imaps"] == 1.0
    assert s["exprobe_run_duration_seconds"][0].value == 1.5
    assert s["exprobe_run_timestamp_seconds"][0].value == 1767225601.5
    assert s["exprobe_run_interrupted"][0].value == 0.0


def test_probe_success_only_for_the_exporter() -> None:
    rep = sample_rep()
    assert "exprobe_probe_success" not in prometheus.render(rep)
    text = prometheus.render_bytes(rep, probe=True).decode()
    assert samples(text)["exprobe_probe_success"][0].value == 0.0
    ok = report(target("10.0.0.5", [result("tcp:25", 25)]))
    assert prometheus.probe_success(ok) is True
    ok.interrupted = True
    assert prometheus.probe_success(ok) is False


def test_shared_address_and_hostile_label_values() -> None:
    shared = result("tcp:25", 25, address="10.0.0.5")
    weird = 'x"y\\z\nw'
    rep = report(target("a.example.test", [shared]), target(weird, [shared]),
                 target("a.example.test", [shared]))
    s = samples(prometheus.render(rep))
    assert sorted(x.labels["target"] for x in s["exprobe_check_success"]) == sorted(
        ["a.example.test", weird])  # no duplicate series


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path is not None, "promtool missing: Debian package prometheus (.ci/lab-packages.sh)"
    return path


def lint(promtool: str, text: str) -> None:
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=30, check=False)
    problems = out.stdout + out.stderr
    assert out.returncode == 0, problems
    assert not problems.strip()


def test_promtool_accepts_the_output(promtool: str) -> None:
    lint(promtool, prometheus.render(sample_rep()))
    lint(promtool, prometheus.render_bytes(sample_rep(), probe=True).decode())


def test_promtool_catches_a_bad_exposition(promtool: str) -> None:
    # The lint must be able to fail: a counter without _total is a problem it reports.
    out = subprocess.run(
        [promtool, "check", "metrics"],
        input="# HELP x_requests r\n# TYPE x_requests counter\nx_requests 1\n",
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert out.returncode != 0
    assert "counter metrics should have" in out.stdout + out.stderr


def test_cli_textfile_output(promtool: str, tmp_path: Path) -> None:
    closed = closed_port()
    prom = tmp_path / "exprobe.prom"
    with LoopbackServer() as srv:
        out = exprobe("run", "127.0.0.1", "--port", str(srv.port), "--port", str(closed),
                      "--format", "prometheus", "-o", str(prom))
    assert out.returncode == 1
    assert out.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["exprobe.prom"]  # no temp file left
    text = prom.read_text()
    lint(promtool, text)
    s = samples(text)
    assert {x.labels["port"]: x.value for x in s["exprobe_check_success"]} == {
        str(srv.port): 1.0, str(closed): 0.0}
    refused = [x for x in s["exprobe_check_status"]
               if x.labels["port"] == str(closed) and x.value == 1.0]
    assert [x.labels["status"] for x in refused] == ["connection-refused"]
