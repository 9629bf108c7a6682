"""msrpc-epm in the lab: Samba's real endpoint mapper, and the scripted Exchange 5.5 peer
on 10.250.0.2:135 in the server namespace, with nftables dropping the ports it hands out.

Samba's dynamic ports change on every start, so they are never hard-coded: they are taken
from impacket's own `hept_map` (an independent client) run from the client namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import validate_report
from tests.lab.lab import REPO_ROOT, SAMBA_ADDR, SRV_ADDR, SRV_ADDR6, Lab

pytestmark = pytest.mark.lab

LSARPC = "12345778-1234-abcd-ef00-0123456789ab"
SAMR = "12345778-1234-abcd-ef00-0123456789ac"
WINREG = "338cd001-2244-31f1-aaaa-900038001003"
SAMBA_IFACES = {LSARPC: "0.0", SAMR: "1.0", WINREG: "1.0"}
EX55_PORTS = {"ds": 1600, "is": 1601, "mta": 1602, "sa": 1603}
PAGED_PORT = 1135


def epm_json(lab: Lab, address: str, *args: str, timeout: float = 90) -> tuple[int, dict[str, Any]]:
    out = lab.run_exprobe(
        "epm", address, "--format", "json", "--timeout", "5", "--connect-timeout", "1", *args,
        timeout=timeout,
    )  # fmt: skip
    assert out.stdout, out.stderr
    return out.returncode, validate_report(json.loads(out.stdout))


def split(report: dict[str, Any]) -> tuple[dict[str, Any], dict[tuple[str, int], dict[str, Any]]]:
    results = report["targets"][0]["results"]
    (epm,) = [r for r in results if r["probe"] == "msrpc-epm"]
    derived = {
        (r["facts"]["component"], r["port"]): r for r in results if r.get("parent") == epm["id"]
    }
    return epm, derived


def impacket_map(lab: Lab, address: str, uuid: str, version: str) -> int:
    """The port impacket's hept_map resolves, run inside the client namespace."""
    code = (
        "import sys\n"
        "from impacket.dcerpc.v5 import epm\n"
        "from impacket.uuid import uuidtup_to_bin\n"
        f"b = epm.hept_map({address!r}, uuidtup_to_bin(({uuid!r}, {version!r})),"
        " protocol='ncacn_ip_tcp')\n"
        "print(b)\n"
    )
    out = lab.run_cli([sys.executable, "-c", code], timeout=60)
    assert out.returncode == 0, out.stderr
    binding = out.stdout.strip()
    assert binding.startswith(f"ncacn_ip_tcp:{address}["), binding
    return int(binding.rsplit("[", 1)[1].rstrip("]"))


def samba_args() -> list[str]:
    args: list[str] = []
    for uuid, version in SAMBA_IFACES.items():
        args += ["--interface", f"{uuid}:{version}"]
    return args


# -- Samba ------------------------------------------------------------------------------------------


def test_samba_ept_map_resolves_dynamic_ports_and_follows_them(
    lab: Lab, fw: Callable[..., None]
) -> None:
    expected = {u: impacket_map(lab, SAMBA_ADDR, u, v) for u, v in SAMBA_IFACES.items()}
    assert all(49152 <= p <= 65535 for p in expected.values()), expected
    code, report = epm_json(lab, SAMBA_ADDR, *samba_args())
    epm, derived = split(report)
    assert epm["status"] == "success", epm
    facts = epm["facts"]
    assert facts["lookup"]["complete"] is True
    assert facts["lookup"]["end"] == "no-more-entries"  # Samba's end of enumeration
    assert facts["endpoint_count"] > 20
    mapped = {m["uuid"]: m for m in facts["map"]}
    for uuid, port in expected.items():
        assert mapped[uuid]["registered"] is True
        assert mapped[uuid]["endpoints"] == [f"ncacn_ip_tcp:{SAMBA_ADDR}[{port}]"]
        # ept_lookup lists the same port for the interface.
        listed = {
            e["port"]
            for e in facts["endpoints"]
            if e["uuid"] == uuid and e["protocol"] == "ncacn_ip_tcp"
        }
        assert listed == {port}
    for m in facts["map"]:
        if m["component"] != "other":
            assert (m["registered"], m["status"]) == (False, "0x16c9a0d6 ept_s_not_registered")
    comps = facts["components"]
    assert [comps[c]["registered"] for c in ("is", "ds", "mta")] == [False, False, False]
    assert comps["other"]["ports"] == sorted(set(expected.values()))
    assert comps["other"]["pinning"] == "dynamic (in the ephemeral range)"
    assert "IS not registered; DS not registered; MTA not registered" in epm["message"]
    assert set(derived) == {("other", p) for p in expected.values()}
    for d in derived.values():
        assert (d["probe"], d["status"], d["port_state"]) == ("msrpc-bind", "success", "open")
        assert d["address"] == SAMBA_ADDR
    assert code == 0
    # The endpoint mapper advertises ncacn_http 0.0.0.0:593 although nothing listens there.
    http = [e for e in facts["endpoints"] if e["protocol"] == "ncacn_http"]
    assert http
    assert all(e["host"] == "0.0.0.0" for e in http)


def test_samba_dynamic_ports_dropped_are_filtered(lab: Lab, fw: Callable[..., None]) -> None:
    fw(drop=[(SAMBA_ADDR, "49152-65535")])
    code, report = epm_json(lab, SAMBA_ADDR, *samba_args(), "--follow", "tcp")
    epm, derived = split(report)
    assert epm["status"] == "success"  # 135 itself is open
    assert derived
    for d in derived.values():
        assert (d["probe"], d["status"], d["port_state"], d["failed_step"]) == (
            "tcp",
            "connection-timeout",
            "filtered",
            "connect",
        )
    assert code == 1


# -- the scripted Exchange 5.5 endpoint mapper on 10.250.0.2:135 -----------------------------------


def _spawn_peer(lab: Lab, name: str, port: int, *args: str) -> subprocess.Popen[Any]:
    proc = lab.spawn_srv(
        [sys.executable, "-m", "tests.peers.epm_peer", "--bind", SRV_ADDR, "--bind", SRV_ADDR6,
         "--port", str(port), *args],
        name=name, cwd=str(REPO_ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        lab.wait_port(SRV_ADDR, port)
    except Exception:
        lab.stop(proc)
        raise
    return proc


@pytest.fixture(scope="module")
def ex55(lab: Lab) -> Iterator[dict[str, int]]:
    ports = ",".join(f"{c}={p}" for c, p in EX55_PORTS.items())
    proc = _spawn_peer(
        lab, "epm-peer-ex55", 135, "--mode", "exchange55", "--ports", ports,
        "--listeners", "ds,is,mta,sa",
    )  # fmt: skip
    try:
        for p in EX55_PORTS.values():
            lab.wait_port(SRV_ADDR, p)
        yield EX55_PORTS
    finally:
        lab.stop(proc)


def test_exchange_peer_components_ports_and_reachability(
    lab: Lab, ex55: dict[str, int], fw: Callable[..., None]
) -> None:
    code, report = epm_json(lab, SRV_ADDR, "--components", "ds,is,mta,sa", "--expect", "is=1601")
    epm, derived = split(report)
    assert epm["status"] == "success"
    comps = epm["facts"]["components"]
    for name, port in ex55.items():
        assert comps[name]["registered"] is True
        assert comps[name]["ports"] == [port]
    assert comps["is"]["pinning"] == "pinned as expected"
    assert comps["ds"]["pinning"] == "dynamic (in the ephemeral range)"
    assert epm["message"] == (
        "135 open (11 endpoints listed); IS registered on 10.250.0.2:1601 (pinned as expected); "
        "DS on 1600 (dynamic); MTA on 1602 (dynamic); SA on 1603 (dynamic)"
    )
    assert set(derived) == {(c, p) for c, p in ex55.items()}
    for d in derived.values():
        assert (d["probe"], d["status"], d["address"]) == ("msrpc-bind", "success", SRV_ADDR)
    assert code == 0


def test_exchange_peer_with_the_is_port_dropped(
    lab: Lab, ex55: dict[str, int], fw: Callable[..., None]
) -> None:
    fw(drop=[(SRV_ADDR, ex55["is"])], reset=[(SRV_ADDR, ex55["sa"])])
    code, report = epm_json(lab, SRV_ADDR, "--components", "ds,is,mta,sa")
    epm, derived = split(report)
    assert epm["status"] == "success"
    assert "IS registered on 10.250.0.2:1601" in epm["message"]
    is_ = derived[("is", ex55["is"])]
    assert (is_["status"], is_["port_state"], is_["failed_step"]) == (
        "connection-timeout",
        "filtered",
        "connect",
    )
    sa = derived[("sa", ex55["sa"])]
    assert (sa["status"], sa["port_state"]) == ("connection-refused", "closed")
    for name in ("ds", "mta"):
        assert derived[(name, ex55[name])]["status"] == "success"
    (view,) = report["epm"]
    assert view["components"]["is"]["ports"] == [
        {
            "port": 1601,
            "check": f"msrpc-epm:135/is:{ex55['is']}",
            "status": "connection-timeout",
            "port_state": "filtered",
            "message": "no answer to SYN",
        }
    ]
    assert code == 1


def test_exchange_peer_over_ipv6(lab: Lab, ex55: dict[str, int], fw: Callable[..., None]) -> None:
    code, report = epm_json(lab, SRV_ADDR6, "--follow", "tcp")
    epm, derived = split(report)
    assert epm["status"] == "success"
    assert epm["address"] == SRV_ADDR6
    assert f"IS registered on [{SRV_ADDR6}]:1601" in epm["message"]
    # The towers carry IPv4 only: the derived checks go to the address that was queried.
    assert {d["address"] for d in derived.values()} == {SRV_ADDR6}
    assert {(c, d["status"]) for (c, _), d in derived.items()} == {
        ("ds", "success"),
        ("is", "success"),
        ("mta", "success"),
    }
    assert epm["facts"]["components"]["is"]["advertised_hosts"] == [SRV_ADDR]
    assert code == 0


def test_paging_and_fragments_over_a_real_path(lab: Lab, fw: Callable[..., None]) -> None:
    proc = _spawn_peer(
        lab, "epm-peer-paged", PAGED_PORT, "--mode", "exchange55", "--listeners", "none",
        "--synthetic", "300", "--max-frag", "1024", "--end", "samba", "--page-cap", "40",
    )  # fmt: skip
    try:
        code, report = epm_json(lab, SRV_ADDR, "--port", str(PAGED_PORT), "--follow", "none")
    finally:
        lab.stop(proc)
    epm, derived = split(report)
    assert epm["status"] == "success", epm
    lookup = epm["facts"]["lookup"]
    assert lookup == {"rounds": 8, "entries": 311, "end": "no-more-entries", "complete": True}
    assert derived == {}
    assert code == 0
