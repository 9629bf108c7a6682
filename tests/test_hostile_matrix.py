"""Every probe against every protocol-agnostic hostile behaviour, all in ONE run.

What must hold (issue: robustness): each check ends by its deadline (+100 ms at most)
with the exact status, the healthy check in the same run is unaffected, exprobe's peak
memory stays bounded, and nothing crashes.  The figures this test measures are the
ones published in docs/reliability.md (run with `-s` to see them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exprobe.probes import load_all
from tests.evil.server import BEHAVIOURS, EvilServer
from tests.helpers import ROOT, LoopbackServer, validate_report

TIMEOUT = 2.0
SERVER_FIRST = ("banner", "smtp", "pop3", "imap", "nntp")
CLIENT_FIRST = ("ldap", "rfc1006", "msrpc-epm", "http", "exchange-http", "tls", "kerberos",
                "smb", "lb-healthcheck")
GREETING_STEP = {"banner": "banner", "smtp": "greeting", "pop3": "greeting",
                 "imap": "greeting", "nntp": "greeting"}

# (probe kind, behaviour) -> status.  Server-first probes wait for a greeting;
# client-first probes speak first and then wait for a framed reply.
EXPECTED: dict[str, dict[str, str]] = {
    "server-first": {
        "silent": "io-timeout",
        "drip": "io-timeout",
        "flood": "protocol-error",
        "garbage": "protocol-error",
        "close": "connection-closed",
        "reset": "connection-closed",
        "reset-after-first": "connection-closed",
    },
    "client-first": {
        "silent": "io-timeout",
        "flood": "protocol-error",
        "garbage": "protocol-error",
        "close": "connection-closed",
        "reset": "connection-closed",
        "reset-after-first": "connection-closed",
    },
}
# A drip of "2222..." is rejected as soon as the first framing bytes are wrong, except
# where the header is longer than the deadline lets the drip deliver (DCE/RPC: 16 bytes).
# HTTP: the first byte of a drip is already not "HTTP/".
DRIP = {"ldap": "protocol-error", "rfc1006": "protocol-error", "msrpc-epm": "io-timeout",
        "http": "protocol-error", "exchange-http": "protocol-error", "tls": "tls-error",
        "kerberos": "protocol-error", "smb": "protocol-error", "lb-healthcheck": "protocol-error"}
# The `tls` probe's handshake is OpenSSL's: a flood that is not TLS fails it (tls-error).
# The garbage peer speaks first, at once: if its bytes are in before the handshake starts
# they are refused as plaintext (tls-error); if they land in the instant between the
# socket's hand-over to the event loop and the TLS layer, the handshake waits for a
# ServerHello that never comes (io-timeout).  Either way bounded; which one is a race.
TLS_EXPECTED = {"silent": "io-timeout", "flood": "tls-error", "garbage": "tls-error|io-timeout",
                "close": "connection-closed", "reset": "connection-closed",
                "reset-after-first": "connection-closed"}


def watch_peak_rss(proc: subprocess.Popen[bytes]) -> int:
    """exprobe's own peak RSS in KiB: VmHWM from /proc, read until the process ends.

    Not wait4's ru_maxrss: that counts the forked child before exec, i.e. the test
    runner's own memory.  VmHWM starts afresh at exec and only grows.
    """
    peak = 0
    status = Path(f"/proc/{proc.pid}/status")
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    proc.wait(10)
    return peak


def expected_status(probe: str, behaviour: str) -> str:
    if probe in SERVER_FIRST:
        if probe == "banner" and behaviour == "garbage":
            return "success"  # any first line is a banner; it is shown escaped
        return EXPECTED["server-first"][behaviour]
    if probe == "tls" and behaviour != "drip":
        return TLS_EXPECTED[behaviour]
    if behaviour == "drip":
        return DRIP[probe]
    return EXPECTED["client-first"][behaviour]


@pytest.mark.parametrize("loop", ["auto", "asyncio"])  # uvloop when installed, and the stdlib loop
def test_hostile_matrix_in_one_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, loop: str
) -> None:
    registry = load_all()
    probes = [p for p in (*SERVER_FIRST, *CLIENT_FIRST) if p in registry]
    missing = sorted(set(SERVER_FIRST + CLIENT_FIRST) - set(probes))
    assert not missing, f"probes not registered: {missing}"
    with EvilServer() as evil, LoopbackServer() as healthy:
        checks = [f"--check=tcp:{healthy.port}"]
        checks += [f"--check={probe}:{port}" for probe in probes for port in evil.ports.values()]
        out, err = tmp_path / "out.json", tmp_path / "err.txt"
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen(
                [sys.executable, "-m", "exprobe", "run", "127.0.0.1", *checks, "--format",
                 "json", "--timeout", str(TIMEOUT), "--per-host", "128", "--concurrency", "256"],
                cwd=ROOT, stdout=fo, stderr=fe, env={**os.environ, "NO_COLOR": "1", "EXPROBE_LOOP": loop},
            )
            peak_kb = watch_peak_rss(proc)
        assert proc.returncode == 1, err.read_text()
    report = validate_report(json.loads(out.read_text()))
    results = {(r["probe"], r["port"]): r for t in report["targets"] for r in t["results"]}
    port_to_behaviour = {port: name for name, port in evil.ports.items()}

    assert results[("tcp", healthy.port)]["status"] == "success"
    wrong: list[str] = []
    worst_overrun = 0.0
    for (probe, port), r in results.items():
        if probe == "tcp":
            continue
        behaviour = port_to_behaviour[port]
        want = expected_status(probe, behaviour)
        if r["status"] not in want.split("|"):
            wrong.append(f"{probe}/{behaviour}: {r['status']} at {r['failed_step']} "
                         f"({r['message']}), expected {want}")
        worst_overrun = max(worst_overrun, r["elapsed_ms"] - TIMEOUT * 1000)
        if behaviour == "silent" and probe in GREETING_STEP:
            assert r["failed_step"] == GREETING_STEP[probe], (probe, r["failed_step"])
    assert not wrong, "\n".join(wrong)
    assert len(results) == 1 + len(probes) * len(BEHAVIOURS)
    assert worst_overrun < 100, f"a check ran {worst_overrun:.0f} ms past its deadline"
    peak_mb = peak_kb / 1024
    assert peak_mb < 150, f"peak RSS {peak_mb:.0f} MB"
    with capsys.disabled():
        print(f"\nhostile matrix ({loop} loop): {len(probes)} probes x {len(BEHAVIOURS)} behaviours = "
              f"{len(probes) * len(BEHAVIOURS)} checks, all as expected; "
              f"worst overrun past the deadline {max(worst_overrun, 0):.1f} ms; "
              f"peak RSS {peak_mb:.1f} MB")
