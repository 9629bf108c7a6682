"""http and exchange-http through a real nginx (TLS front, pool, middleboxes) to the scripted
Exchange backends of the web lab (tests/lab/weblab.py); NTLM facts agree with nmap's
`http-ntlm-info`."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import pytest

from tests.helpers import validate_report
from tests.lab.weblab import PORTS, SERVER, WebLab

pytestmark = pytest.mark.lab

EX1_NTLM = {
    "netbios_computer": "EX1",
    "netbios_domain": "CORP",
    "dns_computer": "ex1.corp.example",
    "dns_domain": "corp.example",
    "dns_tree": "corp.example",
    "os_version": "10.0.17763",
    "target_name": "CORP",
    "scheme": "NTLM",
}
EX1_HEADERS = {
    "X-FEServer": "EX1",
    "X-OWA-Version": "15.2.1544.4",
    "X-CasErrorCode": "UnauthenticatedRequest",
    "request-id": "6a1c7a3e-0000-4000-8000-000000000001",
}
BUILD = {
    "build": "15.2.1544.4",
    "product": "Exchange Server 2019",
    "release": "CU14",
    "release_date": "2024-02-13",
    "source": "https://learn.microsoft.com/en-us/exchange/new-features/build-numbers-and-release-dates",
    "version": "Exchange Server 2019 CU14",
}


def check(weblab: WebLab, probe: str, port: int, *sets: str, tls: bool = True,
          host: str = SERVER[4]) -> dict[str, Any]:  # fmt: skip
    argv = [sys.executable, "-m", "exprobe", "check", host, probe, "--port", str(port),
            "--format", "json"]  # fmt: skip
    if tls:
        argv += ["--tls", "implicit"]
    for s in sets:
        argv += ["--set", s]
    proc = weblab.cli(argv)
    assert proc.stdout, proc.stderr
    report = validate_report(json.loads(proc.stdout))
    (result,) = [r for t in report["targets"] for r in t["results"]]
    return result  # type: ignore[no-any-return]


def ntlm_facts(result: dict[str, Any]) -> dict[str, Any]:
    got = dict(result["facts"]["ntlm"])
    assert abs(got.pop("clock_skew_s")) < 5
    got.pop("server_time")
    return got


def test_http_over_tls_records_status_schemes_headers_certificate(weblab: WebLab) -> None:
    r = check(weblab, "http", PORTS["ex1"], "path=/EWS/Exchange.asmx", "ntlm=true")
    assert (r["status"], r["failed_step"]) == ("success", None)
    f = r["facts"]
    assert (f["status"], f["www_authenticate"], f["server"]) == (401, ["Negotiate", "NTLM"], "nginx/1.22.1")
    assert f["exchange_headers"] == EX1_HEADERS
    assert f["exchange_build"] == BUILD
    assert f["ntlm_offered"] is True
    assert ntlm_facts(r) == EX1_NTLM
    assert f["cert_sha256"] == weblab.cert_sha256
    assert f["cert_san"] == ["DNS:mail.corp.example", "IP:10.252.0.2", "IP:fd00:e7::2"]
    assert r["message"] == "HTTP 401 (Negotiate, NTLM; X-FEServer EX1), NTLM ex1.corp.example, " + f["tls_version"]


def test_check_view_with_path(weblab: WebLab) -> None:
    proc = weblab.cli([sys.executable, "-m", "exprobe", "check", SERVER[4], "http", "--path", "/owa/",
                    "--tls", "implicit"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["http", "10.252.0.2:443", "open", "success"]
    assert lines[1].startswith("HTTP 302 (X-FEServer EX1), TLSv1.")
    assert "  C GET /owa/ HTTP/1.1 (40 bytes)" in lines


def test_http_plain_over_ipv6_with_expect_status(weblab: WebLab) -> None:
    r = check(weblab, "http", PORTS["plain"], "path=/owa/", "expect_status=302", tls=False, host=SERVER[6])
    assert r["status"] == "success"
    assert r["facts"]["location"] == (
        "https://ex1.corp.example/owa/auth/logon.aspx?url=https%3a%2f%2fex1.corp.example/owa/&reason=0")
    r = check(weblab, "http", PORTS["plain"], "path=/owa/", "expect_status=200", tls=False)
    assert (r["status"], r["failed_step"]) == ("application-error", "expect")


def test_ntlm_agrees_with_nmap(weblab: WebLab) -> None:
    proc = weblab.cli(["nmap", "-Pn", "-n", "-p", str(PORTS["ex1"]), "--script", "http-ntlm-info",
                    "--script-args", "http-ntlm-info.root=/ews/", SERVER[4]])  # fmt: skip
    nmap = dict(re.findall(r"\|_?\s+(\w+): (\S+)", proc.stdout))
    r = check(weblab, "http", PORTS["ex1"], "path=/ews/", "ntlm=true")
    ours = ntlm_facts(r)
    assert nmap == {
        "Target_Name": ours["target_name"],
        "NetBIOS_Domain_Name": ours["netbios_domain"],
        "NetBIOS_Computer_Name": ours["netbios_computer"],
        "DNS_Domain_Name": ours["dns_domain"],
        "DNS_Computer_Name": ours["dns_computer"],
        "DNS_Tree_Name": ours["dns_tree"],
        "Product_Version": ours["os_version"],
    }


@pytest.mark.parametrize(
    ("vdir", "status", "schemes"),
    [
        ("owa", 302, []),
        ("ecp", 302, []),
        ("autodiscover", 401, ["Negotiate", "NTLM", "Basic"]),
        ("ews", 401, ["Negotiate", "NTLM"]),
        ("mapi", 401, ["Negotiate", "NTLM"]),
        ("nspi", 401, ["Negotiate", "NTLM"]),
        ("rpc", 401, ["Negotiate", "NTLM", "Basic"]),
        ("oab", 401, ["Negotiate", "NTLM"]),
        ("eas", 401, ["Basic"]),
    ],
)
def test_exchange_vdirs_through_nginx(weblab: WebLab, vdir: str, status: int, schemes: list[str]) -> None:
    r = check(weblab, "exchange-http", PORTS["ex1"], f"vdir={vdir}", "expect_server=ex1.corp.example",
              f"expect_cert_sha256={weblab.cert_sha256}")  # fmt: skip
    assert (r["status"], r["failed_step"]) == ("success", None), r["message"]
    f = r["facts"]
    assert (f["status"], f["www_authenticate"]) == (status, schemes)
    assert f["healthcheck"]["fqdn"] == "ex1.corp.example"
    assert f["exchange_build"] == BUILD
    if vdir in ("autodiscover", "ews", "mapi", "nspi", "rpc", "oab"):
        assert ntlm_facts(r) == EX1_NTLM
    else:
        assert "ntlm" not in f
    if vdir in ("mapi", "nspi"):
        assert f["exchange_headers"]["X-ServerApplication"] == "Exchange/15.2.1544.4"
        assert f["exchange_headers"]["X-CalculatedBETarget"] == "ex1.corp.example"
    if vdir == "rpc":
        assert (f["rpc_verbs"], f["rpc_out"]["status"]) == ("carried", 401)


def test_mapi_refused_by_the_proxy_is_intercepted(weblab: WebLab) -> None:
    r = check(weblab, "exchange-http", PORTS["refuse"], "vdir=mapi")
    assert (r["status"], r["failed_step"]) == ("intercepted", "request")
    assert r["message"] == "intercepted: POST /mapi/emsmdb/ answered 403 without any Exchange header"
    ev = r["facts"]["interception"]
    assert (ev["status"], ev["server"], ev["html"]) == (403, "nginx/1.22.1", True)


def test_rpc_verbs_refused_by_the_proxy_is_intercepted(weblab: WebLab) -> None:
    r = check(weblab, "exchange-http", PORTS["refuse"], "vdir=rpc")
    assert (r["status"], r["failed_step"]) == ("intercepted", "request")
    assert r["message"] == (
        "intercepted: RPC_IN_DATA /rpc/rpcproxy.dll answered 405: a middlebox refuses the RPC over HTTP verbs")
    assert r["facts"]["rpc_verbs"] == "refused"
    # The same proxy passes the other vdirs: Exchange answers there.
    assert check(weblab, "exchange-http", PORTS["refuse"], "vdir=ews")["status"] == "success"


def test_waf_login_page_is_intercepted(weblab: WebLab) -> None:
    r = check(weblab, "exchange-http", PORTS["waf"], "vdir=ews")
    assert (r["status"], r["failed_step"]) == ("intercepted", "request")
    assert r["message"] == "intercepted: GET /EWS/Exchange.asmx answered 302 without any Exchange header"
    assert r["facts"]["interception"]["location"] == f"https://10.252.0.2:{PORTS['waf']}/login"
    r = check(weblab, "http", PORTS["waf"], "path=/login")
    assert (r["status"], r["facts"]["status"], r["facts"]["content_type"]) == ("success", 200, "text/html")


def test_auth_offload_is_intercepted(weblab: WebLab) -> None:
    r = check(weblab, "exchange-http", PORTS["strip"], "vdir=ews")
    assert (r["status"], r["failed_step"]) == ("intercepted", "request")
    assert r["message"] == (
        "intercepted: GET /EWS/Exchange.asmx answered 401 without NTLM or Negotiate, which Exchange offers there")
    assert r["facts"]["www_authenticate"] == ["Basic"]
    assert r["facts"]["exchange_headers"]["X-FEServer"] == "EX1"


def test_another_certificate_is_intercepted(weblab: WebLab) -> None:
    r = check(weblab, "exchange-http", PORTS["inspect"], "vdir=owa", f"expect_cert_sha256={weblab.cert_sha256}")
    assert (r["status"], r["failed_step"]) == ("intercepted", "certificate")
    assert r["facts"]["interception"] == {
        "expected_cert_sha256": weblab.cert_sha256, "cert_sha256": weblab.other_sha256,
        "reason": "the certificate is not the server's (SHA-256 differs)"}


def test_another_server_behind_the_name_is_intercepted(weblab: WebLab) -> None:
    r = check(weblab, "exchange-http", PORTS["ex2"], "vdir=ews", "expect_server=ex1.corp.example")
    assert (r["status"], r["failed_step"]) == ("intercepted", "request")
    assert r["message"] == "intercepted: X-FEServer names EX2, not ex1.corp.example"


def test_pool_shows_both_members(weblab: WebLab) -> None:
    r = check(weblab, "exchange-http", PORTS["pool"], "vdir=owa")
    assert r["status"] == "success"
    seen = {r["facts"]["exchange_headers"]["X-FEServer"].lower(), r["facts"]["healthcheck"]["fqdn"].split(".")[0]}
    assert seen == {"ex1", "ex2"}  # round robin per request, one upstream connection each


def test_nftables_reset(weblab: WebLab) -> None:
    r = check(weblab, "exchange-http", PORTS["reset"], "vdir=owa")
    assert (r["status"], r["port_state"], r["failed_step"]) == ("connection-refused", "closed", "connect")
