"""`exprobe demo` end to end, as a user runs it: a subprocess, then a fresh virtualenv.

The demo must exit 0 (it went as designed), name the failing scenario and its reason in
the table, print JSON that validates against docs/report.schema.json, and leave nothing
behind: no process of its session, no listening port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, readme_commands, validate_report

JSON_MARK = "JSON report (exprobe run ... --format json):"


def run_demo(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the demo in its own session; return the result and its process-group id."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exprobe", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid` (the demo's session leader's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


def parse_both(stdout: str) -> tuple[str, dict[str, Any]]:
    table, mark, rest = stdout.partition(JSON_MARK)
    assert mark, stdout
    return table, json.loads(rest)


def check_report(report: dict[str, Any]) -> dict[str, Any]:
    validate_report(report)
    (target,) = report["targets"]
    verdicts = {v["id"]: v for v in target["scenarios"]}
    failed = [v for v in verdicts.values() if v["verdict"] == "fail"]
    assert [v["id"] for v in failed] == ["mapi-client"], failed
    demo = report["demo"]
    is_port = demo["withheld_ports"][0]
    assert demo["as_designed"] is True
    assert is_port == 1601 + demo["port_offset"]
    reason = failed[0]["reason"]
    assert f"IS registered on 127.0.0.1:{is_port}" in reason
    assert f"{is_port} refused (connection-refused)" in reason
    assert report["summary"]["scenarios"] == {"pass": 10, "fail": 1}
    # every other check succeeded, the derived IS bind was refused at connect
    bad = [r for r in target["results"] if r["status"] != "success"]
    assert [(r["port"], r["status"], r["failed_step"]) for r in bad] == [
        (is_port, "connection-refused", "connect")
    ]
    return demo


def test_demo_end_to_end() -> None:
    t0 = time.monotonic()
    proc, pgid = run_demo()
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table, report = parse_both(proc.stdout)
    demo = check_report(report)
    lines = table.splitlines()
    assert lines[0].startswith("exprobe demo: listeners for profile exchange55 on 127.0.0.1")
    assert "deliberately not listening" in lines[0] + lines[1]
    row = next(x for x in lines if "MAPI client" in x and "FAIL" in x)
    assert re.search(r"MAPI client fails: \d+ open, IS registered on 127\.0\.0\.1:\d+", row), row
    assert sum(" PASS " in x for x in lines) == 10
    # Nothing left behind: no process of its group, nothing listening on its ports.
    assert group_members(pgid) == []
    offset = demo["port_offset"]
    for base in (25, 135, 143, 389, 102, 1600, 1601, 1602):
        assert refused(base + offset), base + offset
    assert elapsed < 30  # "finishes in seconds": generous for a loaded CI machine


def test_demo_json_only_is_pure_json() -> None:
    proc, _ = run_demo("--format", "json")
    assert proc.returncode == 0, proc.stderr
    check_report(json.loads(proc.stdout))  # nothing but the report on stdout
    assert proc.stderr.startswith("exprobe demo: listeners for profile exchange55")


def test_demo_table_only() -> None:
    proc, _ = run_demo("--format", "table")
    assert proc.returncode == 0, proc.stderr
    assert JSON_MARK not in proc.stdout
    assert "{" not in proc.stdout
    assert "MAPI client" in proc.stdout


def test_demo_bad_format() -> None:
    proc, _ = run_demo("--format", "xml")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "exprobe: error: --format 'xml': expected table, json or both"


def test_demo_moves_on_when_ports_are_taken() -> None:
    """A port of the first offset in use (by anyone): the demo picks the next range."""
    from exprobe.commands.demo import OFFSETS

    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            squatter.bind(("127.0.0.1", 25 + OFFSETS[0]))
        except OSError:
            pytest.skip(f"port {25 + OFFSETS[0]} is busy already")
        squatter.listen(1)
        proc, _ = run_demo("--format", "json")
    assert proc.returncode == 0, proc.stderr
    demo = check_report(json.loads(proc.stdout))
    assert demo["port_offset"] != OFFSETS[0]


def test_readme_demo_command_verbatim(tmp_path: Path) -> None:
    """README's demo command, verbatim (read from README.md), in a copy of the source with
    no virtualenv: it makes `.venv`, installs exprobe with its dependencies and the shipped
    profiles there, and runs the demo from it."""
    command = readme_commands()[0]
    assert command == "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/exprobe demo"
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("exprobe", "profiles"):
        shutil.copytree(
            ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    # `python3` as a user's shell finds it, but not this test's own venv (if any).
    path = [d for d in env.get("PATH", "").split(os.pathsep) if not d.startswith(sys.prefix)]
    env.update(PATH=os.pathsep.join(path), NO_COLOR="1", COLUMNS="200",
               PIP_DISABLE_PIP_VERSION_CHECK="1")  # fmt: skip
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout[proc.stdout.index("exprobe demo: listeners") :]
    _table, report = parse_both(out)
    check_report(report)
    venv = src / ".venv"
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import exprobe, sys; print(exprobe.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, check=True, env=env,
    )  # fmt: skip
    assert installed.stdout.startswith(str(venv)), installed.stdout  # not this checkout
