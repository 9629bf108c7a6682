"""Faults during a run: a low open-file limit, some targets failing DNS, bad input files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import ROOT, LoopbackServer, exprobe, validate_report


def test_low_open_file_limit_caps_concurrency_and_every_check_completes() -> None:
    # Bound to the wildcard so that every 127.x.y.z reaches it; only loopback connects.
    with LoopbackServer(host="0.0.0.0") as srv:
        targets = [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(600)]
        out = subprocess.run(
            ["prlimit", "--nofile=100:100", sys.executable, "-m", "exprobe", "run", *targets,
             "--port", str(srv.port), "--format", "json", "--per-host", "1"],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
            env={**os.environ, "NO_COLOR": "1"}, check=False,
        )
    assert out.returncode == 0, (out.stderr[-2000:], out.stdout[-3000:])
    report = validate_report(json.loads(out.stdout))
    assert report["summary"]["by_status"] == {"success": 600}


def test_some_targets_fail_and_the_run_continues(tmp_path: Path) -> None:
    f = tmp_path / "targets.txt"
    with LoopbackServer() as srv:
        f.write_text(f"127.0.0.1:{srv.port}\nlocalhost:{srv.port}\n127.0.0.2:1\n")
        out = exprobe("run", "-T", str(f), "-4", "--format", "json")
    report = validate_report(json.loads(out.stdout))
    statuses = [(t["target"], [r["status"] for r in t["results"]]) for t in report["targets"]]
    assert statuses == [
        (f"127.0.0.1:{srv.port}", ["success"]),
        (f"localhost:{srv.port}", ["success"]),
        ("127.0.0.2:1", ["connection-refused"]),
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_arbitrary_target_files_give_a_result_or_one_clean_line(tmp_path: Path, data: bytes) -> None:
    """Any file content: targets parsed, or exit 2 with one line naming the file."""
    from exprobe.errors import InputError
    from exprobe.targets import parse_file

    f = tmp_path / "fuzz.txt"
    f.write_bytes(data)
    try:
        targets = parse_file(str(f))
    except InputError as exc:
        text = str(exc)
        assert str(f) in text
        assert "\n" not in text
    else:
        assert targets
