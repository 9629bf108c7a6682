"""`http` and `exchange-http`: HTTP/1.1 requests (plain or TLS) and what Exchange answers.

RFC 9110/9112 through h11 (`exprobe.wire.http`); NTLM identity through
`exprobe.wire.ntlm`; Exchange's builds, health pages, MAPI/HTTP (MS-OXCMAPIHTTP) and RPC
over HTTP (MS-RPCH) through `exprobe.wire.exchange`.  Everything runs on the one
connection the runner opened (implicit TLS on 443 when `tls = implicit`).

`http` params: `method` (GET, HEAD, POST, OPTIONS, RPC_IN_DATA, RPC_OUT_DATA), `path`,
`headers` ("Name: value", ...), `body`, `content_length` (announce a length and send no
body), `host` (the Host header; default the target name), `ntlm` (send an NTLMSSP
NEGOTIATE where NTLM/Negotiate is offered and read the CHALLENGE), `expect_status`.
Steps: request, [ntlm].

`exchange-http` params: `vdir` (owa, ecp, autodiscover, ews, mapi, nspi, rpc, oab, eas,
and the hybrid endpoints ews-wss, autodiscover-wss, mrsproxy, where any answer of
Exchange's will do),
`healthcheck`, `ntlm`, `host`, `expect_server` (the server name the answers must carry),
`expect_cert_sha256`.  Steps: request, [rpc-out], [ntlm], [healthcheck].
An answer that is not Exchange's where Exchange must answer ends as `intercepted`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from exprobe.errors import ApplicationError, InputError, InterceptedError
from exprobe.net.stream import Stream
from exprobe.probes._http import HttpClient, ntlm_identity, response_facts
from exprobe.probes._text import tls_summary
from exprobe.probes.base import Params, ProbeContext, register
from exprobe.wire import exchange
from exprobe.wire.http import HttpResponse, clean, schemes

Method = Literal["GET", "HEAD", "POST", "OPTIONS", "RPC_IN_DATA", "RPC_OUT_DATA"]
Vdir = Literal["owa", "ecp", "autodiscover", "ews", "mapi", "nspi", "rpc", "oab", "eas",
               "ews-wss", "autodiscover-wss", "mrsproxy"]  # fmt: skip


@dataclass(frozen=True, slots=True)
class HttpParams(Params):
    """One request; see the module docstring."""

    method: Method = "GET"
    path: str = "/"
    headers: tuple[str, ...] = ()
    body: str = ""
    content_length: int | None = None
    host: str | None = None
    ntlm: bool = False
    expect_status: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ExchangeHttpParams(Params):
    """One Exchange virtual directory; see the module docstring."""

    vdir: Vdir = "owa"
    healthcheck: bool = True
    ntlm: bool = True
    host: str | None = None
    expect_server: str | None = None
    expect_cert_sha256: str | None = None


def _host(ctx: ProbeContext, host: str | None, tls: bool) -> str:
    name = host or ctx.check.server_name or ctx.check.address or ctx.check.target
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    default = 443 if tls else 80
    return name if ctx.check.port == default else f"{name}:{ctx.check.port}"


def _headers(raw: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for item in raw:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise InputError(f"header {item!r} is not 'Name: value'")
        out.append((name.strip(), value.strip()))
    return out


def _path(path: str) -> str:
    if not path.startswith("/") or any(c in path for c in " \r\n\t"):
        raise InputError(f"path {path!r} must start with / and hold no spaces")
    return path


def _record(ctx: ProbeContext, resp: HttpResponse, prefix: str = "") -> dict[str, Any]:
    facts = response_facts(resp)
    if prefix:
        ctx.facts[prefix] = facts
    else:
        ctx.facts.update(facts)
    for name in ("X-OWA-Version", "X-ServerApplication", "MS-Server-ActiveSync"):
        value = facts.get("exchange_headers", {}).get(name)
        named = exchange.name_build(value) if value else None
        if named is not None and "exchange_build" not in ctx.facts:
            ctx.facts["exchange_build"] = named
    return facts


def _describe(resp: HttpResponse) -> str:
    auth = ", ".join(schemes(resp.challenges()))
    ex = resp.exchange_headers()
    who = ex.get("X-FEServer") or ex.get("X-BEServer")
    bits = [b for b in (auth, f"X-FEServer {who}" if who else "") if b]
    extra = f" ({'; '.join(bits)})" if bits else ""
    reason = f" {clean(resp.reason, 60)}" if resp.reason else ""
    return f"{resp.status}{reason}{extra}"


@register(
    "http",
    HttpParams,
    default_port=80,
    tls_ports={"implicit": 443},
    summary="HTTP/1.1 request: status, auth schemes, Exchange headers, NTLM identity",
    tls_capable=True,
)
async def http(stream: Stream, params: HttpParams, ctx: ProbeContext) -> None:
    """One request; the status, `Location`, `WWW-Authenticate` schemes, `Server` and the
    Exchange headers; with `ntlm`, the CHALLENGE's identity on the same connection."""
    if params.tls == "starttls":
        raise InputError("http has no STARTTLS: use tls = implicit")
    client = HttpClient(stream, _host(ctx, params.host, params.tls == "implicit"))
    headers = _headers(params.headers)
    path = _path(params.path)
    body = params.body.encode() if params.body else None
    ctx.step("request")
    resp = await client.request(
        params.method, path, headers, body, content_length=params.content_length
    )
    facts = _record(ctx, resp)
    if params.ntlm:
        ctx.step("ntlm")
        if not any(s.lower() in ("ntlm", "negotiate") for s in facts["www_authenticate"]):
            ctx.facts["ntlm_offered"] = False
        elif not client.reusable:
            ctx.warn("the server closed the connection after its answer: NTLM identity not read")
        else:
            ctx.facts["ntlm_offered"] = True
            ctx.facts["ntlm"] = await ntlm_identity(
                client, params.method, path, facts["www_authenticate"], headers
            )
    if params.expect_status and resp.status not in params.expect_status:
        want = ", ".join(str(s) for s in params.expect_status)
        ctx.step("expect")
        raise ApplicationError(f"HTTP {_describe(resp)}, expected {want}")
    if not params.expect_status and resp.status >= 500:
        raise ApplicationError(f"HTTP {_describe(resp)}")
    who = ctx.facts.get("ntlm", {}).get("dns_computer") if params.ntlm else None
    ctx.summary = f"HTTP {_describe(resp)}{f', NTLM {who}' if who else ''}{tls_summary(ctx)}"


# -- exchange-http ------------------------------------------------------------------------

_REFUSED_VERB = (400, 405, 501)


def _evidence(resp: HttpResponse) -> dict[str, Any]:
    ev: dict[str, Any] = {"status": resp.status}
    for name in ("server", "content-type", "location"):
        value = resp.header(name)
        if value is not None:
            ev[name.replace("-", "_")] = clean(value)
    if exchange.login_form(resp.body):
        ev["login_form"] = True
    elif exchange.looks_like_html(resp.header("content-type"), resp.body):
        ev["html"] = True
    return ev


def _intercepted(ctx: ProbeContext, why: str, resp: HttpResponse | None = None) -> None:
    evidence = dict(ctx.facts.get("interception", {}))
    if resp is not None:
        evidence.update(_evidence(resp))
    evidence["reason"] = why
    ctx.facts["interception"] = evidence
    ctx.warn(f"not Exchange: {why}")
    raise InterceptedError(f"intercepted: {why}", facts={"interception": evidence})


def _vdir_request(vdir: str) -> tuple[str, list[tuple[str, str]], bytes | None, int | None]:
    """Method, headers, body and announced length of the request a vdir gets."""
    if vdir == "mapi":
        return "POST", exchange.mapi_headers("Connect"), b"", None
    if vdir == "nspi":
        return "POST", exchange.mapi_headers("Bind"), b"", None
    if vdir == "rpc":
        return "RPC_IN_DATA", [("User-Agent", "MSRPC")], None, exchange.RPC_ECHO_LENGTH
    if vdir in exchange.HYBRID:  # an empty SOAP POST, as Exchange Online's first request
        soap = [("User-Agent", "exprobe"), ("Content-Type", "text/xml; charset=utf-8")]
        return "POST", soap, b"", None
    return "GET", [("User-Agent", "exprobe")], None, None


def _is_exchange(resp: HttpResponse) -> bool:
    return bool(resp.exchange_headers())


def _check_vdir(ctx: ProbeContext, vdir: str, resp: HttpResponse, what: str) -> None:
    """Conclude on the vdir's answer: Exchange's expected one, Exchange refusing, or not
    Exchange at all (intercepted)."""
    offered = [s.lower() for s in schemes(resp.challenges())]
    if vdir == "rpc" and (resp.status in _REFUSED_VERB or (
        not _is_exchange(resp) and exchange.looks_like_html(resp.header("content-type"), resp.body)
    )):
        ctx.facts["rpc_verbs"] = "refused"
        why = f"{what} answered {resp.status}: a middlebox refuses the RPC over HTTP verbs"
        _intercepted(ctx, why, resp)
    if exchange.login_form(resp.body) and not _is_exchange(resp):
        why = f"{what} answered {resp.status} with a login page that is not Exchange's"
        _intercepted(ctx, why, resp)
    if not _is_exchange(resp):
        _intercepted(ctx, f"{what} answered {resp.status} without any Exchange header", resp)
    if vdir in exchange.WINDOWS_AUTH:
        if resp.status == 401 and not {"ntlm", "negotiate"} & set(offered):
            why = f"{what} answered 401 without NTLM or Negotiate, which Exchange offers there"
            _intercepted(ctx, why, resp)
        if resp.status != 401:
            raise ApplicationError(f"{what}: HTTP {_describe(resp)}, expected 401 (NTLM/Negotiate)")
        if vdir == "rpc":
            ctx.facts["rpc_verbs"] = "carried"
    elif vdir in exchange.HYBRID:
        if resp.status in (301, 302, 303, 307, 308):
            where = clean(resp.header("location") or "nowhere", 120)
            _intercepted(ctx, f"{what} redirects to {where}: pre-authentication in the path", resp)
    elif vdir == "eas":
        if resp.status != 401:
            raise ApplicationError(f"{what}: HTTP {_describe(resp)}, expected 401 (Basic)")
    else:  # owa, ecp: the forms logon
        location = resp.header("location") or ""
        if resp.status in (301, 302, 303, 307, 308):
            if "/owa/auth/" not in location.lower():
                why = f"{what} redirects to {clean(location, 120)}, not to the OWA logon"
                _intercepted(ctx, why, resp)
        elif resp.status not in (200, 401):
            raise ApplicationError(f"{what}: HTTP {_describe(resp)}, expected 302 to the OWA logon")


def _same_server(expected: str, seen: str) -> bool:
    """`EX1` matches `ex1.corp.example` and the reverse (a NetBIOS name is the first label)."""
    a, b = expected.lower().rstrip("."), seen.lower().rstrip(".")
    if a == b:
        return True
    return a.split(".")[0] == b.split(".")[0] and ("." not in a or "." not in b)


def _expect_server(ctx: ProbeContext, expected: str | None, source: str, seen: str | None) -> None:
    if expected and seen and not _same_server(expected, seen):
        ctx.facts.setdefault("interception", {})["expected_server"] = expected
        _intercepted(ctx, f"{source} names {clean(seen, 120)}, not {expected}")


@register(
    "exchange-http",
    ExchangeHttpParams,
    default_port=443,
    tls_ports={"implicit": 443},
    summary="an Exchange virtual directory: Exchange's answer, build, NTLM identity, health page",
    tls_capable=True,
)
async def exchange_http(stream: Stream, params: ExchangeHttpParams, ctx: ProbeContext) -> None:
    """The vdir's unauthenticated request (MAPI Connect/Bind, RPC echo, GET), its NTLM
    identity, `healthcheck.htm`; intercepted when something else answers for Exchange."""
    if params.tls == "starttls":
        raise InputError("exchange-http has no STARTTLS: use tls = implicit")
    client = HttpClient(stream, _host(ctx, params.host, params.tls == "implicit"))
    ctx.facts["vdir"] = params.vdir
    if params.expect_cert_sha256:
        seen = ctx.facts.get("cert_sha256")
        want = params.expect_cert_sha256.lower().replace(":", "")
        if seen is None:
            raise InputError("expect_cert_sha256 needs tls = implicit")
        if seen != want:
            ctx.step("certificate")
            ctx.facts["interception"] = {"expected_cert_sha256": want, "cert_sha256": seen}
            _intercepted(ctx, "the certificate is not the server's (SHA-256 differs)")

    path = exchange.VDIRS[params.vdir]
    method, headers, body, length = _vdir_request(params.vdir)
    ctx.step("request")
    ctx.facts["request"] = f"{method} {path}"
    resp = await client.request(method, path, headers, body, content_length=length)
    _record(ctx, resp)
    _check_vdir(ctx, params.vdir, resp, f"{method} {path}")
    fe = resp.exchange_headers().get("X-FEServer")
    _expect_server(ctx, params.expect_server, "X-FEServer", fe)

    if params.vdir == "rpc" and client.reusable:
        ctx.step("rpc-out")
        out = await client.request(
            "RPC_OUT_DATA", path, headers, content_length=exchange.RPC_ECHO_LENGTH
        )
        _record(ctx, out, "rpc_out")
        _check_vdir(ctx, "rpc", out, f"RPC_OUT_DATA {path}")

    offered = list(ctx.facts.get("www_authenticate", []))
    if params.ntlm and params.vdir in exchange.WINDOWS_AUTH:
        ctx.step("ntlm")
        if not client.reusable:
            ctx.warn("the server closed the connection after its 401: NTLM identity not read")
        else:
            ident = await ntlm_identity(client, method, path, offered, headers)
            ctx.facts["ntlm"] = ident
            if ident is not None:
                _expect_server(
                    ctx, params.expect_server, "the NTLM challenge",
                    ident.get("dns_computer") or ident.get("netbios_computer"),
                )
                if fe and not _same_server(fe, ident.get("netbios_computer") or fe):
                    ctx.warn(
                        f"NTLM names {ident.get('netbios_computer')} but X-FEServer is {fe}"
                    )

    if params.healthcheck:
        ctx.step("healthcheck")
        hc_path = f"/{exchange.HEALTH_DIR[params.vdir]}/healthcheck.htm"
        if not client.reusable:
            ctx.warn(f"{hc_path} not checked: the server closed the connection")
        else:
            hc = await client.request("GET", hc_path, [("User-Agent", "exprobe")])
            hc_facts = response_facts(hc)
            fqdn = exchange.healthcheck_fqdn(hc.body) if hc.status == 200 else None
            if fqdn:
                hc_facts["fqdn"] = fqdn
            ctx.facts["healthcheck"] = hc_facts
            if hc.status != 200:
                raise ApplicationError(f"{hc_path}: HTTP {_describe(hc)}, expected 200")
            if fqdn is None:
                _intercepted(ctx, f"{hc_path} answered 200 without a server FQDN", hc)
            _expect_server(ctx, params.expect_server, "healthcheck.htm", fqdn)

    build = ctx.facts.get("exchange_build", {}).get("version")
    who = ctx.facts.get("healthcheck", {}).get("fqdn") or fe
    ident = ctx.facts.get("ntlm") or {}
    bits = [b for b in (
        f"{ctx.facts['status']} {'/'.join(offered)}".strip(),
        f"server {who}" if who else "",
        f"NTLM {ident.get('dns_computer')}" if ident.get("dns_computer") else "",
        build or "",
    ) if b]
    ctx.summary = f"{params.vdir}: Exchange answers ({'; '.join(bits)}){tls_summary(ctx)}"

