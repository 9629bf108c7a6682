"""Reports written through a pipe that a slow reader drains arrive whole.

With PYTHONUNBUFFERED=1 (common in containers) sys.stdout writes straight to the file
descriptor; a 200 kB report through a pipe used to come out cut at 64 kB (uvloop run,
reader not yet reading).  Each case here failed that way before `write_stdout`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT

PORTS = [a for p in range(1, 400) for a in ("--port", str(p))]


def slow_read(args: list[str]) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "exprobe", *args], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    with proc.stdout:
        time.sleep(1.5)  # the writer fills the pipe and must wait, not give up
        out = proc.stdout.read().decode()
    return proc.wait(30), out


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_json_report_whole_through_a_slow_pipe(loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPROBE_LOOP", loop)
    code, out = slow_read(["run", "127.0.0.1", *PORTS, "--timeout", "2", "--format", "json"])
    assert code == 1  # nothing listens on most of these ports
    assert len(out) > 150_000
    rep = json.loads(out)
    assert len(rep["targets"][0]["results"]) == 399


def test_jsonl_whole_through_a_slow_pipe() -> None:
    code, out = slow_read(["run", "127.0.0.1", *PORTS, "--timeout", "2", "--format", "jsonl"])
    assert code == 1  # streamed results are not kept, but their failures still count
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == 399
    assert {x["type"] for x in lines} == {"check"}
