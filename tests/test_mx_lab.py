"""The `mx` probe against a real DNS server (dnsmasq) and the lab's real postfix.

dnsmasq runs in exprobe-srv on SPARE_ADDR, port 5353, with these zones:

| domain | records | expected |
|---|---|---|
| corp.test | MX 10 mail.corp.test (A SRV_ADDR, AAAA SRV_ADDR6), MX 20 backup.corp.test (A SPARE_ADDR: nothing on 25) | mail gets in via mail.corp.test; backup warned |
| implicit.test | A SRV_ADDR, no MX | the implicit MX (RFC 5321 §5.1): the domain itself |
| down.test | MX 10 backup.corp.test | no MX accepts: application-error |
| nowhere.test | MX 10 ghost.corp.test (no address) | no MX has an address |

The same scenario through the inbound-mail scenario of exchange2019 (`--set mx.domain`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import validate_report
from tests.lab.lab import SPARE_ADDR, SRV_ADDR, SRV_ADDR6, Lab

pytestmark = pytest.mark.lab
DNS = f"{SPARE_ADDR}:5353"


@pytest.fixture(scope="module")
def dns(lab: Lab) -> Iterator[str]:
    proc = lab.spawn_srv(
        ["dnsmasq", "--no-resolv", "--no-hosts", "--keep-in-foreground", "--bind-interfaces",
         "--user=root", "--conf-file=/dev/null", f"--listen-address={SPARE_ADDR}", "--port=5353",
         "--local=/test/", "--log-facility=-", "--pid-file=",
         "--mx-host=corp.test,mail.corp.test,10", "--mx-host=corp.test,backup.corp.test,20",
         f"--host-record=mail.corp.test,{SRV_ADDR},{SRV_ADDR6}",
         f"--host-record=backup.corp.test,{SPARE_ADDR}",
         f"--host-record=implicit.test,{SRV_ADDR}",
         "--mx-host=down.test,backup.corp.test,10",
         "--mx-host=nowhere.test,ghost.corp.test,10"],
        name="mx-dnsmasq", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        lab.wait_port(SPARE_ADDR, 5353, timeout=10)
        yield DNS
    finally:
        lab.stop(proc)


def run(lab: Lab, *args: str) -> tuple[int, dict[str, Any]]:
    out = lab.run_cli([sys.executable, "-m", "exprobe", *args, "--format", "json",
                       "--timeout", "10"], timeout=60)  # fmt: skip
    assert out.stdout, out.stderr
    return out.returncode, validate_report(json.loads(out.stdout))


def by_id(rep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{r['id']}@{r['address']}": r for t in rep["targets"] for r in t["results"]}


def test_mail_gets_in_via_the_best_mx(lab: Lab, dns: str) -> None:
    code, rep = run(lab, "run", "corp.test", "--check", "mx", "--dns-server", dns)
    assert code == 1  # a check failed: the backup MX's
    rs = by_id(rep)
    mx = rs["mx:25@None"]
    assert (mx["status"], mx["message"]) == ("success", "mail gets in via mail.corp.test; not via 1 other MX")
    hosts = mx["facts"]["exchangers"]
    assert [(h["preference"], h["host"], h["accepts"]) for h in hosts] == [
        (10, "mail.corp.test", True), (20, "backup.corp.test", False)]  # fmt: skip
    assert hosts[0]["addresses"] == [SRV_ADDR, SRV_ADDR6]
    assert mx["warnings"] == [
        f"MX backup.corp.test ({SPARE_ADDR} connection-refused: refused (RST)) does not"
        " accept mail"
    ]
    # One SMTP check with STARTTLS per exchanger address, against the real postfix.
    kid = rs[f"mx:25/mail.corp.test@{SRV_ADDR}"]
    assert (kid["probe"], kid["status"], kid["tls"]) == ("smtp", "success", "starttls")
    assert kid["facts"]["banner"].startswith("220 ")
    assert rs[f"mx:25/mail.corp.test@{SRV_ADDR6}"]["status"] == "success"
    assert rs[f"mx:25/backup.corp.test@{SPARE_ADDR}"]["status"] == "connection-refused"


def test_implicit_mx(lab: Lab, dns: str) -> None:
    code, rep = run(lab, "run", "implicit.test", "--check", "mx", "--dns-server", dns)
    assert code == 0
    mx = by_id(rep)["mx:25@None"]
    assert mx["facts"]["exchangers"][0]["implicit"] is True
    assert mx["message"] == "mail gets in via implicit.test"


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("down.test", f"no MX accepts mail: backup.corp.test ({SPARE_ADDR} connection-refused:"
                      " refused (RST))"),
        ("nowhere.test", "no MX has an address: ghost.corp.test (A/AAAA ghost.corp.test: "),
        ("absent.test", "no MX to deliver to: MX absent.test: "),
    ],
)  # fmt: skip
def test_no_way_in(lab: Lab, dns: str, domain: str, message: str) -> None:
    code, rep = run(lab, "run", domain, "--check", "mx", "--dns-server", dns)
    assert code == 1
    mx = by_id(rep)["mx:25@None"]
    assert mx["status"] == "application-error"
    assert mx["message"].startswith(message), mx["message"]


def test_inbound_mail_scenario(lab: Lab, dns: str) -> None:
    code, rep = run(lab, "run", SRV_ADDR, "-p", "exchange2019", "--vantage", "internet",
                    "--scenario", "inbound-mail", "--set", "mx.domain=corp.test",
                    "--dns-server", dns)  # fmt: skip
    (v,) = rep["targets"][0]["scenarios"]
    assert code == 0
    assert v["verdict"] == "pass"
    assert v["reason"] == (
        "Inbound Internet mail works: mail gets in via mail.corp.test; not via 1 other MX"
    )
    assert v["warnings"] == [
        f"25: MX backup.corp.test ({SPARE_ADDR} connection-refused: refused (RST)) does not"
        " accept mail"
    ]
