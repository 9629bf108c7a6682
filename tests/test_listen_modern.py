"""`exprobe listen` for modern Exchange: the HTTPS vdirs, port 80, TLS and SMTP listeners.

On 127.0.0.1 at a free port offset, no root.  The HTTP answers are judged first by
clients exprobe did not write (the standard library's `http.client`, impacket's NTLM
structures), then by exprobe's own `exchange-http`, `http`, `tls` and `smtp` probes
(`exprobe run -p ... --port-offset N`: exact statuses and facts), then by hostile
clients (slowloris, huge headers, garbage, a 1 GiB RPC channel, a request flood on one
connection), which must cost a log line and never the listener.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exprobe.engine.plan import CheckDef
from exprobe.errors import InputError
from exprobe.listen.exchange import REHEARSAL_SERVER, ExchangeSite, default_build, netbios
from exprobe.listen.http import Answer, HttpServerSession, Request
from exprobe.listen.plan import HttpSite, build_plan
from exprobe.probes import get as get_probe
from exprobe.probes.base import Params
from tests.helpers import ROOT, exprobe, validate_report
from tests.test_listen_clients import (
    HOST,
    LOOPS,
    ThreadedListener,
    no_responder_errors,
    unverified,
)

MINI = ROOT / "tests" / "profiles_modern" / "mini2019.toml"
NAME = "ex1.corp.example"
BUILD = "15.2.1544.4"  # Exchange Server 2019 CU14 in the shipped table
NEWEST_2019 = default_build("exchange2019")


def params(probe: str, **kw: Any) -> Params:
    spec = get_probe(probe)
    return spec.params_type(**kw)  # type: ignore[no-any-return]


MODERN = [
    CheckDef("owa", "exchange-http", params("exchange-http", tls="implicit", vdir="owa"), 443),
    CheckDef("tls", "tls", params("tls"), 443),
    CheckDef("ad-http", "http", params("http", path="/autodiscover/autodiscover.xml"), 80),
    CheckDef("smtp", "smtp", params("smtp"), 25),
    CheckDef("submission", "smtp", params("smtp", tls="starttls"), 587),
    CheckDef("smtp-internal", "smtp", params("smtp"), 2525),
]


@pytest.fixture(scope="module", params=LOOPS)
def lst(request: pytest.FixtureRequest) -> Iterator[ThreadedListener]:
    t = ThreadedListener(
        MODERN, loop=request.param, plan_kw={"http_site": HttpSite(BUILD)}, name=NAME,
        idle_timeout=2.0, conn_timeout=8.0,
    )  # fmt: skip
    yield t
    t.close()


def https(t: ThreadedListener) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection(HOST, t.port(443), timeout=10, context=unverified())


def fetch(
    conn: http.client.HTTPConnection, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.headers, resp.read()


# -- the plan ---------------------------------------------------------------------------------


def mini(site: HttpSite | None = None) -> tuple[list[CheckDef], dict[str, Any]]:
    """The mini profile's checks and the `build_plan` options `exprobe listen` gives it."""
    from exprobe.commands.listen import listener_defs

    chosen = listener_defs(str(MINI), [], [], [])
    kw = {"http_site": site or HttpSite(BUILD), "primary_role": chosen.primary_role,
          "skipped": chosen.skipped}  # fmt: skip
    return chosen.defs, kw


GC_NOTE = "check gc (ldap-gc) runs against the dc host: not opened here"
POP3_NOTE = (
    "check pop3 (pop3): the product ships this service switched off (enabled = false): not "
    "opened, as on the real server (--set pop3.enabled=true here and in `exprobe run` to "
    "rehearse it on)"
)


def test_plan_of_the_mini_profile() -> None:
    defs, kw = mini()
    plan = build_plan(defs, port_offset=10000, **kw)
    got = {(x.port, x.protocol, x.implicit_tls): x.checks for x in plan.listeners}
    assert got == {
        (10025, "smtp", False): ("smtp",),
        (10080, "http", False): ("autodiscover-http", "powershell"),
        (10443, "https", True): ("owa", "mapi", "rpc", "ews", "eas", "oab", "autodiscover",
                                 "https-tls"),
        (10587, "smtp", False): ("submission",),
        (12525, "smtp", False): ("smtp-internal",),
    }  # fmt: skip
    assert plan.notes == [POP3_NOTE, GC_NOTE]
    assert kw["primary_role"] == "exchange"


def test_plan_with_pop3_set_on() -> None:
    from exprobe.commands.listen import listener_defs

    chosen = listener_defs(str(MINI), [], [], [], ["pop3.enabled=true"])
    plan = build_plan(chosen.defs, primary_role=chosen.primary_role, skipped=chosen.skipped)
    assert 110 in plan.ports()
    assert plan.notes == [GC_NOTE]


def test_plan_says_what_it_does_not_rehearse() -> None:
    defs = [
        CheckDef("owa", "exchange-http", params("exchange-http", tls="implicit"), 443),
        CheckDef("kdc", "kerberos", params("kerberos"), 88),
        CheckDef("ad", "autodiscover", params("autodiscover"), None),
        CheckDef("witness", "smb", params("smb"), 445),
    ]
    plan = build_plan(defs, skipped={"witness": "check witness (smb) runs against the witness host"})
    assert [(x.port, x.protocol) for x in plan.listeners] == [(88, "tcp (kerberos)"), (443, "https")]
    assert plan.notes == [
        "check ad (autodiscover) looks names up and asks other hosts: not rehearsed by a listener",
        "check witness (smb) runs against the witness host",
        "port 88: kerberos is not rehearsed (no Kerberos KDC here; checks kdc): TCP accept "
        "only, so those checks prove the path and then fail at their first exchange",
    ]
    kdc = next(x for x in plan.listeners if x.port == 88)
    assert kdc.note == "not rehearsed: TCP accept only (no Kerberos KDC here)"


def test_plan_tls_shares_any_tls_port_and_http_modes_conflict() -> None:
    defs = [
        CheckDef("tls465", "tls", params("tls"), 465),
        CheckDef("smtps", "smtp", params("smtp", tls="implicit"), 465),
        CheckDef("ldaps-tls", "tls", params("tls"), 636),
        CheckDef("pool", "lb-pool", Params(), 8443),  # a VIP in front of HTTPS, whatever tls says
        CheckDef("https", "http", params("http", tls="implicit"), 8443),
    ]
    plan = build_plan(defs)
    got = [(x.port, x.protocol, x.implicit_tls, x.checks) for x in plan.listeners]
    assert got == [
        (465, "smtps", True, ("tls465", "smtps")),
        (636, "tls", True, ("ldaps-tls",)),
        (8443, "https", True, ("pool", "https")),
    ]
    clash = [
        CheckDef("plain", "http", params("http"), 8080),
        CheckDef("secure", "exchange-http", params("exchange-http", tls="implicit"), 8080),
    ]
    with pytest.raises(InputError, match="port 8080: check secure needs http \\(TLS\\) but plain"):
        build_plan(clash)


# -- the Exchange answers themselves (sans I/O) --------------------------------------------------


def test_site_names_from_the_host_name() -> None:
    ex = ExchangeSite.for_host("ex1.corp.example", BUILD)
    assert (ex.name, ex.fqdn, ex.domain) == ("EX1", "ex1.corp.example", "corp.example")
    ex = ExchangeSite.for_host("mailbox-server-number-one", BUILD)
    assert (ex.name, ex.fqdn, ex.domain) == ("MAILBOX-SERVER-", "mailbox-server-number-one", "")
    ex = ExchangeSite.for_host("ex2.corp.example", BUILD, domain="other.example")
    assert ex.fqdn == "ex2.other.example"
    assert netbios("") == "EXPROBE"
    assert [default_build(p) for p in ("exchange2013", "exchange2016", "exchange-se", None)] == [
        "15.0.1497.2", "15.1.2507.6", "15.2.2562.17", NEWEST_2019,
    ]  # fmt: skip


def test_refused_paths_are_a_proxy_page_without_exchange_headers() -> None:
    ex = ExchangeSite("EX1", "corp.example", BUILD, refused=("/mapi/",))
    ans = ex.answer(Request("POST", "/mapi/emsmdb/?MailboxId=x", (("x-requesttype", "Connect"),)))
    assert ans.status == 403
    assert dict(ans.headers) == {"Server": "reverse-proxy", "Content-Type": "text/html"}
    assert b"403 Forbidden" in ans.body
    assert ex.answer(Request("GET", "/EWS/Exchange.asmx")).status == 401  # only /mapi/


def test_negotiate_that_is_not_ntlmssp_gets_no_challenge() -> None:
    ex = ExchangeSite("EX1", "corp.example", BUILD)
    for auth in ("NTLM !!!", "NTLM " + base64.b64encode(b"NTLMSSP\x00\x03\x00\x00\x00").decode(),
                 "Negotiate YIIBhgYGKwYBBQUCoIIBejCCAXag", "Basic dXNlcjpwYXNz"):  # fmt: skip
        ans = ex.answer(Request("GET", "/EWS/Exchange.asmx", (("authorization", auth),)))
        assert ans.status == 401
        assert [v for k, v in ans.headers if k == "WWW-Authenticate"] == ["Negotiate", "NTLM"]


def test_session_keeps_alive_and_bounds_requests() -> None:
    session = HttpServerSession(lambda req: Answer(200, (), b"ok"), max_requests=3)
    out = session.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 5)
    assert out.count(b"HTTP/1.1 200 ") == 3
    assert out.count(b"Connection: close") == 1
    assert (session.closed, session.outcome, session.requests) == (True, "answered", 3)


def test_session_http10_and_head() -> None:
    session = HttpServerSession(lambda req: Answer(200, (("X-A", "1"),), b"body"))
    out = session.receive(b"HEAD / HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Length: 4" in out
    assert not out.endswith(b"body")
    assert session.closed  # HTTP/1.0 without keep-alive


def test_the_lab_peer_runs_this_code() -> None:
    from tests.peers import exchange_http

    assert exchange_http.Exchange is ExchangeSite
    ex = exchange_http.Exchange("EX1", "corp.example", BUILD)
    assert ex.server == "Microsoft-IIS/10.0"


# -- independent clients ------------------------------------------------------------------------


def test_owa_redirects_to_the_logon_page(lst: ThreadedListener) -> None:
    conn = https(lst)
    status, headers, _ = fetch(conn, "GET", "/owa/")
    assert status == 302
    assert headers["Location"] == (
        "https://ex1.corp.example/owa/auth/logon.aspx?url=https%3a%2f%2fex1.corp.example/owa/"
        "&reason=0"
    )
    assert (headers["X-OWA-Version"], headers["X-FEServer"]) == (BUILD, "EX1")
    assert headers["Server"] == REHEARSAL_SERVER
    status, headers, body = fetch(conn, "GET", "/owa/auth/logon.aspx?replaceCurrent=1")
    assert status == 200
    assert b"<!-- OwaPage = ASP.auth_logon_aspx -->" in body
    conn.close()


@pytest.mark.parametrize(
    ("method", "path", "schemes"),
    [
        ("GET", "/EWS/Exchange.asmx", ["Negotiate", "NTLM"]),
        ("GET", "/OAB/", ["Negotiate", "NTLM"]),
        ("GET", "/autodiscover/autodiscover.xml", ["Negotiate", "NTLM", 'Basic realm="ex1.corp.example"']),
        ("POST", "/mapi/emsmdb/", ["Negotiate", "NTLM"]),
        ("POST", "/mapi/nspi/", ["Negotiate", "NTLM"]),
        ("RPC_IN_DATA", "/rpc/rpcproxy.dll", ["Negotiate", "NTLM", 'Basic realm="ex1.corp.example"']),
        ("RPC_OUT_DATA", "/rpc/rpcproxy.dll", ["Negotiate", "NTLM", 'Basic realm="ex1.corp.example"']),
        ("GET", "/Microsoft-Server-ActiveSync", ['Basic realm="ex1.corp.example"']),
        ("GET", "/PowerShell/", ["Negotiate", "Kerberos"]),
    ],
)  # fmt: skip
def test_vdirs_answer_401_with_their_schemes(
    lst: ThreadedListener, method: str, path: str, schemes: list[str]
) -> None:
    conn = https(lst)
    hdrs = {"Content-Length": "0"}
    if path.startswith("/mapi/"):
        hdrs |= {"Content-Type": "application/mapi-http", "X-RequestType": "Connect"}
    status, headers, _ = fetch(conn, method, path, hdrs)
    assert status == 401
    assert headers.get_all("WWW-Authenticate") == schemes
    assert headers["X-FEServer"] == "EX1"
    if path.startswith("/mapi/"):
        assert headers["X-ServerApplication"] == f"Exchange/{BUILD}"
        assert headers["X-RequestType"] == "Connect"
        assert headers["X-CasErrorCode"] == "UnauthenticatedRequest"
    conn.close()


def test_healthcheck_pages_name_the_fqdn(lst: ThreadedListener) -> None:
    conn = https(lst)
    for vdir in ("owa", "ecp", "ews", "mapi", "rpc", "oab", "autodiscover",
                 "Microsoft-Server-ActiveSync"):  # fmt: skip
        status, _, body = fetch(conn, "GET", f"/{vdir}/healthcheck.htm")
        assert (status, body) == (200, b"200 OK<br/>ex1.corp.example")
    conn.close()


def test_ntlm_challenge_names_the_listener_impacket(lst: ThreadedListener) -> None:
    """impacket builds the NEGOTIATE and parses the CHALLENGE, on one keep-alive connection."""
    from impacket import ntlm

    conn = https(lst)
    status, _, _ = fetch(conn, "GET", "/EWS/Exchange.asmx")
    assert status == 401
    t1 = base64.b64encode(ntlm.getNTLMSSPType1("", "", use_ntlmv2=True).getData()).decode()
    status, headers, _ = fetch(conn, "GET", "/EWS/Exchange.asmx", {"Authorization": f"NTLM {t1}"})
    assert status == 401
    (value,) = headers.get_all("WWW-Authenticate")
    scheme, token = value.split(" ")
    assert scheme == "NTLM"
    challenge = ntlm.NTLMAuthChallenge(base64.b64decode(token))
    av = ntlm.AV_PAIRS(challenge["TargetInfoFields"])
    names = {k: av[k][1].decode("utf-16-le") for k in (
        ntlm.NTLMSSP_AV_HOSTNAME, ntlm.NTLMSSP_AV_DOMAINNAME, ntlm.NTLMSSP_AV_DNS_HOSTNAME,
        ntlm.NTLMSSP_AV_DNS_DOMAINNAME)}  # fmt: skip
    assert names == {
        ntlm.NTLMSSP_AV_HOSTNAME: "EX1",
        ntlm.NTLMSSP_AV_DOMAINNAME: "CORP",
        ntlm.NTLMSSP_AV_DNS_HOSTNAME: "ex1.corp.example",
        ntlm.NTLMSSP_AV_DNS_DOMAINNAME: "corp.example",
    }
    conn.close()


def test_port_80_redirects_autodiscover_and_asks_kerberos_for_the_shell(
    lst: ThreadedListener,
) -> None:
    conn = http.client.HTTPConnection(HOST, lst.port(80), timeout=10)
    status, headers, _ = fetch(conn, "GET", "/autodiscover/autodiscover.xml")
    assert (status, headers["Location"]) == (
        302, "https://ex1.corp.example/autodiscover/autodiscover.xml"
    )  # fmt: skip
    status, headers, _ = fetch(conn, "GET", "/PowerShell/")
    assert (status, headers.get_all("WWW-Authenticate")) == (401, ["Negotiate", "Kerberos"])
    status, _, body = fetch(conn, "GET", "/owa/healthcheck.htm")
    assert (status, body) == (200, b"200 OK<br/>ex1.corp.example")
    conn.close()


def test_smtp_lists_the_extensions_the_profile_expects() -> None:
    """smtplib: X-ANONYMOUSTLS and X-EXPS (expect_extensions) before TLS, X-EXPS after;
    X-EXPS itself is declined like AUTH (421: no mail accepted here)."""
    import smtplib

    defs = [CheckDef("intra", "smtp", params("smtp", expect_extensions=(
        "STARTTLS", "X-ANONYMOUSTLS", "X-EXPS")), 2525)]  # fmt: skip
    t = ThreadedListener(defs, name=NAME)
    try:
        s = smtplib.SMTP(HOST, t.port(2525), timeout=10)
        s.ehlo("ex2.corp.example")
        feats = dict(s.esmtp_features)
        assert (feats["x-exps"], feats["x-anonymoustls"], "starttls" in feats) == (
            "GSSAPI NTLM", "", True
        )  # fmt: skip
        s.starttls(context=unverified())
        s.ehlo("ex2.corp.example")
        assert "x-anonymoustls" not in s.esmtp_features
        assert s.esmtp_features["x-exps"] == "GSSAPI NTLM"
        code, _ = s.docmd("X-EXPS", "GSSAPI")
        assert code == 421
        s.close()
        rec = t.wait_records(2525, 1)[0]
        assert rec.outcome == "declined X-EXPS (rehearsal: no mail accepted)"
    finally:
        t.close()


def test_tls_certificate_names_the_listener(lst: ThreadedListener) -> None:
    with (
        socket.create_connection((HOST, lst.port(443)), timeout=10) as raw,
        unverified().wrap_socket(raw, server_hostname=NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert NAME in san.get_values_for_type(x509.DNSName)


# -- exprobe's own probes, end to end ---------------------------------------------------------------


def run_json(*args: str, code: int = 0) -> dict[str, Any]:
    proc = exprobe("run", HOST, *args, "--format", "json", timeout=90)
    assert proc.returncode == code, proc.stdout + proc.stderr
    return validate_report(json.loads(proc.stdout))


CLIENT_SCENARIOS = ["owa", "outlook-mapihttp", "outlook-anywhere", "ews", "activesync", "oab",
                    "autodiscover-redirect", "tls-policy", "smtp-submission", "inbound-mail",
                    "intra-org-transport", "pop-imap", "directory"]  # fmt: skip


def test_exprobe_run_mini_profile_against_listen_passes() -> None:
    defs, kw = mini()
    t = ThreadedListener(defs, plan_kw=kw, name=NAME)
    try:
        report = run_json("-p", str(MINI), "--port-offset", str(t.offset), "--vantage", "client")
        (target,) = report["targets"]
        assert {v["id"]: v["verdict"] for v in target["scenarios"]} == {
            **{sid: "pass" for sid in CLIENT_SCENARIOS},
            "pop-imap": "not-enabled",  # shipped off: not opened, as on the real server
            "directory": "skipped",  # the DC's check: no host bound to role dc
        }
        results = {r["id"]: r for r in target["results"]}
        # remote-shell (powershell) is the admin vantage's; gc runs against the DC only
        assert {k: r["status"] for k, r in results.items()} == {
            **{d.id: "success" for d in defs if d.id not in ("powershell", "gc")},
            "pop3": "connection-refused",
        }
        for vdir in ("owa", "mapi", "rpc", "ews", "eas", "oab", "autodiscover"):
            facts = results[vdir]["facts"]
            assert facts["exchange_build"]["version"] == "Exchange Server 2019 CU14", vdir
            assert facts["healthcheck"]["fqdn"] == NAME
            assert "interception" not in facts
        for vdir in ("mapi", "rpc", "ews", "oab", "autodiscover"):
            ident = results[vdir]["facts"]["ntlm"]
            assert (ident["netbios_computer"], ident["dns_computer"], ident["dns_domain"]) == (
                "EX1", NAME, "corp.example"
            ), vdir  # fmt: skip
        assert results["rpc"]["facts"]["rpc_verbs"] == "carried"
        assert results["autodiscover-http"]["facts"]["location"] == (
            "https://ex1.corp.example/autodiscover/autodiscover.xml"
        )
        admin = run_json("-p", str(MINI), "--port-offset", str(t.offset), "--vantage", "admin",
                         "--scenario", "remote-shell")  # fmt: skip
        (r,) = admin["targets"][0]["results"]
        assert (r["id"], r["status"], r["facts"]["status"]) == ("powershell", "success", 401)
        assert t.server is not None
        assert t.server.summary()["never_reached"] == []
        no_responder_errors(t)
    finally:
        t.close()


def test_exprobe_run_sees_the_proxy_refusing_mapi() -> None:
    """The demo's broken modern path: a reverse proxy answers 403 on /mapi/."""
    defs, kw = mini(HttpSite(BUILD, refused=("/mapi/",)))
    t = ThreadedListener(defs, plan_kw=kw, name=NAME)
    try:
        report = run_json("-p", str(MINI), "--port-offset", str(t.offset), "--vantage", "client",
                          code=1)  # fmt: skip
        (target,) = report["targets"]
        verdicts = {v["id"]: v for v in target["scenarios"]}
        assert {k: v["verdict"] for k, v in verdicts.items() if v["verdict"] != "pass"} == {
            "outlook-mapihttp": "fail", "pop-imap": "not-enabled", "directory": "skipped",
        }  # fmt: skip
        assert "answered 403 without any Exchange header" in verdicts["outlook-mapihttp"]["reason"]
        bad = [(r["id"], r["status"], r["failed_step"], r["message"])
               for r in target["results"] if r["status"] != "success"]  # fmt: skip
        assert sorted(bad) == [
            ("mapi", "intercepted", "request",
             "intercepted: POST /mapi/emsmdb/ answered 403 without any Exchange header"),
            ("pop3", "connection-refused", "connect", "refused (RST)"),
        ]  # fmt: skip
    finally:
        t.close()


# -- hostile clients ----------------------------------------------------------------------------------


def _exchange(port: int, payload: bytes, *, tls: bool = True) -> bytes:
    """Send `payload` (TLS for 443), half-close, read what comes back (bounded)."""
    raw = socket.create_connection((HOST, port), timeout=10)
    sock: socket.socket = unverified().wrap_socket(raw) if tls else raw
    with sock:
        with contextlib.suppress(OSError):
            sock.sendall(payload)
            if not tls:
                sock.shutdown(socket.SHUT_WR)
        out = b""
        while len(out) < 1 << 20:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError, ssl.SSLError):
                break
            if not chunk:
                break
            out += chunk
        return out


def test_huge_header_block_gets_431_and_listener_lives(lst: ThreadedListener) -> None:
    before = len(lst.records_for(80))
    reply = _exchange(lst.port(80), b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000,
                      tls=False)  # fmt: skip
    assert reply.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    rec = lst.wait_records(80, before + 1)[-1]
    assert rec.outcome.startswith("header block too large")
    assert rec.bytes_in <= 64 * 1024
    conn = http.client.HTTPConnection(HOST, lst.port(80), timeout=10)
    assert fetch(conn, "GET", "/PowerShell/")[0] == 401
    conn.close()


@pytest.mark.parametrize(
    "payload",
    [b"\x16\x03\x01\x02\x00" + bytes(range(256)), b"HELLO THERE\r\n\r\n", b"GET / SPDY/9\r\n\r\n"],
)
def test_garbage_gets_400_not_http(lst: ThreadedListener, payload: bytes) -> None:
    before = len(lst.records_for(80))
    reply = _exchange(lst.port(80), payload, tls=False)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    rec = lst.wait_records(80, before + 1)[-1]
    assert rec.outcome.startswith("not HTTP ("), rec
    no_responder_errors(lst)


def test_gigabyte_rpc_channel_is_answered_not_read(lst: ThreadedListener) -> None:
    """RPC_IN_DATA announces 1 GiB: the 401 comes at once and the connection closes."""
    before = len(lst.records_for(443))
    head = (b"RPC_IN_DATA /rpc/rpcproxy.dll HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 1073741824\r\n\r\n" + b"R" * 4096)  # fmt: skip
    reply = _exchange(lst.port(443), head)
    assert reply.startswith(b"HTTP/1.1 401 ")
    assert b"Connection: close" in reply
    rec = lst.wait_records(443, before + 1)[-1]
    assert rec.outcome == "answered"
    assert rec.bytes_in < 64 * 1024


def test_chunked_body_over_the_bound_ends_the_connection(lst: ThreadedListener) -> None:
    before = len(lst.records_for(80))
    chunk = b"8000\r\n" + b"c" * 0x8000 + b"\r\n"
    payload = b"POST /PowerShell/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    reply = _exchange(lst.port(80), payload + chunk * 4, tls=False)
    assert reply.startswith(b"HTTP/1.1 401 ")
    rec = lst.wait_records(80, before + 1)[-1]
    assert rec.outcome == "request body over 65536 bytes"


def test_keep_alive_flood_is_cut_at_100_requests(lst: ThreadedListener) -> None:
    before = len(lst.records_for(80))
    reply = _exchange(lst.port(80), b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n" * 150, tls=False)
    assert reply.count(b"HTTP/1.1 302 ") == 100
    rec = lst.wait_records(80, before + 1)[-1]
    assert rec.outcome == "answered"
    assert rec.dropped_actions == 100 - len(rec.actions)


def test_slowloris_is_cut_at_the_idle_timeout(lst: ThreadedListener) -> None:
    """A header dribbled slower than the idle timeout (2 s here) is cut; so is one that
    keeps dribbling within it, at the connection timeout (8 s)."""
    before = len(lst.records_for(80))
    t0 = time.monotonic()
    with socket.create_connection((HOST, lst.port(80)), timeout=20) as c:
        c.sendall(b"GET / HTTP/1.1\r\n")
        for _ in range(12):
            try:
                c.sendall(b"X-a: b\r\n")
            except OSError:
                break
            time.sleep(1.0)
        with contextlib.suppress(OSError):
            assert c.recv(100) == b""
    rec = lst.wait_records(80, before + 1)[-1]
    assert rec.outcome.startswith("timed out"), rec
    assert 7.0 <= time.monotonic() - t0 < 15


def test_silent_tls_client_times_out(lst: ThreadedListener) -> None:
    before = len(lst.records_for(443))
    with socket.create_connection((HOST, lst.port(443)), timeout=20) as c, contextlib.suppress(
        OSError
    ):
        assert c.recv(100) == b""
    rec = lst.wait_records(443, before + 1)[-1]
    assert rec.outcome.startswith(("timed out", "TLS handshake failed")), rec


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    payload=st.one_of(
        st.binary(max_size=600),
        st.builds(
            lambda m, t, h: m + b" " + t + b" HTTP/1.1\r\n" + h + b"\r\n\r\n",
            st.sampled_from([b"GET", b"POST", b"RPC_IN_DATA", b"OPTIONS", b"G\x00T"]),
            st.binary(min_size=1, max_size=80),
            st.binary(max_size=300),
        ),
    )
)
def test_fuzz_any_bytes_never_break_the_http_responder(
    lst: ThreadedListener, payload: bytes
) -> None:
    before = len(lst.records_for(80))
    _exchange(lst.port(80), payload, tls=False)
    lst.wait_records(80, before + 1)
    no_responder_errors(lst)


@given(data=st.binary(max_size=2000), split=st.integers(min_value=1, max_value=64))
def test_fuzz_session_sans_io(data: bytes, split: int) -> None:
    """Any bytes in any slicing: the session answers, closes, or waits; it never raises."""
    ex = ExchangeSite("EX1", "corp.example", BUILD)
    session = HttpServerSession(ex.answer)
    for i in range(0, len(data), split):
        session.receive(data[i : i + split])
    session.receive(b"")
    assert session.closed


# -- the command ------------------------------------------------------------------------------------------


def test_listen_cli_plan_output_for_the_mini_profile(tmp_path: Path) -> None:
    from tests.test_listen_clients import start_listen

    lp, offset = start_listen("-p", str(MINI), "--name", NAME, "--exchange-build", BUILD,
                              "--duration", "3")  # fmt: skip
    out = lp.finish(None)
    assert lp.proc.returncode == 0, lp.stderr
    assert f"5 ports on {HOST} for profile mini2019, port offset +{offset}" in out
    row = next(x for x in out.splitlines() if x.startswith(str(443 + offset)))
    assert "https" in row
    assert "implicit" in row
    assert f"X-OWA-Version {BUILD} (Exchange Server 2019 CU14)" in out
    assert f"never reached: {25 + offset}, {80 + offset}, {443 + offset}" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--exchange-build", "fifteen"], "--exchange-build 'fifteen': not a build number"),
        (["--domain", "bad domain"], "--domain 'bad domain': not a DNS domain name"),
    ],
)
def test_listen_cli_http_input_errors(args: list[str], message: str) -> None:
    proc = exprobe("listen", "--bind", HOST, "--port", "8080", *args, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr


# -- exprobe demo --profile --------------------------------------------------------------------------------


def test_demo_modern_profile_shows_the_proxy_refusing_mapi() -> None:
    from tests.test_demo import group_members, parse_both, refused, run_demo

    proc, pgid = run_demo("--profile", str(MINI))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table, report = parse_both(proc.stdout)
    validate_report(report)
    demo = report["demo"]
    offset = demo["port_offset"]
    assert demo == {
        "address": HOST, "port_offset": offset, "withheld_ports": [],
        "expected_failures": ["outlook-mapihttp"], "as_designed": True,
        "listener_connections": 12, "refused_paths": ["/mapi/"], "left_out": [],
    }  # fmt: skip
    (target,) = report["targets"]
    verdicts = {v["id"]: v["verdict"] for v in target["scenarios"]}
    assert {k: v for k, v in verdicts.items() if v != "pass"} == {
        "outlook-mapihttp": "fail", "pop-imap": "not-enabled", "directory": "skipped",
    }  # fmt: skip
    assert report["profile"]["vantage"] == "client"  # the demo stands on the client subnet
    bad = [(r["id"], r["status"]) for r in target["results"] if r["status"] != "success"]
    assert sorted(bad) == [("mapi", "intercepted"), ("pop3", "connection-refused")]
    lines = table.splitlines()
    assert lines[0].startswith(f"exprobe demo: listeners for profile mini2019 on {HOST}")
    assert "refuses /mapi/ with 403" in " ".join(lines[:3])
    assert f"/mapi/ on {443 + offset} was refused by the proxy" in table
    assert group_members(pgid) == []
    for base in (25, 80, 110, 443, 587, 2525):
        assert refused(base + offset), base + offset


_VALUE = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").strip())


@given(
    path=st.sampled_from([b"/mapi/emsmdb/", b"/EWS/Exchange.asmx", b"/rpc/rpcproxy.dll", b"/owa/"]),
    method=st.sampled_from([b"GET", b"POST", b"RPC_IN_DATA", b"HEAD"]),
    rtype=_VALUE,
    auth=_VALUE,
)
def test_fuzz_echoed_and_decoded_headers(path: bytes, method: bytes, rtype: bytes, auth: bytes) -> None:
    """Header values with any byte (latin-1, escapes) in the headers the answers read:
    an answer or a 400, never an exception (a non-ASCII X-RequestType once raised)."""
    ex = ExchangeSite("EX1", "corp.example", BUILD)
    session = HttpServerSession(ex.answer)
    req = (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nX-RequestType: " + rtype
           + b"\r\nAuthorization: NTLM " + auth + b"\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
    out = session.receive(req)
    assert out[:13] in (b"HTTP/1.1 302 ", b"HTTP/1.1 401 ", b"HTTP/1.1 405 ", b"HTTP/1.1 400 ")
    assert b"\x1b" not in out.split(b"\r\n\r\n", 1)[0]


# -- the shipped exchange2019 profile, end to end ---------------------------------------------------------

CLUSTER = "b97db8b2-4c63-11cf-bff6-08002be23f2f"  # MS-CMRP, the mbx-epm check's own interface


def ex2019(site: HttpSite | None = None) -> tuple[list[CheckDef], dict[str, Any]]:
    from exprobe.commands.listen import listener_defs

    chosen = listener_defs("exchange2019", [], [], [])
    kw = {"http_site": site or HttpSite(default_build("exchange2019")),
          "primary_role": chosen.primary_role, "skipped": chosen.skipped}  # fmt: skip
    return chosen.defs, kw


def test_plan_of_exchange2019() -> None:
    """Every Exchange-role port, one HTTPS listener for the vdirs, and a note for each
    check of another role, each service shipped off and each lookup."""
    defs, kw = ex2019()
    plan = build_plan(defs, port_offset=1000, **kw)
    got = {(x.port - 1000, x.protocol): x.checks for x in plan.listeners}
    assert got == {
        (25, "smtp"): ("smtp", "intra-25"),
        (80, "http"): ("powershell",),
        (135, "msrpc-epm"): ("mbx-epm",),
        (443, "https"): ("owa", "mapi", "nspi", "rpc", "ews", "eas", "oab", "autodiscover-vdir",
                         "tls-443", "lb-pool"),
        (444, "tls"): ("backend-444",),
        (465, "smtp"): ("client-proxy", "intra-465"),
        (475, "smtp"): ("intra-475",),
        (587, "smtp"): ("submission",),
        (717, "smtp"): ("intra-717",),
        (1610, "msrpc-other"): ("mbx-epm:other",),
        (2525, "smtp"): ("intra-2525",),
        (64327, "tcp"): ("replication",),
    }  # fmt: skip
    skipped_roles = [n.split(" ")[1] for n in plan.notes if "host: not opened here" in n]
    assert skipped_roles == ["witness-smb", "dc-ldap", "dc-gc", "dc-ldaps", "dc-gcs",
                             "dc-kerberos", "dc-smb", "dc-dns", "dc-epm", "edge-smtp",
                             "edge-sync"]  # fmt: skip
    off = [n.split(" ")[1] for n in plan.notes if "(enabled = false)" in n]
    assert off == ["pop3", "pop3s", "imap", "imaps"]
    assert [n for n in plan.notes if "looks names up" in n] == [
        "check autodiscover (autodiscover) looks names up and asks other hosts: not rehearsed "
        "by a listener",
        "check mx (mx) looks names up and asks other hosts: not rehearsed by a listener",
    ]
    assert plan.notes[-1] == (
        "the endpoint mapper registers the interfaces the checks map themselves on 1610 "
        "(+1000) (a dynamic port on Windows)"
    )
    assert (
        "check lb-pool (lb-pool) finds members by the FQDN the health pages name, which "
        "resolves nowhere before the server exists: add `--set lb-pool.members=ADDRESS:1443` "
        "to `exprobe run` to compare this listener directly"
    ) in plan.notes
    # An offset that pushes 64327 past 65535: said, and the rest still rehearsed.
    plan = build_plan(defs, port_offset=20000, **kw)
    assert 84327 not in plan.ports()
    assert ("check replication: port 64327 + offset 20000 is past 65535: not opened (an "
            "offset of at most 1208 keeps it)") in plan.notes  # fmt: skip


EX2019_CLIENT = {
    "autodiscover": ("application-error", "methods"),  # looks up the mail domain: not here
    "autodiscover-vdir": ("success", None), "eas": ("success", None),
    "ews": ("success", None), "mapi": ("success", None), "nspi": ("success", None),
    "oab": ("success", None), "owa": ("success", None), "rpc": ("success", None),
    "tls-443": ("success", None), "lb-pool": ("success", None),
    "tls-443/tls1.0": ("connection-closed", "tls-handshake"),  # TLS 1.2 and later only
    "tls-443/tls1.1": ("connection-closed", "tls-handshake"),
    "tls-443/tls1.2": ("success", None), "tls-443/tls1.3": ("success", None),
    "client-proxy": ("success", None), "submission": ("success", None),
    "pop3": ("connection-refused", "connect"), "pop3s": ("connection-refused", "connect"),
    "imap": ("connection-refused", "connect"), "imaps": ("connection-refused", "connect"),
}  # fmt: skip


def test_exprobe_run_exchange2019_client_vantage_against_listen() -> None:
    """`exprobe listen -p exchange2019` + `exprobe run 127.0.0.1 -p exchange2019
    --port-offset N --vantage client`: exact statuses and verdicts."""
    defs, kw = ex2019()
    t = ThreadedListener(defs, plan_kw=kw, name=NAME)
    try:
        # The pool's member asked directly: this listener (its FQDN resolves nowhere here).
        member = f"lb-pool.members={HOST}:{t.port(443)}"
        report = run_json("-p", "exchange2019", "--port-offset", str(t.offset), "--vantage",
                          "client", "--set", member, code=1)  # fmt: skip
        (target,) = report["targets"]
        results = {r["id"]: r for r in target["results"]}
        pool = {k: r["status"] for k, r in results.items() if k.startswith("lb-pool/")}
        assert (len(pool), set(pool.values())) == (65, {"success"})  # 8 rounds x 8 vdirs + 1
        results = {k: r for k, r in results.items() if k not in pool}
        # The cipher-suite search on TLS 1.2: one round per suite after the first, all
        # success, the last one ending the search (how many: the local OpenSSL's defaults).
        rounds = {k: r for k, r in results.items() if k.startswith("tls-443/tls1.2/c")}
        found = results["tls-443/tls1.2"]["facts"]["tls_ciphers"]
        assert len(rounds) == len(found)
        assert {r["status"] for r in rounds.values()} == {"success"}
        assert rounds[f"tls-443/tls1.2/c{len(found) + 1}"]["facts"]["tls_cipher_search_done"]
        assert results["tls-443"]["facts"]["tls_ciphers"] == {"1.2": found}
        results = {k: r for k, r in results.items() if k not in rounds}
        assert {k: (r["status"], r["failed_step"]) for k, r in results.items()} == EX2019_CLIENT
        # The same certificate asked directly as through the VIP: no SSL offloading said.
        assert results["lb-pool"]["warnings"] == [
            "TLS: certificate chain not trusted (issuer unknown)"
        ]
        for vdir in ("owa", "mapi", "nspi", "rpc", "ews", "eas", "oab", "autodiscover-vdir"):
            facts = results[vdir]["facts"]
            assert facts["exchange_build"]["version"] == "Exchange Server 2019 CU15", vdir
            assert facts["exchange_headers"]["X-FEServer"] == "EX1"
            if vdir != "nspi":  # the profile reads /mapi/healthcheck.htm once, for mapi
                assert facts["healthcheck"]["fqdn"] == NAME, vdir
        for vdir in ("mapi", "nspi", "rpc", "ews", "oab", "autodiscover-vdir"):
            assert results[vdir]["facts"]["ntlm"]["dns_computer"] == NAME, vdir
        # The build is named in the verdict facts of every scenario an Exchange vdir decides.
        owa = next(v for v in target["scenarios"] if v["id"] == "owa")
        assert owa["facts"]["exchange_build"]["version"] == "Exchange Server 2019 CU15"
        verdicts = {v["id"]: v["verdict"] for v in target["scenarios"]}
        assert verdicts == {
            "autodiscover": "fail", "owa": "pass", "outlook-mapihttp": "pass",
            "outlook-anywhere": "pass", "ews": "pass", "activesync": "pass", "oab": "pass",
            "smtp-submission": "pass", "pop-imap": "not-enabled",
            "tls-policy": "pass", "lb-pool": "pass",
        }  # fmt: skip
        no_responder_errors(t)
    finally:
        t.close()


LOW_OFFSETS = [1000, 1040, 1080, 1120, 1160, 1200]  # every port above 1024 and below 65536


@pytest.mark.parametrize(
    ("vantage", "verdicts"),
    [
        ("admin", {"remote-shell": "pass"}),
        ("dmz", {"edge-to-mailbox": "pass"}),
        ("mbx", {"edge-subscription": "skipped", "intra-org-transport": "pass",
                 "backend-proxy": "pass", "dag": "skipped", "directory": "skipped"}),
    ],
)  # fmt: skip
def test_exprobe_run_exchange2019_other_vantages(vantage: str, verdicts: dict[str, str]) -> None:
    """From an admin host, the DMZ and another Mailbox server: every check the listener
    stands in for succeeds (DAG replication on 64327 + offset included); the scenarios
    that need the DC, the witness or the Edge are skipped (no host bound to the role)."""
    defs, kw = ex2019()
    t = ThreadedListener(defs, plan_kw=kw, name=NAME, offsets=LOW_OFFSETS)
    try:
        report = run_json("-p", "exchange2019", "--port-offset", str(t.offset), "--vantage",
                          vantage)  # fmt: skip
        (target,) = report["targets"]
        assert {v["id"]: v["verdict"] for v in target["scenarios"]} == verdicts
        assert [r["id"] for r in target["results"] if r["status"] != "success"] == []
        if vantage == "mbx":  # the transport ports list what Exchange lists there
            for cid in ("intra-25", "intra-2525"):
                r = next(r for r in target["results"] if r["id"] == cid)
                assert "ehlo_missing" not in r["facts"], r
                assert r["facts"]["ehlo_extensions"]["X-EXPS"] == "GSSAPI NTLM"
        no_responder_errors(t)
    finally:
        t.close()


def test_exchange2019_endpoint_mapper_hands_out_the_cluster_interface() -> None:
    """The mbx-epm check maps the failover cluster's interface itself (component other):
    impacket's ept_map finds it on 1610 + offset, and a bind there is accepted."""
    from impacket.dcerpc.v5 import epm
    from impacket.uuid import uuidtup_to_bin

    from tests.test_listen_clients import _impacket_dce

    defs, kw = ex2019()
    t = ThreadedListener(defs, plan_kw=kw, name=NAME)
    try:
        dce = _impacket_dce(t.port(135))
        try:
            dce.bind(epm.MSRPC_UUID_PORTMAP)
            binding = epm.hept_map(HOST, uuidtup_to_bin((CLUSTER, "3.0")),
                                   protocol="ncacn_ip_tcp", dce=dce)  # fmt: skip
        finally:
            dce.disconnect()
        assert binding == f"ncacn_ip_tcp:{HOST}[{t.port(1610)}]"
        dce = _impacket_dce(t.port(1610))
        try:
            dce.bind(uuidtup_to_bin((CLUSTER, "3.0")))
        finally:
            dce.disconnect()
    finally:
        t.close()


def test_demo_exchange2019() -> None:
    """`exprobe demo --profile exchange2019`: MAPI over HTTP fails (both /mapi/ checks
    intercepted), POP3 and IMAP4 are not enabled, Autodiscover is left out (said so)."""
    from tests.test_demo import parse_both, run_demo

    proc, _ = run_demo("--profile", "exchange2019")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table, report = parse_both(proc.stdout)
    validate_report(report)
    demo = report["demo"]
    assert (demo["expected_failures"], demo["as_designed"], demo["left_out"]) == (
        ["outlook-mapihttp", "lb-pool"], True, ["autodiscover"]
    )  # fmt: skip
    (target,) = report["targets"]
    verdicts = {v["id"]: v["verdict"] for v in target["scenarios"]}
    assert verdicts == {
        "owa": "pass", "outlook-mapihttp": "fail", "outlook-anywhere": "pass", "ews": "pass",
        "activesync": "pass", "oab": "pass", "smtp-submission": "pass", "pop-imap": "not-enabled",
        "tls-policy": "pass", "lb-pool": "fail",
    }  # fmt: skip
    bad = sorted((r["id"], r["status"]) for r in target["results"]
                 if r["status"] != "success" and not r["id"].startswith("lb-pool/"))  # fmt: skip
    assert bad == [
        ("imap", "connection-refused"), ("imaps", "connection-refused"),
        ("lb-pool", "application-error"), ("mapi", "intercepted"), ("nspi", "intercepted"),
        ("pop3", "connection-refused"), ("pop3s", "connection-refused"),
        ("tls-443/tls1.0", "connection-closed"), ("tls-443/tls1.1", "connection-closed"),
    ]  # fmt: skip
    pool = next(r for r in target["results"] if r["id"] == "lb-pool")
    assert pool["message"].startswith("mapi: EX1 (ex1.exprobe-demo.invalid) answers HTTP 403")
    assert "Left out: Autodiscover (decided by DNS lookups of the mail domain" in " ".join(
        table.splitlines()[:4]
    )


@pytest.mark.parametrize("profile", ["exchange2013", "exchange2016", "exchange-se", "exchange-hybrid"])
def test_demo_other_modern_profiles_go_as_designed(profile: str) -> None:
    from tests.test_demo import run_demo

    proc, _ = run_demo("--profile", profile, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    report = validate_report(json.loads(proc.stdout))
    verdicts = {v["id"]: v["verdict"] for v in report["targets"][0]["scenarios"]}
    pool = {"lb-pool": "fail"} if "lb-pool" in verdicts else {}  # /mapi/ through the VIP
    assert {k: v for k, v in verdicts.items() if v != "pass"} == {
        "outlook-mapihttp": "fail", "pop-imap": "not-enabled", **pool,
    }  # fmt: skip
    build = next(r["facts"]["exchange_build"] for r in report["targets"][0]["results"]
                 if r["id"] == "owa")  # fmt: skip
    assert build["build"] == default_build(profile)


def test_demo_profile_without_a_broken_path_is_a_usage_error() -> None:
    from tests.test_demo import run_demo

    proc, _ = run_demo("--profile", "exchange-edge")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "exprobe: error: --profile exchange-edge: the demo has no broken path to show for this "
        "profile (it breaks the Information Store's port, IMAP4, or MAPI over HTTP); try "
        "exchange55 or exchange2019"
    )
    assert proc.stdout == ""


def test_ipv4_and_ipv6_listeners_answer_alike() -> None:
    """`--bind 127.0.0.1 --bind ::1`: the same Exchange answers on both families."""
    t = ThreadedListener(MODERN, plan_kw={"http_site": HttpSite(BUILD)}, name=NAME,
                         addresses=[HOST, "::1"])  # fmt: skip
    try:
        for host in (HOST, "::1"):
            conn = http.client.HTTPSConnection(host, t.port(443), timeout=10, context=unverified())
            status, headers, _ = fetch(conn, "GET", "/EWS/Exchange.asmx")
            assert (status, headers["X-FEServer"]) == (401, "EX1"), host
            conn.close()
            conn80 = http.client.HTTPConnection(host, t.port(80), timeout=10)
            assert fetch(conn80, "GET", "/autodiscover/autodiscover.xml")[0] == 302
            conn80.close()
        recs = t.wait_records(443, 2) + t.wait_records(80, 2)
        assert sorted(r.peer for r in recs) == ["127.0.0.1", "127.0.0.1", "::1", "::1"]
    finally:
        t.close()


def test_listen_cli_exchange2019_notes_and_set(tmp_path: Path) -> None:
    """The plan output says what is not rehearsed; `--set pop3.enabled=true` opens POP3."""
    from tests.test_listen_clients import start_listen

    log = tmp_path / "listen.jsonl"
    lp, offset = start_listen("-p", "exchange2019", "--name", NAME, "--set", "pop3.enabled=true",
                              "--log-json", str(log), "--duration", "2",
                              offsets=[1000, 1050, 1100, 1150])  # fmt: skip
    out = lp.finish(None)
    assert lp.proc.returncode == 0, lp.stderr
    lines = out.splitlines()
    assert any(x.startswith(f"{110 + offset} ") and "pop3" in x for x in lines), out
    notes = [x for x in lines if x.startswith("note: ")]
    assert "note: check dc-kerberos (kerberos) runs against the dc host: not opened here" in notes
    assert not any("check pop3 (pop3)" in n for n in notes)
    assert any(n.startswith("note: check imap (imap): the product ships this service") for n in notes)
    listening = json.loads(log.read_text().splitlines()[0])
    assert listening["profile"] == "exchange2019"
    assert {x["port"] - offset for x in listening["listeners"]} == {
        25, 80, 110, 135, 443, 444, 465, 475, 587, 717, 1610, 2525, 64327,
    }  # fmt: skip


def test_peer_closing_mid_request_is_logged_as_such(lst: ThreadedListener) -> None:
    before = len(lst.records_for(80))
    reply = _exchange(lst.port(80), b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b", tls=False)
    assert reply == b""
    rec = lst.wait_records(80, before + 1)[-1]
    assert rec.outcome == "peer closed mid-request"


def test_session_eof_between_requests_and_mid_request() -> None:
    session = HttpServerSession(lambda req: Answer(204))
    assert session.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 204 ")
    assert session.receive(b"") == b""
    assert (session.closed, session.outcome) == (True, "peer closed")
    session = HttpServerSession(lambda req: Answer(204))
    assert session.receive(b"GET / HT") == b""
    assert session.receive(b"") == b""
    assert (session.closed, session.outcome) == (True, "peer closed mid-request")


def test_every_output_and_change_window_tool_takes_the_modern_profile(tmp_path: Path) -> None:
    """exchange2019 from the admin vantage (the remote shell) against the listener, through
    each output format, --expect, diff and watch: the new verdicts travel unchanged."""
    defs, kw = ex2019()
    t = ThreadedListener(defs, plan_kw=kw, name=NAME, offsets=LOW_OFFSETS)
    base = ("run", HOST, "-p", "exchange2019", "--port-offset", str(t.offset))
    try:
        # admin: remote-shell passes; mbx: three scenarios skipped for unbound roles.
        for vantage, fmt in (("admin", "json"), ("mbx", "json")):
            proc = exprobe(*base, "--vantage", vantage, "--format", fmt, "-o",
                           str(tmp_path / f"{vantage}.json"), timeout=90)  # fmt: skip
            assert proc.returncode == 0, proc.stderr
        mbx = validate_report(json.loads((tmp_path / "mbx.json").read_text()))
        skipped = sorted(v["id"] for v in mbx["targets"][0]["scenarios"]
                         if v["verdict"] == "skipped")  # fmt: skip
        assert skipped == ["dag", "directory", "edge-subscription"]
        assert mbx["summary"]["scenarios"] == {"pass": 2, "fail": 0, "skipped": 3}
        proc = exprobe(*base, "--vantage", "mbx", "--format", "nagios", timeout=90)
        assert proc.returncode == 1, proc.stdout  # WARNING: 444's self-signed certificate
        assert proc.stdout.startswith(
            "EXPROBE WARNING - 2 of 5 scenarios pass on 1 address (3 skipped), 1 warning: ")
        assert "'scenarios_pass'=2;;;0;5 'scenarios_fail'=0;;;0;5 'scenarios_other'=3;;;0;5" \
            in proc.stdout
        assert proc.stdout.count("\nSKIPPED ") == 3
        proc = exprobe(*base, "--vantage", "mbx", "--format", "prometheus", timeout=90)
        assert proc.returncode == 0
        assert proc.stdout.count('verdict="skipped"} 1.0') == 3
        proc = exprobe(*base, "--vantage", "mbx", "--format", "junit", timeout=90)
        assert (proc.returncode, proc.stdout.count("<skipped ")) == (0, 3)
        proc = exprobe(*base, "--vantage", "mbx", "--format", "jsonl", timeout=90)
        records = [json.loads(x) for x in proc.stdout.splitlines()]
        assert [r["verdict"] for r in records if r["type"] == "scenario"].count("skipped") == 3
        # --expect: the remote shell must pass from the admin subnet.
        expect = tmp_path / "expect.toml"
        expect.write_text('schema_version = 1\n[[expect]]\nname = "shell"\n'
                          'target = "*"\npass = ["remote-shell"]\n')  # fmt: skip
        proc = exprobe(*base, "--vantage", "admin", "--expect", str(expect), timeout=90)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # diff: the same vantage twice has nothing to report.
        proc = exprobe("diff", str(tmp_path / "admin.json"), str(tmp_path / "admin.json"))
        assert proc.returncode == 0, proc.stdout
        # watch: one run, every scenario shown, nothing failed.
        proc = exprobe("watch", HOST, "-p", "exchange2019", "--port-offset", str(t.offset),
                       "--vantage", "mbx", "--max-runs", "1", timeout=90)  # fmt: skip
        assert proc.returncode == 0, proc.stdout
        assert proc.stdout.count("SKIPPED") >= 3
        no_responder_errors(t)
    finally:
        t.close()
