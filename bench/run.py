"""exprobe against nmap, side by side, in one invocation.

    python bench/run.py [--quick] [--only NAME] [--runs N]

Scenarios (NAME): sweep, banner, filtered, scale, startup (loopback, in a network
namespace of their own), exchange and wan (the test lab: tests/lab/lab.py).  Every
figure is the median of N interleaved runs (3 by default); every ratio is computed pair
by pair (run i of exprobe against run i of nmap) and the median of those is shown.
Every run prints what it found against the known truth: a run whose results are wrong
is reported as wrong, never as fast.  Raw outputs go to bench/results/<time>/.

Needs root (namespaces, nftables), gcc, nmap; the lab scenarios need the lab's packages
(.ci/lab-packages.sh).  Traffic goes only to loopback and the lab's namespaces.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    BANNER,
    BENCH_DIR,
    REPO,
    BenchError,
    Figure,
    Netns,
    Responder,
    Run,
    compile_c,
    errors_against,
    exprobe_counts,
    exprobe_span,
    interleaved,
    loopback_addresses,
    measure,
    med,
    nmap_gnmap_counts,
    nmap_xml_counts,
    pair_ratios,
    python,
    record_of,
    run_quiet,
    say,
    summary_row,
    write_lines,
)

SWEEP_PORT = 7001
NFT_TABLE = "exprobe_bench"


@dataclass
class Context:
    out: Path
    runs: int
    quick: bool
    ns: Netns | None = None
    responder: Responder | None = None
    responder_bin: Path | None = None
    cclient_bin: Path | None = None
    figures: list[Figure] = field(default_factory=list)
    record: dict[str, object] = field(default_factory=dict)

    @property
    def prefix(self) -> list[str]:
        return self.ns.prefix() if self.ns else []


def accepted_note(ctx: Context, run: Run, expected: int) -> None:
    """The responder's own count of connections, as a cross-check of the tool's."""
    if ctx.responder is None:
        return
    seen = ctx.responder.accepted()
    run.note = f"responder accepted {seen}" + (
        "" if seen == expected else f" (expected {expected})"
    )


# -- scenario 1: connect sweep ----------------------------------------------------------------


def exprobe_argv(*args: str) -> list[str]:
    return [python(), "-m", "exprobe", *args]


def sized(
    ctx: Context,
    sizes: list[int],
    one: Callable[[Context, int], list[float]],
    figure: str,
    target: str,
    least: float,
) -> None:
    """Run `one` at each size; the largest gives the issue's figure (ratio >= `least`)."""
    for n in sizes:
        ratios = one(ctx, n)
        if n == max(sizes):
            ctx.figures.append(
                Figure(
                    f"{figure} {n:,}",
                    target,
                    f"{med(ratios):.2f}x",
                    bool(ratios) and med(ratios) >= least,
                )
            )
    say()


def compared(ctx: Context, got: dict[str, list[Run]], n: int, peer: str, key: str) -> list[float]:
    """Print each tool's summary and exprobe's rate over nmap's, pair by pair; record it."""
    for name, runs in got.items():
        say(summary_row(name, runs, n))
    ratios = pair_ratios(got["exprobe"], got["nmap"])
    say(
        f"  exprobe rate / {peer} rate: {med(ratios):.2f}x  "
        f"(pairs: {', '.join(f'{r:.2f}' for r in ratios) or 'none correct'})"
    )
    ctx.record[key] = record_of(got, ratios)
    return ratios


def scenario_sweep(ctx: Context) -> None:
    say("== 1. connect sweep on loopback: host:port targets on 127.x.y.z, one port open ==")
    sizes = [1000, 10000] if ctx.quick else [1000, 10000, 50000]
    sized(ctx, sizes, sweep_size, "connect sweep", ">= 0.5x nmap -sT -T4 (aim > 1x)", 0.5)


def sweep_size(ctx: Context, n: int) -> list[float]:
    addrs = loopback_addresses(n)
    hosts = write_lines(ctx.out / f"hosts-{n}.txt", addrs)
    targets = write_lines(ctx.out / f"targets-{n}.txt", [f"{a}:{SWEEP_PORT}" for a in addrs])
    timeout = 60 + n / 200

    def ours(i: int) -> Run:
        out = ctx.out / f"sweep-{n}-exprobe-{i}.jsonl"
        argv = exprobe_argv("run", "-T", str(targets), "-f", "jsonl", "-o", str(out))
        run = measure("exprobe", [*ctx.prefix, *argv], ctx.out, timeout=timeout)
        run.counts = exprobe_counts(out) if out.exists() else {}
        run.errors = errors_against(run.counts, {"success": n})
        accepted_note(ctx, run, n)
        return run

    def theirs(i: int) -> Run:
        out = ctx.out / f"sweep-{n}-nmap-{i}.gnmap"
        argv = ["nmap", "-sT", "-Pn", "-n", "-T4", "-p", str(SWEEP_PORT), "-iL", str(hosts)]
        run = measure("nmap", [*ctx.prefix, *argv, "-oG", str(out)], ctx.out, timeout=timeout)
        run.counts = nmap_gnmap_counts(out) if out.exists() else {}
        run.errors = errors_against(run.counts, {"open": n})
        accepted_note(ctx, run, n)
        return run

    def ceiling(i: int) -> Run:
        assert ctx.cclient_bin is not None
        argv = [str(ctx.cclient_bin), str(hosts), str(SWEEP_PORT), "512", "3000"]
        run = measure("C-epoll", [*ctx.prefix, *argv], ctx.out, timeout=timeout)
        words = run.stdout.read_text().split()
        run.counts = {words[k]: int(words[k + 1]) for k in range(0, len(words) - 1, 2)}
        run.errors = errors_against(run.counts, {"open": n})
        accepted_note(ctx, run, n)
        return run

    say(f" {n:,} targets")
    got = interleaved(
        ctx, [("exprobe", ours), ("nmap", theirs), ("C-epoll", ceiling)], f"{n:,} targets"
    )
    return compared(ctx, got, n, "nmap", f"sweep-{n}")


# -- scenario 2: banner grab ------------------------------------------------------------------


def scenario_banner(ctx: Context) -> None:
    say("== 2. banner grab: connect, read the first line, close ==")
    sizes = [1000] if ctx.quick else [1000, 10000]
    sized(ctx, sizes, banner_size, "banner grab", ">= 3x nmap --script banner", 3)


def banner_size(ctx: Context, n: int) -> list[float]:
    hosts = write_lines(ctx.out / f"hosts-{n}.txt", loopback_addresses(n))
    timeout = 120 + n / 50

    def ours(i: int) -> Run:
        out = ctx.out / f"banner-{n}-exprobe-{i}.jsonl"
        argv = exprobe_argv(
            "run", "-T", str(hosts), "--check", f"banner:{SWEEP_PORT}", "-f", "jsonl",
            "-o", str(out),
        )  # fmt: skip
        run = measure("exprobe", [*ctx.prefix, *argv], ctx.out, timeout=timeout)
        run.counts = exprobe_counts(out, banner=BANNER) if out.exists() else {}
        run.errors = errors_against(run.counts, {"success": n, "banner": n})
        accepted_note(ctx, run, n)
        return run

    def theirs(i: int) -> Run:
        out = ctx.out / f"banner-{n}-nmap-{i}.xml"
        argv = [
            "nmap", "-sT", "-Pn", "-n", "-T4", "-p", str(SWEEP_PORT), "--script", "banner",
            "-iL", str(hosts), "-oX", str(out),
        ]  # fmt: skip
        run = measure("nmap", [*ctx.prefix, *argv], ctx.out, timeout=timeout)
        run.counts = nmap_xml_counts(out, banner=BANNER) if out.exists() else {}
        run.errors = errors_against(run.counts, {"open": n, "banner": n})
        accepted_note(ctx, run, 2 * n)  # the port scan connects, then the script again
        return run

    say(f" {n:,} targets")
    got = interleaved(ctx, [("exprobe", ours), ("nmap", theirs)], f"banner {n:,}")
    return compared(ctx, got, n, "nmap --script banner", f"banner-{n}")


# -- scenario 4: filtered paths ---------------------------------------------------------------


def nft(ctx: Context, script: str) -> None:
    proc = subprocess.run(
        [*ctx.prefix, "nft", "-f", "-"], input=script, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"nft failed: {proc.stderr.strip()}")


def scenario_filtered(ctx: Context) -> None:
    n = 2000 if ctx.quick else 10000
    dropped = n // 10
    say(
        f"== 4. filtered paths: {n:,} targets, {dropped:,} of them dropped by nftables "
        f"(127.9/16 in the bench namespace) =="
    )
    # Two settings: exprobe's defaults, and the issue's reference (1 s, 1,024 in flight).
    configs = {"exprobe": (512, 3.0), "exprobe-1s": (1024, 1.0)}
    ideal = {k: math.ceil(dropped / c) * t for k, (c, t) in configs.items()}
    for k, (c, t) in configs.items():
        say(f"  {k}: --concurrency {c} --connect-timeout {t:g}; ideal = {ideal[k]:g} s")
    rng = random.Random(8)
    addrs = loopback_addresses(n - dropped) + loopback_addresses(dropped, second=9)
    rng.shuffle(addrs)  # interleaved, as a real subnet's dead hosts are
    hosts = write_lines(ctx.out / f"filtered-hosts-{n}.txt", addrs)
    targets = write_lines(
        ctx.out / f"filtered-targets-{n}.txt", [f"{a}:{SWEEP_PORT}" for a in addrs]
    )
    nft(
        ctx,
        f"table inet {NFT_TABLE} {{\n"
        "  chain input {\n    type filter hook input priority 0; policy accept;\n"
        f"    ip daddr 127.9.0.0/16 tcp dport {SWEEP_PORT} drop\n  }}\n}}\n",
    )

    spans: dict[str, list[float]] = {}

    def ours(name: str) -> Callable[[int], Run]:
        concurrency, timeout = configs[name]

        def one(i: int) -> Run:
            out = ctx.out / f"filtered-{name}-{i}.jsonl"
            argv = exprobe_argv(
                "run", "-T", str(targets), "-f", "jsonl", "-o", str(out),
                "--concurrency", str(concurrency), "--connect-timeout", f"{timeout:g}",
            )  # fmt: skip
            run = measure(name, [*ctx.prefix, *argv], ctx.out, timeout=300)
            run.counts = exprobe_counts(out) if out.exists() else {}
            truth = {"success": n - dropped, "connection-timeout": dropped}
            run.errors = errors_against(run.counts, truth)
            accepted_note(ctx, run, n - dropped)
            if out.exists():
                spans.setdefault(name, []).append(exprobe_span(out))
            return run

        return one

    def theirs(i: int) -> Run:
        out = ctx.out / f"filtered-nmap-{i}.gnmap"
        argv = ["nmap", "-sT", "-Pn", "-n", "-T4", "-p", str(SWEEP_PORT), "-iL", str(hosts)]
        run = measure("nmap", [*ctx.prefix, *argv, "-oG", str(out)], ctx.out, timeout=600)
        run.counts = nmap_gnmap_counts(out) if out.exists() else {}
        run.errors = errors_against(run.counts, {"open": n - dropped, "filtered": dropped})
        accepted_note(ctx, run, n - dropped)
        return run

    try:
        tools = [(k, ours(k)) for k in configs] + [("nmap", theirs)]
        got = interleaved(ctx, tools, "filtered")
    finally:
        subprocess.run([*ctx.prefix, "nft", "delete", "table", "inet", NFT_TABLE], check=False)
    for name, runs in got.items():
        say(summary_row(name, runs, n))
    record = {"ideal": ideal}
    for k in configs:
        good = [r.wall for r in got[k] if r.ok]
        to_ideal = med(good) / ideal[k] if good else float("nan")
        ratios = pair_ratios(got[k], got["nmap"])
        span = med(spans.get(k, []))
        say(
            f"  {k}: wall / ideal {to_ideal:.2f}x (first check to last: {span:.2f} s, "
            f"{span / ideal[k]:.2f}x), nmap wall / exprobe wall {med(ratios):.2f}x"
        )
        record[k] = {
            **record_of({k: got[k]}, ratios),
            "to_ideal": to_ideal,
            "span": spans.get(k, []),
        }
        ctx.figures.append(
            Figure(f"filtered ({k}): to the ideal", "<= 1.2x ideal", f"{to_ideal:.2f}x",
                   to_ideal <= 1.2)
        )  # fmt: skip
        ctx.figures.append(
            Figure(f"filtered ({k}): vs nmap -T4", ">= 4x faster", f"{med(ratios):.2f}x",
                   bool(ratios) and med(ratios) >= 4)
        )  # fmt: skip
    record["nmap"] = record_of({"nmap": got["nmap"]}, [])
    ctx.record["filtered"] = record
    say()


# -- scenario 6: scale ------------------------------------------------------------------------


def scenario_scale(ctx: Context) -> None:
    n = 20000 if ctx.quick else 100000
    say(f"== 6. scale: {n:,} targets, peak memory streamed (jsonl) and as one report (json) ==")
    say("  rss: the main process (kernel maxrss); tree: RSS summed over it and its shards;")
    say("  pss: the same with shared pages counted once (the memory really used)")
    addrs = loopback_addresses(n)
    targets = write_lines(ctx.out / f"targets-{n}.txt", [f"{a}:{SWEEP_PORT}" for a in addrs])

    def ours(fmt: str, shards: str | None) -> Callable[[int], Run]:
        def one(i: int) -> Run:
            out = ctx.out / f"scale-{n}-{shards or 'auto'}-{i}.{fmt}"
            argv = exprobe_argv("run", "-T", str(targets), "-f", fmt, "-o", str(out), "--yes")
            env = {"EXPROBE_SHARDS": shards} if shards else None
            run = measure(f"exprobe-{fmt}", [*ctx.prefix, *argv], ctx.out, timeout=600, env=env)
            if fmt == "jsonl":
                run.counts = exprobe_counts(out) if out.exists() else {}
            elif out.exists():
                run.counts = dict(json.loads(out.read_text())["summary"]["by_status"])
            run.errors = errors_against(run.counts, {"success": n})
            accepted_note(ctx, run, n)
            return run

        return one

    variants = {
        "jsonl": ours("jsonl", None),
        "json": ours("json", None),
        "jsonl, 1 process": ours("jsonl", "1"),
        "json, 1 process": ours("json", "1"),
    }
    got = interleaved(ctx, list(variants.items()), f"scale {n:,}")
    for name, runs in got.items():
        good = [r for r in runs if r.ok]
        say(summary_row(f"{name:<16}", runs, n) if good else f"  {name}: no correct run")
    ctx.record[f"scale-{n}"] = record_of(got, [])
    for fmt, limit in (("jsonl", 120.0), ("json", 400.0)):
        good = [max(r.pss_mb, r.rss_mb) for r in got[fmt] if r.ok]
        mem = med(good) if good else float("nan")
        ctx.figures.append(
            Figure(
                f"{n:,} targets --format {fmt}",
                f"peak memory < {limit:g} MB",
                f"{mem:.1f} MB",
                (bool(good) and mem < limit) if n == 100000 else None,
            )
        )
    say()


# -- scenario 7: start-up ---------------------------------------------------------------------


def scenario_startup(ctx: Context) -> None:
    runs = 10 if ctx.quick else 30
    say(
        f"== 7. start-up: one TCP check on loopback, wall incl. interpreter start ({runs} pairs) =="
    )
    say("  exprobe: the default table; exprobe -f nagios: what a monitoring system runs")
    ours = [*ctx.prefix, *exprobe_argv("run", "127.0.0.1", "--port", str(SWEEP_PORT))]
    tools = [
        ("exprobe", ours),
        ("exprobe -f nagios", [*ours, "--format", "nagios"]),
        ("nmap", [*ctx.prefix, "nmap", "-sT", "-Pn", "-n", "-p", str(SWEEP_PORT), "127.0.0.1"]),
        ("python -c pass", [*ctx.prefix, python(), "-c", "pass"]),
    ]
    got: dict[str, list[Run]] = {name: [] for name, _ in tools}
    for i in range(runs + 2):  # two warm-up rounds, not counted
        for name, argv in tools if i % 2 == 0 else tools[::-1]:
            tag = name.split()[0]
            run = measure(tag, argv, ctx.out, timeout=30, tag="startup")
            if tag == "exprobe":
                run.errors = 0 if run.returncode == 0 else 1
            elif tag == "nmap":
                run.errors = 0 if "open" in run.stdout.read_text() else 1
            if i >= 2:
                got[name].append(run)
            if ctx.responder is not None:
                ctx.responder.accepted()
    for name, rs in got.items():
        wrong = sum(not r.ok for r in rs)
        say(
            f"  {name:<17} median {med([r.wall for r in rs]) * 1000:6.1f} ms  "
            f"min {min(r.wall for r in rs) * 1000:6.1f} ms  "
            f"cpu {med([r.cpu for r in rs]) * 1000:6.1f} ms  "
            f"rss {med([r.rss_mb for r in rs]):5.1f} MB  errors: {wrong or 'none'}"
        )
    record: dict[str, object] = {"note": "ratio = exprobe wall / nmap wall (lower is better)"}
    for name in ("exprobe", "exprobe -f nagios"):
        ratios = [o.wall / t.wall for o, t in zip(got[name], got["nmap"], strict=True)]
        ours_ms = med([r.wall for r in got[name]]) * 1000
        say(f"  {name} wall / nmap wall: {med(ratios):.2f}x (pair by pair)")
        record[name] = record_of({name: got[name], "nmap": got["nmap"]}, ratios)
        ctx.figures.append(
            Figure(f"start-up, {name}", "< 350 ms", f"{ours_ms:.0f} ms", ours_ms < 350)
        )
        ctx.figures.append(
            Figure(
                f"start-up, {name} vs nmap",
                "<= 2.5x nmap",
                f"{med(ratios):.2f}x",
                med(ratios) <= 2.5,
            )
        )
    ctx.record["startup"] = record
    say()


# -- the lab scenarios (3 and 5) live in lab_scenarios.py ---------------------------------------


def lab_scenarios(ctx: Context, only: set[str]) -> None:
    from lab_scenarios import scenario_exchange, scenario_wan, with_lab

    wanted = [s for s in ("exchange", "wan") if s in only]
    if not wanted:
        return
    with_lab(ctx, [(s, {"exchange": scenario_exchange, "wan": scenario_wan}[s]) for s in wanted])


# -- main -----------------------------------------------------------------------------------


LOOPBACK = {
    "sweep": scenario_sweep,
    "banner": scenario_banner,
    "filtered": scenario_filtered,
    "scale": scenario_scale,
    "startup": scenario_startup,
}
ALL = ["sweep", "banner", "exchange", "filtered", "wan", "scale", "startup"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    ap.add_argument("--only", action="append", choices=ALL, help="run only this scenario")
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs per figure")
    args = ap.parse_args(argv)
    only = set(args.only or ALL)
    for tool in ("nmap", "gcc", "nft"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is not installed")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = BENCH_DIR / "results" / stamp
    out.mkdir(parents=True)
    ctx = Context(out=out, runs=max(1, args.runs), quick=args.quick)
    say(f"exprobe bench  {stamp}  runs={ctx.runs}  quick={args.quick}  outputs: {out}")
    load = os.getloadavg()[0]
    say(f"  cpus: {os.cpu_count()}  load: {load:.2f}  python: {sys.version.split()[0]}")
    say(f"  nmap: {run_quiet(['nmap', '--version']).stdout.splitlines()[0]}")
    say(f"  event loop: {loop_name()}")
    say()
    # What `pip install` does and an editable install (with PYTHONDONTWRITEBYTECODE, as
    # here) does not: byte-compile, so no run pays for compiling exprobe's modules.
    run_quiet([python(), "-m", "compileall", "-q", str(REPO / "exprobe")], timeout=120)
    t0 = time.monotonic()
    loopback = [name for name in ALL if name in LOOPBACK and name in only]
    if loopback:
        ctx.responder_bin = compile_c(BENCH_DIR / "responder.c", out)
        ctx.cclient_bin = compile_c(BENCH_DIR / "cclient.c", out)
        with Netns() as ns:
            ctx.ns = ns
            ctx.responder = Responder(ctx.responder_bin, [SWEEP_PORT], ns.prefix())
            try:
                for name in loopback:
                    LOOPBACK[name](ctx)
            finally:
                ctx.responder.stop()
                ctx.responder = None
                ctx.ns = None
    lab_scenarios(ctx, only)
    say(f"== figures (issue 8), this run, {time.monotonic() - t0:.0f} s ==")
    for f in ctx.figures:
        mark = {True: "reached", False: "NOT reached", None: "not measured"}[f.reached]
        say(f"  {f.name:<32} {f.wanted:<34} {f.got:<12} {mark}")
    (out / "results.json").write_text(
        json.dumps(
            {
                "stamp": stamp,
                "quick": args.quick,
                "runs": ctx.runs,
                "loadavg": os.getloadavg(),
                "figures": [f.__dict__ for f in ctx.figures],
                "scenarios": ctx.record,
            },
            indent=2,
        )
    )
    return 0


def loop_name() -> str:
    if os.environ.get("EXPROBE_LOOP") == "asyncio":
        return "asyncio (EXPROBE_LOOP=asyncio)"
    try:
        import uvloop

        return f"uvloop {uvloop.__version__}"
    except ImportError:
        return "asyncio (uvloop not installed)"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(2)
