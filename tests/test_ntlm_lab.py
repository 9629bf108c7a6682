"""The `ntlm` step against a real server: postfix with Cyrus SASL's NTLM mechanism
(libsasl2-modules) on 2587 of the lab, agreeing with nmap's smtp-ntlm-info."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from tests.lab.lab import SRV_ADDR, Lab

pytestmark = pytest.mark.lab


def nmap_ntlm(lab: Lab, script: str, port: int) -> dict[str, str]:
    proc = lab.run_cli(["nmap", "-Pn", "-n", "-p", str(port), "--script", f"+{script}", "-oX", "-",
                        SRV_ADDR], timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out: dict[str, str] = {}
    for elem in ET.fromstring(proc.stdout).iter("script"):
        if elem.get("id") == script:
            out["output"] = elem.get("output", "")
            for e in elem.iter("elem"):
                out[e.get("key", "")] = e.text or ""
    return out


def check(lab: Lab, tls: str) -> dict[str, Any]:
    proc = lab.run_cli([sys.executable, "-m", "exprobe", "check", SRV_ADDR, "smtp", "--port",
                        "2587", "--tls", tls, "--set", "ntlm=true", "--format", "json"],
                       timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)["targets"][0]["results"][0]
    return result


@pytest.mark.parametrize("tls", ["none", "starttls"])
def test_cyrus_ntlm_over_smtp_agrees_with_nmap(lab: Lab, tls: str) -> None:
    r = check(lab, tls)
    assert (r["status"], r["failed_step"]) == ("success", None)
    assert [s["step"] for s in r["steps"]][-2:] == ["ntlm", "quit"]
    assert "NTLM" in r["facts"]["auth_mechanisms"]
    # Cyrus SASL's NTLM (NTLMv1 era) names only its realm: no AV pairs, no version, no
    # clock; the facts say exactly that much.
    assert r["facts"]["ntlm"] == {"offered": True, "target_name": "MAIL.LAB.TEST"}
    sent = [line for line in r["transcript"] if line.startswith("C ")]
    assert sent[-3].startswith("C TlRMTVNTUAAB")  # our NEGOTIATE
    assert sent[-2:] == ["C *", "C QUIT"]  # cancelled, no credential
    assert "S 501 5.7.0 Authentication aborted" in r["transcript"]
    nmap = nmap_ntlm(lab, "smtp-ntlm-info", 2587)  # nmap does STARTTLS first, always
    assert {k: v for k, v in nmap.items() if k != "output"} == {
        "Target_Name": r["facts"]["ntlm"]["target_name"]}


def test_not_offered_on_the_dovecot_submission_port(lab: Lab) -> None:
    proc = lab.run_cli([sys.executable, "-m", "exprobe", "check", SRV_ADDR, "smtp", "--port",
                        "587", "--tls", "starttls", "--set", "ntlm=true", "--format", "json"],
                       timeout=60)  # fmt: skip
    r = json.loads(proc.stdout)["targets"][0]["results"][0]
    assert (r["status"], r["facts"]["auth_mechanisms"]) == ("success", ["PLAIN", "LOGIN"])
    assert r["facts"]["ntlm"] == {"offered": False}
    assert not any("NTLM" in line for line in r["transcript"] if line.startswith("C "))
