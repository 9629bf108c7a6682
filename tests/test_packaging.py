"""Packaging and set-up: what `python -m build` makes is what the commands need, and the
README's commands are the ones CI and the clean-room check run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from exprobe import __version__
from tests.helpers import ROOT, readme_commands

PROFILES = sorted(p.name for p in (ROOT / "profiles").glob("*.toml"))


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}  # fmt: skip
    env.update(NO_COLOR="1", COLUMNS="200", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel and an sdist of this checkout, built as `python -m build` builds them."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600, check=False, env=_clean_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_readme_commands_are_the_ones_ci_runs() -> None:
    demo, tests = readme_commands()
    assert demo == "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/exprobe demo"
    assert tests == "bash .ci/run"
    # Root machines without sudo (containers, minimal servers) must be able to run it.
    assert not re.search(r"^[^#]*\bsudo\b", (ROOT / ".ci" / "run").read_text(), re.M)
    # The test command README gives for a re-run is the last thing .ci/run does.
    readme = (ROOT / "README.md").read_text()
    rerun = ".venv/bin/python -m pytest -q -p no:cacheprovider"
    assert f"\n{rerun}   # everything" in readme
    steps = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.startswith(("#", "echo"))]  # fmt: skip
    assert steps[-1] == rerun


def test_wheel_and_sdist_carry_the_profiles(dist: Path) -> None:
    wheel = next(dist.glob("exprobe-*.whl"))
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
    assert sorted(n.rsplit("/", 1)[1] for n in names
                  if n.startswith("exprobe/profiles/") and n.endswith(".toml")) == PROFILES  # fmt: skip
    assert "exprobe/py.typed" in names
    # Data files under exprobe/ (exprobe/data/**) ship too, by pyproject's glob.
    shipped = [p.relative_to(ROOT).as_posix() for p in (ROOT / "exprobe").rglob("*")
               if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]  # fmt: skip
    for name in shipped:
        assert name in names, name
    assert "exprobe/data/exchange_builds.toml" in names  # the exchange-http build table
    sdist = next(dist.glob("exprobe-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
    top = f"exprobe-{__version__}"
    docs = [p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*") if p.is_file()]
    assert "docs/report.schema.json" in docs
    for name in ["pyproject.toml", "README.md", *(f"profiles/{p}" for p in PROFILES), *docs]:
        assert f"{top}/{name}" in members, name


def test_built_wheel_runs_in_a_clean_venv(dist: Path, tmp_path: Path) -> None:
    """The wheel, installed with its dependencies into a new venv, runs outside the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheel = next(dist.glob("exprobe-*.whl"))
    env = _clean_env()
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=600, check=False, env=env)  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-3000:]
    exe = str(venv / "bin" / "exprobe")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, cwd=tmp_path,
                             timeout=60, check=False, env=env)  # fmt: skip
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"exprobe {__version__}"
    listed = subprocess.run([exe, "profiles", "list"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60, check=False, env=env)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    shown = sorted(re.findall(r"^(\S+)", listed.stdout, re.M))
    for profile in PROFILES:
        assert profile.removesuffix(".toml") in shown, listed.stdout
    # h11 (declared) and the build table (package data) are there for the http probes.
    code = ("import exprobe.probes.http; from exprobe.wire.exchange import name_build; "
            "print(name_build('15.2.1544.4')['version'])")
    named = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                           text=True, cwd=tmp_path, timeout=60, check=False, env=env)  # fmt: skip
    assert named.stdout.strip() == "Exchange Server 2019 CU14", named.stderr
