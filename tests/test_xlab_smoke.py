"""The modern Exchange lab (tests/lab/xlab.py): every server answers today's probes, over
IPv4 and IPv6, under rule set `open`; and each rule set changes exactly the check it is
about (its controls, the neighbouring checks, stay as under `open`).

The checks run as `exprobe check` in the vantage's namespace (`cli`, or `mbx2` for the
traffic between mailbox servers), several at once: each rule set is applied once and its
checks of both families run together.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import validate_report
from tests.lab.xlab import ADDR, DOMAIN, LINKS, RULESETS, XLab, v4, v6

pytestmark = pytest.mark.lab

FAMILIES = (4, 6)
# What real postfix lists on 25/2525 (Exchange would add X-EXPS and X-ANONYMOUSTLS,
# which postfix cannot): the lab's stand-in for Exchange's transport.
POSTFIX_EHLO = ["PIPELINING", "SIZE", "VRFY", "ETRN", "STARTTLS", "ENHANCEDSTATUSCODES",
                "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"]  # fmt: skip
EX2019_CU14 = "Exchange Server 2019 CU14"


@dataclass(frozen=True)
class Case:
    """One check from `vantage` to `server`'s address, and what it must show: `status`,
    and `facts` (dotted paths into the result; "sha:KEY" is the lab's certificate
    fingerprint `XLab.sha256[KEY]`, in `params` too)."""

    vantage: str
    server: str
    probe: str
    port: int
    tls: str = "none"
    params: tuple[tuple[str, str | bool], ...] = ()
    status: str = "success"
    facts: tuple[tuple[str, Any], ...] = ()


def _smtp(server: str, port: int, vantage: str = "cli") -> Case:
    facts = (("facts.ehlo_domain", f"{server}.{DOMAIN}"), ("facts.ehlo_extensions", POSTFIX_EHLO))
    return Case(vantage, server, "smtp", port, facts=facts)


def _vdir(server: str, vdir: str, port: int = 443, facts: tuple[tuple[str, Any], ...] = (),
          **params: str) -> Case:  # fmt: skip
    return Case("cli", server, "exchange-http", port, "none" if port == 80 else "implicit",
                (("vdir", vdir), *params.items()), facts=facts)  # fmt: skip


# Under `open`, from the client unless the id says `mbx2-to-`.
OPEN: dict[str, Case] = {
    **{f"mbx1-smtp-{p}": _smtp("mbx1", p) for p in (25, 2525, 465, 475, 717)},
    "mbx1-submission-587": Case("cli", "mbx1", "smtp", 587, "starttls", facts=(
        ("facts.ehlo_extensions", POSTFIX_EHLO), ("facts.auth_mechanisms", ["NTLM", "LOGIN"]),
        ("facts.ehlo_extensions_tls.AUTH", "NTLM LOGIN"), ("facts.cert_sha256", "sha:smtp"),
        ("facts.cert_trusted", True))),
    "mbx1-starttls-25": Case("cli", "mbx1", "smtp", 25, "starttls", facts=(
        ("facts.tls_version", "TLSv1.3"), ("facts.cert_trusted", True))),
    "mbx1-mapi": _vdir("mbx1", "mapi", facts=(
        ("facts.ntlm.dns_computer", f"mbx1.{DOMAIN}"), ("facts.exchange_build.version", EX2019_CU14),
        ("facts.healthcheck.fqdn", f"mbx1.{DOMAIN}"), ("facts.cert_sha256", "sha:mail"))),
    "mbx1-rpc": _vdir("mbx1", "rpc", facts=(
        ("facts.rpc_verbs", "carried"), ("facts.ntlm.netbios_computer", "MBX1"))),
    "mbx1-ews": _vdir("mbx1", "ews", facts=(
        ("facts.status", 401), ("facts.ntlm.dns_computer", f"mbx1.{DOMAIN}"))),
    "mbx1-owa-80": _vdir("mbx1", "owa", 80, facts=(
        ("facts.status", 302), ("facts.exchange_headers.X-FEServer", "MBX1"))),
    # The backend site: a certificate nobody trusts, as Exchange's self-signed one.
    "mbx1-backend-444": _vdir("mbx1", "ews", 444, facts=(
        ("facts.cert_sha256", "sha:backend"), ("facts.cert_trusted", False))),
    "mbx1-dag-64327": Case("cli", "mbx1", "tcp", 64327),
    # POP3 and IMAP4 are off by default on Exchange 2013 and later: nothing listens.
    **{f"mbx1-{probe}-{port}": Case("cli", "mbx1", probe, port, tls, status="connection-refused",
                                     facts=(("failed_step", "connect"), ("port_state", "closed")))
       for probe, port, tls in (("pop3", 110, "none"), ("pop3", 995, "implicit"),
                                ("imap", 143, "none"), ("imap", 993, "implicit"))},
    **{f"mbx2-smtp-{p}": _smtp("mbx2", p) for p in (25, 2525)},
    # The mbx vantage: exprobe in mbx2, towards mbx1 and the DC.
    **{f"mbx2-to-mbx1-smtp-{p}": _smtp("mbx1", p, vantage="mbx2") for p in (25, 2525)},
    "mbx2-to-dc-gc-3268": Case("mbx2", "dc", "ldap-gc", 3268, facts=(("facts.global_catalog_ready", True),)),
    "dc-ldap-389": Case("cli", "dc", "ldap", 389, facts=(("facts.dns_host_name", "dc1.ad.lab.test"),)),
    "dc-ldaps-636": Case("cli", "dc", "ldap", 636, "implicit", facts=(("facts.dns_host_name", "dc1.ad.lab.test"),)),
    "dc-gc-3268": Case("cli", "dc", "ldap-gc", 3268, facts=(("facts.global_catalog_ready", True),)),
    "dc-gc-3269": Case("cli", "dc", "ldap-gc", 3269, "implicit", facts=(("facts.global_catalog_ready", True),)),
    "dc-kerberos-88": Case("cli", "dc", "kerberos", 88, params=(("realm", "AD.LAB.TEST"),), facts=(
        ("facts.error_name", "KDC_ERR_C_PRINCIPAL_UNKNOWN"), ("facts.realm", "AD.LAB.TEST"))),
    "dc-smb-445": Case("cli", "dc", "smb", 445, facts=(("facts.dialect", "3.1.1"),)),
    "dc-epm-135": Case("cli", "dc", "msrpc-epm", 135),
    # The VIP passes TCP through: the client sees the members' own certificate.
    "vip-owa": _vdir("vip", "owa", expect_cert_sha256="sha:mail", facts=(
        ("facts.cert_sha256", "sha:mail"), ("facts.exchange_build.version", EX2019_CU14))),
    **{f"{m}-owa": _vdir(m, "owa", expect_cert_sha256="sha:mail", facts=(
        ("facts.exchange_headers.X-FEServer", name), ("facts.healthcheck.fqdn", f"{name.lower()}.{DOMAIN}")))
       for m, name in (("m1", "EX1"), ("m2", "EX2"))},
    "edge-smtp-25": _smtp("edge", 25),
    "edge-ldaps-50636": Case("cli", "edge", "ldap", 50636, "implicit", facts=(
        ("facts.cert_sha256", "sha:ldaps"), ("facts.naming_contexts", ["dc=lab,dc=test"]))),
    "exo-smtp-25": Case("cli", "exo", "smtp", 25, "starttls", facts=(
        ("facts.ehlo_domain", f"exo.{DOMAIN}"), ("facts.cert_trusted", True))),
    "exo-https-443": Case("cli", "exo", "tls", 443, "implicit", facts=(
        ("facts.cert_sha256", "sha:exo"), ("facts.cert_trusted", True))),
}  # fmt: skip

TIMEOUT = ("connection-timeout", (("failed_step", "connect"), ("port_state", "filtered")))

# Each rule set: the check it changes (its status and facts there), then its controls,
# which must answer as under `open`.
RULES: dict[str, tuple[str, str, tuple[tuple[str, Any], ...], tuple[str, ...]]] = {
    "mapi-refused": ("mbx1-mapi", "intercepted", (
        ("message", "intercepted: POST /mapi/emsmdb/ answered 403 without any Exchange header"),
        ("facts.interception.status", 403)), ("mbx1-ews", "mbx1-rpc")),
    "rpc-verbs-refused": ("mbx1-rpc", "intercepted", (
        ("message", "intercepted: RPC_IN_DATA /rpc/rpcproxy.dll answered 405: a middlebox "
                    "refuses the RPC over HTTP verbs"),
        ("facts.rpc_verbs", "refused")), ("mbx1-mapi", "mbx1-ews")),
    # Dropped between the mailbox servers only: the client still reaches 2525.
    "2525-dropped": ("mbx2-to-mbx1-smtp-2525", *TIMEOUT, ("mbx2-to-mbx1-smtp-25", "mbx1-smtp-2525")),
    "3268-dropped": ("dc-gc-3268", *TIMEOUT, ("dc-ldap-389", "dc-gc-3269")),
    "50636-dropped": ("edge-ldaps-50636", *TIMEOUT, ("edge-smtp-25",)),
    "ssl-offload": ("vip-owa", "intercepted", (
        ("message", "intercepted: the certificate is not the server's (SHA-256 differs)"),
        ("facts.cert_sha256", "sha:offload")), ("m1-owa", "m2-owa")),
    "587-starttls-stripped": ("mbx1-submission-587", "application-error", (
        ("message", "STARTTLS appears to be stripped by a middlebox: STARTTLS was requested "
                    "but the server does not offer it"),
        ("facts.starttls_stripped", True), ("facts.ehlo_domain", f"mbx1.{DOMAIN}")),
        ("mbx1-starttls-25",)),
}  # fmt: skip


def _toml(value: str | bool | int) -> str:
    return json.dumps(value)  # a TOML basic string, boolean or integer alike


def profile(lab: XLab, names: list[str]) -> str:
    """A profile of the OPEN cases `names` (one scenario needs them all, so all run)."""
    text = ['schema_version = 1\ntitle = "xlab smoke"\n']
    for name in names:
        case = OPEN[name]
        text.append(f"[checks.{name}]\nprobe = {_toml(case.probe)}\nport = {case.port}\n")
        if case.tls != "none":
            text.append(f"tls = {_toml(case.tls)}\n")
        for key, value in case.params:
            if isinstance(value, str) and value.startswith("sha:"):
                value = lab.sha256[value[4:]]
            text.append(f"{key} = {_toml(value)}\n")
    text.append(f'[scenarios.all]\ntitle = "all"\nall = {json.dumps(names)}\n')
    return "".join(text)


def run_all(lab: XLab, names: list[str], tmp: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The OPEN cases `names` over both families: one `exprobe run` per vantage and server
    (both addresses as targets), those runs four at a time."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name in names:
        groups.setdefault((OPEN[name].vantage, OPEN[name].server), []).append(name)

    def run(group: tuple[str, str]) -> list[dict[str, Any]]:
        vantage, server = group
        path = tmp / f"{vantage}-{server}-{len(names)}.toml"
        path.write_text(profile(lab, groups[group]))
        proc = lab.run(vantage, [
            sys.executable, "-m", "exprobe", "run", *ADDR[server].values(), "-p", str(path),
            "--ca-file", str(lab.ca_pem), "--format", "json", "--timeout", "5",
            "--connect-timeout", "1",
        ])  # fmt: skip
        assert proc.stdout, proc.stderr
        report = validate_report(json.loads(proc.stdout))
        return [r for t in report["targets"] for r in t["results"]]

    family = {a: f for node in ADDR for f, a in ADDR[node].items()}
    with ThreadPoolExecutor(4) as pool:
        results = [r for rs in pool.map(run, list(groups)) for r in rs]
    return {(r["id"], family[r["address"]]): r for r in results}


def at(result: dict[str, Any], path: str) -> Any:
    value: Any = result
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def assert_case(lab: XLab, result: dict[str, Any], status: str,
                facts: tuple[tuple[str, Any], ...]) -> None:  # fmt: skip
    assert result["status"] == status, result["message"]
    for path, want in facts:
        if isinstance(want, str) and want.startswith("sha:"):
            want = lab.sha256[want[4:]]
        got = at(result, path)
        if path.endswith("ehlo_extensions"):
            got = list(got or {})
        assert got == want, (path, result["message"])


@pytest.fixture(scope="module")
def open_results(
    xlab: XLab, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, int], dict[str, Any]]:
    xlab.apply_rules("open")
    return run_all(xlab, list(OPEN), tmp_path_factory.mktemp("xlab-open"))


@pytest.fixture(scope="module")
def rule_results(
    xlab: XLab, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[tuple[str, int], dict[str, Any]]]:
    results = {}
    try:
        for name, (changed, _, _, controls) in RULES.items():
            xlab.apply_rules(name)
            tmp = tmp_path_factory.mktemp(f"xlab-{name}")
            results[name] = run_all(xlab, [changed, *controls], tmp)
    finally:
        xlab.apply_rules("open")
    return results


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", list(OPEN))
def test_open(xlab: XLab, open_results: dict[tuple[str, int], dict[str, Any]],
              name: str, family: int) -> None:  # fmt: skip
    case = OPEN[name]
    assert_case(xlab, open_results[(name, family)], case.status, case.facts)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rules", list(RULES))
def test_rule_set_changes_its_check(
    xlab: XLab,
    open_results: dict[tuple[str, int], dict[str, Any]],
    rule_results: dict[str, dict[tuple[str, int], dict[str, Any]]],
    rules: str,
    family: int,
) -> None:
    changed, status, facts, controls = RULES[rules]
    assert open_results[(changed, family)]["status"] == OPEN[changed].status == "success"
    assert_case(xlab, rule_results[rules][(changed, family)], status, facts)
    for control in controls:
        case = OPEN[control]
        assert_case(xlab, rule_results[rules][(control, family)], case.status, case.facts)


def test_every_rule_set_is_tested() -> None:
    assert ["open", *RULES] == list(RULESETS)


EXO_MAIL = """
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], 25, timeout=5)
s.ehlo("client.xlab.example")
print(*s.mail("a@client.xlab.example"))
"""


@pytest.mark.parametrize("family", FAMILIES)
def test_exo_requires_starttls_before_mail(xlab: XLab, family: int) -> None:
    # What the EHLO does not show: EXO's postfix refuses mail before STARTTLS.
    proc = xlab.run("cli", [sys.executable, "-c", EXO_MAIL, ADDR["exo"][family]])
    assert proc.stdout.strip() == "530 b'5.7.0 Must issue a STARTTLS command first'", proc.stderr


# Hop location: r1 is hop 1 from every node; a drop there is "after hop 1", the router's
# address on the vantage's own link.
ROUTER_ON = {node: {4: v4(LINKS[node], 1), 6: v6(LINKS[node], 1)} for node in LINKS}
DROPS = {"3268-dropped": ("cli", "dc", "ldap-gc", 3268), "2525-dropped": ("mbx2", "mbx1", "smtp", 2525)}


@pytest.mark.parametrize("rules", list(DROPS))
def test_drop_located_after_the_router(xlab: XLab, rules: str) -> None:
    vantage, server, probe, port = DROPS[rules]
    xlab.apply_rules(rules)
    try:
        with ThreadPoolExecutor(2) as pool:
            procs = list(pool.map(lambda f: xlab.run(vantage, [
                sys.executable, "-m", "exprobe", "check", ADDR[server][f], probe, "--port",
                str(port), "--trace", "--format", "json", "--connect-timeout", "1",
            ]), FAMILIES))  # fmt: skip
    finally:
        xlab.apply_rules("open")
    for family, proc in zip(FAMILIES, procs, strict=True):
        (result,) = json.loads(proc.stdout)["targets"][0]["results"]
        hop = ROUTER_ON[vantage][family]
        assert result["status"] == "connection-timeout"
        assert result["trace"]["hops"][0] == {"ttl": 1, "reply": "hop", "address": hop,
                                              "rtt_ms": result["trace"]["hops"][0]["rtt_ms"]}  # fmt: skip
        brk = result["trace"]["break"]
        assert (brk["kind"], brk["hop"], brk["address"]) == ("drop", 1, hop)
        assert brk["summary"] == f"dropped after hop 1 ({hop}), the last hop that answers"
