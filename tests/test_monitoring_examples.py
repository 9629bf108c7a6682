"""The sample configurations in docs/examples are valid: promtool and systemd-analyze say so."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

EXAMPLES = ROOT / "docs" / "examples"


def tool(name: str) -> str:
    path = shutil.which(name)
    # Both come from .ci/lab-packages.sh (prometheus, systemd): missing is a failure.
    assert path is not None, f"{name} not installed (.ci/lab-packages.sh)"
    return path


def run(*argv: str, cwd: Path = EXAMPLES) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False)


def test_prometheus_config_and_rules() -> None:
    promtool = tool("promtool")
    out = run(promtool, "check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 1 rule files found" in out.stdout
    out = run(promtool, "check", "rules", "exprobe-rules.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 6 rules found" in out.stdout
    out = run(promtool, "test", "rules", "exprobe-rules.test.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_rule_tests_can_fail(tmp_path: Path) -> None:
    promtool = tool("promtool")
    for name in ("exprobe-rules.yml", "exprobe-rules.test.yml"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    rules = tmp_path / "exprobe-rules.yml"
    rules.write_text(rules.read_text().replace("exprobe_scenario_pass == 0",
                                               "exprobe_scenario_pass == 1"))
    out = run(promtool, "test", "rules", "exprobe-rules.test.yml", cwd=tmp_path)
    assert out.returncode != 0
    assert "FAILED" in out.stdout + out.stderr


def test_systemd_units(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    # The exprobe of the interpreter running the tests (.venv's in CI), not whichever
    # `exprobe` PATH finds first.
    script = Path(sys.executable).parent / "exprobe"
    exe = str(script) if script.is_file() else f"{sys.executable} -m exprobe"
    names = ("exprobe-check.service", "exprobe-check.timer", "exprobe-serve.service")
    for name in names:
        text = (EXAMPLES / name).read_text().replace("/usr/local/bin/exprobe", exe)
        (tmp_path / name).write_text(text)
    out = run(analyze, "verify", *(str(tmp_path / n) for n in names), cwd=tmp_path)
    problems = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode == 0, problems
    assert problems == []
