"""A firewall change window in the lab: run, change the rules, run again, diff; expectations;
watch seeing the change as it is applied.  Real servers, real nftables rules."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.helpers import ROOT, validate_report
from tests.lab.lab import CLI_NS, SRV_ADDR, Lab, ns_argv

pytestmark = pytest.mark.lab

FAST = ("--connect-timeout", "1", "--timeout", "5")
SCENARIOS = ("--scenario", "pop3-retrieve", "--scenario", "pop3-send", "--scenario", "nntp-news")


def run(lab: Lab, *args: str) -> Any:
    return lab.run_exprobe(*args, timeout=120)


def run_json(lab: Lab, path: Path, *args: str) -> dict[str, Any]:
    out = run(lab, "run", SRV_ADDR, *args, *FAST, "--format", "json", "-o", str(path))
    assert out.stdout == "", out.stdout
    assert path.exists(), out.stderr
    return validate_report(json.loads(path.read_text()))


def diff_json(lab: Lab, before: Path, after: Path) -> tuple[int, dict[str, Any]]:
    out = run(lab, "diff", str(before), str(after), "--format", "json")
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def changed(d: dict[str, Any]) -> set[tuple[str, str, str, str | None, str | None]]:
    return {(c["direction"], c["what"], c["item"], c["before"], c["after"]) for c in d["changes"]}


def test_diff_names_exactly_the_flipped_scenarios_and_checks(
    lab: Lab, fw: Callable[..., None], tmp_path: Path
) -> None:
    before = run_json(lab, tmp_path / "before.json", "-p", "exchange55", *SCENARIOS)
    verdicts = {v["id"]: v["verdict"] for v in before["targets"][0]["scenarios"]}
    assert verdicts == {"pop3-retrieve": "pass", "pop3-send": "pass", "nntp-news": "pass"}

    fw(drop=[110], reset=[995])  # the change: POP3 closed both ways
    after = run_json(lab, tmp_path / "after.json", "-p", "exchange55", *SCENARIOS)
    assert {v["id"]: v["verdict"] for v in after["targets"][0]["scenarios"]}["pop3-retrieve"] == (
        "fail")

    code, d = diff_json(lab, tmp_path / "before.json", tmp_path / "after.json")
    assert code == 1
    assert changed(d) == {
        ("regression", "scenario", "pop3-retrieve", "pass", "fail"),
        ("worse", "check", "pop3 (110)", "success/open", "connection-timeout/filtered"),
        ("worse", "check", "pop3s (995)", "success/open", "connection-refused/closed"),
    }
    assert d["changes"][0]["what"] == "scenario"  # regressions first
    assert d["summary"] == {"changes": 3, "regressions": 1, "fixes": 0, "other": 2}

    # The way back is a fix, and not a regression.
    code, d = diff_json(lab, tmp_path / "after.json", tmp_path / "before.json")
    assert code == 0
    assert ("fix", "scenario", "pop3-retrieve", "fail", "pass") in changed(d)

    # Inline: `run --baseline` shows the same diff (on stderr for machine formats).
    out = run(lab, "run", SRV_ADDR, "-p", "exchange55", *SCENARIOS, *FAST, "--format", "json",
              "--baseline", str(tmp_path / "before.json"))
    assert out.returncode == 1
    assert "REGRESSION" in out.stderr
    assert "pop3-retrieve" in out.stderr
    assert json.loads(out.stdout)["targets"][0]["target"] == SRV_ADDR


def test_diff_adhoc_checks(lab: Lab, fw: Callable[..., None], tmp_path: Path) -> None:
    ports = ("--port", "25", "--port", "119", "--port", "389", "--port", "143")
    fw(drop=[143])
    run_json(lab, tmp_path / "b.json", *ports)
    fw(reset=[119], icmp=[389])  # 143 opened, 119 and 389 closed
    run_json(lab, tmp_path / "a.json", *ports)
    code, d = diff_json(lab, tmp_path / "b.json", tmp_path / "a.json")
    assert code == 1
    assert changed(d) == {
        ("regression", "check", "tcp:119", "success/open", "connection-refused/closed"),
        ("regression", "check", "tcp:389", "success/open", "unreachable/filtered"),
        ("fix", "check", "tcp:143", "connection-timeout/filtered", "success/open"),
    }
    md = run(lab, "diff", str(tmp_path / "b.json"), str(tmp_path / "a.json"), "-f", "markdown")
    assert md.returncode == 1
    assert "| **REGRESSION** | check | 10.250.0.2 | 10.250.0.2 | tcp:119 |" in md.stdout


def policy(tmp_path: Path, body: str, name: str = "policy.toml") -> str:
    path = tmp_path / name
    path.write_text("schema_version = 1\n" + textwrap.dedent(body))
    return str(path)


def test_must_be_closed_port_that_is_open_exit_1_with_evidence(
    lab: Lab, fw: Callable[..., None], tmp_path: Path
) -> None:
    fw(drop=[119])
    path = policy(tmp_path, f"""
        [[expect]]
        name = "no-smtp-from-here"
        target = "{SRV_ADDR}"
        closed = [25]
        filtered = [119]
    """)
    out = run(lab, "run", SRV_ADDR, "--expect", path, *FAST, "--format", "json")
    assert out.returncode == 1, out.stderr
    rep = validate_report(json.loads(out.stdout))
    by_port = {e["port"]: e for e in rep["expectations"]}
    smtp, nntp = by_port[25], by_port[119]
    assert (smtp["met"], smtp["observed"]) == (False, "open")
    assert smtp["evidence"] == f"{SRV_ADDR}:25 open: tcp:25 success/open"
    assert (nntp["met"], nntp["observed"]) == (True, "filtered")
    assert nntp["evidence"].startswith(f"{SRV_ADDR}:119 filtered: tcp:119 connection-timeout")

    # The same in a human table and in the Nagios format.
    table = run(lab, "run", SRV_ADDR, "--expect", path, *FAST)
    assert table.returncode == 1
    assert "VIOLATED" in table.stdout
    assert "expectations: 1 met, 1 violated" in table.stdout
    nagios = run(lab, "run", SRV_ADDR, "--expect", path, *FAST, "--format", "nagios")
    assert nagios.returncode == 2
    assert nagios.stdout.startswith("EXPROBE CRITICAL - 1 of 2 expectations violated: "
                                    "no-smtp-from-here at 10.250.0.2: expected 25 closed")


def test_scenario_that_must_fail_fails_so_the_run_passes(
    lab: Lab, fw: Callable[..., None], tmp_path: Path
) -> None:
    fw(drop=[110, 995])
    path = policy(tmp_path, f"""
        [[expect]]
        name = "no-pop3-from-dmz"
        why = "POP3 is not offered to this subnet"
        target = "{SRV_ADDR}"
        fail = ["pop3-retrieve"]
        pass = ["pop3-send"]
        not_open = [110, 995]
    """)
    out = run(lab, "run", SRV_ADDR, "-p", "exchange55", *SCENARIOS, "--expect", path, *FAST,
              "--format", "json")
    assert out.returncode == 0, out.stdout + out.stderr  # pop3-retrieve fails, by design
    rep = validate_report(json.loads(out.stdout))
    assert all(e["met"] for e in rep["expectations"])
    kinds = sorted((e["kind"], str(e.get("scenario", e.get("port")))) for e in rep["expectations"])
    assert kinds == [("fail", "pop3-retrieve"), ("not_open", "110"), ("not_open", "995"),
                     ("pass", "pop3-send")]
    # The port evidence came from the profile's own checks: no extra TCP check was added.
    assert sorted(r["id"] for r in rep["targets"][0]["results"]) == [
        "nntp", "nntps", "pop3", "pop3s", "smtp"]

    junit = run(lab, "run", SRV_ADDR, "-p", "exchange55", *SCENARIOS, "--expect", path, *FAST,
                "--format", "junit")
    assert junit.returncode == 0
    assert 'failures="0"' in junit.stdout.split("\n")[1]


def test_watch_shows_the_firewall_change(lab: Lab, fw: Callable[..., None]) -> None:
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}
    env.pop("NO_COLOR", None)
    argv = ns_argv(CLI_NS, [sys.executable, "-m", "exprobe", "watch", SRV_ADDR, "-p",
                            "exchange55", "--scenario", "nntp-news", "--interval", "1",
                            *FAST, "--no-color"])
    child = pexpect.spawn(argv[0], argv[1:], cwd=str(ROOT), env=env, dimensions=(40, 200),
                          encoding="utf-8", timeout=30)
    try:
        child.expect("NNTP")
        child.expect("PASS")
        fw(reset=[119, 563])
        child.expect(r"pass → fail at \d\d:\d\d:\d\d\s+◀ changed")
        fw()
        child.expect(r"fail → pass at \d\d:\d\d:\d\d\s+◀ changed")
        child.sendintr()
        child.expect(r"stopped \(Ctrl-C\): \d+ runs, 2 changes")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
