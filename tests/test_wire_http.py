"""The HTTP codec (h11 with bounds), WWW-Authenticate parsing and the Exchange knowledge."""

from __future__ import annotations

import tomllib
from importlib import resources

import pytest

from exprobe.errors import ProtocolError
from exprobe.wire import exchange
from exprobe.wire.http import (
    Challenge,
    HttpConnection,
    clean,
    parse_www_authenticate,
    schemes,
    token_for,
)

EX401 = (
    b"HTTP/1.1 401 Unauthorized\r\n"
    b"Server: Microsoft-IIS/10.0\r\n"
    b"request-id: 1f2e\r\n"
    b"X-FEServer: EX1\r\n"
    b"X-OWA-Version: 15.2.1544.4\r\n"
    b"WWW-Authenticate: Negotiate\r\n"
    b"WWW-Authenticate: NTLM\r\n"
    b'WWW-Authenticate: Basic realm="mail.corp.example"\r\n'
    b"Content-Length: 0\r\n\r\n"
)


def test_request_bytes_and_keep_alive_cycle() -> None:
    c = HttpConnection()
    assert c.request("GET", "/owa/", "mail.corp.example", [("User-Agent", "x")]) == (
        b"GET /owa/ HTTP/1.1\r\nHost: mail.corp.example\r\nUser-Agent: x\r\n\r\n"
    )
    r = c.feed(EX401)
    assert r is not None
    assert r.status == 401
    assert c.reusable
    c.next_cycle()
    assert c.request("POST", "/mapi/emsmdb/", "h", body=b"") == (
        b"POST /mapi/emsmdb/ HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
    )


def test_announced_length_leaves_the_request_open() -> None:
    c = HttpConnection()
    data = c.request("RPC_IN_DATA", "/rpc/rpcproxy.dll", "h", content_length=1073741824)
    assert data.endswith(b"Content-Length: 1073741824\r\n\r\n")
    r = c.feed(EX401)
    assert r is not None
    assert r.status == 401
    assert not c.reusable  # our body was never sent


def test_exchange_headers_and_schemes() -> None:
    c = HttpConnection()
    c.request("GET", "/EWS/Exchange.asmx", "h")
    r = c.feed(EX401)
    assert r is not None
    assert r.exchange_headers() == {
        "X-OWA-Version": "15.2.1544.4",
        "X-FEServer": "EX1",
        "request-id": "1f2e",
    }
    assert schemes(r.challenges()) == ["Negotiate", "NTLM", "Basic"]


def test_response_in_pieces_and_chunked_body() -> None:
    c = HttpConnection()
    c.request("GET", "/", "h")
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    out = None
    for i in range(len(raw)):
        out = c.feed(raw[i : i + 1]) or out
    assert out is not None
    assert out.body == b"hello"
    assert not out.body_truncated


def test_body_is_bounded_and_not_read_past() -> None:
    c = HttpConnection(max_body=10)
    c.request("GET", "/", "h")
    r = c.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2147483648\r\n\r\n" + b"A" * 100)
    assert r is not None
    assert r.body == b"A" * 10
    assert r.body_truncated
    assert not c.reusable


def test_header_block_is_bounded() -> None:
    c = HttpConnection(max_header_bytes=1024)
    c.request("GET", "/", "h")
    c.feed(b"HTTP/1.1 200 OK\r\n" + b"X-Endless: " + b"a" * 50 + b"\r\n")
    with pytest.raises(ProtocolError):
        c.feed((b"X-Endless: " + b"a" * 50 + b"\r\n") * 30)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", "not an HTTP response: SSH-2.0-OpenSSH_9.6\\x0d\\x0a"),
        (b"\x16\x03\x01\x00\x05hello", "not an HTTP response: \\x16\\x03\\x01\\x00\\x05hello"),
    ],
)
def test_not_http(raw: bytes, message: str) -> None:
    c = HttpConnection()
    c.request("GET", "/", "h")
    with pytest.raises(ProtocolError) as e:
        c.feed(raw)
    assert str(e.value) == message


def test_chunked_garbage_is_a_protocol_error() -> None:
    c = HttpConnection()
    c.request("GET", "/", "h")
    with pytest.raises(ProtocolError, match="malformed HTTP response"):
        c.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n")


def test_eof_before_and_during_a_response() -> None:
    c = HttpConnection()
    c.request("GET", "/", "h")
    with pytest.raises(EOFError):
        c.feed(b"")
    c = HttpConnection()
    c.request("GET", "/", "h")
    assert c.feed(b"HTTP/1.1 200 OK\r\nContent-Le") is None
    with pytest.raises(ProtocolError, match="cut short after 27 bytes"):
        c.feed(b"")


def test_interim_responses_are_skipped_and_bounded() -> None:
    c = HttpConnection()
    c.request("GET", "/", "h")
    r = c.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert r is not None
    assert (r.status, r.interim) == (204, [100])
    c = HttpConnection()
    c.request("GET", "/", "h")
    with pytest.raises(ProtocolError, match="interim"):
        c.feed(b"HTTP/1.1 102 Processing\r\n\r\n" * 20)


def test_www_authenticate_parsing() -> None:
    got = parse_www_authenticate(
        ['Basic realm="a, b", charset="UTF-8", NTLM TlRMTVNTUAACAAAA==', "Negotiate", "Bearer"]
    )
    assert got == [
        Challenge("Basic", params=(("realm", "a, b"), ("charset", "UTF-8"))),
        Challenge("NTLM", token="TlRMTVNTUAACAAAA=="),
        Challenge("Negotiate"),
        Challenge("Bearer"),
    ]
    assert token_for(got, "ntlm") == "TlRMTVNTUAACAAAA=="
    assert token_for(got, "Negotiate") is None
    assert len(parse_www_authenticate(["X, " * 1000])) == 32


def test_clean_escapes_control_characters() -> None:
    assert clean("EX1\x1b[31m\r\n") == "EX1\\x1b[31m\\x0d\\x0a"
    assert len(clean("a" * 1000)) == 400


# -- Exchange knowledge -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "version"),
    [
        ("15.2.1544.4", "Exchange Server 2019 CU14"),
        ("Exchange/15.02.1544.004", "Exchange Server 2019 CU14"),
        ("15.2.1544.37", "Exchange Server 2019 CU14 with a later update"),
        ("15.1.2507.6", "Exchange Server 2016 CU23"),
        ("15.0.1497.2", "Exchange Server 2013 CU23"),
        ("15.2.2562.17", "Exchange Server SE RTM"),
        ("15.2.2700.1", "Exchange Server SE, newer than the table (2025-07-01)"),
        ("15.1.2600.1", "Exchange Server 2016, newer than the table (2025-07-01)"),
        ("15.2.1545.1", "Exchange Server 2019, a build the table does not list"),
        ("14.3.123.4", "not an Exchange 2013 or later build"),
    ],
)
def test_build_names(raw: str, version: str) -> None:
    named = exchange.name_build(raw)
    assert named is not None
    assert named["version"] == version


def test_build_facts_carry_date_and_source() -> None:
    assert exchange.name_build("15.2.1748.10") == {
        "build": "15.2.1748.10",
        "product": "Exchange Server 2019",
        "release": "CU15",
        "release_date": "2025-02-10",
        "source": "https://learn.microsoft.com/en-us/exchange/new-features/build-numbers-and-release-dates",
        "version": "Exchange Server 2019 CU15",
    }
    assert exchange.name_build("not a build") is None


def test_build_table_is_consistent() -> None:
    raw = resources.files("exprobe.data").joinpath("exchange_builds.toml").read_text()
    data = tomllib.loads(raw)
    assert data["as_of"] == max(row["date"] for row in data["build"])
    for row in data["build"]:
        parts = tuple(int(p) for p in row["build"].split("."))
        assert exchange.product_of((*parts[:3], 0)) == row["product"], row  # type: ignore[arg-type]
    products = {row["product"] for row in data["build"]}
    assert products == {"Exchange Server 2013", "Exchange Server 2016", "Exchange Server 2019", "Exchange Server SE"}


def test_healthcheck_body() -> None:
    assert exchange.healthcheck_fqdn(b"200 OK<br/>ex1.corp.example") == "ex1.corp.example"
    assert exchange.healthcheck_fqdn(b"200 OK<br />EX1.corp.example.\r\n") == "EX1.corp.example"
    assert exchange.healthcheck_fqdn(b"<html>Sign in</html>") is None


def test_mapi_headers() -> None:
    h = dict(exchange.mapi_headers("Connect", "{x}:1"))
    assert (h["Content-Type"], h["X-RequestType"], h["X-RequestId"]) == (
        "application/mapi-http", "Connect", "{x}:1")
    assert h["X-ClientInfo"].startswith("{")
    assert h["X-ClientInfo"].endswith("}-1")


def test_login_page_recognition() -> None:
    page = b'<!DOCTYPE html><form><input type="password" name="pw"></form>'
    assert exchange.login_form(page)
    assert exchange.looks_like_html(None, page)
    assert not exchange.login_form(b"200 OK<br/>ex1")
    assert exchange.looks_like_html("text/html; charset=utf-8", b"")
