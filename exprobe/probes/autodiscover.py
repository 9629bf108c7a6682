"""`autodiscover`: Autodiscover the way Outlook looks for it, for one SMTP domain.

The four DNS methods in Outlook's order (MS-OXDSCLI; research note modern-exchange.md):

1. `https://DOMAIN/autodiscover/autodiscover.xml`
2. `https://autodiscover.DOMAIN/autodiscover/autodiscover.xml`
3. `http://autodiscover.DOMAIN/autodiscover/autodiscover.xml`, which must redirect to https
4. the SRV record `_autodiscover._tcp.DOMAIN`, then https to its target and port

The probe opens no connection (`connects=False`): it asks DNS (`exprobe.net.dns`, at
`--dns-server` when given) for the names of all four at once, and derives one check per
method whose name has an address (`exchange-http` for 1, 2 and 4, `http` on port 80 for
3), which the runner runs like any other.  After the run, `summarise` restates the
result: which method a client ends on, and what the failing earlier ones cost it.

Params: `domain` (default: the target), `methods` (which of 1-4, default all).
Steps: resolve.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from dataclasses import dataclass
from typing import Any

from exprobe.errors import ApplicationError
from exprobe.net.dns import Resolver
from exprobe.net.stream import Stream
from exprobe.probes.base import CheckSpec, Params, ProbeContext, register
from exprobe.result import CheckResult

PATH = "/autodiscover/autodiscover.xml"
METHOD_NAMES = {1: "root domain", 2: "autodiscover host", 3: "HTTP redirect", 4: "SRV record"}
DOMAIN_RE = re.compile(r"(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                     r"[A-Za-z][A-Za-z0-9-]{0,62}")  # fmt: skip
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True, slots=True)
class AutodiscoverParams(Params):
    """`domain`: the SMTP domain (default: the target); `methods`: which of 1-4."""

    domain: str = ""
    methods: tuple[int, ...] = (1, 2, 3, 4)

    def __post_init__(self) -> None:
        Params.__post_init__(self)
        if not self.methods or any(m not in METHOD_NAMES for m in self.methods):
            raise ValueError(f"methods {self.methods!r}: each must be 1, 2, 3 or 4")


def lookup_start(ctx: ProbeContext, domain: str) -> tuple[str, Resolver]:
    """The `resolve` step of a lookup probe (autodiscover, mx): the domain (the parameter,
    else the target), checked, and the resolver (`--dns-server`), both in the facts."""
    ctx.step("resolve")
    name = (domain or ctx.check.server_name or ctx.check.target).rstrip(".").lower()
    if not DOMAIN_RE.fullmatch(name):
        raise ApplicationError(f"{name!r} is not a DNS domain")
    resolver = Resolver(ctx.dns_server)
    ctx.facts["domain"] = name
    ctx.facts["dns_server"] = resolver.label
    return name, resolver


def _host(url_host: str, port: int) -> str:
    return url_host if port in (443, 80) else f"{url_host}:{port}"


async def _lookups(domain: str, resolver: Resolver, lifetime: float) -> dict[int, dict[str, Any]]:
    """Per method: its name, host, port, URL and the DNS answer (addresses or a failure)."""
    auto = f"autodiscover.{domain}"
    plan: dict[int, dict[str, Any]] = {
        1: {"name": domain, "host": domain, "port": 443},
        2: {"name": auto, "host": auto, "port": 443},
        3: {"name": auto, "host": auto, "port": 80},
        4: {"name": f"_autodiscover._tcp.{domain}", "host": None, "port": None},
    }

    async def addresses(info: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        ans = await resolver.addresses(info["host"], lifetime=lifetime)
        info["dns_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        if ans.error is None:
            info["addresses"] = list(ans.records)
        else:
            info["dns_error"] = ans.error
            info["failure"] = ans.describe()

    async def srv(info: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        ans = await resolver.srv(info["name"], lifetime=lifetime)
        if ans.error is not None:
            info["dns_ms"] = round((time.perf_counter() - t0) * 1000, 3)
            info["dns_error"] = ans.error
            info["failure"] = ans.describe()
            return
        info["srv"] = [
            {"priority": p, "weight": w, "port": port, "target": t} for p, w, port, t in ans.records
        ]
        _p, _w, info["port"], info["host"] = ans.records[0]
        await addresses(info)
        info["dns_ms"] = round((time.perf_counter() - t0) * 1000, 3)

    await asyncio.gather(addresses(plan[1]), addresses(plan[2]), srv(plan[4]))
    plan[3].update({k: plan[2][k] for k in ("dns_ms", "addresses", "dns_error", "failure")
                    if k in plan[2]})  # fmt: skip
    for n, info in plan.items():
        info["method"] = n
        if info.get("host"):
            scheme = "http" if n == 3 else "https"
            info["url"] = f"{scheme}://{_host(info['host'], info['port'])}{PATH}"
        if info.get("addresses"):
            info["address"] = info["addresses"][0]
    return plan


def _derived(ctx: ProbeContext, n: int, info: dict[str, Any]) -> CheckSpec:
    from exprobe.probes import get as get_probe

    check = ctx.check
    if n == 3:
        probe = "http"
        params: Params = get_probe("http").params_type(
            path=PATH, host=info["host"], expect_status=_REDIRECTS  # type: ignore[call-arg]
        )
    else:
        probe = "exchange-http"
        params = get_probe("exchange-http").params_type(
            tls="implicit", vdir="autodiscover", healthcheck=False, ntlm=False,  # type: ignore[call-arg]
            host=_host(info["host"], info["port"]),
        )  # fmt: skip
    return CheckSpec(
        id=f"{check.id}/method{n}",
        probe=probe,
        address=info["address"],
        port=info["port"],
        params=params,
        target=check.target,
        server_name=info["host"],
        parent=check.id,
        labels=check.labels,
        meta=(("autodiscover_method", n),),
    )


def summarise(result: CheckResult, kids: list[CheckResult]) -> CheckResult:
    """The autodiscover check restated from its methods' checks: the first method, in
    Outlook's order, that carries, and what the failed earlier ones cost."""
    facts = dict(result.facts)
    infos = {m["method"]: m for m in facts.get("methods", [])}
    by_method = {k.facts.get("autodiscover_method"): k for k in kids}
    summary: list[dict[str, Any]] = []
    chosen: int | None = None
    cost = 0.0
    failed: list[str] = []
    for n in sorted(infos):
        info = infos[n]
        kid = by_method.get(n)
        carries, why = _carries(n, info, kid)
        spent = float(info.get("dns_ms") or 0) + (kid.elapsed_ms if kid is not None else 0.0)
        summary.append({"method": n, "carries": carries, "why": why, "cost_ms": round(spent, 3),
                        "check": kid.id if kid is not None else None})  # fmt: skip
        if carries and chosen is None:
            chosen = n
        if chosen is None:
            cost += spent
            if not carries:
                failed.append(f"{n} ({METHOD_NAMES[n]}): {why}")
    facts["autodiscover"] = {
        "method": chosen,
        "url": infos[chosen].get("url") if chosen is not None else None,
        "failed_before": [s["method"] for s in summary if chosen and s["method"] < chosen],
        "cost_ms": round(cost, 3),
        "methods": summary,
    }
    if chosen is not None:
        before = (f" after {len(failed)} failed method(s) costing {cost:.0f} ms: "
                  + "; ".join(failed)) if failed else ""  # fmt: skip
        message = (f"Outlook ends on method {chosen} ({METHOD_NAMES[chosen]},"
                   f" {infos[chosen].get('url')}){before}")  # fmt: skip
        return dataclasses.replace(result, facts=facts, message=message)
    return result.failed_after(
        "methods", "no Autodiscover method carries: " + "; ".join(failed), facts
    )


def _carries(n: int, info: dict[str, Any], kid: CheckResult | None) -> tuple[bool, str | None]:
    if "failure" in info:
        return False, str(info["failure"])
    if kid is None:
        return False, "not checked (the run ended first)"
    where = f"{kid.address}:{kid.port}" if kid.address else str(kid.port)
    if n == 3:
        location = str(kid.facts.get("location") or "")
        if kid.ok and location.lower().startswith("https://"):
            return True, None
        if kid.ok:
            return False, f"{where} redirects to {location or 'nowhere'}, not to https"
        return False, f"{where} {kid.status.value}: {kid.message}"
    if kid.facts.get("cert_name_matches") is False:
        names = ", ".join(kid.facts.get("cert_san", [])[:3])
        return False, (f"{where} TLS name mismatch: the certificate does not name"
                       f" {info['host']} ({names})")  # fmt: skip
    if kid.facts.get("cert_trusted") is False:
        return False, f"{where} certificate not trusted (--ca-file for a private CA)"
    if not kid.ok:
        return False, f"{where} {kid.status.value}: {kid.message}"
    return True, None


@register(
    "autodiscover",
    AutodiscoverParams,
    default_port=443,
    summary="Autodiscover as Outlook looks for it: the four DNS methods in order (MS-OXDSCLI)",
    connects=False,
    summarise=summarise,
)
async def autodiscover(
    stream: Stream | None, params: AutodiscoverParams, ctx: ProbeContext
) -> None:
    """Resolve the four methods' names; derive a check per method that has an address."""
    domain, resolver = lookup_start(ctx, params.domain)
    plan = await _lookups(domain, resolver, lifetime=5.0)
    ctx.facts["methods"] = [plan[n] for n in sorted(plan) if n in params.methods]
    tried = [n for n in sorted(params.methods) if plan[n].get("address")]
    for n in tried:
        ctx.derive(_derived(ctx, n, plan[n]))
    ctx.summary = f"{domain}: {len(tried)} method(s) to try"
