"""exprobe's TCP trace against `traceroute -T` and `mtr --tcp`, side by side, in one run.

    python bench/trace_vs_traceroute.py [--runs N]

On the routed hop lab (tests/lab/hoplab.py: client → r1 → r2 → r3 → server, traffic
only inside its namespaces), three paths: an open port (25), a port dropped at router 2
(1026: the trace ends in silence, the worst case for a tracer that waits per TTL), and
a port rejected with an ICMP admin-prohibited at router 1.  Each tool runs with a 1 s
wait and 30 hops, N interleaved runs; the median wall time of each and the median of the
pairwise ratios are printed.  Every run's hop addresses are compared with the lab's
known path: a run that names the wrong hops is reported as wrong, never as fast.

Needs root, the lab's packages (.ci/lab-packages.sh: traceroute, mtr-tiny, nftables).
exprobe needs no privilege for this; traceroute -T and mtr --tcp use raw sockets.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.lab.hoplab import HOPS, SERVER, SERVER_HOPS, HopLab  # noqa: E402

WAIT = 1.0
MAX_HOPS = 30
RUN_MS: list[float] = []  # exprobe's own run time (check + trace), without interpreter start


def timed(argv: list[str], lab: HopLab) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = lab.cli(argv, timeout=300)
    return time.perf_counter() - t0, proc.stdout


def exprobe(lab: HopLab, port: int) -> tuple[float, list[str | None]]:
    wall, out = timed([sys.executable, "-m", "exprobe", "trace", SERVER[4], "--port", str(port),
                       "--max-hops", str(MAX_HOPS), "--connect-timeout", str(WAIT),
                       "--format", "json"], lab)  # fmt: skip
    report = json.loads(out)
    hops = report["targets"][0]["results"][0]["trace"]["hops"]
    RUN_MS.append(float(report["duration_ms"]))
    return wall, [h["address"] if h["reply"] != "silent" else None for h in hops]


def traceroute(lab: HopLab, port: int) -> tuple[float, list[str | None]]:
    wall, out = timed(["traceroute", "-T", "-p", str(port), "-n", "-q", "1", "-w", str(WAIT),
                       "-m", str(MAX_HOPS), SERVER[4]], lab)  # fmt: skip
    found: list[str | None] = []
    for m in re.finditer(r"^\s*\d+\s+(\S+)", out, re.M):
        found.append(None if m[1] == "*" else m[1])
    return wall, found


def mtr(lab: HopLab, port: int) -> tuple[float, list[str | None]]:
    wall, out = timed(["mtr", "--tcp", "-P", str(port), "-n", "-c", "1", "--report",
                       "--report-wide", "-m", str(MAX_HOPS), "--timeout", str(int(WAIT)),
                       SERVER[4]], lab)  # fmt: skip
    found: list[str | None] = []
    for m in re.finditer(r"^\s*\d+\.\|--\s+(\S+)", out, re.M):
        found.append(None if m[1] == "???" else m[1])
    return wall, found


def correct(found: list[str | None], expected: list[str | None]) -> bool:
    """The known path, then (for a port that ends in silence) nothing but silence."""
    head = found[: len(expected)]
    return head == expected and all(a is None for a in found[len(expected) :])


CASES: dict[str, tuple[int, Callable[[HopLab], None], list[str | None]]] = {
    "open 25": (25, lambda lab: lab.open_all(), [*HOPS[4], SERVER[4]]),
    "1026 dropped at hop 2": (1026, lambda lab: lab.set_rule("r2", "drop", 1026), HOPS[4][:2]),
    "1026 admin-prohibited at hop 1": (
        1026, lambda lab: lab.set_rule("r1", "icmp", 1026), [HOPS[4][0], HOPS[4][0]]),
}  # fmt: skip
TOOLS = {"exprobe": exprobe, "traceroute -T": traceroute, "mtr --tcp": mtr}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    lab = HopLab()
    lab.up()
    try:
        for name, (port, setup, expected) in CASES.items():
            lab.open_all()
            setup(lab)
            walls: dict[str, list[float]] = {t: [] for t in TOOLS}
            for i in range(args.runs):
                order = list(TOOLS) if i % 2 == 0 else list(reversed(TOOLS))
                for tool in order:
                    wall, found = TOOLS[tool](lab, port)
                    # mtr and traceroute print no line for the TTLs past the last reply.
                    ok = correct(found, expected)
                    walls[tool].append(wall)
                    print(f"  {name:32} {tool:14} run {i + 1}: {wall:6.2f} s"
                          f"  {'correct' if ok else 'WRONG: ' + str(found[:6])}")  # fmt: skip
            base = walls["exprobe"]
            inside = statistics.median(RUN_MS[-args.runs :]) / 1000
            line = [f"{name}: exprobe {statistics.median(base):.2f} s ({inside:.2f} s of it the"
                    " check and the trace, the rest Python's start-up)"]
            for tool in list(TOOLS)[1:]:
                ratios = [b / a for a, b in zip(base, walls[tool], strict=True)]
                line.append(f"{tool} {statistics.median(walls[tool]):.2f} s"
                            f" ({statistics.median(ratios):.1f}x exprobe's time)")  # fmt: skip
            print("== " + "; ".join(line))
    finally:
        lab.down()
    print(f"(server {SERVER_HOPS} hops away; wait {WAIT} s; max {MAX_HOPS} hops)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
