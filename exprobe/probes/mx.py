"""`mx`: where Internet mail for a domain goes, and whether each MX accepts SMTP.

The probe opens no connection (`connects=False`): it asks DNS (`exprobe.net.dns`, at
`--dns-server` when given) for the domain's MX records (RFC 5321 §5.1: no MX but an
address record means the domain itself, the "implicit MX"), then the addresses of each
exchanger, and derives one `smtp` check per exchanger address on port 25 (STARTTLS
unless `starttls = false`), which the runner runs like any other.  After the run,
`summarise` restates the result: mail gets in when at least one exchanger accepts;
each exchanger that does not is a warning, the best-preference one first.

Params: `domain` (default: the target), `starttls` (default true), `max_hosts` (1-16).
Steps: resolve.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

from exprobe.errors import ApplicationError
from exprobe.net.dns import Resolver
from exprobe.net.stream import Stream
from exprobe.probes.autodiscover import lookup_start
from exprobe.probes.base import CheckSpec, ProbeContext, register
from exprobe.probes.smtp import SmtpParams
from exprobe.result import CheckResult

MAX_ADDRESSES = 4  # per exchanger: enough for dual stack and a small round robin


@dataclass(frozen=True, slots=True)
class MxParams(SmtpParams):
    """`domain`: the mail domain (default: the target); `starttls`: require STARTTLS on
    each exchanger; `max_hosts`: how many exchangers to follow, best preference first.
    The SMTP parameters (`ehlo_name`, `expect_extensions`, ...) go to every derived check."""

    domain: str = ""
    starttls: bool = True
    max_hosts: int = 8

    def __post_init__(self) -> None:
        SmtpParams.__post_init__(self)
        if not 1 <= self.max_hosts <= 16:
            raise ValueError(f"max_hosts {self.max_hosts}: expected 1-16")


async def _exchangers(
    domain: str, resolver: Resolver, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """The exchangers (preference, host, addresses or failure), or why there are none."""
    ans = await resolver.mx(domain, lifetime=5.0)
    if ans.error == "nodata":  # RFC 5321 §5.1: the domain itself is the implicit MX
        hosts = [(0, domain)]
    elif ans.error is not None:
        return [], ans.describe()
    else:
        hosts = [(p, h) for p, h in ans.records if h not in ("", ".")][:limit]
        if not hosts:  # RFC 7505 null MX: the domain accepts no mail
            return [], f"MX {domain}: null MX (RFC 7505), the domain accepts no mail"
    out: list[dict[str, Any]] = [
        {"preference": p, "host": h, "implicit": ans.error == "nodata"} for p, h in hosts
    ]

    async def resolve(info: dict[str, Any]) -> None:
        found = await resolver.addresses(info["host"], lifetime=5.0)
        if found.error is None:
            info["addresses"] = list(found.records[:MAX_ADDRESSES])
        else:
            info["failure"] = found.describe()

    await asyncio.gather(*(resolve(i) for i in out))
    return out, None


def _derived(ctx: ProbeContext, params: MxParams, info: dict[str, Any], address: str) -> CheckSpec:
    check = ctx.check
    smtp = SmtpParams(
        tls="starttls" if params.starttls else "none",
        ehlo_name=params.ehlo_name,
        ntlm=params.ntlm,
        expect_extensions=params.expect_extensions,
    )
    return CheckSpec(
        id=f"{check.id}/{info['host']}",
        probe="smtp",
        address=address,
        port=check.port,
        params=smtp,
        target=check.target,
        server_name=info["host"],
        parent=check.id,
        labels=check.labels,
        meta=(("mx_host", info["host"]), ("mx_preference", info["preference"])),
    )


def summarise(result: CheckResult, kids: list[CheckResult]) -> CheckResult:
    """The MX check restated from its exchangers' checks: mail gets in when one accepts."""
    hosts = [dict(h) for h in result.facts.get("exchangers", [])]
    if not hosts or not result.ok:  # the lookups themselves failed: nothing to restate
        return result
    ok: list[str] = []
    bad: list[str] = []
    for h in hosts:
        mine = [k for k in kids if k.facts.get("mx_host") == h["host"]]
        h["checks"] = [k.id for k in mine]
        if "failure" in h:
            h["accepts"] = False
            bad.append(f"{h['host']} ({h['failure']})")
            continue
        failed = [k for k in mine if not k.ok]
        h["accepts"] = bool(mine) and not failed
        if h["accepts"]:
            ok.append(h["host"])
        elif not mine:
            bad.append(f"{h['host']} (not checked: the run ended first)")
        else:
            what = "; ".join(f"{k.address} {k.status.value}: {k.message}" for k in failed)
            bad.append(f"{h['host']} ({what})")
    facts = {**result.facts, "exchangers": hosts}
    if not ok:
        return result.failed_after("exchangers", "no MX accepts mail: " + "; ".join(bad), facts)
    warnings = (*result.warnings, *(f"MX {b} does not accept mail" for b in bad))
    message = f"mail gets in via {', '.join(ok)}"
    if bad:
        message += f"; not via {len(bad)} other MX"
    return dataclasses.replace(result, facts=facts, warnings=warnings, message=message)


@register(
    "mx",
    MxParams,
    default_port=25,
    summary="Internet mail's way in: the domain's MX records, then SMTP on each exchanger",
    connects=False,
    summarise=summarise,
)
async def mx(stream: Stream | None, params: MxParams, ctx: ProbeContext) -> None:
    """Resolve the MX records and their addresses; derive an SMTP check per address."""
    domain, resolver = lookup_start(ctx, params.domain)
    hosts, failure = await _exchangers(domain, resolver, params.max_hosts)
    if failure is not None:
        raise ApplicationError(f"no MX to deliver to: {failure}")
    ctx.facts["exchangers"] = hosts
    n = 0
    for info in hosts:
        for address in info.get("addresses", []):
            ctx.derive(_derived(ctx, params, info, address))
            n += 1
    if not n:
        raise ApplicationError(
            "no MX has an address: " + "; ".join(f"{h['host']} ({h['failure']})" for h in hosts)
        )
    ctx.summary = f"{domain}: {len(hosts)} MX, {n} address(es) to try"
