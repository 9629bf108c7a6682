"""A report larger than a pipe's buffer reaches a reader that starts late, whole.

After uvloop's loop has run, a write into a full pipe returns short once and Python's
stdout dropped the rest silently: `exprobe run … --format json | slow-reader` got the
first 64 KiB of the report (found with the modern Exchange lab's larger reports).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_json_report_larger_than_a_pipe_survives_a_slow_reader() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "exprobe", "run", "127.0.1.0/24", "--port", "9",
         "--format", "json", "--connect-timeout", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    time.sleep(2)  # the 64 KiB pipe fills before anyone reads
    out, err = proc.communicate(timeout=60)
    assert len(out) > 2 * 65536, err[-500:]
    report = json.loads(out)
    assert len([r for t in report["targets"] for r in t["results"]]) == 254  # a /24 without its network and broadcast addresses
