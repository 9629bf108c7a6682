"""`exprobe run … -p exchange2019 --vantage V` (and exchange-edge, exchange-hybrid) in the modern Exchange lab (tests/lab/xlab.py):
the exact scenario verdicts under every rule set, for the IPv4 and the IPv6 address of
each target (names resolved by the lab's DNS server, so one run judges both).

The runs, each from the vantage's own namespace:

| run | from | vantage | target |
|---|---|---|---|
| client, internet, admin | cli | client, internet, admin | mbx1.xlab.example |
| dmz | edge | dmz | mbx1.xlab.example |
| mbx | mbx2 | mbx, with --role dc=, witness= (the DC) and edge= | mbx1.xlab.example |
| vip | cli | client, the HTTPS scenarios only, owa pinned to the members' certificate | mail.xlab.example (the VIP) |
| edge-internet, edge-mbx, edge-dmz | cli, mbx2, edge | exchange-edge: internet, mbx, dmz (--role exchange=mbx1) | edge.xlab.example |
| hybrid-internet, hybrid-out | cli, mbx1 | exchange-hybrid: internet (hybrid-inbound), onprem-out (--role exo=, exo-web= the lab's exo) | mbx1.xlab.example |

The exchange2019 runs run under every rule set, the Edge's under `open` and
`50636-dropped`, the hybrid ones under `open`.

Every verdict is asserted; a verdict other than pass also with its exact reason (naming the
breaking check and port) and hints, a pass with its "works" reason.  What the lab cannot be:
real postfix has no X-EXPS/X-ANONYMOUSTLS, so intra-org-transport passes with the
profile's warning about them (asserted).  SSL offloading on the VIP is lb-pool's warning
(its verdict stays pass: the members answer), and a failed owa when the user pins the
members' certificate (owa's expect_cert_sha256).
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pytest

from tests.lab.xlab import ADDR, DOMAIN, NAME, ROUTER, RULESETS, XLab

pytestmark = pytest.mark.lab

MBX1 = f"mbx1.{DOMAIN}"
ROLES = ("dc=dc1.ad.lab.test", "witness=dc1.ad.lab.test", f"edge=edge.{DOMAIN}")
HTTPS = ("autodiscover", "owa", "outlook-mapihttp", "outlook-anywhere", "ews", "activesync",
         "oab", "tls-policy", "lb-pool")  # fmt: skip
FAMILY = {a: f for node in ADDR for f, a in ADDR[node].items()}


@dataclass(frozen=True)
class Run:
    node: str  # the namespace exprobe runs in
    vantage: str
    target: str
    args: tuple[str, ...] = ()
    profile: str = "exchange2019"
    rules: tuple[str, ...] = RULESETS  # the rule sets it runs under


# The domain each profile's DNS checks need (--set CHECK.domain=).
DOMAIN_CHECKS = {"exchange-edge": ("mx",)} | dict.fromkeys(
    ("exchange2019", "exchange2016", "exchange2013", "exchange-se", "exchange-hybrid"),
    ("autodiscover", "mx"),
)
EDGE_RULES = ("open", "50636-dropped")


RUNS = {
    "client": Run("cli", "client", MBX1),
    "internet": Run("cli", "internet", MBX1),
    "admin": Run("cli", "admin", MBX1),
    "dmz": Run("edge", "dmz", MBX1),
    "mbx": Run("mbx2", "mbx", MBX1, tuple(a for r in ROLES for a in ("--role", r))),
    "vip": Run("cli", "client", NAME, (
        *(a for s in HTTPS for a in ("--scenario", s)),
        "--set", "owa.expect_cert_sha256={sha_mail}",
    )),
    # The Edge as the primary role (exchange-edge), from the Internet, a Mailbox server
    # and its own perimeter network.
    "edge-internet": Run("cli", "internet", f"edge.{DOMAIN}", profile="exchange-edge", rules=EDGE_RULES),
    "edge-mbx": Run("mbx2", "mbx", f"edge.{DOMAIN}", profile="exchange-edge", rules=EDGE_RULES),
    "edge-dmz": Run("edge", "dmz", f"edge.{DOMAIN}", ("--role", f"exchange={MBX1}"),
                    profile="exchange-edge", rules=EDGE_RULES),
    # Hybrid: the Internet standing in for Exchange Online, and mbx1's own way out to the
    # lab's "Exchange Online" (exo: SMTP that requires STARTTLS, HTTPS).
    "hybrid-internet": Run("cli", "internet", MBX1, ("--scenario", "hybrid-inbound"),
                           profile="exchange-hybrid", rules=("open",)),
    "hybrid-out": Run("mbx1", "onprem-out", MBX1, ("--role", f"exo=exo.{DOMAIN}", "--role",
                      f"exo-web=exo.{DOMAIN}"), profile="exchange-hybrid", rules=("open",)),
}  # fmt: skip

TITLES = {
    "autodiscover": "Autodiscover", "owa": "Outlook on the web",
    "outlook-mapihttp": "Outlook (MAPI over HTTP)", "outlook-anywhere": "Outlook Anywhere (RPC over HTTP)",
    "ews": "Exchange Web Services", "activesync": "Exchange ActiveSync",
    "oab": "Offline address book download", "smtp-submission": "SMTP client submission",
    "pop-imap": "POP3 and IMAP4 clients", "inbound-mail": "Inbound Internet mail",
    "tls-policy": "TLS versions on 443", "remote-shell": "Remote Exchange Management Shell",
    "edge-to-mailbox": "Edge to Mailbox (inbound mail from the perimeter)",
    "edge-subscription": "Edge subscription (Mailbox to Edge)",
    "intra-org-transport": "Transport between Mailbox servers",
    "backend-proxy": "Frontend to backend proxy (444)", "dag": "DAG replication",
    "directory": "Exchange to its domain controllers", "lb-pool": "Load-balancer pool",
    "internet-to-edge": "Internet mail to the Edge",
    "hybrid-inbound": "Exchange Online to on-premises (hybrid)",
    "hybrid-outbound": "On-premises to Exchange Online (hybrid)",
}  # fmt: skip

POP_IMAP = ("not-enabled", "POP3 and IMAP4 clients: not-enabled: 993 refused (connection-refused)"
            " and 143 refused (connection-refused) and 995 refused (connection-refused) and 110"
            " refused (connection-refused); nothing listens, and the profile marks the service"
            " off by default", ["If the service should be on, say so with --set imaps.enabled=true"
                                " or --set imap.enabled=true or --set pop3s.enabled=true or --set"
                                " pop3.enabled=true."])  # fmt: skip
PASS = ("pass", None, [])
CLIENT = ("autodiscover", "owa", "outlook-mapihttp", "outlook-anywhere", "ews", "activesync",
          "oab", "smtp-submission", "pop-imap", "tls-policy", "lb-pool")  # fmt: skip
Expected = tuple[str, str | None, list[str]]  # verdict, reason (None: "works"), hints

# Under `open`: every scenario of every run, in the report's order.
OPEN: dict[str, dict[str, Expected]] = {
    "client": {s: POP_IMAP if s == "pop-imap" else PASS for s in CLIENT},
    "internet": {s: POP_IMAP if s == "pop-imap" else PASS
                 for s in (*CLIENT[:7], "pop-imap", "inbound-mail", "tls-policy", "lb-pool")},
    "admin": {"remote-shell": PASS},
    "dmz": {"edge-to-mailbox": PASS},
    "mbx": {s: PASS for s in ("edge-subscription", "intra-org-transport", "backend-proxy",
                              "dag", "directory")},
    "vip": dict.fromkeys(HTTPS, PASS),
    "edge-internet": {"internet-to-edge": PASS, "inbound-mail": PASS},
    "edge-mbx": {"edge-subscription": PASS},
    "edge-dmz": {"edge-to-mailbox": PASS},
    "hybrid-internet": {"hybrid-inbound": PASS},
    "hybrid-out": {"hybrid-outbound": PASS},
}  # fmt: skip

NOT_EXCHANGE = "intercepted:"
MAPI_HINT = ("The path to /mapi/ does not reach Exchange as it should: publish /mapi/ on the "
             "reverse proxy or load balancer, and let the Authorization and WWW-Authenticate "
             "headers through. (https://learn.microsoft.com/exchange/clients/mapi-over-http/"
             "mapi-over-http)")  # fmt: skip
EDGESYNC_HINT = ("EdgeSync cannot replicate: open TCP 50636 from every Mailbox server of the "
                 "subscribed site to the Edge Transport server. (https://learn.microsoft.com/"
                 "exchange/architecture/edge-transport-servers/edge-subscriptions)")  # fmt: skip
LB_HINT = ("A healthcheck.htm answer through the pool (or from a member directly) is an error, or "
           "missing: a proxy rule in front of the pool refuses that virtual directory, Managed "
           "Availability has taken the protocol offline on that member, or the member is down "
           "(the message says which member and vdir). The load balancer should probe "
           "/<vdir>/healthcheck.htm per virtual directory (layer 7) and take such a member out. "
           "(https://learn.microsoft.com/exchange/architecture/client-access/load-balancing)")  # fmt: skip
PORTS_DOC = "(https://learn.microsoft.com/exchange/plan-and-deploy/deployment-ref/network-ports)"


def _unsupported(port: int, dest: list[str], doc_hint: str) -> list[str]:
    return [f"Remove the filter on TCP {port} from another Exchange Mailbox server to {d}: "
            "this path must not be filtered at all." for d in dest] + [doc_hint]  # fmt: skip


def _filtered(role: str, node: str, port: int) -> str:
    return f"{role}: " + ", ".join(
        f"{ADDR[node][f]}: {port} filtered (connection-timeout)" for f in (4, 6)
    )


# What each rule set changes: (run, scenario) -> verdict, reason, hints ({addr}: the
# address judged).  Everything else stays as under `open`.
CHANGES: dict[str, dict[tuple[str, str], Expected]] = {
    "open": {},
    "mapi-refused": {(run, "outlook-mapihttp"): ("fail", (
        f"Outlook (MAPI over HTTP) fails: 443 open, request failed ({NOT_EXCHANGE} POST "
        "/mapi/emsmdb/ answered 403 without any Exchange header); 443 open, request failed "
        f"({NOT_EXCHANGE} POST /mapi/nspi/ answered 403 without any Exchange header)"), [MAPI_HINT])
        for run in ("client", "internet")} | {(run, "lb-pool"): ("fail", (
        # The proxy's rule for /mapi/ covers /mapi/healthcheck.htm too.
        "Load-balancer pool fails: 443 open, members failed (application-error: mapi: MBX1 "
        "(mbx1.xlab.example) answers HTTP 403 Forbidden when asked directly (…)"), [LB_HINT])
        for run in ("client", "internet")},
    "rpc-verbs-refused": {(run, "outlook-anywhere"): ("fail", (
        f"Outlook Anywhere (RPC over HTTP) fails: 443 open, request failed ({NOT_EXCHANGE} "
        "RPC_IN_DATA /rpc/rpcproxy.dll answered 405: a middlebox refuses the RPC over HT…)"), [
        "A middlebox refuses the RPC over HTTP verbs: allow RPC_IN_DATA and RPC_OUT_DATA (and "
        "their 1 GB Content-Length) to /rpc/ on the reverse proxy or WAF."])
        for run in ("client", "internet")},
    # Between Exchange servers: unsupported filtering, the hint says remove it.
    "2525-dropped": {("mbx", "intra-org-transport"): ("fail", (
        "Transport between Mailbox servers fails: 2525 filtered (connection-timeout); also "
        "seen: 717 open (717: Outbound Proxy Frontend, used only by send connectors with "
        "FrontEndProxyEnabled)"), _unsupported(2525, ["{addr}"], (
        "Microsoft does not support restricting or altering traffic between Exchange servers: "
        f"remove the filter or inspection between the Mailbox servers. {PORTS_DOC}")))},
    "3268-dropped": {("mbx", "directory"): ("fail", (
        "Exchange to its domain controllers fails: " + _filtered("dc", "dc", 3268)),
        _unsupported(3268, list(ADDR["dc"].values()), (
            "Microsoft does not support restricting traffic between Exchange and Active "
            "Directory: remove the filter between the Exchange server and its domain "
            f"controllers. {PORTS_DOC}")))},
    # Mailbox to Edge: filtering is expected there, the hint says open the port.
    "50636-dropped": {("mbx", "edge-subscription"): ("fail", (
        "Edge subscription (Mailbox to Edge) fails: " + _filtered("edge", "edge", 50636)), [
        *(f"Open TCP 50636 from another Exchange Mailbox server to {a}." for a in ADDR["edge"].values()),
        EDGESYNC_HINT]), ("edge-mbx", "edge-subscription"): ("fail", (
        "Edge subscription (Mailbox to Edge) fails: 50636 filtered (connection-timeout); also "
        "seen: 50389 refused (connection-refused) (AD LDS LDAP on 50389 (local to the Edge; need "
        "not pass any firewall))"), [
        "Open TCP 50636 from a Mailbox server of the subscribed site to {addr}.", EDGESYNC_HINT])},
    "ssl-offload": {("vip", "owa"): ("fail", (
        f"Outlook on the web fails: 443 open, certificate failed ({NOT_EXCHANGE} the "
        "certificate is not the server's (SHA-256 differs))"), [
        "Something that is not Exchange answers for /owa/ (a reverse proxy's or WAF's own page, "
        "or a certificate that is not the server's: see the warnings): publish /owa/ to Exchange "
        "itself, or check the proxy's rule and certificate for it."])},
    "587-starttls-stripped": {("client", "smtp-submission"): ("fail", (
        "SMTP client submission fails: 587 open, starttls failed (application-error: STARTTLS "
        "appears to be stripped by a middlebox: STARTTLS was requested but the …); also seen: "
        "465 open (465: Exchange's Client Proxy connector, internal to Exchange, not SMTPS)"), [
        "587 answers but the STARTTLS dialogue fails: an SMTP inspection device that strips "
        "STARTTLS, or a receive connector without a certificate. Clients then refuse to send "
        "or send passwords in clear."])},
}  # fmt: skip

Report = dict[str, Any]


def exprobe_run(lab: XLab, run: Run, *extra: str) -> tuple[int, Report]:
    args = [a.format(sha_mail=lab.sha256["mail"]) for a in run.args]
    domains = [a for c in DOMAIN_CHECKS[run.profile] for a in ("--set", f"{c}.domain={DOMAIN}")]
    proc = lab.run(run.node, [
        sys.executable, "-m", "exprobe", "run", run.target, "-p", run.profile,
        "--vantage", run.vantage, *args, *extra, "--dns-server", ROUTER[4], *domains,
        "--ca-file", str(lab.ca_pem), "--format", "json", "--timeout", "5",
        "--connect-timeout", "1",
    ], timeout=90)  # fmt: skip
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"{run}: exit {proc.returncode}, {len(proc.stdout)} bytes of JSON that do "
                    f"not parse; stderr: {proc.stderr[-800:]}")  # fmt: skip


def verdicts(report: Report, target: str) -> list[Report]:
    (t,) = [t for t in report["targets"] if t["target"] == target]
    return list(t["scenarios"])


@pytest.fixture(scope="module")
def reports(xlab: XLab) -> dict[str, dict[str, tuple[int, Report]]]:
    """Every run under every rule set (three runs at a time)."""
    out: dict[str, dict[str, tuple[int, Report]]] = {}
    try:
        for rules in RULESETS:
            xlab.apply_rules(rules)
            names = [name for name, run in RUNS.items() if rules in run.rules]
            with ThreadPoolExecutor(3) as pool:
                done = pool.map(lambda name: (name, exprobe_run(xlab, RUNS[name])), names)
                out[rules] = dict(done)
    finally:
        xlab.apply_rules("open")
    return out


def expected(rules: str, run: str, scenario: str) -> Expected:
    return CHANGES[rules].get((run, scenario), OPEN[run][scenario])


@pytest.mark.parametrize(
    ("rules", "run"), [(rules, run) for rules in RULESETS for run in RUNS if rules in RUNS[run].rules]
)
def test_verdicts(reports: dict[str, dict[str, tuple[int, Report]]], rules: str, run: str) -> None:
    code, report = reports[rules][run]
    seen = verdicts(report, RUNS[run].target)
    # One verdict per scenario and address, both families, in the profile's order.
    assert [(v["id"], FAMILY[v["address"]]) for v in seen] == [
        (s, f) for s in OPEN[run] for f in (4, 6)
    ]
    for v in seen:
        verdict, reason, hints = expected(rules, run, v["id"])
        where = (rules, run, v["id"], v["address"])
        assert v["verdict"] == verdict, (where, v["reason"])
        if reason is None:
            assert v["reason"].startswith(f"{TITLES[v['id']]} works: "), (where, v["reason"])
        else:
            assert v["reason"] == reason, where
        assert v["hints"] == [h.format(addr=v["address"]) for h in hints], where
    # The exit code: 1 when a scenario fails, 0 when none does (not-enabled is no failure).
    assert code == (1 if any(v["verdict"] == "fail" for v in seen) else 0)


def test_lb_pool_names_ssl_offloading_on_the_vip(
    xlab: XLab, reports: dict[str, dict[str, tuple[int, Report]]]
) -> None:
    # The pool passes (both members answer), with the warning the issue asks for: the
    # VIP's certificate is not the members', TLS ends on the load balancer.
    offload = (
        "443: SSL offloading suspected: the VIP presents CN=mail.xlab.example (sha256 "
        f"{xlab.sha256['offload'][:16]}...) but directly EX1 (ex1.xlab.example) and EX2 "
        f"(ex2.xlab.example) CN=mail.xlab.example (sha256 {xlab.sha256['mail'][:16]}...). SSL "
        "offloading breaks Extended Protection, which Exchange 2019 CU14 and later enable at "
        "setup (CSS-Exchange Emerging-Issues)"
    )
    for rules, warnings in (("open", []), ("ssl-offload", [offload])):
        pools = [v for v in verdicts(reports[rules]["vip"][1], NAME) if v["id"] == "lb-pool"]
        assert [(v["verdict"], v["warnings"]) for v in pools] == [("pass", warnings)] * 2


def test_every_rule_set_breaks_a_scenario_of_its_own() -> None:
    assert list(CHANGES) == list(RULESETS)
    changed = [next(iter(CHANGES[r])) for r in RULESETS[1:]]
    assert len(set(changed)) == len(changed)


def test_intra_org_transport_warns_that_postfix_lists_no_x_exps(
    reports: dict[str, dict[str, tuple[int, Report]]],
) -> None:
    # Real postfix is not Exchange: the EHLO facts the profile expects are missing, a
    # warning (the same words an inspection device that strips them would earn).
    missing = ("EHLO does not list X-ANONYMOUSTLS, X-EXPS: not the expected server, or an SMTP "
               "inspection device in the path removed them")  # fmt: skip
    for v in verdicts(reports["open"]["mbx"][1], MBX1):
        if v["id"] == "intra-org-transport":
            assert v["warnings"] == [f"25: {missing}", f"2525: {missing}"]


def test_unbound_roles_skip_their_scenarios(xlab: XLab) -> None:
    run = Run("mbx2", "mbx", MBX1)
    code, report = exprobe_run(xlab, run)
    seen = {(v["id"], v["address"]): v for v in verdicts(report, MBX1)}
    for scenario, role, what in (
        ("edge-subscription", "edge", "an Edge Transport server subscribed to the Exchange server's site"),
        ("dag", "witness", "the file share witness of the DAG"),
        ("directory", "dc", "a domain controller and Global Catalog server the Exchange server uses"),
    ):  # fmt: skip
        for address in ADDR["mbx1"].values():
            v = seen[(scenario, address)]
            assert v["verdict"] == "skipped"
            assert v["reason"] == (
                f"{TITLES[scenario]} skipped: no host bound to the role '{role}' ({what})"
            )
            assert v["hints"] == [
                f"Bind one with --role {role}=HOST, or label a target in the targets file role=NAME."
            ]
    for scenario in ("intra-org-transport", "backend-proxy"):
        assert {seen[(scenario, a)]["verdict"] for a in ADDR["mbx1"].values()} == {"pass"}
    assert code == 0  # skipped is no failure


@pytest.mark.parametrize("profile", ["exchange2016", "exchange2013", "exchange-se"])
def test_the_other_versions_profiles_pass_under_open(xlab: XLab, profile: str) -> None:
    # They extend exchange2019: from the client and from a Mailbox server everything the
    # lab serves passes, and POP3/IMAP4 are off by default there too.
    runs = (Run("cli", "client", MBX1, profile=profile), replace(RUNS["mbx"], profile=profile))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda run: exprobe_run(xlab, run), runs))
    for run, (code, report) in zip(runs, results, strict=True):
        expect = OPEN["client" if run.vantage == "client" else "mbx"]
        seen = {(v["id"], v["verdict"]) for v in verdicts(report, MBX1)}
        assert seen == {(s, e[0]) for s, e in expect.items()}, (profile, run.vantage)
        assert code == 0
