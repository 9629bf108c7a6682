"""`exprobe listen` as a rehearsal in the lab: listeners on the spare address, verdicts
from the client namespace, compared with the real servers under the same firewall rules.

`exprobe listen -p exchange55 --bind 10.250.0.6` runs in exprobe-srv on the real ports
(as root).  10.250.0.2 carries the real servers (postfix, dovecot, slapd, inn2, snap7)
and, for the RPC scenarios, the project's independent scripted endpoint mapper
(tests/peers/epm_peer.py) with the same DS/IS/MTA ports as the listener's defaults.  One
`exprobe run 10.250.0.2 10.250.0.6 -p exchange55` per rule set: the rehearsal must give
the verdicts, and the very reasons, that the real servers give.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exprobe.listen.plan import DEFAULT_STATIC_PORTS, build_plan
from exprobe.profile import load_profile
from tests.helpers import validate_report
from tests.lab.lab import CLI_ADDR, REPO_ROOT, SPARE_ADDR, SRV_ADDR, Lab

pytestmark = pytest.mark.lab

Firewall = Callable[..., None]
RPC_PORTS = {c: DEFAULT_STATIC_PORTS[c] for c in ("ds", "is", "mta")}


@dataclass
class Rehearsal:
    proc: subprocess.Popen[Any]
    log: Path
    out: Path
    ports: list[int]

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()]

    def connections(self, port: int) -> int:
        return sum(1 for r in self.records() if r["type"] == "connection" and r["port"] == port)


@pytest.fixture(scope="module")
def rehearsal(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    """`exprobe listen -p exchange55 --bind 10.250.0.6` in exprobe-srv, real ports."""
    tmp = tmp_path_factory.mktemp("listen")
    log, out = tmp / "listen.jsonl", tmp / "listen.out"
    defs, _ = load_profile("exchange55").select([])
    ports = build_plan(defs).ports()
    with out.open("wb") as sink:
        proc = lab.spawn_srv(
            [sys.executable, "-m", "exprobe", "listen", "-p", "exchange55", "--bind", SPARE_ADDR,
             "--log-json", str(log), "--name", "rehearsal.lab.test"],
            name="listen-rehearsal", cwd=str(REPO_ROOT), stdout=sink, stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip
    reh = Rehearsal(proc, log, out, ports)
    try:
        for port in ports:
            lab.wait_port(SPARE_ADDR, port, timeout=20)
        yield reh
    finally:
        lab.stop(proc)
    # Stopped by SIGTERM: a clean exit with the summary, on screen and in the JSON log.
    assert proc.returncode == 0, out.read_text()
    text = out.read_text()
    assert "terminated: " in text, text
    summary = reh.records()[-1]
    assert summary["type"] == "summary"
    assert sorted(p["port"] for p in summary["ports"]) == ports


@pytest.fixture(scope="module")
def real_epm(lab: Lab) -> Iterator[None]:
    """The independent scripted Exchange 5.5 endpoint mapper on 10.250.0.2:135."""
    with lab.exchange55_epm(RPC_PORTS, name="listen-lab-epm-peer"):
        yield


def run_both(lab: Lab, *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One run against the real servers and the rehearsal; verdicts by id for each."""
    out = lab.run_cli(
        [sys.executable, "-m", "exprobe", "run", SRV_ADDR, SPARE_ADDR, "-p", "exchange55",
         "--connect-timeout", "1", "--timeout", "8", "--format", "json", *args],
        timeout=180, cwd=str(REPO_ROOT), env={"NO_COLOR": "1"},
    )  # fmt: skip
    assert out.returncode in (0, 1), out.stderr
    report = validate_report(json.loads(out.stdout))
    by_target = {t["target"]: {v["id"]: v for v in t["scenarios"]} for t in report["targets"]}
    return by_target[SRV_ADDR], by_target[SPARE_ADDR]


def same_verdicts(real: dict[str, Any], rehearsed: dict[str, Any]) -> None:
    """Same verdict, same reason (addresses aside), same deciding alternative."""
    assert set(real) == set(rehearsed)
    for sid, r in real.items():
        x = rehearsed[sid]
        assert (x["verdict"], x["reason"].replace(SPARE_ADDR, SRV_ADDR), x["via"]) == (
            r["verdict"],
            r["reason"],
            r["via"],
        ), sid


def test_everything_open_all_pass_like_the_real_servers(
    lab: Lab, rehearsal: Rehearsal, real_epm: None, fw: Firewall
) -> None:
    real, rehearsed = run_both(lab)
    assert {sid for sid, v in real.items() if v["verdict"] != "pass"} == set()
    same_verdicts(real, rehearsed)
    assert rehearsed["mapi-client"]["reason"] == (
        f"MAPI client works: 135 open, DS on {RPC_PORTS['ds']} open, IS on {RPC_PORTS['is']} open"
    )
    # The listener saw the client on every port the profile needs.
    reached = {r["port"] for r in rehearsal.records()
               if r["type"] == "connection" and r["peer"] == CLI_ADDR}  # fmt: skip
    assert reached == set(rehearsal.ports)


def test_110_dropped_pop3_retrieve_passes_via_995(
    lab: Lab, rehearsal: Rehearsal, real_epm: None, fw: Firewall
) -> None:
    fw(drop=[110])
    before = rehearsal.connections(110), rehearsal.connections(995)
    real, rehearsed = run_both(
        lab, "--scenario", "pop3-retrieve", "--scenario", "pop3-send", "--scenario", "nntp-news"
    )
    same_verdicts(real, rehearsed)
    assert rehearsed["pop3-retrieve"]["verdict"] == "pass"
    assert rehearsed["pop3-retrieve"]["reason"] == (
        "POP3 retrieve works via 995; 110 filtered (connection-timeout)"
    )
    # The dropped SYN never reached the listener; the alternative did.
    assert rehearsal.connections(110) == before[0]
    assert rehearsal.connections(995) > before[1]


def test_is_port_dropped_mapi_client_fails(
    lab: Lab, rehearsal: Rehearsal, real_epm: None, fw: Firewall
) -> None:
    fw(drop=[RPC_PORTS["is"]])
    real, rehearsed = run_both(
        lab, "--scenario", "mapi-client", "--scenario", "intrasite", "--scenario", "intersite-rpc"
    )
    same_verdicts(real, rehearsed)
    assert rehearsed["mapi-client"]["verdict"] == "fail"
    reason = rehearsed["mapi-client"]["reason"]
    assert f"IS registered on {SPARE_ADDR}:{RPC_PORTS['is']}" in reason
    assert f"{RPC_PORTS['is']} filtered (connection-timeout)" in reason
    assert rehearsed["intrasite"]["verdict"] == "pass"
    assert rehearsed["intersite-rpc"]["verdict"] == "pass"


def test_25_rejected_and_102_dropped(
    lab: Lab, rehearsal: Rehearsal, real_epm: None, fw: Firewall
) -> None:
    fw(reset=[25], drop=[102])
    real, rehearsed = run_both(
        lab,
        "--scenario", "smtp-inbound", "--scenario", "imap-send",
        "--scenario", "intersite-x400", "--scenario", "ldap-directory",
    )  # fmt: skip
    same_verdicts(real, rehearsed)
    assert rehearsed["smtp-inbound"]["verdict"] == "fail"
    assert "25 refused (connection-refused)" in rehearsed["smtp-inbound"]["reason"]
    assert rehearsed["intersite-x400"]["verdict"] == "fail"
    assert "102 filtered (connection-timeout)" in rehearsed["intersite-x400"]["reason"]
    assert rehearsed["ldap-directory"]["verdict"] == "pass"
