"""Hop location through real routers: which hop drops, resets, rejects or intercepts.

The routed lab (tests/lab/hoplab.py): client → r1 → r2 → r3 → server, IPv4 and IPv6,
with nftables rules in a router's forward chain.  For each rule at each router exprobe
must name the right hop and kind, exact where another hop follows the filtering one and
"ambiguous" (not exact) where the filter is the last router before the server.  An open
port's trace must agree hop by hop with Debian's `traceroute -T`, and tracing must work
with no capability at all (no raw socket).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import validate_report
from tests.lab.hoplab import HOPS, ROUTERS, SERVER, SERVER_HOPS, HopLab, ns_argv

pytestmark = pytest.mark.lab

FILTERED = 1026
REFERENCE = 25


@pytest.fixture(scope="module")
def hoplab() -> Iterator[HopLab]:
    lab = HopLab()
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def rules(hoplab: HopLab) -> Iterator[HopLab]:
    hoplab.open_all()
    try:
        yield hoplab
    finally:
        hoplab.open_all()


def exprobe(
    lab: HopLab, *args: str, wrap: list[str] | None = None, loop: str = "auto"
) -> tuple[int, dict[str, Any]]:
    env = ["env", f"EXPROBE_LOOP={loop}"]
    proc = lab.cli([*env, *(wrap or []), sys.executable, "-m", "exprobe", *args, "--format",
                    "json"])  # fmt: skip
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def traced(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {r["port"]: r for t in report["targets"] for r in t["results"]}


STATUS = {"drop": "connection-timeout", "reset": "connection-refused", "icmp": "unreachable"}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("action", ["drop", "reset", "icmp"])
@pytest.mark.parametrize("router", ROUTERS)
def test_each_rule_at_each_router_names_the_hop(
    rules: HopLab, router: str, action: str, family: int
) -> None:
    rules.set_rule(router, action, FILTERED)
    code, report = exprobe(rules, "trace", SERVER[family], "--port", str(REFERENCE),
                           "--port", str(FILTERED), "--connect-timeout", "1")  # fmt: skip
    validate_report(report)
    assert code == 1
    results = traced(report)
    assert results[REFERENCE]["status"] == "success"
    assert results[REFERENCE]["trace"]["break"] is None
    bad = results[FILTERED]
    assert bad["status"] == STATUS[action]
    n = ROUTERS.index(router) + 1
    brk = bad["trace"]["break"]
    assert bad["trace"]["reference"]["port"] == REFERENCE
    assert bad["trace"]["reference"]["server_hops"] == SERVER_HOPS
    # The hop right before the server is ambiguous for a drop or a reset (TTL is checked
    # before the forward filter); an ICMP error names its sender, so it is always exact.
    exact = action == "icmp" or n < len(ROUTERS)
    assert (brk["kind"], brk["hop"], brk["address"], brk["exact"]) == (
        action, n, HOPS[family][n - 1], exact)
    hop = f"hop {n} ({HOPS[family][n - 1]})"
    if action == "drop":
        expected = (f"dropped by {hop}, the last hop that forwards it; 25 passes there" if exact
                    else f"dropped by {hop} or by the server; 25 passes there")  # fmt: skip
    elif action == "reset":
        expected = (f"reset by {hop}, not by the server" if exact
                    else f"reset by the server or by {hop} in front of it")  # fmt: skip
    else:
        expected = f"admin-prohibited from {hop}"
        icmp = {4: (3, 13, "EHOSTUNREACH"), 6: (1, 1, "EACCES")}[family]
        assert (brk["icmp"]["type"], brk["icmp"]["code"], brk["icmp"]["errno"]) == icmp
        assert bad["facts"]["icmp"]["from"] == HOPS[family][n - 1]
        assert bad["message"].startswith(
            f"unreachable (admin-prohibited (ICMP{'' if family == 4 else 'v6'} {icmp[0]}/{icmp[1]})"
            f" from {HOPS[family][n - 1]}")
    assert brk["summary"] == expected
    # The trace of the failing port: every router before the break answered for it.
    hops = bad["trace"]["hops"]
    assert [h["address"] for h in hops if h["reply"] == "hop"] == HOPS[family][:n]


@pytest.mark.parametrize("family", [4, 6])
def test_open_port_trace_agrees_with_traceroute(rules: HopLab, family: int) -> None:
    _code, report = exprobe(rules, "trace", SERVER[family], "--port", str(REFERENCE),
                            "--port", "80", "--connect-timeout", "1")  # fmt: skip
    ours = [(h["ttl"], h["address"]) for h in traced(report)[REFERENCE]["trace"]["hops"]]
    args = ["traceroute", "-T", "-p", str(REFERENCE), "-n", "-q", "1", "-w", "2",
            "-m", "8", *(["-6"] if family == 6 else []), SERVER[family]]  # fmt: skip
    proc = rules.cli(args)
    assert proc.returncode == 0, proc.stderr
    theirs = [(int(m[1]), m[2]) for m in re.finditer(r"^\s*(\d+)\s+(\S+)", proc.stdout, re.M)]
    assert ours == theirs == [*((i + 1, a) for i, a in enumerate(HOPS[family])),
                              (SERVER_HOPS, SERVER[family])]  # fmt: skip


@pytest.mark.parametrize("family", [4, 6])
def test_an_inspection_device_that_answers_for_the_server_is_named(
    rules: HopLab, family: int
) -> None:
    with rules.intercept("r2", REFERENCE):
        _code, report = exprobe(rules, "run", SERVER[family], "--check", "smtp:25",
                               "--port", "80", "--trace", "all", "--connect-timeout", "1")  # fmt: skip
    validate_report(report)
    results = traced(report)
    smtp = results[25]
    assert smtp["facts"]["banner"].startswith("220 inspector.hop.test")
    brk = smtp["trace"]["break"]
    assert (brk["kind"], brk["hop"], brk["address"], brk["exact"]) == (
        "intercepted", 2, HOPS[family][1], True)
    assert brk["summary"] == (
        f"answered at hop 2 ({HOPS[family][1]}), before the server ({SERVER_HOPS} hops away):"
        " a transparent proxy or inspection device sits there")
    assert smtp["trace"]["reference"] == {
        "port": 80, "server_hops": SERVER_HOPS,
        "hops": [*({"ttl": i + 1, "reply": "hop", "address": a,
                    "rtt_ms": h["rtt_ms"]} for i, (a, h) in enumerate(
                        zip(HOPS[family], smtp["trace"]["reference"]["hops"], strict=False))),
                 {"ttl": SERVER_HOPS, "reply": "open", "address": SERVER[family],
                  "rtt_ms": smtp["trace"]["reference"]["hops"][-1]["rtt_ms"]}],
    }  # fmt: skip
    assert results[80]["trace"]["break"] is None


def test_verdict_names_the_hop(rules: HopLab) -> None:
    rules.set_rule("r2", "drop", 25)
    code, report = exprobe(rules, "run", SERVER[4], "-p", "exchange55", "--scenario",
                           "smtp-inbound", "--scenario", "pop3-retrieve", "--trace",
                           "--connect-timeout", "1", "--timeout", "3")  # fmt: skip
    validate_report(report)
    assert code == 1
    verdicts = {v["id"]: v for t in report["targets"] for v in t["scenarios"]}
    assert verdicts["smtp-inbound"]["verdict"] == "fail"
    assert verdicts["smtp-inbound"]["reason"] == (
        "Inbound SMTP fails: 25 filtered (connection-timeout), dropped by hop 2 (10.251.2.2),"
        " the last hop that forwards it; 110 passes there")


def test_tracing_needs_no_privilege(rules: HopLab) -> None:
    """No capability at all (CAP_NET_RAW included): a raw socket fails, the trace works."""
    drop_all = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all"]
    raw = rules.cli([*drop_all, sys.executable, "-c",
                     "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)"])  # fmt: skip
    assert raw.returncode == 1
    assert "PermissionError" in raw.stderr
    rules.set_rule("r1", "drop", FILTERED)
    _code, report = exprobe(rules, "trace", SERVER[4], "--port", str(REFERENCE), "--port",
                            str(FILTERED), "--connect-timeout", "1", wrap=drop_all)  # fmt: skip
    brk = traced(report)[FILTERED]["trace"]["break"]
    assert (brk["kind"], brk["hop"], brk["exact"]) == ("drop", 1, True)


@pytest.mark.parametrize("loop", ["asyncio", "auto"])  # auto: uvloop, installed by .ci/run
@pytest.mark.parametrize("family", [4, 6])
def test_both_event_loops(rules: HopLab, loop: str, family: int) -> None:
    rules.set_rule("r2", "drop", FILTERED)
    rules.set_rule("r1", "icmp", 3268)
    _code, report = exprobe(rules, "trace", SERVER[family], "--port", str(REFERENCE), "--port",
                            str(FILTERED), "--port", "3268", "--connect-timeout", "1", loop=loop)  # fmt: skip
    got = {p: (r["trace"]["break"] or {}).get("kind") for p, r in traced(report).items()}
    assert got == {REFERENCE: None, FILTERED: "drop", 3268: "icmp"}
    assert traced(report)[FILTERED]["trace"]["break"]["hop"] == 2
    assert traced(report)[3268]["trace"]["break"]["address"] == HOPS[family][0]


def test_ns_argv_is_the_lab_client() -> None:
    assert ns_argv("cli", ["true"]) == ["ip", "netns", "exec", "xphop-cli", "true"]


def test_watch_shows_where_it_breaks(rules: HopLab) -> None:
    rules.set_rule("r2", "drop", FILTERED)
    proc = rules.cli(["env", "COLUMNS=200", "NO_COLOR=1", sys.executable, "-m", "exprobe",
                      "watch", SERVER[4], "--port", str(REFERENCE), "--port", str(FILTERED),
                      "--trace", "--max-runs", "1", "--connect-timeout", "1"])  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    row = next(ln for ln in proc.stdout.splitlines() if f"tcp:{FILTERED}" in ln)
    assert f"connection-timeout/filtered, drop at hop 2 ({HOPS[4][1]})" in row
