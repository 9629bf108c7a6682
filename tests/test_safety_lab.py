"""The prober's own manners, counted at a server in the lab, and a link lost mid-run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tests.helpers import ROOT, validate_report
from tests.lab.lab import CLI_IF, CLI_NS, SRV_ADDR, SRV_ADDR6, Lab

pytestmark = pytest.mark.lab
PORTS = range(8001, 8021)


def start_counter(lab: Lab, hold: float) -> subprocess.Popen[str]:
    proc = lab.spawn_srv(
        [sys.executable, "-m", "tests.peers.counting", "--bind", SRV_ADDR,
         "--ports", f"{PORTS[0]}-{PORTS[-1]}", "--hold", str(hold), "--lifetime", "60"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def counter_stats(proc: subprocess.Popen[str]) -> dict[str, object]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run(lab: Lab, *args: str) -> dict[str, object]:
    checks = [f"--check=banner:{p}" for p in PORTS]
    out = lab.run_cli([sys.executable, "-m", "exprobe", "run", SRV_ADDR, *checks, *args,
                       "--format", "json"], timeout=120)
    assert out.stdout, out.stderr
    return validate_report(json.loads(out.stdout))


def test_per_host_limit_holds_at_the_server(lab: Lab) -> None:
    proc = start_counter(lab, hold=0.3)
    report = run(lab, "--per-host", "3", "--concurrency", "64")
    stats = counter_stats(proc)
    assert report["summary"]["by_status"] == {"success": 20}  # type: ignore[index]
    assert stats["accepted"] == 20
    assert stats["peak"] == 3  # the limit is reached, never passed


def test_rate_limit_holds_at_the_server(lab: Lab) -> None:
    proc = start_counter(lab, hold=0.05)
    run(lab, "--rate", "10", "--per-host", "64")
    stats = counter_stats(proc)
    starts = stats["starts"]
    assert isinstance(starts, list)
    assert len(starts) == 20
    # In any one-second window, at most rate (+1 for the window's edge) connections start.
    worst = max(sum(1 for s in starts if t <= s < t + 1.0) for t in starts)
    assert worst <= 11, worst


def test_a_link_that_goes_down_mid_run(lab: Lab, fw: Callable[..., None]) -> None:
    """In-flight checks end by their deadline; new ones fail fast; the run completes."""
    proc = start_counter(lab, hold=3.0)
    checks = [f"--check=banner:{p}" for p in PORTS]
    run_proc = lab.spawn_cli(
        [sys.executable, "-m", "exprobe", "run", SRV_ADDR, *checks, "--per-host", "4",
         "--timeout", "2", "--connect-timeout", "1", "--format", "json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # Linux flushes a link's IPv6 addresses when it goes down; keep them, so the lab is
    # whole again for the tests that follow once the link is back up.
    lab.run_cli(["sysctl", "-qw", f"net.ipv6.conf.{CLI_IF}.keep_addr_on_down=1"], timeout=10)
    try:
        time.sleep(0.8)
        lab.run_cli(["ip", "link", "set", CLI_IF, "down"], timeout=10)
        out, err = run_proc.communicate(timeout=90)
    finally:
        subprocess.run(["ip", "-n", CLI_NS, "link", "set", CLI_IF, "up"], check=False)
        counter_stats(proc)
    assert run_proc.returncode == 1, err
    report = validate_report(json.loads(out))
    results = [r for t in report["targets"] for r in t["results"]]  # type: ignore[index]
    assert len(results) == 20
    statuses = {r["status"] for r in results}
    assert statuses <= {"io-timeout", "unreachable", "connection-timeout"}, statuses
    assert "io-timeout" in statuses  # the ones in flight when the link went down
    assert "unreachable" in statuses or "connection-timeout" in statuses
    assert max(r["elapsed_ms"] for r in results) < 2100
    # The link is back: the lab answers again.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if lab.run_cli([sys.executable, "-m", "exprobe", "run", SRV_ADDR, "--port", "25",
                        "--connect-timeout", "1"], timeout=30).returncode == 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the lab link did not come back")
    v6 = lab.run_cli([sys.executable, "-m", "exprobe", "run", f"[{SRV_ADDR6}]:25",
                      "--connect-timeout", "2"], timeout=30)
    assert v6.returncode == 0, v6.stdout + v6.stderr
