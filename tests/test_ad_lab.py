"""`kerberos`, `ldap-gc`/`ldap` and `smb` against a real Samba AD DC (tests/lab/adlab.py).

The DC is Samba 4.17's `samba` for AD.LAB.TEST (NetBIOS ADLAB, host dc1.ad.lab.test) in
namespace xpad-dc; exprobe runs in xpad-cli.  Every fact asserted is what that DC says;
where an independent client exists it must agree: MIT `kinit` for the unknown principal,
nmap's `ldap-rootdse` on 3268, `smb2-security-mode`, `smb-protocols`, `smb2-capabilities`
and `smb2-time` on 445.  nftables in the DC namespace plays the firewall.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import validate_report
from tests.lab.adlab import BASE_DN, DC, DNS_DOMAIN, DNS_HOST, HOST, NETBIOS_DOMAIN, REALM, AdLab

pytestmark = pytest.mark.lab


@pytest.fixture
def fw(adlab: AdLab) -> Iterator[AdLab]:
    adlab.set_rule()
    try:
        yield adlab
    finally:
        adlab.set_rule()


def run(lab: AdLab, *args: str) -> dict[str, Any]:
    proc = lab.cli([sys.executable, "-m", "exprobe", *args, "--format", "json",
                    "--timeout", "5", "--connect-timeout", "1"])  # fmt: skip
    assert proc.stdout, proc.stderr
    return validate_report(json.loads(proc.stdout))


def check(lab: AdLab, probe: str, *args: str, host: str = DC[4]) -> dict[str, Any]:
    report = run(lab, "check", host, probe, *args)
    (result,) = [r for t in report["targets"] for r in t["results"]]
    return result


# -- kerberos --------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_kerberos_unknown_principal_names_the_realm_and_clock(adlab: AdLab, family: int) -> None:
    r = check(adlab, "kerberos", "--set", f"realm={REALM}", host=DC[family])
    assert (r["status"], r["port"]) == ("success", 88), r["message"]
    f = r["facts"]
    assert (f["krb_message"], f["error_code"]) == ("KRB-ERROR", 6)
    assert f["error_name"] == "KDC_ERR_C_PRINCIPAL_UNKNOWN"
    assert (f["realm"], f["realm_requested"], f["sname"]) == (REALM, REALM, f"krbtgt/{REALM}")
    assert abs(f["clock_skew_s"]) < 2  # same machine, same clock
    assert r["warnings"] == []
    assert r["message"].startswith(f"KDC for {REALM}: KDC_ERR_C_PRINCIPAL_UNKNOWN, clock skew")
    assert re.match(r"C AS-REQ cname=exprobe-[0-9a-f]{12} realm=AD.LAB.TEST ", r["transcript"][0])


def test_kerberos_agrees_with_kinit(adlab: AdLab, tmp_path: Path) -> None:
    conf = tmp_path / "krb5.conf"
    conf.write_text(f"[libdefaults]\n default_realm = {REALM}\n dns_lookup_kdc = false\n"
                    f" udp_preference_limit = 1\n[realms]\n {REALM} = {{\n  kdc = {DC[4]}:88\n }}\n")  # fmt: skip
    proc = adlab.cli(["env", f"KRB5_CONFIG={conf}", "KRB5CCNAME=MEMORY:", "kinit",
                      f"exprobe-nobody@{REALM}"], timeout=30)  # fmt: skip
    # MIT's text for KDC_ERR_C_PRINCIPAL_UNKNOWN: the same answer exprobe names.
    assert proc.returncode != 0
    assert f"Client 'exprobe-nobody@{REALM}' not found in Kerberos database" in proc.stderr
    r = check(adlab, "kerberos", "--set", f"realm={REALM}")
    assert r["facts"]["error_name"] == "KDC_ERR_C_PRINCIPAL_UNKNOWN"


PREAUTH = """
import socket, sys
from exprobe.wire import kerberos as k
s = socket.create_connection((sys.argv[1], 88), timeout=5)
s.sendall(k.encode_as_req("Administrator", sys.argv[2], 12345))
head = s.recv(4, socket.MSG_WAITALL)
body = s.recv(k.record_length(head), socket.MSG_WAITALL)
e = k.decode_reply(body).error
print(e.error_code, e.error_name, e.realm)
"""


def test_kerberos_codec_existing_account_needs_preauth(adlab: AdLab) -> None:
    # The probe always asks for a random name; the codec's other expected answer, for an
    # account that exists (every AD account needs pre-authentication), from the real KDC.
    proc = adlab.cli([sys.executable, "-c", PREAUTH, DC[4], REALM], timeout=30)
    assert proc.stdout.split() == ["25", "KDC_ERR_PREAUTH_REQUIRED", REALM], proc.stderr


def test_kerberos_wrong_realm_is_echoed_by_samba(adlab: AdLab) -> None:
    # Samba's KDC answers a realm it does not serve with principal-unknown *in that
    # realm*: the realm fact confirms a KDC only for the realm that was asked.
    r = check(adlab, "kerberos")
    assert r["status"] == "success"
    assert (r["facts"]["realm_requested"], r["facts"]["realm"]) == ("EXPROBE.INVALID",) * 2


@pytest.mark.parametrize(
    ("action", "status", "state"),
    [("drop", "connection-timeout", "filtered"), ("reset", "connection-refused", "closed")],
)
def test_kerberos_firewalled(fw: AdLab, action: str, status: str, state: str) -> None:
    fw.set_rule(action, 88)
    r = check(fw, "kerberos", "--set", f"realm={REALM}")
    assert (r["status"], r["port_state"], r["failed_step"]) == (status, state, "connect")


# -- LDAP Global Catalog ---------------------------------------------------------------


def test_gc_rootdse_on_3268(adlab: AdLab) -> None:
    r = check(adlab, "ldap-gc", "--set", "ntlm=true")
    assert (r["status"], r["port"]) == ("success", 3268), r["message"]
    f = r["facts"]
    assert f["global_catalog_ready"] is True
    assert f["dns_host_name"] == DNS_HOST
    assert f["default_naming_context"] == BASE_DN
    assert f["server_name"] == (
        f"CN={HOST},CN=Servers,CN=Default-First-Site-Name,CN=Sites,CN=Configuration,{BASE_DN}"
    )
    for level in ("domain_functionality", "forest_functionality", "dc_functionality"):
        assert (f[level], f[level + "_name"]) == (4, "2008 R2")  # Samba 4.17's default
    assert set(f["supported_sasl_mechanisms"]) == {"GSS-SPNEGO", "GSSAPI", "NTLM"}
    # currentTime has a resolution of one second and is truncated.
    assert -2 < f["clock_skew_s"] < 1
    ntlm = f["ntlm"]
    assert (ntlm["offered"], ntlm["mechanism"]) == (True, "NTLM")
    assert (ntlm["netbios_computer"], ntlm["netbios_domain"]) == (HOST, NETBIOS_DOMAIN)
    assert (ntlm["dns_computer"], ntlm["dns_domain"]) == (DNS_HOST, DNS_DOMAIN)
    assert r["warnings"] == []
    assert r["steps"][-2]["step"] == "ntlm"


def test_gc_ldaps_on_3269(adlab: AdLab) -> None:
    r = check(adlab, "ldap-gc", "--tls", "implicit", host=DC[6])
    assert (r["status"], r["port"]) == ("success", 3269), r["message"]
    assert r["facts"]["global_catalog_ready"] is True
    assert r["facts"]["dns_host_name"] == DNS_HOST
    assert r["facts"]["tls_version"] in ("TLSv1.2", "TLSv1.3")


def test_plain_ldap_389_is_not_warned_about_gc(adlab: AdLab) -> None:
    r = check(adlab, "ldap")
    assert (r["status"], r["port"]) == ("success", 389)
    assert r["facts"]["global_catalog_ready"] is True  # the DC's rootDSE says it on 389 too
    assert "ntlm" not in r["facts"]


def test_gc_agrees_with_nmap_ldap_rootdse(adlab: AdLab) -> None:
    proc = adlab.cli(["nmap", "-Pn", "-n", "-p3268", "--script", "+ldap-rootdse", DC[4]],
                     timeout=120)  # fmt: skip
    out = proc.stdout
    # `+`: run the script although its port rule knows only 389 and 636.
    seen = dict(re.findall(r"^\|_?\s+(\w+): (.+)$", out, re.M))
    r = check(adlab, "ldap-gc")
    f = r["facts"]
    assert seen["dnsHostName"] == f["dns_host_name"]
    assert seen["defaultNamingContext"] == f["default_naming_context"]
    assert seen["isGlobalCatalogReady"] == "TRUE"
    assert int(seen["domainFunctionality"]) == f["domain_functionality"]
    assert int(seen["forestFunctionality"]) == f["forest_functionality"]
    assert int(seen["domainControllerFunctionality"]) == f["dc_functionality"]
    assert seen["serverName"] == f["server_name"]


def test_gc_agrees_with_ldapsearch(adlab: AdLab) -> None:
    """`ldapsearch -H ldap://DC:3268`, the rootDSE read anonymously, as the issue names it."""
    proc = adlab.cli(["ldapsearch", "-x", "-LLL", "-H", f"ldap://{DC[4]}:3268", "-b", "",
                      "-s", "base", "defaultNamingContext", "dnsHostName",
                      "isGlobalCatalogReady", "supportedSASLMechanisms"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    seen: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            seen.setdefault(key, []).append(value)
    f = check(adlab, "ldap-gc")["facts"]
    assert seen["defaultNamingContext"] == [f["default_naming_context"]] == [BASE_DN]
    assert seen["dnsHostName"] == [f["dns_host_name"]] == [DNS_HOST]
    assert seen["isGlobalCatalogReady"] == ["TRUE"]
    assert f["global_catalog_ready"] is True
    assert sorted(seen["supportedSASLMechanisms"]) == sorted(f["supported_sasl_mechanisms"])


def test_smb_agrees_with_smbclient_and_rpcclient(adlab: AdLab) -> None:
    """Samba's own clients: `smbclient -L -N` lists the DC's shares anonymously over the
    SMB dialect exprobe names, and `rpcclient -N srvinfo` names the server as exprobe's
    NTLM identity does."""
    listing = adlab.cli(["smbclient", "-L", f"//{DC[4]}", "-N", "-m", "SMB3_11"], timeout=60)
    assert "Anonymous login successful" in listing.stdout + listing.stderr
    assert re.search(r"^\s+IPC\$\s+IPC\s", listing.stdout, re.M), listing.stdout
    srvinfo = adlab.cli(["rpcclient", "-U", "", "-N", DC[4], "-c", "srvinfo"], timeout=60)
    assert srvinfo.returncode == 0, srvinfo.stderr
    ((name, comment),) = re.findall(r"^\s+(\S+)\s+Wk Sv.*?(Samba \S+)$", srvinfo.stdout, re.M)
    r = check(adlab, "smb")
    assert r["facts"]["dialect"] == "3.1.1"  # what smbclient -m SMB3_11 was allowed
    assert name == r["facts"]["ntlm"]["netbios_computer"] == HOST
    assert comment.startswith("Samba 4.")


def test_gc_rejected_is_connection_refused(fw: AdLab) -> None:
    fw.set_rule("reset", 3268)
    r = check(fw, "ldap-gc")
    assert (r["status"], r["port_state"], r["failed_step"]) == (
        "connection-refused",
        "closed",
        "connect",
    )
    fw.set_rule("icmp", 3268)
    r = check(fw, "ldap-gc")
    assert (r["status"], r["port_state"]) == ("unreachable", "filtered")


# -- SMB -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_smb_negotiate_and_ntlm_identity(adlab: AdLab, family: int) -> None:
    r = check(adlab, "smb", host=DC[family])
    assert (r["status"], r["port"]) == ("success", 445), r["message"]
    f = r["facts"]
    assert f["dialect"] == "3.1.1"
    assert (f["signing_enabled"], f["signing_required"]) == (True, True)  # a DC requires it
    assert re.fullmatch(r"[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}", f["server_guid"])
    assert f["capabilities"] == ["DFS", "LEASING", "LARGE_MTU"]
    assert abs(f["clock_skew_s"]) < 2
    ntlm = f["ntlm"]
    assert ntlm["offered"] is True
    assert (ntlm["netbios_computer"], ntlm["netbios_domain"]) == (HOST, NETBIOS_DOMAIN)
    assert (ntlm["dns_computer"], ntlm["dns_domain"]) == (DNS_HOST, DNS_DOMAIN)
    assert ntlm["target_name"] == NETBIOS_DOMAIN
    assert r["message"] == f"SMB 3.1.1, signing required, {DNS_HOST} ({NETBIOS_DOMAIN})"
    assert r["warnings"] == []


def nmap_scripts(out: str) -> dict[str, list[str]]:
    """nmap's script output as {script: its lines}; the order of the scripts varies."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        top = re.match(r"^\|_? ?([a-z0-9][\w-]*): ?(.*)$", line)
        if top:
            current = blocks.setdefault(top.group(1), [])
            if top.group(2).strip():
                current.append(top.group(2).strip())
        elif current is not None and line.startswith("|"):
            current.append(line[2:].strip())
        else:
            current = None
    return blocks


def test_smb_agrees_with_nmap(adlab: AdLab) -> None:
    scripts = "smb2-security-mode,smb-protocols,smb2-capabilities,smb2-time"
    proc = adlab.cli(["nmap", "-Pn", "-n", "-p445", "--script", scripts, DC[4]], timeout=180)
    seen = nmap_scripts(proc.stdout)
    r = check(adlab, "smb", "--set", "ntlm=false")
    f = r["facts"]
    # smb-protocols lists every dialect; the server picks the highest one offered.
    assert seen["smb-protocols"] == ["dialects:", "202", "210", "300", "302", "311"], proc.stdout
    assert f["dialect"] == "3.1.1"
    assert seen["smb2-security-mode"] == ["311:", "Message signing enabled and required"]
    assert (f["signing_enabled"], f["signing_required"]) == (True, True)
    # smb2-capabilities for 3.1.1: nmap's names for DFS, LEASING and LARGE_MTU.
    caps = seen["smb2-capabilities"]
    assert caps[caps.index("311:") + 1 :] == [
        "Distributed File System",
        "Leasing",
        "Multi-credit operations",
    ]
    assert f["capabilities"] == ["DFS", "LEASING", "LARGE_MTU"]
    (date,) = [v.split(": ", 1)[1] for v in seen["smb2-time"] if v.startswith("date: ")]
    theirs = dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC)
    ours = dt.datetime.fromisoformat(f["server_time"])
    assert abs((ours - theirs).total_seconds()) < 60  # nmap ran first; both read the DC clock


def test_smb_firewall_drop_is_filtered(fw: AdLab) -> None:
    fw.set_rule("drop", 445)
    r = check(fw, "smb")
    assert (r["status"], r["port_state"], r["failed_step"]) == (
        "connection-timeout",
        "filtered",
        "connect",
    )


def test_directory_checks_in_one_run(adlab: AdLab) -> None:
    report = run(adlab, "run", DC[4], "--check", "kerberos", "--check", "ldap-gc",
                 "--check", "ldap-gc::implicit", "--check", "smb", "--check", "ldap")  # fmt: skip
    results = {(r["probe"], r["port"]): r for t in report["targets"] for r in t["results"]}
    assert {k: r["status"] for k, r in results.items()} == {
        ("kerberos", 88): "success",
        ("ldap-gc", 3268): "success",
        ("ldap-gc", 3269): "success",
        ("smb", 445): "success",
        ("ldap", 389): "success",
    }
