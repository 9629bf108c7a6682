"""`ldap` and `rfc1006` against the lab's real servers (slapd, python-snap7), run as a
user would run them: the CLI inside the exprobe-cli namespace, JSON parsed back.

slapd (dc=lab,dc=test) answers on 389 (StartTLS) and 636 (LDAPS) with the lab CA's
certificate for mail.lab.test; snap7's server answers a COTP CR on 102 and echoes any
TSAPs.  The firewall tests use nftables in exprobe-srv (drop -> timeout, RST -> refused).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.lab.lab import LAB_PASSWORD, LDAP_BASE, LDAP_USER_DN, SRV_ADDR, SRV_ADDR6, Lab

pytestmark = pytest.mark.lab

PW_ENV = "XP_LAB_LDAP_PASSWORD"


def check(
    lab: Lab, probe: str, *args: str, host: str = SRV_ADDR, env: dict[str, str] | None = None
) -> tuple[dict[str, Any], str, str]:
    """`exprobe check HOST PROBE ARGS --format json` -> (the one result, stdout, stderr)."""
    proc = lab.run_exprobe(
        "check", host, probe, *args, "--format", "json", "--timeout", "8", timeout=60, env=env
    )
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    (result,) = [r for t in report["targets"] for r in t["results"]]
    assert (proc.returncode == 0) == (result["status"] == "success")
    return result, proc.stdout, proc.stderr


def steps(result: dict[str, Any]) -> list[str]:
    return [s["step"] for s in result["steps"]]


# -- LDAP: slapd ----------------------------------------------------------------------------


def test_ldap_anonymous_rootdse(lab: Lab) -> None:
    r, _, _ = check(lab, "ldap")
    assert (r["status"], r["port"], r["port_state"], r["failed_step"]) == (
        "success",
        389,
        "open",
        None,
    )
    facts = r["facts"]
    assert facts["naming_contexts"] == [LDAP_BASE]
    assert "3" in facts["supported_ldap_versions"]
    assert facts["ldap_version_used"] == 3
    assert facts["starttls_offered"] is True
    assert "1.3.6.1.4.1.1466.20037" in facts["supported_extensions"]
    assert facts["subschema_subentry"] == "cn=Subschema"
    assert "bind_v3_result" not in facts
    assert steps(r) == ["connect", "bind", "rootdse", "unbind"]
    assert r["warnings"] == []


def test_ldap_over_ipv6(lab: Lab) -> None:
    r, _, _ = check(lab, "ldap", host=SRV_ADDR6)
    assert (r["status"], r["address"]) == ("success", SRV_ADDR6)
    assert r["facts"]["naming_contexts"] == [LDAP_BASE]


def test_ldap_starttls(lab: Lab) -> None:
    r, _, _ = check(lab, "ldap", "--tls", "starttls", "--ca-file", str(lab.ca_file))
    assert (r["status"], r["port"]) == ("success", 389), r["message"]
    facts = r["facts"]
    assert facts["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert "CN=mail.lab.test" in facts["cert_subject"]
    assert facts["cert_trusted"] is True
    assert facts["cert_name_matches"] is True
    assert facts["naming_contexts"] == [LDAP_BASE]
    assert steps(r) == ["connect", "bind", "rootdse", "starttls", "tls-handshake", "unbind"]
    assert r["warnings"] == []


def test_ldaps_implicit_on_636(lab: Lab) -> None:
    r, _, _ = check(lab, "ldap", "--tls", "implicit", "--ca-file", str(lab.ca_file))
    assert (r["status"], r["port"]) == ("success", 636), r["message"]
    assert r["facts"]["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert "CN=mail.lab.test" in r["facts"]["cert_subject"]
    assert r["facts"]["cert_trusted"] is True
    assert r["facts"]["naming_contexts"] == [LDAP_BASE]
    assert steps(r) == ["connect", "tls-handshake", "bind", "rootdse", "unbind"]


def test_ldaps_without_the_lab_ca_warns_but_works(lab: Lab) -> None:
    r, _, _ = check(lab, "ldap", "--tls", "implicit")
    assert r["status"] == "success"
    assert r["facts"]["cert_trusted"] is False
    assert any("not trusted" in w for w in r["warnings"])


def bind_args(lab: Lab, tls: str) -> list[str]:
    """Options for a simple bind as labuser, the password in PW_ENV."""
    return [
        "--tls",
        tls,
        "--ca-file",
        str(lab.ca_file),
        "--set",
        f"bind_dn={LDAP_USER_DN}",
        "--set",
        f"password_env={PW_ENV}",
    ]


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_simple_bind_as_labuser(lab: Lab, tls: str) -> None:
    r, out, err = check(lab, "ldap", *bind_args(lab, tls), env={PW_ENV: LAB_PASSWORD})
    assert r["status"] == "success", r["message"]
    assert r["facts"]["bound_as"] == LDAP_USER_DN
    assert steps(r)[-2:] == ["auth-bind", "unbind"]
    assert LAB_PASSWORD not in out
    assert LAB_PASSWORD not in err
    assert any("<password redacted>" in line for line in r["transcript"])


def test_wrong_password_is_application_error_49(lab: Lab) -> None:
    wrong = "not-the-labpass-xyz"
    r, out, err = check(lab, "ldap", *bind_args(lab, "starttls"), env={PW_ENV: wrong})
    assert (r["status"], r["failed_step"], r["port_state"]) == (
        "application-error",
        "auth-bind",
        "open",
    )
    assert r["message"] == f"bind as {LDAP_USER_DN} refused: 49 invalidCredentials"
    assert wrong not in out
    assert wrong not in err


def test_password_is_not_sent_in_clear_without_consent(lab: Lab) -> None:
    proc = lab.run_exprobe(
        "check",
        SRV_ADDR,
        "ldap",
        "--set",
        f"bind_dn={LDAP_USER_DN}",
        "--set",
        f"password_env={PW_ENV}",
        env={PW_ENV: LAB_PASSWORD},
        timeout=60,
    )
    assert proc.returncode == 2
    assert "clear text" in proc.stderr
    assert proc.stdout == ""


# -- RFC 1006: python-snap7 -------------------------------------------------------------------


def test_rfc1006_cc_without_tsaps(lab: Lab) -> None:
    r, _, _ = check(lab, "rfc1006")
    assert (r["status"], r["port"], r["port_state"]) == ("success", 102, "open"), r["message"]
    facts = r["facts"]
    assert facts["tpdu"] == "CC"
    assert facts["tpdu_size_requested"] == 1024
    assert facts["tpdu_size_accepted"] == 1024
    assert facts["dst_ref"] == "0x002a"
    assert facts["class"] == 0
    assert steps(r) == ["connect", "cotp-cr", "cotp-cc", "cotp-dr"]
    assert r["warnings"] == []


@pytest.mark.parametrize(
    ("calling", "called", "echo"),
    [
        ("MTA1", "MTA2", ("MTA1", "MTA2")),  # X.400-style text TSAPs
        ("0x0100", "hex:0102", ("0x0100", "0x0102")),  # S7-style hex TSAPs
    ],
)
def test_rfc1006_tsaps_are_accepted_and_echoed(
    lab: Lab, calling: str, called: str, echo: tuple[str, str]
) -> None:
    r, _, _ = check(
        lab, "rfc1006", "--set", f"calling_tsap={calling}", "--set", f"called_tsap={called}"
    )
    assert r["status"] == "success", r["message"]
    assert (r["facts"]["calling_tsap_echoed"], r["facts"]["called_tsap_echoed"]) == echo
    assert r["facts"]["tpdu_size_accepted"] == 1024


def test_run_command_form_with_both_probes(lab: Lab) -> None:
    proc = lab.run_exprobe(
        "run",
        SRV_ADDR,
        "--check",
        "ldap:389:starttls",
        "--check",
        "ldap:636:implicit",
        "--check",
        "rfc1006:102",
        "--format",
        "json",
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = {r["id"]: r for t in json.loads(proc.stdout)["targets"] for r in t["results"]}
    assert {k: v["status"] for k, v in results.items()} == {
        "ldap:389:starttls": "success",
        "ldap:636:implicit": "success",
        "rfc1006:102": "success",
    }


# -- the firewall --------------------------------------------------------------------------------


def test_ldap_dropped_is_connection_timeout(lab: Lab, fw: Any) -> None:
    fw(drop=[389])
    r, _, _ = check(lab, "ldap", "--connect-timeout", "1")
    assert (r["status"], r["port_state"], r["failed_step"]) == (
        "connection-timeout",
        "filtered",
        "connect",
    )


def test_rfc1006_reset_is_connection_refused(lab: Lab, fw: Any) -> None:
    fw(reset=[102])
    r, _, _ = check(lab, "rfc1006", "--connect-timeout", "1")
    assert (r["status"], r["port_state"], r["failed_step"]) == (
        "connection-refused",
        "closed",
        "connect",
    )
