"""Benchmark plumbing: a private network namespace, the C responder, measured runs,
and the parsers that turn each tool's output into counts to check.

Nothing here knows a scenario; `bench/run.py` does.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
NETNS = "exprobe-bench"
BANNER = "220 exprobe-bench ready"


class BenchError(RuntimeError):
    """The benchmark cannot run (missing tool, no root, a leftover it will not touch)."""


def run_quiet(argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


# -- the namespace -------------------------------------------------------------------------


class Netns:
    """A network namespace of our own with only `lo` in it: every loopback scenario runs
    inside, so no traffic, backlog setting or firewall rule touches the host."""

    def __init__(self, name: str = NETNS) -> None:
        self.name = name
        self.path = Path("/run/netns") / name

    def prefix(self) -> list[str]:
        # nsenter only switches the network namespace and execs: the measured process
        # is the tool itself (its PID, its rusage), with no extra fork.
        return ["nsenter", f"--net={self.path}", "--"]

    def __enter__(self) -> Netns:
        if os.geteuid() != 0:
            raise BenchError("the loopback scenarios need root (a network namespace of their own)")
        for tool in ("ip", "nsenter", "sysctl"):
            if not shutil.which(tool):
                raise BenchError(f"{tool} is not installed")
        if self.path.exists():
            pids = run_quiet(["ip", "netns", "pids", self.name]).stdout.split()
            if pids:
                raise BenchError(
                    f"namespace {self.name} is in use by PIDs {' '.join(pids)}: "
                    "another benchmark running?"
                )
            run_quiet(["ip", "netns", "del", self.name])
        run_quiet(["ip", "netns", "add", self.name])
        try:
            run_quiet([*self.prefix(), "ip", "link", "set", "lo", "up"])
            # The accept backlog must never be why a connection is lost: a naive client
            # at 4,096 in flight sees open ports time out when the SYN queue overflows.
            run_quiet(
                [
                    *self.prefix(),
                    "sysctl", "-q", "-w",
                    "net.core.somaxconn=65535",
                    "net.ipv4.tcp_max_syn_backlog=65535",
                ]
            )  # fmt: skip
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


# -- compiled helpers ----------------------------------------------------------------------


def compile_c(source: Path, out_dir: Path) -> Path:
    """gcc -O2 at bench time; the binary lives in the results directory, never in git."""
    if not shutil.which("gcc"):
        raise BenchError("gcc is not installed (apt-get install -y gcc)")
    binary = out_dir / source.stem
    run_quiet(["gcc", "-O2", "-Wall", "-o", str(binary), str(source)], timeout=60)
    return binary


class Responder:
    """The C responder (bench/responder.c) on some ports, inside a namespace."""

    def __init__(self, binary: Path, ports: Sequence[int], prefix: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            [*prefix, str(binary), BANNER, *map(str, ports)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise BenchError(f"responder did not start ({line!r})")

    def accepted(self) -> int:
        """Connections accepted since the previous call."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("s\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline().split()[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # ours, by PID
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- measured runs -------------------------------------------------------------------------


@dataclass
class Run:
    """One measured execution of one tool."""

    tool: str
    argv: list[str]
    wall: float
    cpu: float  # user + system seconds of the process and the children it waited for
    rss_mb: float  # peak resident set size of the process (kernel's maxrss)
    tree_mb: float  # peak of the summed RSS of the process and its children (sampled)
    pss_mb: float  # peak of their summed PSS: shared pages counted once (sampled)
    returncode: int
    timed_out: bool
    stdout: Path
    stderr: Path
    counts: dict[str, int] = field(default_factory=dict)
    errors: int = 0  # results that disagree with the known truth
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.errors == 0


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in kids:
            out.append(int(k))
            todo.append(int(k))
    return out


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def measure(
    tool: str,
    argv: Sequence[str],
    out_dir: Path,
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    tag: str = "",
) -> Run:
    """Run `argv` to completion (killed after `timeout`): wall time including interpreter
    start-up; CPU and peak RSS from GNU time (which forks the tool from a small process,
    so the tool's maxrss is its own, not this script's); and the peak summed RSS of the
    whole process tree, sampled every 20 ms (exprobe may fork one shard per core)."""
    stem = f"{tool}{('-' + tag) if tag else ''}-{time.monotonic_ns()}"
    out, err, tfile = (out_dir / f"{stem}.{x}" for x in ("out", "err", "time"))
    with out.open("wb") as fo, err.open("wb") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            ["/usr/bin/time", "-f", "%M %U %S", "-o", str(tfile), *argv],
            stdout=fo,
            stderr=fe,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=REPO,
        )
        peak = peak_pss = 0
        deadline = t0 + timeout
        timed_out = False
        rounds = 0
        while True:
            try:
                proc.wait(timeout=0.02)
                break
            except subprocess.TimeoutExpired:
                pass
            pids = _descendants(proc.pid)
            peak = max(peak, sum(_rss(p) for p in pids))
            rounds += 1
            if rounds % 5 == 0:  # smaps_rollup costs more: every 100 ms
                peak_pss = max(peak_pss, sum(_pss(p) for p in pids))
            if time.perf_counter() > deadline:
                timed_out = True
                for p in reversed(pids):  # ours, by PID: the tool, then what it forked
                    with contextlib.suppress(OSError):
                        os.kill(p, signal.SIGKILL)
        wall = time.perf_counter() - t0
    words = tfile.read_text().split() if tfile.exists() else []
    try:
        maxrss_kb, user, system = int(words[-3]), float(words[-2]), float(words[-1])
    except (IndexError, ValueError):
        maxrss_kb, user, system = 0, 0.0, 0.0
    return Run(
        tool=tool,
        argv=list(argv),
        wall=wall,
        cpu=user + system,
        rss_mb=maxrss_kb / 1024,
        tree_mb=max(peak / 2**20, maxrss_kb / 1024),
        pss_mb=peak_pss / 2**20,
        returncode=proc.returncode,
        timed_out=timed_out,
        stdout=out,
        stderr=err,
    )


# -- figures and printing ------------------------------------------------------------------


@dataclass
class Figure:
    """A target from issue 8 and whether this run reached it."""

    name: str
    wanted: str
    got: str
    reached: bool | None  # None: not measured (e.g. the lab is missing)


def say(text: str = "") -> None:
    print(text, flush=True)


def show_run(run: Run, extra: str = "") -> None:
    counts = " ".join(f"{k}={v}" for k, v in sorted(run.counts.items()))
    verdict = "exact" if run.ok else ("TIMED OUT" if run.timed_out else f"{run.errors} WRONG")
    say(
        f"    {run.tool:<8} wall {run.wall:7.3f} s  cpu {run.cpu:6.2f} s  "
        f"rss {run.rss_mb:6.1f} MB (tree {run.tree_mb:.0f}, pss {run.pss_mb:.0f})  "
        f"rc {run.returncode}  [{counts}]  errors: {verdict}"
        + (f"  {extra}" if extra else "")
        + (f"  ({run.note})" if run.note else "")
    )


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pair_ratios(ours: list[Run], theirs: list[Run]) -> list[float]:
    """wall(theirs) / wall(ours) for each pair: > 1 means exprobe was faster."""
    return [t.wall / o.wall for o, t in zip(ours, theirs, strict=True) if o.ok and t.wall > 0]


def summary_row(label: str, runs: list[Run], n: int | None) -> str:
    good = [r for r in runs if r.ok]
    wrong = len(runs) - len(good)
    if not good:
        return f"  {label:<10} no correct run ({wrong} wrong)"
    wall = med([r.wall for r in good])
    rate = f"{n / wall:10,.0f}/s" if n else " " * 12
    return (
        f"  {label:<10} wall {wall:7.3f} s {rate}  cpu {med([r.cpu for r in good]):6.2f} s  "
        f"peak rss {med([r.rss_mb for r in good]):6.1f} MB "
        f"(all processes: pss {med([r.pss_mb for r in good]):.0f} MB)"
        + (f"   ({wrong} of {len(runs)} runs WRONG, left out)" if wrong else "")
    )


def interleaved(
    ctx: Any, tools: list[tuple[str, Callable[[int], Run]]], tag: str
) -> dict[str, list[Run]]:
    """Run each tool `ctx.runs` times, alternating which goes first."""
    got: dict[str, list[Run]] = {name: [] for name, _ in tools}
    for i in range(ctx.runs):
        order = tools if i % 2 == 0 else list(reversed(tools))
        say(f"  run {i + 1}/{ctx.runs} ({tag})")
        for name, fn in order:
            if getattr(ctx, "responder", None) is not None:
                ctx.responder.accepted()  # count from zero for this run
            run = fn(i)
            got[name].append(run)
            show_run(run)
    return got


def record_of(got: dict[str, list[Run]], ratios: list[float]) -> dict[str, object]:
    return {
        "runs": {
            name: [
                {
                    "wall": r.wall,
                    "cpu": r.cpu,
                    "rss_mb": r.rss_mb,
                    "tree_rss_mb": r.tree_mb,
                    "tree_pss_mb": r.pss_mb,
                    "counts": r.counts,
                    "errors": r.errors,
                    "timed_out": r.timed_out,
                    "rc": r.returncode,
                    "note": r.note,
                }
                for r in runs
            ]
            for name, runs in got.items()
        },
        "ratios": ratios,
    }


# -- what each tool found -------------------------------------------------------------------


def exprobe_jsonl(path: Path) -> Iterator[dict[str, object]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if rec.get("type") == "check":
                    yield rec


def exprobe_counts(path: Path, *, banner: str | None = None) -> dict[str, int]:
    """Checks per status; with `banner`, also how many successes carried exactly it."""
    counts: collections.Counter[str] = collections.Counter()
    for rec in exprobe_jsonl(path):
        counts[str(rec["status"])] += 1
        facts = rec.get("facts")
        if banner is not None and isinstance(facts, dict) and facts.get("banner") == banner:
            counts["banner"] += 1
    return dict(counts)


def exprobe_span(path: Path) -> float:
    """Seconds from the first check's start to the last check's end: the engine's time,
    without the interpreter start-up and the final write."""
    import datetime as dt

    first = last = None
    for rec in exprobe_jsonl(path):
        start = dt.datetime.fromisoformat(str(rec["started_at"]).replace("Z", "+00:00"))
        end = start + dt.timedelta(milliseconds=float(rec["elapsed_ms"]))  # type: ignore[arg-type]
        first = start if first is None or start < first else first
        last = end if last is None or end > last else last
    return (last - first).total_seconds() if first and last else float("nan")


_GNMAP_PORT = re.compile(r"(\d+)/([a-z|]+)/tcp/")
_GNMAP_IGNORED = re.compile(r"Ignored State: ([a-z|]+) \((\d+)\)")


def nmap_gnmap_counts(path: Path) -> dict[str, int]:
    """Port states from `-oG` output: open, closed, filtered, ..."""
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("Host:") and "Ports:" in line:
            for _port, state in _GNMAP_PORT.findall(line.split("Ports:", 1)[1]):
                counts[state] += 1
            # A port range lists only the interesting ports: "Ignored State: closed (1988)".
            for state, n in _GNMAP_IGNORED.findall(line):
                counts[state] += int(n)
    return dict(counts)


def nmap_xml(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def nmap_xml_counts(path: Path, *, banner: str | None = None) -> dict[str, int]:
    """Port states from `-oX` output; with `banner`, ports whose banner script saw it."""
    counts: collections.Counter[str] = collections.Counter()
    root = nmap_xml(path)
    for port in root.iter("port"):
        state = port.find("state")
        if state is not None:
            counts[state.get("state", "?")] += 1
        if banner is not None:
            for script in port.iter("script"):
                if script.get("id") == "banner" and (script.get("output") or "").strip() == banner:
                    counts["banner"] += 1
    return dict(counts)


def errors_against(counts: dict[str, int], expected: dict[str, int]) -> int:
    """How many results are not what the path really does (missing or misreported)."""
    return sum(max(0, n - counts.get(k, 0)) for k, n in expected.items())


# -- target files ---------------------------------------------------------------------------


def loopback_addresses(n: int, second: int = 0) -> list[str]:
    """`n` distinct addresses 127.<second+i>.<b>.<c> (c in 1..254): all loopback."""
    out: list[str] = []
    a, b, c = second, 0, 1
    while len(out) < n:
        out.append(f"127.{a}.{b}.{c}")
        c += 1
        if c == 255:
            c, b = 1, b + 1
            if b == 256:
                b, a = 0, a + 1
    return out


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def python() -> str:
    return sys.executable
