"""Smoke test of the lab itself: every server answers from the client namespace, and
the firewall produces each of the three failure kinds (timeout, refused, unreachable)."""

from __future__ import annotations

import json
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.lab.lab import (
    EXPIRED_ADDR,
    LDAP_BASE,
    SAMBA_ADDR,
    SMTP_BANNER,
    SPARE_ADDR,
    SRV_ADDR,
    SRV_ADDR6,
    WRONGNAME_ADDR,
    Lab,
    build_ruleset,
    parse_port_spec,
)

pytestmark = pytest.mark.lab

# Runs inside exprobe-cli: one TCP (optionally TLS) connection per check, the first
# bytes the server sends, and how the connect ended. Argument: JSON list of checks.
PROBE = r"""
import errno, json, socket, ssl, sys
checks, cafile = json.loads(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
out = []
for c in checks:
    family = socket.AF_INET6 if ":" in c["addr"] else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(c.get("timeout", 3.0))
    r = {"check": c, "data": ""}
    try:
        s.connect((c["addr"], c["port"]))
    except socket.timeout:
        r["result"] = "timeout"
    except OSError as e:
        r["result"] = {errno.ECONNREFUSED: "refused", errno.EHOSTUNREACH: "unreachable"}.get(
            e.errno, "error: " + errno.errorcode.get(e.errno or 0, str(e)))
    else:
        r["result"] = "open"
        try:
            if c.get("tls"):
                s = ctx.wrap_socket(s, server_hostname=c["tls"])
                r["tls"] = s.version()
            if c.get("send"):
                s.sendall(bytes.fromhex(c["send"]))
            if c.get("read"):
                r["data"] = s.recv(4096).hex()
        except (OSError, ssl.SSLError) as e:
            r["result"] = "error after connect: " + repr(e)
    s.close()
    out.append(r)
print(json.dumps(out))
"""

# RFC 1006 TPKT + COTP Connection Request (TSAPs 0100 -> 0102, TPDU size 1024).
COTP_CR = "0300001611e00000002a00c1020100c2020102c0010a"


def probe(
    lab: Lab, checks: Sequence[dict[str, Any]], timeout: float = 60.0
) -> list[dict[str, Any]]:
    proc = lab.run_cli(
        [sys.executable, "-c", PROBE, json.dumps(list(checks)), str(lab.ca_file)], timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr
    results: list[dict[str, Any]] = json.loads(proc.stdout)
    return results


def text(result: dict[str, Any]) -> str:
    return bytes.fromhex(result["data"]).decode("latin-1")


# port -> (TLS server name or None, expected start of the greeting or None for "no greeting")
GREETINGS: dict[int, tuple[str | None, str | None]] = {
    25: (None, SMTP_BANNER),
    465: ("mail.lab.test", SMTP_BANNER),
    587: (None, SMTP_BANNER),
    110: (None, "+OK"),
    143: (None, "* OK"),
    993: ("mail.lab.test", "* OK"),
    995: ("mail.lab.test", "+OK"),
    389: (None, None),
    636: ("ldap.lab.test", None),
    119: (None, "200 news.lab.test InterNetNews"),
    563: ("news.lab.test", "200 news.lab.test InterNetNews"),
}


def test_every_port_answers_from_the_client(lab: Lab) -> None:
    checks: list[dict[str, Any]] = [
        {"addr": SRV_ADDR, "port": port, "tls": name, "read": greeting is not None}
        for port, (name, greeting) in GREETINGS.items()
    ]
    checks.append({"addr": SRV_ADDR, "port": 102, "send": COTP_CR, "read": True})
    checks.append({"addr": SAMBA_ADDR, "port": 135})
    results = probe(lab, checks)
    assert [r["result"] for r in results] == ["open"] * len(checks), results
    by_port = {r["check"]["port"]: r for r in results}
    for port, (name, greeting) in GREETINGS.items():
        if greeting is not None:
            assert text(by_port[port]).startswith(greeting), (port, text(by_port[port]))
        if name is not None:  # verified against the lab CA and the server name
            assert by_port[port]["tls"].startswith("TLSv1."), by_port[port]
    # A COTP Connection Confirm (TPDU code 0xD0) in a TPKT (version 3).
    cc = bytes.fromhex(by_port[102]["data"])
    assert cc[0] == 3, cc.hex()
    assert cc[5] == 0xD0, cc.hex()


def test_ipv6_connect(lab: Lab) -> None:
    (r,) = probe(lab, [{"addr": SRV_ADDR6, "port": 143, "read": True}])
    assert r["result"] == "open", r
    assert text(r).startswith("* OK"), r


def test_address_contract(lab: Lab) -> None:
    """Nothing of the lab on SRV_ADDR:135 (the scripted EPM's) nor on the spare address."""
    results = probe(lab, [{"addr": SRV_ADDR, "port": 135}, {"addr": SPARE_ADDR, "port": 25}])
    assert [r["result"] for r in results] == ["refused", "refused"], results


def test_ldap_rootdse(lab: Lab) -> None:
    proc = lab.run_cli(
        [
            "ldapsearch",
            "-x",
            "-LLL",
            "-H",
            f"ldap://{SRV_ADDR}",
            "-b",
            "",
            "-s",
            "base",
            "namingContexts",
        ],
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"namingContexts: {LDAP_BASE}" in proc.stdout


@pytest.mark.parametrize(
    ("addr", "extra", "error"),
    [
        (EXPIRED_ADDR, [], "certificate has expired"),
        (WRONGNAME_ADDR, ["-verify_hostname", "mail.lab.test"], "hostname mismatch"),
    ],
)
def test_bad_certificates_fail_verification(
    lab: Lab, addr: str, extra: list[str], error: str
) -> None:
    proc = lab.run_cli(
        ["openssl", "s_client", "-connect", f"{addr}:993", "-CAfile", str(lab.ca_file), *extra],
        input="",
        timeout=20,
    )
    assert error in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_firewall_failure_kinds(lab: Lab, fw: Callable[..., None]) -> None:
    t0 = time.monotonic()
    fw(drop=[25], reset=[110], icmp=[143])
    assert time.monotonic() - t0 < 1.0
    results = probe(
        lab,
        [
            {"addr": SRV_ADDR, "port": 25, "timeout": 1.5},
            {"addr": SRV_ADDR, "port": 110},
            {"addr": SRV_ADDR, "port": 143},
            {"addr": SRV_ADDR, "port": 389},
        ],
    )
    assert [r["result"] for r in results] == ["timeout", "refused", "unreachable", "open"], results

    proc = lab.run_cli(
        ["nmap", "-sT", "-Pn", "-n", "-p", "25,110,143,389", SRV_ADDR, "-oX", "-"], timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    states = {
        int(p.get("portid", "0")): p.find("state").get("state")  # type: ignore[union-attr]
        for p in ET.fromstring(proc.stdout).iter("port")
    }
    assert states == {25: "filtered", 110: "closed", 143: "filtered", 389: "open"}


def test_firewall_reopens_and_scopes_by_address(lab: Lab, fw: Callable[..., None]) -> None:
    fw(reset=[(SRV_ADDR, 25)])
    results = probe(lab, [{"addr": SRV_ADDR, "port": 25}, {"addr": SRV_ADDR6, "port": 25}])
    assert [r["result"] for r in results] == ["refused", "open"], results
    fw()
    (r,) = probe(lab, [{"addr": SRV_ADDR, "port": 25}])
    assert r["result"] == "open", r


CONNECT_TIMER = r"""
import socket, sys, time
times = []
for _ in range(5):
    s = socket.socket()
    s.settimeout(3)
    t = time.monotonic()
    s.connect((sys.argv[1], 389))
    times.append(time.monotonic() - t)
    s.close()
print(min(times))
"""


def test_netem_delays_client_packets(lab: Lab) -> None:
    try:
        method = lab.set_netem(delay_ms=30)
        assert method in ("tc", "nfqueue")
        delayed = float(lab.run_cli([sys.executable, "-c", CONNECT_TIMER, SRV_ADDR]).stdout)
        assert 0.025 < delayed < 0.5, (method, delayed)
    finally:
        lab.clear_netem()
    plain = float(lab.run_cli([sys.executable, "-c", CONNECT_TIMER, SRV_ADDR]).stdout)
    assert plain < 0.02


EPT_MAP = r"""
import socket, sys
from impacket.dcerpc.v5 import epm
from impacket.uuid import uuidtup_to_bin
lsarpc = uuidtup_to_bin(("12345778-1234-ABCD-EF00-0123456789AB", "0.0"))
binding = epm.hept_map(sys.argv[1], lsarpc, protocol="ncacn_ip_tcp")
port = int(binding.split("[")[1].rstrip("]"))
socket.create_connection((sys.argv[1], port), timeout=3).close()
print(binding)
"""


def test_samba_endpoint_mapper_maps_lsarpc(lab: Lab) -> None:
    """ept_map on SAMBA_ADDR:135 names a dynamic port (it changes per start) that answers."""
    proc = lab.run_cli([sys.executable, "-c", EPT_MAP, SAMBA_ADDR], timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"ncacn_ip_tcp:{SAMBA_ADDR}[49"), proc.stdout


def test_build_ruleset_scopes_and_orders() -> None:
    """The pure rule builder: per-address scoping, ranges, verdict order, validation."""
    rules = build_ruleset(
        drop=[465, (SAMBA_ADDR, "49152-65535")],
        reset=["563"],
        icmp=[(SRV_ADDR6, 445)],
        addresses=None,
    )
    lines = [line.strip() for line in rules.splitlines()]
    body = lines[lines.index('iifname "xp-srv0" ct state established,related accept') + 1 :]
    assert body[:4] == [
        'iifname "xp-srv0" tcp dport { 465 } drop',
        f'iifname "xp-srv0" ip daddr {SAMBA_ADDR} tcp dport {{ 49152-65535 }} drop',
        'iifname "xp-srv0" tcp dport { 563 } reject with tcp reset',
        f'iifname "xp-srv0" ip6 daddr {SRV_ADDR6} tcp dport {{ 445 }} '
        "reject with icmpx type admin-prohibited",
    ]
    scoped = build_ruleset(drop=[25], addresses=[SRV_ADDR])
    assert f"ip daddr {SRV_ADDR} tcp dport {{ 25 }} drop" in scoped
    assert parse_port_spec("[fd00:e5::2]:143") == ("fd00:e5::2", "143")
    assert parse_port_spec("10.250.0.3:49152-65535") == ("10.250.0.3", "49152-65535")
    for bad in ("0", "70000", "20-10", "x"):
        with pytest.raises(ValueError, match="bad port"):
            parse_port_spec(bad)
