"""smtp, pop3, imap and nntp against the lab's real servers, from the client namespace.

postfix (25/587/465), dovecot (110/995, 143/993) and INN (119, nnrpd 563) on 10.250.0.2:
every probe with tls none, starttls and implicit, asserting the facts (banner, STARTTLS
offered, TLS version, certificate subject and trust with --ca-file).  Then the broken
certificates on 10.250.0.4 (expired) and 10.250.0.5 (wrong name), and a firewall drop.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.lab.lab import (
    EXPIRED_ADDR,
    SMTP_BANNER,
    SRV_ADDR,
    SRV_ADDR6,
    TLS_DIR,
    WRONGNAME_ADDR,
    Lab,
)

pytestmark = pytest.mark.lab

CHECKS = [
    "smtp:25", "smtp:25:starttls", "smtp:587:starttls", "smtp:465:implicit",
    "pop3:110", "pop3:110:starttls", "pop3:995:implicit",
    "imap:143", "imap:143:starttls", "imap:993:implicit",
    "nntp:119", "nntp:119:starttls", "nntp:563:implicit",
]  # fmt: skip

STEPS = {
    ("smtp", "none"): ["connect", "greeting", "ehlo", "quit"],
    ("smtp", "starttls"): ["connect", "greeting", "ehlo", "starttls", "tls-handshake",
                           "ehlo-tls", "quit"],
    ("smtp", "implicit"): ["connect", "tls-handshake", "greeting", "ehlo", "quit"],
    ("pop3", "none"): ["connect", "greeting", "capa", "quit"],
    ("pop3", "starttls"): ["connect", "greeting", "capa", "starttls", "tls-handshake",
                           "capa-tls", "quit"],
    ("pop3", "implicit"): ["connect", "tls-handshake", "greeting", "capa", "quit"],
    # dovecot puts its capabilities in the greeting: no CAPABILITY command before TLS.
    ("imap", "none"): ["connect", "greeting", "logout"],
    ("imap", "starttls"): ["connect", "greeting", "starttls", "tls-handshake",
                           "capability-tls", "logout"],
    ("imap", "implicit"): ["connect", "tls-handshake", "greeting", "logout"],
    ("nntp", "none"): ["connect", "greeting", "capabilities", "quit"],
    ("nntp", "starttls"): ["connect", "greeting", "capabilities", "starttls", "tls-handshake",
                           "capabilities-tls", "quit"],
    ("nntp", "implicit"): ["connect", "tls-handshake", "greeting", "capabilities", "quit"],
}  # fmt: skip

GOODBYE = {"smtp": "C QUIT", "pop3": "C QUIT", "imap": "LOGOUT", "nntp": "C QUIT"}


def exprobe_json(lab: Lab, *args: str, timeout: float = 90) -> tuple[int, dict[str, Any]]:
    """`python -m exprobe ARGS --format json` inside exprobe-cli: (exit code, report)."""
    proc = lab.run_cli(
        [sys.executable, "-m", "exprobe", *args, "--format", "json"], timeout=timeout
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def results(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for t in report["targets"] for r in t["results"]}


def run_checks(lab: Lab, target: str, checks: list[str], *extra: str) -> dict[str, Any]:
    argv = ["run", target, "--per-host", "16", "-v"]
    for c in checks:
        argv += ["--check", c]
    _, report = exprobe_json(lab, *argv, *extra)
    return results(report)


@pytest.fixture(scope="module")
def lab_results(lab: Lab) -> dict[str, Any]:
    """Every success-path check, run once (in parallel) with the lab CA trusted."""
    return run_checks(lab, SRV_ADDR, CHECKS, "--ca-file", str(lab.ca_file))


# -- success paths ------------------------------------------------------------------------


@pytest.mark.parametrize("check", CHECKS)
def test_success_path(lab_results: dict[str, Any], check: str) -> None:
    r = lab_results[check]
    probe, _, tls = [*check.split(":"), "none"][:3]
    facts = r["facts"]
    assert (r["status"], r["port_state"], r["failed_step"]) == ("success", "open", None), r
    assert [s["step"] for s in r["steps"]] == STEPS[(probe, tls)]
    assert r["warnings"] == []
    assert any(GOODBYE[probe] in line for line in r["transcript"])  # a polite goodbye

    banner = facts["banner"]
    if probe == "smtp":
        assert banner == SMTP_BANNER
        assert facts["banner_masked"] is False
        assert facts["ehlo_domain"] == "mail.lab.test"
        assert facts["size_limit"] == 10240000
    elif probe == "pop3":
        assert banner == "+OK Dovecot (Debian) ready."
        assert facts["apop"] is False
    elif probe == "imap":
        assert banner.startswith("* OK [CAPABILITY IMAP4rev1 ")
        assert banner.endswith("] Dovecot (Debian) ready.")
        assert facts["capabilities_source"] == "greeting"
    else:
        assert banner.startswith("200 news.lab.test InterNetNews NNRP server INN 2.7.1 ready")
        assert facts["posting_allowed"] is True
        assert facts["nntp_version"] == "2"

    if tls == "implicit":
        assert "starttls_offered" not in facts
    else:
        assert facts["starttls_offered"] is True
        offered = {
            "smtp": lambda: "STARTTLS" in facts["ehlo_extensions"],
            "pop3": lambda: "STLS" in facts["capabilities"],
            "imap": lambda: "STARTTLS" in facts["capabilities"],
            "nntp": lambda: "STARTTLS" in facts["capabilities"],
        }
        assert offered[probe]()

    if tls == "none":
        assert "tls_version" not in facts
        return
    assert facts["tls_version"] == "TLSv1.3"
    assert facts["tls_cipher"]
    assert facts["cert_subject"] == "CN=mail.lab.test,O=exprobe lab"
    assert facts["cert_issuer"] == "CN=exprobe lab CA,O=exprobe lab"
    assert "IP:10.250.0.2" in facts["cert_san"]
    assert facts["cert_trusted"] is True
    assert facts["cert_name_matches"] is True
    assert facts["cert_days_left"] > 800
    assert re.fullmatch(r"[0-9a-f]{64}", facts["cert_sha256"])
    assert "TLSv1.3" in r["message"]


def test_what_changes_after_starttls(lab_results: dict[str, Any]) -> None:
    smtp = lab_results["smtp:587:starttls"]["facts"]
    assert "STARTTLS" not in smtp["ehlo_extensions_tls"]
    assert "AUTH" not in smtp["ehlo_extensions"]
    assert smtp["auth_mechanisms"] == ["PLAIN", "LOGIN"]  # submission offers AUTH under TLS

    imap = lab_results["imap:143:starttls"]["facts"]
    assert "LOGINDISABLED" in imap["capabilities"]
    assert "STARTTLS" not in imap["capabilities_tls"]
    assert imap["login_disabled"] is False
    assert imap["auth_mechanisms"] == ["PLAIN", "LOGIN"]
    assert lab_results["imap:143"]["facts"]["login_disabled"] is True

    pop3 = lab_results["pop3:110:starttls"]["facts"]
    assert "USER" not in pop3["capabilities"]
    assert "USER" in pop3["capabilities_tls"]
    assert pop3["user_login"] is True
    assert pop3["auth_mechanisms"] == ["PLAIN", "LOGIN"]

    nntp = lab_results["nntp:119:starttls"]["facts"]
    assert "STARTTLS" not in nntp["capabilities_tls"]
    assert "PLAIN" in nntp["auth_mechanisms"]


def test_check_command_table_and_json(lab: Lab) -> None:
    base = [sys.executable, "-m", "exprobe", "check", SRV_ADDR, "smtp", "--tls", "starttls",
            "--ca-file", str(lab.ca_file)]  # fmt: skip
    table = lab.run_cli([*base, "--no-color"], timeout=60)
    assert table.returncode == 0, table.stdout + table.stderr
    out = table.stdout
    assert out.startswith("smtp 10.250.0.2:25 open success")
    assert "steps: connect" in out
    assert "→ starttls" in out
    assert "→ tls-handshake" in out
    assert f"  S {SMTP_BANNER}" in out
    assert "  C EHLO exprobe.invalid" in out
    assert "  C STARTTLS" in out
    assert "  S 220 2.0.0 Ready to start TLS" in out
    assert re.search(r"^cert_subject +CN=mail\.lab\.test,O=exprobe lab", out, re.M)
    assert "warning" not in out

    code, report = exprobe_json(lab, "check", SRV_ADDR, "pop3", "--port", "110", "--tls",
                                "starttls", "--ca-file", str(lab.ca_file))  # fmt: skip
    assert code == 0
    (r,) = results(report).values()
    assert r["facts"]["tls_version"] == "TLSv1.3"
    assert "STLS" in r["facts"]["capabilities"]


def test_ipv6(lab: Lab) -> None:
    res = run_checks(
        lab,
        SRV_ADDR6,
        ["smtp:25:starttls", "imap:993:implicit", "pop3:110"],
        "--ca-file",
        str(lab.ca_file),
    )
    for r in res.values():
        assert (r["status"], r["address"]) == ("success", SRV_ADDR6), r
    assert res["smtp:25:starttls"]["facts"]["cert_name_matches"] is True  # IP:fd00:e5::2
    assert res["imap:993:implicit"]["facts"]["cert_trusted"] is True


# -- trust and expiry -----------------------------------------------------------------------


def test_without_the_lab_ca_the_chain_is_untrusted_but_the_check_passes(lab: Lab) -> None:
    res = run_checks(lab, SRV_ADDR, ["imap:993:implicit"])
    r = res["imap:993:implicit"]
    assert r["status"] == "success"
    assert r["facts"]["cert_trusted"] is False
    assert r["facts"]["cert_name_matches"] is True
    assert r["warnings"] == ["TLS: certificate chain not trusted (issuer unknown)"]

    res = run_checks(lab, SRV_ADDR, ["smtp:25:starttls"], "--tls-verify")
    r = res["smtp:25:starttls"]
    assert (r["status"], r["failed_step"]) == ("tls-error", "tls-handshake")
    assert r["message"] == "certificate rejected: certificate chain not trusted (issuer unknown)"


def test_cert_warn_days(lab: Lab) -> None:
    res = run_checks(
        lab, SRV_ADDR, ["pop3:995:implicit"], "--ca-file", str(lab.ca_file),
        "--cert-warn-days", "1000",
    )  # fmt: skip
    r = res["pop3:995:implicit"]
    assert r["status"] == "success"
    (warning,) = r["warnings"]
    assert re.fullmatch(
        r"TLS: certificate expires in 8[0-9][0-9] days \(\d{4}-\d\d-\d\d\)", warning
    )


@contextlib.contextmanager
def greeting_tls_server(lab: Lab, addr: str, stem: str, greeting: bytes) -> Iterator[int]:
    """`openssl s_server` with a lab certificate on addr:1993, for one connection, that
    sends `greeting` (piped on its stdin) once the client connects.

    The lab's own s_server instances on 993 echo (`-rev`) and never greet, so an IMAP
    check there ends in io-timeout at the greeting; this one lets it succeed.
    """
    port = 1993
    proc = lab.spawn_srv(
        ["openssl", "s_server", "-quiet", "-naccept", "1", "-accept", f"{addr}:{port}",
         "-cert", str(TLS_DIR / f"{stem}.crt"), "-key", str(TLS_DIR / f"{stem}.key")],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        # Not by connecting: the one connection it accepts is the check's.
        while f"{addr}:{port}" not in lab.run_srv(["ss", "-Hltn"], timeout=5).stdout:
            assert proc.poll() is None, "openssl s_server exited"
            assert time.monotonic() < deadline, "openssl s_server did not listen"
            time.sleep(0.05)
        assert proc.stdin is not None
        proc.stdin.write(greeting)
        proc.stdin.flush()
        yield port
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        lab.stop(proc)


IMAP_SCRIPT = (
    b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] openssl s_server\r\n"
    b"* BYE logging out\r\nA1 OK LOGOUT completed\r\n"
)


def test_expired_certificate_is_a_warning(lab: Lab) -> None:
    with greeting_tls_server(lab, EXPIRED_ADDR, "expired", IMAP_SCRIPT) as port:
        res = run_checks(lab, EXPIRED_ADDR, [f"imap:{port}:implicit"], "--ca-file",
                         str(lab.ca_file))  # fmt: skip
    r = res[f"imap:{port}:implicit"]
    assert r["status"] == "success", r
    facts = r["facts"]
    assert facts["cert_days_left"] < 0
    assert facts["cert_trusted"] is True  # the lab CA signed it: only its dates are wrong
    assert facts["cert_name_matches"] is False  # SAN mail.lab.test, target an address
    expired = [w for w in r["warnings"] if w.startswith("TLS: certificate expired ")]
    assert len(expired) == 1
    assert facts["cert_not_after"][:10] in expired[0]
    assert facts["capabilities"] == ["IMAP4REV1", "AUTH=PLAIN"]


def test_expired_certificate_on_the_lab_s_server(lab: Lab) -> None:
    # The lab's s_server -rev never greets: the TLS facts survive the io-timeout.
    res = run_checks(lab, EXPIRED_ADDR, ["imap:993:implicit"], "--ca-file", str(lab.ca_file),
                     "--timeout", "2")  # fmt: skip
    r = res["imap:993:implicit"]
    assert (r["status"], r["failed_step"]) == ("io-timeout", "greeting")
    assert r["facts"]["cert_days_left"] < 0
    assert any(w.startswith("TLS: certificate expired ") for w in r["warnings"])


@pytest.mark.parametrize("check", ["imap:993:implicit", "smtp:465:implicit"])
def test_expired_certificate_with_tls_verify_is_tls_error(lab: Lab, check: str) -> None:
    res = run_checks(lab, EXPIRED_ADDR, [check], "--ca-file", str(lab.ca_file), "--tls-verify")
    r = res[check]
    assert (r["status"], r["port_state"], r["failed_step"]) == ("tls-error", "open",
                                                                "tls-handshake")  # fmt: skip
    assert r["message"].startswith("certificate rejected: certificate expired ")
    assert r["facts"]["cert_subject"] == "CN=mail.lab.test,O=exprobe lab"


def test_wrong_name_certificate_is_a_warning(lab: Lab) -> None:
    with greeting_tls_server(lab, WRONGNAME_ADDR, "wrongname", IMAP_SCRIPT) as port:
        res = run_checks(lab, WRONGNAME_ADDR, [f"imap:{port}:implicit"], "--ca-file",
                         str(lab.ca_file))  # fmt: skip
    r = res[f"imap:{port}:implicit"]
    assert r["status"] == "success", r
    facts = r["facts"]
    assert facts["cert_subject"] == "CN=wrong.example,O=exprobe lab"
    assert facts["cert_san"] == ["DNS:wrong.example"]
    assert facts["cert_name_matches"] is False
    assert facts["cert_trusted"] is True
    # The target is an address, so the name matched is the address.
    assert r["warnings"] == [f"TLS: certificate does not match the name '{WRONGNAME_ADDR}'"]


@pytest.mark.parametrize("check", ["imap:993:implicit", "smtp:465:implicit"])
def test_wrong_name_certificate_with_tls_verify_is_tls_error(lab: Lab, check: str) -> None:
    res = run_checks(lab, WRONGNAME_ADDR, [check], "--ca-file", str(lab.ca_file), "--tls-verify")
    r = res[check]
    assert (r["status"], r["failed_step"]) == ("tls-error", "tls-handshake")
    assert r["message"] == (
        f"certificate rejected: certificate does not match the name '{WRONGNAME_ADDR}'"
    )


# -- the firewall ---------------------------------------------------------------------------


def test_firewall_drop_is_connection_timeout(lab: Lab, fw: Callable[..., None]) -> None:
    ports = sorted({int(c.split(":")[1]) for c in CHECKS})
    fw(drop=ports)
    res = run_checks(lab, SRV_ADDR, CHECKS, "--connect-timeout", "1")
    assert set(res) == set(CHECKS)
    for check, r in res.items():
        assert (r["status"], r["port_state"], r["failed_step"]) == (
            "connection-timeout",
            "filtered",
            "connect",
        ), check
