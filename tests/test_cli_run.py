"""`exprobe run` end to end on loopback: statuses, reports, exit codes, bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import (
    ROOT,
    LoopbackServer,
    closed_port,
    exprobe,
    results_by_port,
    validate_check_record,
    validate_report,
)


def test_version_and_help() -> None:
    from exprobe import __version__

    out = exprobe("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"exprobe {__version__}"
    out = exprobe("run", "--help")
    assert out.returncode == 0
    for flag in ("--port", "--check", "--format", "--concurrency", "--per-host", "--rate",
                 "--connect-timeout", "--timeout", "--retries", "--source", "-T"):
        assert flag in out.stdout


def test_open_and_refused_json() -> None:
    closed = closed_port()
    with LoopbackServer() as srv:
        out = exprobe("run", "127.0.0.1", "--port", str(srv.port), "--port", str(closed),
                      "--format", "json")
    assert out.returncode == 1, out.stderr
    report = validate_report(json.loads(out.stdout))
    by_port = results_by_port(report)
    ok, refused = by_port[srv.port], by_port[closed]
    assert (ok["status"], ok["port_state"], ok["failed_step"]) == ("success", "open", None)
    assert ok["connect_ms"] is not None
    assert ok["id"] == f"tcp:{srv.port}"
    assert (refused["status"], refused["port_state"]) == ("connection-refused", "closed")
    assert refused["failed_step"] == "connect"
    assert refused["facts"]["errno"] == "ECONNREFUSED"
    assert report["summary"]["by_status"] == {"connection-refused": 1, "success": 1}
    assert report["targets"][0]["addresses"] == ["127.0.0.1"]


def test_all_success_exits_zero_and_table_output() -> None:
    with LoopbackServer() as srv:
        out = exprobe("run", "127.0.0.1", "--port", str(srv.port))
    assert out.returncode == 0
    assert "success" in out.stdout
    assert "open" in out.stdout
    assert "\x1b" not in out.stdout


def test_duplicate_addresses_are_probed_once() -> None:
    with LoopbackServer() as srv:
        out = exprobe("run", "127.0.0.1", "127.0.0.1", "127.0.0.1/32", "-4", "localhost",
                      "--port", str(srv.port), "--format", "json")
        accepted = srv.accepted
    report = validate_report(json.loads(out.stdout))
    assert accepted == 1
    assert report["summary"]["checks"] == 1
    assert [len(t["results"]) for t in report["targets"]] == [1, 1, 1, 1]


def test_ipv6_literal_with_port() -> None:
    with LoopbackServer(host="::1") as srv:
        out = exprobe("run", f"[::1]:{srv.port}", "--format", "json")
    report = validate_report(json.loads(out.stdout))
    r = report["targets"][0]["results"][0]
    assert (r["address"], r["port"], r["status"]) == ("::1", srv.port, "success")


def test_jsonl_streams_each_result(tmp_path: Path) -> None:
    closed = closed_port()
    with LoopbackServer() as srv:
        out = exprobe("run", "127.0.0.1", "--port", str(srv.port), "--port", str(closed),
                      "--format", "jsonl")
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(lines) == 2
    for rec in lines:
        assert rec["type"] == "check"
        validate_check_record(rec)
    assert sorted(r["status"] for r in lines) == ["connection-refused", "success"]


def test_output_file_is_written(tmp_path: Path) -> None:
    dest = tmp_path / "report.json"
    with LoopbackServer() as srv:
        out = exprobe("run", "127.0.0.1", "--port", str(srv.port), "--format", "json",
                      "-o", str(dest))
    assert out.returncode == 0
    assert out.stdout == ""
    validate_report(json.loads(dest.read_text()))
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["10.0.0.300", "--port", "25"], "exprobe: error: command line: '10.0.0.300' is not a valid IPv4 address"),
        (["127.0.0.1", "--port", "70000"], "exprobe: error: --port 70000: outside 1-65535"),
        (["127.0.0.1", "--check", "smtpx:25"], None),
        (["127.0.0.1", "--check", "tcp:25:implicit"], "exprobe: error: --check 'tcp:25:implicit': probe 'tcp' does not speak TLS"),
        (["127.0.0.1"], "exprobe: error: nothing to check: give --port, --check, -p PROFILE, or host:port targets"),
        (["-T", "/nonexistent/targets.txt", "--port", "25"], "exprobe: error: targets file /nonexistent/targets.txt: cannot read (No such file or directory)"),
        (["10.0.0.0/8", "--port", "25"], "exprobe: error: 16777214 addresses is more than 65536: pass --yes to scan that much"),
        (["127.0.0.1", "--port", "25", "--format", "xml"], "exprobe: error: --format 'xml': expected one of table, json, jsonl, nagios, prometheus, junit"),
        (["127.0.0.1", "--port", "25", "-o", "/nonexistent/dir/r.json"], "exprobe: error: output /nonexistent/dir/r.json: directory /nonexistent/dir does not exist"),
        (["127.0.0.1", "--port", "25", "--source", "192.0.2.77"], "exprobe: error: --source 192.0.2.77: not an address of this machine (Cannot assign requested address)"),
        (["127.0.0.1", "--port", "25", "-4", "-6"], "exprobe: error: -4 and -6 exclude each other"),
        (["127.0.0.1", "--port", "25", "--timeout", "0"], "exprobe: error: --timeout and --connect-timeout must be positive"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_probes_nothing(
    args: list[str], message: str | None, tmp_path: Path
) -> None:
    with LoopbackServer() as srv:
        args = [a.replace("25", str(srv.port)) if a == "25" else a for a in args]
        out = exprobe("run", *args, env={"TMPDIR": str(tmp_path)})
        time.sleep(0.05)
        accepted = srv.accepted
    assert out.returncode == 2
    assert accepted == 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    if message is not None:
        assert lines[0] == message.replace(" 25 ", f" {srv.port} ") if "25" in message else message
    else:
        assert lines[0].startswith("exprobe: error: --check 'smtpx:25': unknown probe 'smtpx'")
    assert out.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_banner_markup_and_escapes_are_shown_literally() -> None:
    evil = b"220 [bold red]pwned[/] [link=http://x]y[/link] \x1b]0;title\x07\x1b[2J\x9b31m end\r\n"

    def handler(conn: socket.socket) -> None:
        conn.sendall(evil)
        time.sleep(0.5)

    with LoopbackServer(handler) as srv:
        out = exprobe("run", "127.0.0.1", "--check", f"banner:{srv.port}", "-v")
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout
    assert "\x07" not in out.stdout
    assert "\x9b" not in out.stdout
    assert "[bold red]pwned[/]" in out.stdout
    assert "[link=http://x]y[/link]" in out.stdout
    assert "\\x1b]0;title\\x07\\x1b[2J" in out.stdout


def _wait_for(path: Path, predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and predicate(path.read_text()):  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never satisfied the condition")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_keeps_finished_results(tmp_path: Path, sig: int, code: int) -> None:
    """A tarpit holds some checks; the signal ends the run, finished results survive."""
    jsonl = tmp_path / "run.jsonl"
    report = tmp_path / "run.json"
    report.write_text("previous content\n")
    with LoopbackServer() as fast, LoopbackServer(lambda c: time.sleep(30)) as tarpit:
        args = ["127.0.0.1", "--port", str(fast.port), "--check", f"banner:{tarpit.port}",
                "--timeout", "30"]
        env = {**os.environ, "NO_COLOR": "1"}
        p1 = subprocess.Popen([sys.executable, "-m", "exprobe", "run", *args, "--format", "jsonl",
                               "-o", str(jsonl)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p2 = subprocess.Popen([sys.executable, "-m", "exprobe", "run", *args, "--format", "json",
                               "-o", str(report)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(jsonl, lambda s: s.count("\n") >= 1)
            deadline = time.monotonic() + 10
            while tarpit.accepted < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            # The JSON run holds its results until the end: the file is still the old one.
            assert report.read_text() == "previous content\n"
            p1.send_signal(sig)
            p2.send_signal(sig)
            rc1, rc2 = p1.wait(10), p2.wait(10)
        finally:
            for p in (p1, p2):
                if p.poll() is None:
                    p.kill()
                    p.wait()
    assert (rc1, rc2) == (code, code)
    records = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert [r["status"] for r in records] == ["success"]
    final = validate_report(json.loads(report.read_text()))
    assert final["interrupted"] is True
    assert [r["status"] for t in final["targets"] for r in t["results"]] == ["success"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "run.jsonl"]
