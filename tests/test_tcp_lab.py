"""The TCP check through a real firewall (nftables in the lab), agreeing with nmap.

Each firewall action gives its own status: `drop` → connection-timeout/filtered,
`reject with tcp reset` → connection-refused/closed, `reject with icmpx
admin-prohibited` → unreachable/filtered (EHOSTUNREACH).  nmap -sT run over the same
ports in the same test must name the same port states.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import validate_report
from tests.lab.lab import SPARE_ADDR, SRV_ADDR, SRV_ADDR6, Lab

pytestmark = pytest.mark.lab


def exprobe_json(lab: Lab, *args: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    out = lab.run_cli([sys.executable, "-m", "exprobe", *args, "--format", "json"], timeout=timeout)
    assert out.stdout, out.stderr
    return out.returncode, validate_report(json.loads(out.stdout))


def nmap_states(lab: Lab, address: str, ports: list[int]) -> dict[int, str]:
    args = ["nmap", "-sT", "-Pn", "-n", "--max-retries", "0", "--host-timeout", "30s",
            "-p", ",".join(map(str, ports)), "-oX", "-"]
    if ":" in address:
        args.append("-6")
    out = lab.run_cli([*args, address], timeout=60)
    assert out.returncode == 0, out.stderr
    root = ET.fromstring(out.stdout)
    return {
        int(p.get("portid", "0")): p.find("state").get("state", "")  # type: ignore[union-attr]
        for p in root.iter("port")
    }


def test_each_firewall_action_has_its_status_and_nmap_agrees(
    lab: Lab, fw: Callable[..., None]
) -> None:
    # 25 postfix, 110 dovecot, 143 dovecot, 389 slapd (open), 2 nothing listening.
    fw(drop=[25], reset=[110], icmp=[143])
    ports = [25, 110, 143, 389, 2]
    code, report = exprobe_json(
        lab, "run", SRV_ADDR, *[f"--port={p}" for p in ports], "--connect-timeout", "1"
    )
    assert code == 1
    got = {r["port"]: (r["status"], r["port_state"], r["failed_step"])
           for r in report["targets"][0]["results"]}
    assert got == {
        25: ("connection-timeout", "filtered", "connect"),
        110: ("connection-refused", "closed", "connect"),
        143: ("unreachable", "filtered", "connect"),
        389: ("success", "open", None),
        2: ("connection-refused", "closed", "connect"),
    }
    icmp = next(r for r in report["targets"][0]["results"] if r["port"] == 143)
    assert icmp["facts"]["errno"] == "EHOSTUNREACH"
    # The kernel named the ICMP error's sender (IP_RECVERR): the server's own firewall.
    assert icmp["facts"]["icmp"] == {"type": 3, "code": 13, "name": "admin-prohibited",
                                     "family": 4, "from": SRV_ADDR, "errno": "EHOSTUNREACH"}
    assert icmp["message"] == (
        f"unreachable (admin-prohibited (ICMP 3/13) from {SRV_ADDR}, EHOSTUNREACH)")
    nmap = nmap_states(lab, SRV_ADDR, ports)
    assert nmap == {p: state for p, (_s, state, _f) in got.items()}


def test_ipv6_through_the_firewall(lab: Lab, fw: Callable[..., None]) -> None:
    fw(drop=[110], icmp=[389])
    code, report = exprobe_json(
        lab, "run", f"[{SRV_ADDR6}]:110", f"[{SRV_ADDR6}]:143", f"[{SRV_ADDR6}]:389",
        "--connect-timeout", "1",
    )
    assert code == 1
    got = {r["port"]: r["status"] for t in report["targets"] for r in t["results"]}
    assert got == {110: "connection-timeout", 143: "success", 389: "unreachable"}
    icmp = next(r for t in report["targets"] for r in t["results"] if r["port"] == 389)
    assert icmp["facts"]["icmp"] == {"type": 1, "code": 1, "name": "admin-prohibited",
                                     "family": 6, "from": SRV_ADDR6, "errno": "EACCES"}
    assert nmap_states(lab, SRV_ADDR6, [110, 143, 389]) == {
        110: "filtered", 143: "open", 389: "filtered"}


def test_retries_apply_to_connect_timeouts_only(lab: Lab, fw: Callable[..., None]) -> None:
    fw(drop=[25])
    _code, report = exprobe_json(
        lab, "run", SRV_ADDR, "--port", "25", "--port", "2", "--connect-timeout", "0.5",
        "--retries", "2",
    )
    results = {r["port"]: r for r in report["targets"][0]["results"]}
    assert results[25]["status"] == "connection-timeout"
    assert results[25]["elapsed_ms"] >= 1400  # three attempts of 0.5 s
    assert results[2]["status"] == "connection-refused"
    assert results[2]["elapsed_ms"] < 400  # a RST is final: no retry


def test_unresolvable_name_is_dns_error(lab: Lab) -> None:
    # The client namespace has no route to the resolver: the lookup fails locally,
    # and no packet leaves the lab.
    code, report = exprobe_json(lab, "run", "nonexistent.exprobe.invalid", "--port", "25")
    assert code == 1
    t = report["targets"][0]
    assert t["addresses"] == []
    assert t["error"].startswith("dns-error")
    (r,) = t["results"]
    assert (r["status"], r["port_state"], r["address"], r["port"]) == (
        "dns-error", "unknown", None, 25)


def test_source_address_binding(lab: Lab) -> None:
    code, report = exprobe_json(
        lab, "run", SRV_ADDR, "--port", "25", "--source", "10.250.0.1"
    )
    assert code == 0
    assert report["vantage"]["source_address"] == "10.250.0.1"
    out = lab.run_cli([sys.executable, "-m", "exprobe", "run", SRV_ADDR, "--port", "25",
                       "--source", SPARE_ADDR], timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"exprobe: error: --source {SPARE_ADDR}: not an address of this machine "
        "(Cannot assign requested address)"
    )
