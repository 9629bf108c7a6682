"""What Exchange's own virtual directories answer an unauthenticated client.

One piece of code for two users: `exprobe listen` (HTTPS 443 and HTTP 80 of a rehearsal
for Exchange 2013 and later) and the scripted Exchange backends of the lab tests
(tests/peers/exchange_http.py).  The answers follow research note §b (modern-exchange.md):

- `/owa/`, `/ecp/` → 302 to `/owa/auth/logon.aspx?url=...&reason=0`; the logon page 200;
- `/autodiscover/`, `/EWS/`, `/mapi/`, `/OAB/`, `/rpc/` → 401 with `Negotiate` and
  `NTLM` (and `Basic` on autodiscover and rpc), `X-CasErrorCode: UnauthenticatedRequest`;
  MAPI/HTTP also `X-ServerApplication`, `X-CalculatedBETarget`, `X-BEServer`,
  `X-BackEndHttpStatus` and the client's `X-RequestType`;
- an `Authorization: NTLM|Negotiate <NEGOTIATE>` there → 401 with a CHALLENGE naming
  this server (NetBIOS and DNS names, `exprobe.wire.ntlm.encode_challenge`);
- `RPC_IN_DATA`/`RPC_OUT_DATA` on `/rpc/` → 401 (elsewhere 405);
- `/Microsoft-Server-ActiveSync` → 401 `Basic`;
- `/PowerShell/` → 401 `Negotiate`, `Kerberos` (the remote shell; SSL not required, so
  on port 80 too);
- `/<vdir>/healthcheck.htm` → `200 OK<br/>FQDN` (503 for a vdir taken offline);
- every answer carries `X-FEServer` (NetBIOS name) and `X-OWA-Version` (the build).

`/PowerShell/` → 401 `Negotiate`, `Kerberos` (the remote shell; its vdir needs no TLS).
Port 80 (`answer_plain`): `/PowerShell/` and the health pages as on 443; everything else
→ 302 to `https://FQDN<same path>`, which is the Autodiscover HTTP-redirect method (§b.2).

`refused` path prefixes play a reverse proxy in front of Exchange that refuses them: 403
with the proxy's own HTML page and no Exchange header (what `exchange-http` calls
intercepted).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re

from exprobe.listen.http import Answer, Request
from exprobe.wire import exchange as wire_exchange
from exprobe.wire import ntlm

WINDOWS = ("/autodiscover/", "/ews/", "/mapi/", "/oab/", "/rpc/")
"""Vdirs whose 401 offers Negotiate and NTLM (research note §b.1)."""
WITH_BASIC = ("/rpc/", "/autodiscover/")
"""... and Basic as well."""
RPC_VERBS = ("RPC_IN_DATA", "RPC_OUT_DATA")
IIS = "Microsoft-IIS/10.0"
REHEARSAL_SERVER = "exprobe-listen (rehearsal, not a real Exchange server)"
LOGON_PAGE = (
    b"<!DOCTYPE html><html><head><title>Outlook</title></head><body>"
    b"<!-- OwaPage = ASP.auth_logon_aspx -->"
    b'<form action="/owa/auth.owa" method="POST"><input type="text" name="username">'
    b'<input type="password" name="password"></form></body></html>'
)
NETBIOS_CHARS = 15
_TOKEN = re.compile(r"[A-Za-z]{1,32}")  # MS-OXCMAPIHTTP X-RequestType values
REQUEST_ID = "6a1c7a3e-0000-4000-8000-000000000001"  # fixed: the lab tests compare it


def netbios(name: str) -> str:
    """The NetBIOS form of a host name: its first label, upper case, at most 15 characters."""
    return name.split(".", 1)[0].upper()[:NETBIOS_CHARS] or "EXPROBE"


def default_build(profile: str | None) -> str:
    """The newest build the shipped table knows of the product a profile is named for
    (`exchange2016` → 2016's newest CU; SE for `exchange-se`; 2019 otherwise)."""
    name = (profile or "").lower()
    product = "Exchange Server 2019"
    for key, prod in (("2013", "Exchange Server 2013"), ("2016", "Exchange Server 2016"),
                      ("-se", "Exchange Server SE")):  # fmt: skip
        if key in name:
            product = prod
    entries = [e for e in wire_exchange.build_table().entries if e.product == product]
    newest = max(entries, key=lambda e: e.build)
    return ".".join(str(p) for p in newest.build)


class ExchangeSite:
    """One Exchange server's Default Web Site, as an unauthenticated client sees it.

    `name` is the computer name (`EX1`, or a host name whose first label is used),
    `domain` its DNS domain ("" for none), `build` its `X-OWA-Version`, `skew_s` an offset
    to the clock its NTLM challenge reports, `offline` the vdirs whose `healthcheck.htm`
    answers 503 (Managed Availability took the protocol offline), `server` the `Server`
    header, `refused` path prefixes (lower case, e.g. `/mapi/`) a reverse proxy refuses
    with 403.
    """

    def __init__(
        self,
        name: str,
        domain: str,
        build: str,
        skew_s: float = 0.0,
        offline: tuple[str, ...] = (),
        *,
        server: str = IIS,
        refused: tuple[str, ...] = (),
    ) -> None:
        self.name = netbios(name)
        self.domain = domain.lower().strip(".")
        host = name.split(".", 1)[0].lower()
        self.fqdn = f"{host}.{self.domain}" if self.domain else host
        self.build = build
        self.skew_s = skew_s
        self.server = server
        self.refused = tuple(p.lower() for p in refused)
        self.offline = tuple(o.lower() for o in offline)

    @classmethod
    def for_host(
        cls,
        host: str,
        build: str,
        *,
        domain: str | None = None,
        server: str = IIS,
        refused: tuple[str, ...] = (),
    ) -> ExchangeSite:
        """The site of host name `host` (`ex1.corp.example`: NetBIOS EX1, domain
        corp.example); `domain` overrides the part after the first dot."""
        if domain is None:
            domain = host.split(".", 1)[1] if "." in host else ""
        return cls(host, domain, build, server=server, refused=refused)

    # -- pieces -------------------------------------------------------------------------

    def headers(self) -> list[tuple[str, str]]:
        """What every answer carries: the frontend's name and the build (§b.3)."""
        return [
            ("Server", self.server),
            ("X-FEServer", self.name),
            ("X-OWA-Version", self.build),
            ("request-id", REQUEST_ID),
            ("X-Powered-By", "ASP.NET"),
        ]

    def challenge(self) -> str:
        """A base64 NTLM CHALLENGE naming this server, its clock skewed by `skew_s`."""
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.skew_s)
        nb_domain = netbios(self.domain) if self.domain else "WORKGROUP"
        raw = ntlm.encode_challenge(
            netbios_computer=self.name,
            netbios_domain=nb_domain,
            dns_computer=self.fqdn,
            dns_domain=self.domain,
            timestamp=when,
        )
        return base64.b64encode(raw).decode()

    def _refusal(self) -> Answer:
        body = (
            b"<html><head><title>403 Forbidden</title></head><body><center><h1>403 Forbidden"
            b"</h1></center><hr><center>reverse proxy (exprobe rehearsal)</center></body></html>"
        )
        hdrs = (("Server", "reverse-proxy"), ("Content-Type", "text/html"))
        return Answer(403, hdrs, body, note="refused by the proxy")

    # -- answers ------------------------------------------------------------------------

    def answer(self, req: Request) -> Answer:
        """The answer of the HTTPS site (443) to `req`."""
        path = req.path
        if self.refused and path.startswith(self.refused):
            return self._refusal()
        hdrs = self.headers()
        if path.endswith("/healthcheck.htm"):
            if path.split("/")[1] in self.offline:  # Managed Availability took it offline
                body = b"<html>Service Unavailable</html>"
                return Answer(503, (*hdrs, ("Content-Type", "text/html")), body, "offline")
            body = f"200 OK<br/>{self.fqdn}".encode()
            return Answer(200, (*hdrs, ("Content-Type", "text/html")), body, "health page")
        if path.startswith("/owa/auth/logon.aspx"):
            return Answer(200, (*hdrs, ("Content-Type", "text/html; charset=utf-8")), LOGON_PAGE)
        if path.startswith(("/owa", "/ecp")) and not path.startswith("/owa/auth"):
            loc = (
                f"https://{self.fqdn}/owa/auth/logon.aspx?url=https%3a%2f%2f{self.fqdn}"
                f"{req.target}&reason=0"
            )
            return Answer(302, (*hdrs, ("Location", loc)))
        if path.startswith("/microsoft-server-activesync"):
            return Answer(401, (*hdrs, ("WWW-Authenticate", f'Basic realm="{self.fqdn}"')))
        if path.startswith("/powershell"):
            return self._shell(hdrs)
        if path.startswith(WINDOWS):
            return self._windows(req, path, hdrs)
        body = b"<html><body>404 Not Found</body></html>"
        return Answer(404, (*hdrs, ("Content-Type", "text/html")), body)

    def _windows(self, req: Request, path: str, hdrs: list[tuple[str, str]]) -> Answer:
        """A vdir with Windows authentication: 401, with a CHALLENGE when NEGOTIATE came."""
        if req.method in RPC_VERBS and not path.startswith("/rpc/"):
            return Answer(405, tuple(hdrs))
        extra: list[tuple[str, str]] = [("X-CasErrorCode", "UnauthenticatedRequest")]
        if path.startswith("/mapi/"):
            extra += [
                ("X-ServerApplication", f"Exchange/{self.build}"),
                ("X-CalculatedBETarget", self.fqdn),
                ("X-BEServer", self.name),
                ("X-BackEndHttpStatus", "401"),
            ]
            rtype = req.header("x-requesttype") or ""
            if _TOKEN.fullmatch(rtype):  # Connect, Bind, ...: echoed, as Exchange does
                extra.append(("X-RequestType", rtype))
        scheme, _, token = (req.header("authorization") or "").strip().partition(" ")
        if scheme in ("NTLM", "Negotiate") and _is_negotiate(token):
            challenge = ("WWW-Authenticate", f"{scheme} {self.challenge()}")
            return Answer(401, (*hdrs, *extra, challenge), note="NTLM CHALLENGE")
        schemes = [("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "NTLM")]
        if path.startswith(WITH_BASIC):
            schemes.append(("WWW-Authenticate", f'Basic realm="{self.fqdn}"'))
        return Answer(401, (*hdrs, *extra, *schemes))

    def _shell(self, hdrs: list[tuple[str, str]]) -> Answer:
        """The remote shell's vdir (Kerberos; "SSL: Not required", so on 80 and 443)."""
        schemes = (("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "Kerberos"))
        return Answer(401, (*hdrs, *schemes), note="remote shell")

    def answer_plain(self, req: Request) -> Answer:
        """The answer of the plain HTTP site (80) to `req`."""
        path = req.path
        if path.endswith("/healthcheck.htm") or path.startswith("/powershell"):
            return self.answer(req)
        loc = f"https://{self.fqdn}{req.target}"
        return Answer(302, (("Server", self.server), ("Location", loc)), note="to HTTPS")


def _is_negotiate(token: str) -> bool:
    """A base64 NTLMSSP NEGOTIATE (type 1); anything else earns no CHALLENGE."""
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return raw.startswith(ntlm.SIGNATURE) and raw[8:12] == b"\x01\x00\x00\x00"
