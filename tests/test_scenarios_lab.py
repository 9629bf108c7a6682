"""Scenario verdicts end to end: `exprobe run 10.250.0.2 -p exchange55` from the client
namespace, against the lab's real servers (postfix, dovecot, slapd, inn2, snap7 on 102)
and the project's scripted Exchange 5.5 endpoint mapper on 10.250.0.2:135, under several
firewall rule sets."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import validate_report
from tests.lab.lab import REPO_ROOT, SRV_ADDR, Lab

pytestmark = pytest.mark.lab

# Pinned DS/IS/MTA ports of the scripted Exchange 5.5 server (ephemeral-looking on purpose).
EPM_PORTS = {"ds": 4600, "is": 4601, "mta": 4602}
ALT_RFC1006 = 10102
ALL_55 = {
    "smtp-inbound",
    "mapi-client",
    "intrasite",
    "intersite-rpc",
    "intersite-x400",
    "pop3-retrieve",
    "pop3-send",
    "ldap-directory",
    "nntp-news",
    "imap-retrieve",
    "imap-send",
}
Firewall = Callable[..., None]


@pytest.fixture(scope="module")
def exchange(lab: Lab) -> Iterator[dict[str, int]]:
    """The scripted Exchange 5.5 endpoint mapper on 135 with DS, IS and MTA listeners."""
    with lab.exchange55_epm(EPM_PORTS, name="scenarios-epm-peer"):
        yield EPM_PORTS


@pytest.fixture(scope="module")
def second_mta(lab: Lab) -> Iterator[int]:
    """Another RFC 1006 peer (python-snap7) on a non-default port, as after KB 161931."""
    proc = lab.spawn_srv(
        [sys.executable, "tests/lab/s7server.py", "--host", SRV_ADDR, "--port", str(ALT_RFC1006)],
        name="scenarios-s7-alt", cwd=str(REPO_ROOT),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        lab.wait_port(SRV_ADDR, ALT_RFC1006)
        yield ALT_RFC1006
    finally:
        lab.stop(proc)


def run(lab: Lab, *args: str, fmt: str = "json") -> tuple[int, dict[str, dict[str, Any]], str]:
    """`exprobe run 10.250.0.2 -p exchange55 ARGS` in exprobe-cli: exit code, verdicts by id."""
    out = lab.run_cli(
        [sys.executable, "-m", "exprobe", "run", SRV_ADDR, "-p", "exchange55",
         "--connect-timeout", "1", "--timeout", "8", "--format", fmt, *args],
        timeout=120, cwd=str(REPO_ROOT), env={"NO_COLOR": "1", "COLUMNS": "220"},
    )  # fmt: skip
    assert out.returncode in (0, 1), out.stderr
    if fmt != "json":
        return out.returncode, {}, out.stdout
    report = validate_report(json.loads(out.stdout))
    (target,) = report["targets"]
    assert target["addresses"] == [SRV_ADDR]
    verdicts = {v["id"]: v for v in target["scenarios"]}
    assert len(verdicts) == len(target["scenarios"])  # one address: one verdict per scenario
    return out.returncode, verdicts, out.stdout


def test_everything_open_every_scenario_passes(
    lab: Lab, exchange: dict[str, int], fw: Firewall
) -> None:
    code, v, raw = run(lab)
    assert set(v) == ALL_55
    assert {sid for sid, x in v.items() if x["verdict"] != "pass"} == set(), raw
    assert code == 0
    assert v["pop3-retrieve"]["reason"] == "POP3 retrieve works via 110"
    assert v["pop3-retrieve"]["via"] == "pop3"
    assert v["imap-retrieve"]["reason"] == "IMAP4 retrieve works via 143"
    assert v["ldap-directory"]["reason"] == "LDAP directory works via 389"
    assert v["nntp-news"]["reason"] == "NNTP news works via 119"
    assert v["smtp-inbound"]["reason"] == "Inbound SMTP works: 25 open"
    assert v["mapi-client"]["reason"] == (
        "MAPI client works: 135 open, DS on 4600 open, IS on 4601 open"
    )
    assert v["mapi-client"]["checks"] == ["epm", "epm/ds:4600", "epm/is:4601"]
    assert v["intrasite"]["reason"] == "Intrasite works: 135 open, DS on 4600 open, MTA on 4602 open"
    assert v["intersite-rpc"]["reason"] == "Intersite RPC works: 135 open, MTA on 4602 open"
    assert v["intersite-x400"]["reason"] == "Intersite X.400 works: 102 open"
    for x in v.values():
        assert x["hints"] == []


def test_110_dropped_pop3_retrieve_passes_via_995(
    lab: Lab, exchange: dict[str, int], fw: Firewall
) -> None:
    fw(drop=[(SRV_ADDR, 110)])
    code, v, _ = run(lab, "--scenario", "pop3-retrieve", "--scenario", "pop3-send")
    assert set(v) == {"pop3-retrieve", "pop3-send"}
    r = v["pop3-retrieve"]
    assert r["verdict"] == "pass"
    assert r["reason"] == "POP3 retrieve works via 995; 110 filtered (connection-timeout)"
    assert (r["via"], r["checks"]) == ("pop3s", ["pop3s"])
    assert v["pop3-send"]["verdict"] == "pass"
    assert code == 0


def test_110_and_995_blocked_pop3_retrieve_fails_naming_both(
    lab: Lab, exchange: dict[str, int], fw: Firewall
) -> None:
    fw(drop=[(SRV_ADDR, 110)], reset=[(SRV_ADDR, 995)])
    code, v, _ = run(lab, "--scenario", "pop3-retrieve")
    r = v["pop3-retrieve"]
    assert r["verdict"] == "fail"
    assert r["reason"] == (
        "POP3 retrieve fails: 110 filtered (connection-timeout) and 995 refused (connection-refused)"
    )
    assert r["checks"] == ["pop3", "pop3s"]
    assert r["hints"][:2] == [
        "Open TCP 110 from the client subnet to 10.250.0.2.",
        "Nothing accepted TCP 995 on 10.250.0.2 (refused): start the service there, or stop the"
        " firewall rejecting it from the client subnet.",
    ]
    assert code == 1


def test_25_reset_both_send_scenarios_fail_naming_25_refused(
    lab: Lab, exchange: dict[str, int], fw: Firewall
) -> None:
    fw(reset=[(SRV_ADDR, 25)])
    code, v, _ = run(
        lab, "--scenario", "pop3-send", "--scenario", "imap-send", "--scenario", "imap-retrieve"
    )
    assert v["pop3-send"]["reason"] == "POP3 send fails: 25 refused (connection-refused)"
    assert v["imap-send"]["reason"] == "IMAP4 send fails: 25 refused (connection-refused)"
    for sid in ("pop3-send", "imap-send"):
        assert v[sid]["verdict"] == "fail"
        assert v[sid]["checks"] == ["smtp"]
        assert v[sid]["hints"][0].startswith("Nothing accepted TCP 25 on 10.250.0.2 (refused)")
    assert v["imap-retrieve"]["verdict"] == "pass"
    assert code == 1


def test_is_port_dropped_mapi_fails_naming_it_and_intersite_rpc_passes(
    lab: Lab, exchange: dict[str, int], fw: Firewall
) -> None:
    is_port = exchange["is"]
    fw(drop=[(SRV_ADDR, is_port)])
    code, v, _ = run(
        lab, "--scenario", "mapi-client", "--scenario", "intersite-rpc", "--scenario", "intrasite"
    )
    m = v["mapi-client"]
    assert m["verdict"] == "fail"
    assert m["reason"] == (
        f"MAPI client fails: 135 open, IS registered on 10.250.0.2:{is_port},"
        f" {is_port} filtered (connection-timeout)"
    )
    assert m["checks"] == ["epm", f"epm/is:{is_port}"]
    assert m["hints"][0] == f"Open TCP {is_port} (IS) from the client subnet to 10.250.0.2."
    assert any(h.endswith("(KB 155831)") for h in m["hints"])
    assert not any("not running" in h for h in m["hints"])
    assert v["intersite-rpc"]["verdict"] == "pass"
    assert v["intersite-rpc"]["reason"] == "Intersite RPC works: 135 open, MTA on 4602 open"
    assert v["intrasite"]["verdict"] == "pass"
    assert code == 1


def test_135_dropped_the_endpoint_mapper_is_the_breaking_hop(
    lab: Lab, exchange: dict[str, int], fw: Firewall
) -> None:
    fw(drop=[(SRV_ADDR, 135)])
    code, v, _ = run(lab, "--scenario", "mapi-client", "--scenario", "intersite-x400")
    m = v["mapi-client"]
    assert m["reason"] == (
        "MAPI client fails: 135 filtered (connection-timeout): the endpoint mapper cannot be"
        " asked where the DS and IS listen"
    )
    assert (m["checks"], m["hints"]) == (
        ["epm"],
        ["Open TCP 135 from the client subnet to 10.250.0.2."],
    )
    assert v["intersite-x400"]["verdict"] == "pass"  # no RPC on the X.400 connector
    assert code == 1


def test_102_dropped_x400_fails_and_the_rpc_site_connector_is_unaffected(
    lab: Lab, exchange: dict[str, int], fw: Firewall
) -> None:
    fw(drop=[(SRV_ADDR, 102)])
    code, v, _ = run(lab, "--scenario", "intersite-x400", "--scenario", "intersite-rpc")
    x = v["intersite-x400"]
    assert x["verdict"] == "fail"
    assert x["reason"] == "Intersite X.400 fails: 102 filtered (connection-timeout)"
    assert x["hints"][0] == "Open TCP 102 from the MTA in the other site to 10.250.0.2."
    assert any(h.endswith("(KB 161931)") for h in x["hints"])
    assert v["intersite-rpc"]["verdict"] == "pass"
    assert code == 1


def test_rfc1006_port_overridden_to_where_the_mta_listens(
    lab: Lab, exchange: dict[str, int], second_mta: int, fw: Firewall
) -> None:
    fw(drop=[(SRV_ADDR, 102)])  # only the moved port can carry it
    code, v, raw = run(lab, "--scenario", "intersite-x400", "--set", f"x400.port={second_mta}")
    x = v["intersite-x400"]
    assert (x["verdict"], x["reason"]) == ("pass", f"Intersite X.400 works: {second_mta} open")
    assert json.loads(raw)["profile"]["overrides"] == [f"x400.port={second_mta}"]
    assert code == 0
    # ...and a port where no MTA listens is refused, not silently passed
    code, v, _ = run(lab, "--scenario", "intersite-x400", "--set", "x400.port=10103")
    assert v["intersite-x400"]["reason"] == (
        "Intersite X.400 fails: 10103 refused (connection-refused)"
    )
    assert code == 1


def test_pinned_port_expectation_becomes_a_warning(
    lab: Lab, exchange: dict[str, int], fw: Firewall
) -> None:
    code, v, _ = run(lab, "--scenario", "mapi-client", "--set", "epm.expect_is=4601")
    assert (v["mapi-client"]["verdict"], v["mapi-client"]["warnings"]) == ("pass", [])
    assert code == 0
    code, v, _ = run(lab, "--scenario", "mapi-client", "--set", "epm.expect_is=1601")
    m = v["mapi-client"]
    assert m["verdict"] == "pass"  # reachable; the pin differs from what the admin expects
    assert m["warnings"] == ["135: IS: registered on 4601, expected 1601"]
    assert code == 0


def test_table_with_the_is_port_dropped(lab: Lab, exchange: dict[str, int], fw: Firewall) -> None:
    fw(drop=[(SRV_ADDR, exchange["is"])])
    code, _, text = run(lab, "--scenario", "mapi-client", "-v", fmt="table")
    assert code == 1
    assert "MAPI client │ FAIL" in text
    assert "FAIL MAPI client  10.250.0.2" in text  # the -v tree
    assert "epm/is:4601  msrpc-bind 4601  filtered connection-timeout  at connect" in text
    assert "hint: Open TCP 4601 (IS) from the client subnet to 10.250.0.2." in text
    assert "scenarios 0 pass, 1 fail" in text
