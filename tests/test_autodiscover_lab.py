"""Autodiscover the way Outlook looks for it, and DNS at a chosen server, against real
DNS servers (dnsmasq, internal and external views) and HTTPS hosts (nginx) in front of a
scripted Exchange backend (tests/lab/dnslab.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import validate_report
from tests.lab.dnslab import DNS, HOSTS, DnsLab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def dnslab() -> Iterator[DnsLab]:
    lab = DnsLab()
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


def autodiscover(lab: DnsLab, domain: str, view: str = "internal") -> tuple[int, dict[str, Any]]:
    proc = lab.cli([sys.executable, "-m", "exprobe", "run", domain, "--check", "autodiscover",
                    "--dns-server", DNS[view], "--ca-file", str(lab.ca_pem), "--format",
                    "json", "--timeout", "5", "--connect-timeout", "2"])  # fmt: skip
    assert proc.stdout, proc.stderr
    report = validate_report(json.loads(proc.stdout))
    return proc.returncode, report


def parent(report: dict[str, Any]) -> dict[str, Any]:
    return next(r for t in report["targets"] for r in t["results"] if r["probe"] == "autodiscover")


def methods(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {r["facts"]["autodiscover_method"]: r for t in report["targets"] for r in t["results"]
            if "autodiscover_method" in r["facts"]}  # fmt: skip


@pytest.mark.parametrize(
    ("domain", "method", "failed_before", "why"),
    [
        ("one.lab", 1, [], []),
        ("two.lab", 2, [1], ["A/AAAA two.lab: NODATA (no A or AAAA record)"]),
        ("three.lab", 3, [1, 2], ["A/AAAA three.lab: NODATA (no A or AAAA record)",
                                  f"{HOSTS['redirect']}:443 connection-refused: refused (RST)"]),
        ("four.lab", 4, [1, 2, 3], ["A/AAAA four.lab: NODATA (no A or AAAA record)",
                                    "A/AAAA autodiscover.four.lab: NXDOMAIN (no such name)",
                                    "A/AAAA autodiscover.four.lab: NXDOMAIN (no such name)"]),
    ],
)  # fmt: skip
def test_outlook_ends_on_the_first_method_that_carries(
    dnslab: DnsLab, domain: str, method: int, failed_before: list[int], why: list[str]
) -> None:
    _code, report = autodiscover(dnslab, domain)
    r = parent(report)
    assert (r["status"], r["failed_step"]) == ("success", None)
    assert report["targets"][0]["error"] is None  # the domain itself need not resolve
    ad = r["facts"]["autodiscover"]
    assert (ad["method"], ad["failed_before"]) == (method, failed_before)
    host = {1: domain, 2: f"autodiscover.{domain}", 4: "mail.four.lab"}.get(method)
    scheme = "http" if method == 3 else "https"
    assert ad["url"] == f"{scheme}://{host or 'autodiscover.' + domain}/autodiscover/autodiscover.xml"
    assert [m["why"] for m in ad["methods"] if m["method"] in failed_before] == why
    assert r["message"].startswith(f"Outlook ends on method {method} (")
    assert r["facts"]["dns_server"] == DNS["internal"]
    chosen = methods(report)[method]
    assert chosen["status"] == "success"
    assert chosen["parent"] == r["id"]
    if method == 3:
        assert chosen["facts"]["status"] == 302
        assert chosen["facts"]["location"] == "https://autodiscover.three.lab/autodiscover/autodiscover.xml"
    else:
        assert chosen["facts"]["cert_name_matches"] is True
        assert chosen["facts"]["cert_trusted"] is True
        assert chosen["facts"]["status"] == 401
    if method == 4:
        srv = next(m for m in r["facts"]["methods"] if m["method"] == 4)["srv"]
        assert srv == [{"priority": 0, "weight": 0, "port": 443, "target": "mail.four.lab"}]


def test_no_method_carries_names_each_failure(dnslab: DnsLab) -> None:
    code, report = autodiscover(dnslab, "five.lab")
    r = parent(report)
    assert code == 1
    assert (r["status"], r["failed_step"]) == ("application-error", "methods")
    why = {m["method"]: m["why"] for m in r["facts"]["autodiscover"]["methods"]}
    assert why == {
        1: "A/AAAA five.lab: NODATA (no A or AAAA record)",
        2: f"{HOSTS['mail4']}:443 TLS name mismatch: the certificate does not name"
           " autodiscover.five.lab (DNS:mail.four.lab)",
        3: f"{HOSTS['mail4']}:80 connection-refused: refused (RST)",
        4: "SRV _autodiscover._tcp.five.lab: NXDOMAIN (no such name)",
    }  # fmt: skip
    assert r["message"] == "no Autodiscover method carries: " + "; ".join(
        f"{n} ({name}): {why[n]}"
        for n, name in ((1, "root domain"), (2, "autodiscover host"), (3, "HTTP redirect"),
                        (4, "SRV record")))  # fmt: skip


def test_split_brain_dns(dnslab: DnsLab) -> None:
    """The same domain from the internal and the external DNS view: different endings."""
    _c, inside = autodiscover(dnslab, "two.lab", "internal")
    _c, outside = autodiscover(dnslab, "two.lab", "external")
    assert parent(inside)["facts"]["autodiscover"]["method"] == 2
    out = parent(outside)
    assert out["status"] == "application-error"
    assert out["facts"]["dns_server"] == DNS["external"]
    two = next(m for m in out["facts"]["methods"] if m["method"] == 2)
    assert two["addresses"] == [HOSTS["nothing"]]


@pytest.mark.parametrize(
    ("name", "server", "error"),
    [
        ("nope.lab", DNS["internal"], "dns-error: A/AAAA nope.lab: NXDOMAIN (no such name) (asked 10.254.0.2)"),
        ("two.lab", DNS["internal"], "dns-error: A/AAAA two.lab: NODATA (no A or AAAA record) (asked 10.254.0.2)"),
        ("mail.example.com", DNS["internal"], "dns-error: A/AAAA mail.example.com: REFUSED (the server will not answer) (asked 10.254.0.2)"),
        ("one.lab", "10.254.0.99", "dns-error: A/AAAA one.lab: timeout (no answer) (asked 10.254.0.99)"),
    ],
)  # fmt: skip
def test_dns_server_resolves_targets_and_names_each_failure(
    dnslab: DnsLab, name: str, server: str, error: str
) -> None:
    proc = dnslab.cli([sys.executable, "-m", "exprobe", "run", name, "--port", "443",
                       "--dns-server", server, "--format", "json"], timeout=90)  # fmt: skip
    report = validate_report(json.loads(proc.stdout))
    assert proc.returncode == 1
    assert report["targets"][0]["error"] == error


def test_dns_server_resolves_a_target_that_works(dnslab: DnsLab) -> None:
    proc = dnslab.cli([sys.executable, "-m", "exprobe", "run", "one.lab", "--port", "443",
                       "--dns-server", DNS["internal"], "--format", "json"])  # fmt: skip
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout
    assert report["targets"][0]["addresses"] == [HOSTS["one"]]
