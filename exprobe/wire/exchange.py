"""What Exchange's HTTP answers mean: builds, health pages, MAPI/HTTP and RPC/HTTP requests.

Pure functions and data; the `exchange-http` probe does the I/O.

- Builds: `X-OWA-Version: 15.2.1544.4` or `X-ServerApplication: Exchange/15.02.1544.004`
  named through `exprobe/data/exchange_builds.toml` (product, CU, release date, source).
  15.0 is 2013, 15.1 is 2016, 15.2 below 2562 is 2019, 15.2.2562 and later is SE
  (microsoft/CSS-Exchange: Shared/Get-ExchangeBuildVersionInformation.ps1).  A build newer
  than the table's newest of its product is said to be so, with the table's date.
- `healthcheck.htm`: `200 OK<br/>FQDN` (research note §b.2).
- MAPI over HTTP: the request headers of MS-OXCMAPIHTTP §2.2.2.1 (`X-RequestType`,
  `X-ClientInfo`, `X-RequestId`, `Content-Type: application/mapi-http`).
- RPC over HTTP: the echo request of MS-RPCH §2.1.2.1.x (`RPC_IN_DATA`/`RPC_OUT_DATA`,
  Content-Length 0 to 0x10).
"""

from __future__ import annotations

import functools
import re
import tomllib
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any

VDIRS: dict[str, str] = {
    "owa": "/owa/",
    "ecp": "/ecp/",
    "autodiscover": "/autodiscover/autodiscover.xml",
    "ews": "/EWS/Exchange.asmx",
    "mapi": "/mapi/emsmdb/",
    "nspi": "/mapi/nspi/",
    "rpc": "/rpc/rpcproxy.dll",
    "oab": "/OAB/",
    "eas": "/Microsoft-Server-ActiveSync",
    "ews-wss": "/EWS/Exchange.asmx/wssecurity",
    "autodiscover-wss": "/autodiscover/autodiscover.svc/wssecurity",
    "mrsproxy": "/EWS/mrsproxy.svc",
}
"""Each virtual directory's request path (research note §b.2); the last three are the
endpoints Exchange Online calls in a hybrid deployment (§a.4 H3), never pre-authenticated."""

HYBRID = frozenset({"ews-wss", "autodiscover-wss", "mrsproxy"})
"""Endpoints that must reach Exchange itself: any answer of Exchange's will do (their
unauthenticated status is not documented), a proxy's login page or redirect will not."""

HEALTH_DIR = {
    "owa": "owa", "ecp": "ecp", "autodiscover": "autodiscover", "ews": "ews", "mapi": "mapi",
    "nspi": "mapi", "rpc": "rpc", "oab": "oab", "eas": "Microsoft-Server-ActiveSync",
    "ews-wss": "ews", "autodiscover-wss": "autodiscover", "mrsproxy": "ews",
}
"""The directory whose `healthcheck.htm` speaks for each vdir."""

WINDOWS_AUTH = frozenset({"autodiscover", "ews", "mapi", "nspi", "rpc", "oab"})
"""Vdirs whose Exchange 401 offers NTLM/Negotiate by default (research note §b.1)."""

RPC_ECHO_LENGTH = 0
"""Content-Length of the echo request (MS-RPCH: 0 to 0x10 bytes)."""

_BUILD = re.compile(r"(?:Exchange/)?(\d{1,2})\.(\d{1,2})\.(\d{1,5})(?:\.(\d{1,5}))?")
_FQDN = re.compile(r"200 OK\s*<br\s*/?>\s*([A-Za-z0-9][A-Za-z0-9.-]{0,252})", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class BuildEntry:
    product: str
    release: str
    build: tuple[int, int, int, int]
    date: str


@dataclass(frozen=True, slots=True)
class BuildTable:
    as_of: str
    source: str
    entries: tuple[BuildEntry, ...]


def _parts(text: str) -> tuple[int, int, int, int] | None:
    m = _BUILD.fullmatch(text.strip())
    if m is None:
        return None
    return (int(m[1]), int(m[2]), int(m[3]), int(m[4] or 0))


@functools.cache
def build_table() -> BuildTable:
    """The shipped table (exprobe/data/exchange_builds.toml), read once."""
    raw = resources.files("exprobe.data").joinpath("exchange_builds.toml").read_text("utf-8")
    data = tomllib.loads(raw)
    entries = []
    for row in data["build"]:
        parts = _parts(row["build"])
        if parts is None:  # pragma: no cover - the table is checked by the tests
            raise ValueError(f"bad build in the table: {row['build']!r}")
        entries.append(BuildEntry(row["product"], row["release"], parts, row["date"]))
    return BuildTable(data["as_of"], data["source"], tuple(entries))


def product_of(build: tuple[int, int, int, int]) -> str | None:
    major, minor, number, _ = build
    if major != 15:
        return None
    if minor == 2:
        return "Exchange Server SE" if number >= 2562 else "Exchange Server 2019"
    return {0: "Exchange Server 2013", 1: "Exchange Server 2016"}.get(minor)


def name_build(text: str) -> dict[str, Any] | None:
    """Facts naming a build string (`15.2.1544.4`, `Exchange/15.02.1544.004`), or None when
    it is not a build.  `version` is the product and release, or what the table cannot say."""
    parts = _parts(text)
    if parts is None:
        return None
    table = build_table()
    out: dict[str, Any] = {"build": ".".join(str(p) for p in parts)}
    product = product_of(parts)
    if product is None:
        out["version"] = "not an Exchange 2013 or later build"
        return out
    out["product"] = product
    same = [e for e in table.entries if e.product == product]
    exact = next((e for e in same if e.build[:3] == parts[:3]), None)
    if exact is not None:
        out.update(release=exact.release, release_date=exact.date, source=table.source)
        su = "" if parts[3] == exact.build[3] else " with a later update"
        out["version"] = f"{product} {exact.release}{su}"
        return out
    newest = max((e.build for e in same), default=None)
    if newest is None or parts[:3] > newest[:3]:
        out["version"] = f"{product}, newer than the table ({table.as_of})"
    else:
        out["version"] = f"{product}, a build the table does not list"
    return out


def healthcheck_fqdn(body: bytes) -> str | None:
    """The server FQDN of a `healthcheck.htm` body (`200 OK<br/>ex1.corp.example`)."""
    m = _FQDN.search(body[:4096].decode("latin-1"))
    return m[1].rstrip(".") if m else None


def mapi_headers(request_type: str, request_id: str | None = None) -> list[tuple[str, str]]:
    """The MAPI/HTTP request headers of MS-OXCMAPIHTTP §2.2.2.1 for `Connect` or `Bind`."""
    rid = request_id or f"{{{uuid.uuid4()}}}:1"
    return [
        ("Content-Type", "application/mapi-http"),
        ("X-RequestType", request_type),
        ("X-ClientInfo", f"{{{uuid.uuid4()}}}-1"),
        ("X-RequestId", rid),
        ("X-ClientApplication", "Outlook/16.0.0.0"),
        ("User-Agent", "exprobe"),
        ("Accept", "*/*"),
    ]


def looks_like_html(content_type: str | None, body: bytes) -> bool:
    """An HTML page (a proxy's or WAF's error or login page)."""
    if content_type and "html" in content_type.lower():
        return True
    head = body[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def login_form(body: bytes) -> bool:
    """A page with a password field: somebody's login page."""
    low = body[:65536].lower()
    return b"type=\"password\"" in low or b"type='password'" in low or b"type=password" in low
