"""`lb-pool`: who answers behind a load balancer's VIP, and whether TLS ends there.

Exchange's `/<vdir>/healthcheck.htm` needs no authentication and answers `200 OK<br/>FQDN`
while the protocol is healthy (research note §b.2, §e.1).  A load balancer balances per
connection, so the probe asks the VIP `requests` times per vdir, each time on a new
connection, and lists the members that answered (the FQDN of the body, `X-FEServer`).
Each member is then asked directly, and its certificate and TLS version are compared with
the VIP's: a different certificate, another TLS version, or plain HTTP behind a TLS VIP
means TLS ends on the load balancer (SSL offloading), which breaks Extended Protection,
on by default from Exchange 2019 CU14 (microsoft/CSS-Exchange: docs/Emerging-Issues.md).

Three probes, each one small, chained by derived checks the runner runs like any other:

- `lb-pool` (the VIP): its own connection asks the first vdir; it derives one
  `lb-healthcheck` per further (round, vdir), at the VIP, and one `lb-member` per member
  listed in `members`.  After the run, `summarise` restates its result from them all.
- `lb-healthcheck` (one connection): `healthcheck.htm` of each of its vdirs, keep-alive.
  At the VIP without `members`, each FQDN it sees derives an `lb-member` on the pool's
  behalf (queued once per member, however many answers name it).
- `lb-member` (no connection): resolves the member (`exprobe.net.dns`, `--dns-server`),
  in the VIP's address family, and derives the direct `lb-healthcheck` of every vdir.

`lb-pool` params: `requests` (rounds, 1-64, default 8), `vdirs` (default owa, ecp, ews,
mapi, rpc, oab, autodiscover, eas), `members` (`HOST`, `HOST:PORT`, `[V6]:PORT`, with
`http://` for a member that speaks plain HTTP), `member_port` (default 443 with TLS, 80
without), `host` (the Host header).  Steps: request (the pool's), healthcheck, resolve.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
from collections import Counter
from dataclasses import dataclass
from typing import Any

from exprobe.errors import ApplicationError, InputError, ProbeError
from exprobe.net.dns import Resolver
from exprobe.net.stream import Stream
from exprobe.probes._http import HttpClient
from exprobe.probes._text import tls_summary
from exprobe.probes.base import CheckSpec, Params, ProbeContext, TlsMode, register
from exprobe.probes.http import Vdir, _describe, _host, _same_server
from exprobe.result import CheckResult
from exprobe.status import Status
from exprobe.wire import exchange
from exprobe.wire.http import clean

DEFAULT_VDIRS: tuple[Vdir, ...] = (
    "owa", "ecp", "ews", "mapi", "rpc", "oab", "autodiscover", "eas",
)  # fmt: skip
MAX_REQUESTS = 64
MAX_MEMBERS = 32
EP_REASON = (
    "SSL offloading breaks Extended Protection, which Exchange 2019 CU14 and later enable"
    " at setup (CSS-Exchange Emerging-Issues)"
)
_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*\.?")


@dataclass(frozen=True, slots=True)
class Member:
    """A member as given: `host` (a name or an address), `port`, `tls` (implicit or none)."""

    host: str
    port: int
    tls: TlsMode

    @property
    def is_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def parse_member(text: str, default_port: int | None = None) -> Member:
    """`HOST`, `HOST:PORT`, `[V6]:PORT`, a bare IPv6 address, each optionally after
    `http://` (plain HTTP) or `https://`; ValueError otherwise."""
    raw = text.strip()
    tls: TlsMode = "implicit"
    low = raw.lower()
    if low.startswith("http://"):
        tls, raw = "none", raw[7:]
    elif low.startswith("https://"):
        raw = raw[8:]
    port: int | None = None
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"member {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:] if rest else ""
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
    else:
        host, port_text = raw, ""
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"member {text!r}: port {port_text!r} is not in 1-65535")
        port = int(port_text)
    member = Member(host.rstrip(".").lower(), 0, tls)
    if not member.host or not (member.is_address or _NAME.fullmatch(member.host)):
        raise ValueError(f"member {text!r} is not a host name or an address")
    fallback = default_port if default_port is not None else (443 if tls == "implicit" else 80)
    return dataclasses.replace(member, port=port or fallback)


def _check_vdirs(vdirs: tuple[str, ...]) -> None:
    if not vdirs:
        raise ValueError("vdirs: at least one")
    if len(set(vdirs)) != len(vdirs):
        raise ValueError(f"vdirs {vdirs!r}: each once")


@dataclass(frozen=True, slots=True)
class LbPoolParams(Params):
    """See the module docstring.  TLS by default (a VIP is asked as clients ask it)."""

    tls: TlsMode = "implicit"
    requests: int = 8
    vdirs: tuple[Vdir, ...] = DEFAULT_VDIRS
    members: tuple[str, ...] = ()
    member_port: int | None = None
    host: str | None = None

    def __post_init__(self) -> None:
        Params.__post_init__(self)
        if not 1 <= self.requests <= MAX_REQUESTS:
            raise ValueError(f"requests {self.requests}: must be 1-{MAX_REQUESTS}")
        _check_vdirs(self.vdirs)
        if len(self.members) > MAX_MEMBERS:
            raise ValueError(f"members: at most {MAX_MEMBERS}")
        if self.member_port is not None and not 1 <= self.member_port <= 65535:
            raise ValueError(f"member_port {self.member_port}: not in 1-65535")
        for m in self.members:
            parse_member(m)


@dataclass(frozen=True, slots=True)
class LbHealthcheckParams(Params):
    """`vdirs` to ask on the one connection; `discover`: derive an `lb-member` per FQDN
    seen, asked on `member_port` for `member_vdirs` (what a VIP answer does)."""

    vdirs: tuple[Vdir, ...] = ("owa",)
    host: str | None = None
    discover: bool = False
    member_vdirs: tuple[Vdir, ...] = DEFAULT_VDIRS
    member_port: int | None = None

    def __post_init__(self) -> None:
        Params.__post_init__(self)
        _check_vdirs(self.vdirs)


@dataclass(frozen=True, slots=True)
class LbMemberParams(Params):
    """`member` as `lb-pool` takes it; `vdirs` to ask it directly; `port` when the member
    names none (default 443 with TLS, 80 without)."""

    member: str = ""
    vdirs: tuple[Vdir, ...] = DEFAULT_VDIRS
    port: int | None = None
    host: str | None = None

    def __post_init__(self) -> None:
        Params.__post_init__(self)
        _check_vdirs(self.vdirs)
        parse_member(self.member)


class Unresolved(ProbeError):
    """A member's name has no address."""

    status = Status.DNS_ERROR


# -- the checks --------------------------------------------------------------------------


def _meta(check: CheckSpec) -> dict[str, Any]:
    return dict(check.meta)


def _pool_of(check: CheckSpec) -> tuple[str, str]:
    """The pool check's id and its VIP address, as seen from any check of the pool."""
    meta = _meta(check)
    if "lb_vip" in meta:
        return str(check.parent), str(meta["lb_vip"])
    return check.id, str(check.address)


def _kid(check: CheckSpec, suffix: str, probe: str, address: str | None, port: int,
         params: Params, role: str, **extra: Any) -> CheckSpec:  # fmt: skip
    pool, vip = _pool_of(check)
    return CheckSpec(
        id=f"{pool}/{suffix}",
        probe=probe,
        address=address,
        port=port,
        params=params,
        target=check.target,
        server_name=check.server_name,  # the VIP's name: SNI and certificate alike
        parent=pool,
        labels=check.labels,
        meta=(("lb_vip", vip), ("lb_role", role), *extra.items()),
    )


def _member_lookup(check: CheckSpec, member: str, vdirs: tuple[Vdir, ...], port: int | None,
                   host: str | None, tls: TlsMode) -> CheckSpec:  # fmt: skip
    _pool, vip = _pool_of(check)
    params = LbMemberParams(tls=tls, member=member, vdirs=vdirs, port=port, host=host)
    return _kid(check, f"lookup/{member}@{vip}", "lb-member", None, check.port, params,
                "lookup", lb_member=member)  # fmt: skip


async def _ask(client: HttpClient, vdir: str) -> dict[str, Any]:
    """One `healthcheck.htm` and what it says: status, FQDN, `X-FEServer`, healthy."""
    path = f"/{exchange.HEALTH_DIR[vdir]}/healthcheck.htm"
    resp = await client.request("GET", path, [("User-Agent", "exprobe")])
    answer: dict[str, Any] = {"vdir": vdir, "status": resp.status}
    fqdn = exchange.healthcheck_fqdn(resp.body) if resp.status == 200 else None
    if fqdn is not None and not _NAME.fullmatch(fqdn):
        fqdn = None  # e.g. a label past 63 characters: no name to look up
    fe = resp.exchange_headers().get("X-FEServer")
    if fqdn:
        answer["fqdn"] = fqdn.lower()
    if fe:
        answer["fe_server"] = clean(fe, 64)
    answer["healthy"] = fqdn is not None
    if fqdn is None:
        why = "" if resp.status != 200 else ", no server FQDN in the body"
        answer["answer"] = f"HTTP {_describe(resp)}{why}"
    return answer


def _who(answer: dict[str, Any]) -> str:
    return str(answer.get("fqdn") or answer.get("fe_server") or "an unnamed server")


async def _healthchecks(stream: Stream, vdirs: tuple[Vdir, ...], host: str | None,
                        ctx: ProbeContext) -> list[dict[str, Any]]:  # fmt: skip
    client = HttpClient(stream, _host(ctx, host, ctx.check.params.tls == "implicit"))
    answers: list[dict[str, Any]] = []
    ctx.facts["answers"] = answers
    for vdir in vdirs:
        if answers and not client.reusable:
            ctx.warn(f"the server closed the connection: {vdir} and later vdirs not asked")
            break
        answers.append(await _ask(client, vdir))
    return answers


def _conclude(ctx: ProbeContext, answers: list[dict[str, Any]]) -> None:
    bad = [a for a in answers if not a["healthy"]]
    if bad:
        raise ApplicationError("; ".join(
            f"{a['vdir']}: {_who(a)} answers {a['answer']}" for a in bad
        ))  # fmt: skip
    names = sorted({_who(a) for a in answers})
    ctx.summary = (f"{len(answers)} healthcheck(s) 200 from {', '.join(names)}"
                   f"{tls_summary(ctx)}")  # fmt: skip


@register(
    "lb-pool",
    LbPoolParams,
    default_port=443,
    tls_ports={"implicit": 443},
    summary="a load balancer's pool: members seen via the VIP and asked directly, SSL offloading",
    tls_capable=True,
    summarise=lambda result, kids: summarise(result, kids),
)
async def lb_pool(stream: Stream, params: LbPoolParams, ctx: ProbeContext) -> None:
    """Derive the further requests to the VIP and the listed members, then ask the first
    vdir on this connection."""
    if params.tls == "starttls":
        raise InputError("lb-pool has no STARTTLS: use tls = implicit")
    check = ctx.check
    first = params.vdirs[0]
    if params.tls_version:  # a `tls_versions` run: this version's handshake, nothing more
        ctx.step("request")
        await _healthchecks(stream, (first,), params.host, ctx)
        return
    member_port = params.member_port
    discover = not params.members
    sent = params.requests * len(params.vdirs)
    ctx.facts["requests"] = {"rounds": params.requests, "vdirs": list(params.vdirs), "sent": sent}
    if params.members:
        ctx.facts["members_given"] = list(params.members)
    for n in range(1, params.requests + 1):
        for vdir in params.vdirs:
            if (n, vdir) == (1, first):
                continue
            kid = LbHealthcheckParams(
                tls=params.tls, vdirs=(vdir,), host=params.host, discover=discover,
                member_vdirs=params.vdirs, member_port=member_port,
            )  # fmt: skip
            ctx.derive(_kid(check, f"vip{n}/{vdir}", "lb-healthcheck", check.address,
                            check.port, kid, "vip", lb_round=n))  # fmt: skip
    for m in params.members:
        tls: TlsMode = parse_member(m).tls
        ctx.derive(_member_lookup(check, m, params.vdirs, member_port, params.host, tls))
    ctx.facts["lb_round"] = 1
    ctx.step("request")
    answers = await _healthchecks(stream, (first,), params.host, ctx)
    if discover:
        _discover(ctx, answers, params.vdirs, member_port, params.host)
    ctx.summary = (f"asked {first} 1 of {sent} times: {_who(answers[0])} "
                   f"answers {answers[0].get('answer', '200')}")  # fmt: skip


def _discover(ctx: ProbeContext, answers: list[dict[str, Any]], vdirs: tuple[Vdir, ...],
              port: int | None, host: str | None) -> None:  # fmt: skip
    for fqdn in dict.fromkeys(a["fqdn"] for a in answers if a.get("fqdn")):
        ctx.derive(_member_lookup(ctx.check, fqdn, vdirs, port, host, ctx.check.params.tls))


@register(
    "lb-healthcheck",
    LbHealthcheckParams,
    default_port=443,
    tls_ports={"implicit": 443},
    summary="Exchange's healthcheck.htm of some vdirs on one connection (part of lb-pool)",
    tls_capable=True,
)
async def lb_healthcheck(stream: Stream, params: LbHealthcheckParams, ctx: ProbeContext) -> None:
    """`healthcheck.htm` of each vdir, one connection; a member per FQDN when discovering."""
    if params.tls == "starttls":
        raise InputError("lb-healthcheck has no STARTTLS: use tls = implicit")
    ctx.step("healthcheck")
    answers = await _healthchecks(stream, params.vdirs, params.host, ctx)
    if params.discover:
        _discover(ctx, answers, params.member_vdirs, params.member_port, params.host)
    _conclude(ctx, answers)


@register(
    "lb-member",
    LbMemberParams,
    default_port=443,
    summary="resolve one load-balancer member and ask it directly (part of lb-pool)",
    connects=False,
)
async def lb_member(stream: Stream | None, params: LbMemberParams, ctx: ProbeContext) -> None:
    """Resolve the member in the VIP's address family; derive its direct healthchecks."""
    ctx.step("resolve")
    member = parse_member(params.member, params.port)
    vip = _pool_of(ctx.check)[1]
    family = socket.AF_INET6 if ":" in vip else socket.AF_INET
    ctx.facts["member"] = params.member
    if member.is_address:
        addresses = [member.host]
    else:
        resolver = Resolver(ctx.dns_server)
        ctx.facts["dns_server"] = resolver.label
        ans = await resolver.addresses(member.host, family, lifetime=5.0)
        if ans.error is not None:
            ctx.facts["dns_error"] = ans.error
            raise Unresolved(f"{ans.describe()} at {resolver.label}: not asked directly")
        addresses = [str(a) for a in ans.records]
    ctx.facts["addresses"] = addresses
    same = [a for a in addresses if (":" in a) == (family == socket.AF_INET6)]
    address = (same or addresses)[0]
    kid = LbHealthcheckParams(tls=member.tls, vdirs=params.vdirs, host=params.host or None)
    ctx.derive(_kid(ctx.check, f"direct/{params.member}", "lb-healthcheck", address,
                    member.port, kid, "direct", lb_member=params.member))  # fmt: skip
    where = f"[{address}]" if ":" in address else address
    ctx.summary = f"{params.member}: asked directly at {where}:{member.port}"


# -- after the run ------------------------------------------------------------------------


@dataclass(slots=True)
class _Seen:
    """One member as the answers show it."""

    fqdn: str | None = None
    fe_server: str | None = None
    given: str | None = None  # as `members` names it
    seen: Counter[str] = dataclasses.field(default_factory=Counter)  # vdir -> VIP answers
    unhealthy_vip: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)
    direct: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        if self.fqdn and self.fe_server:
            return f"{self.fe_server} ({self.fqdn})"
        return self.fqdn or self.fe_server or self.given or "an unnamed server"

    def matches(self, fqdn: str | None, fe: str | None, given: str | None = None) -> bool:
        if not (fqdn or fe or given):  # answers naming nobody: one unnamed member
            return not (self.fqdn or self.fe_server or self.given)
        if fqdn and self.fqdn:
            return fqdn == self.fqdn
        if given and self.given == given:
            return True
        mine = self.fe_server or self.fqdn
        theirs = fe or fqdn
        return bool(mine and theirs and _same_server(mine, theirs))


def _find(members: list[_Seen], fqdn: str | None, fe: str | None,
          given: str | None = None) -> _Seen:  # fmt: skip
    for m in members:
        if m.matches(fqdn, fe, given):
            m.fqdn = m.fqdn or fqdn
            m.fe_server = m.fe_server or fe
            m.given = m.given or given
            return m
    m = _Seen(fqdn, fe, given)
    members.append(m)
    return m


def _tls_of(r: CheckResult) -> dict[str, Any]:
    f = r.facts
    return {k: f[k] for k in ("cert_sha256", "cert_subject", "cert_issuer", "tls_version",
                              "tls_cipher") if k in f}  # fmt: skip


def _where(r: CheckResult) -> str:
    a = r.address or r.target
    return f"[{a}]:{r.port}" if ":" in a else f"{a}:{r.port}"


def summarise(result: CheckResult, kids: list[CheckResult]) -> CheckResult:
    """The pool check restated from every answer: the members seen via the VIP, each one
    asked directly, the VIP's certificates against theirs, and the per-vdir health."""
    if "requests" not in result.facts:  # a pinned TLS version's check, or ended first
        return result
    mine = [k for k in kids if k.facts.get("lb_vip") == result.address]
    vip = [result, *(k for k in mine if k.facts.get("lb_role") == "vip")]
    params = _params(result)
    facts = dict(result.facts)
    warnings = list(result.warnings)
    members: list[_Seen] = []
    explicit = bool(params["members"])
    for given in params["members"]:
        _find(members, None, None, given)
    sent = params["requests"] * len(params["vdirs"])

    # Directly first (a listed member learns its FQDN here): the lookups that failed and
    # each member's own answers.
    for k in mine:
        role, given = k.facts.get("lb_role"), k.facts.get("lb_member")
        if role == "lookup" and not k.ok:
            m = _find(members, None, None, given) if explicit else _find(members, given, None)
            m.direct = {"asked": None, "status": k.status.value, "reason": k.message}
        elif role == "direct":
            answers = k.facts.get("answers") or []
            first: dict[str, Any] = next(
                (a for a in answers if a.get("fqdn") or a.get("fe_server")), {}
            )
            if explicit:
                m = _find(members, first.get("fqdn"), first.get("fe_server"), given)
            else:
                m = _find(members, first.get("fqdn") or given, first.get("fe_server"))
            healthy = bool(answers) and all(a["healthy"] for a in answers)
            m.direct = {"asked": _where(k), "tls": k.tls, "status": k.status.value,
                        **_tls_of(k), "answers": answers, "healthy": healthy}  # fmt: skip
            if not answers:
                m.direct["reason"] = k.message

    # Via the VIP: who answered each request, and how.
    answered = 0
    failed: Counter[str] = Counter()
    certs: dict[str, dict[str, Any]] = {}
    per_vdir = {v: _vdir_row() for v in params["vdirs"]}
    for r in vip:
        answers = r.facts.get("answers") or []
        if not answers:
            failed[f"{r.status.value}: {r.message}"] += 1
            continue
        tls = _tls_of(r)
        if "cert_sha256" in tls:
            c = certs.setdefault(tls["cert_sha256"], {
                "sha256": tls["cert_sha256"], "subject": tls.get("cert_subject"),
                "issuer": tls.get("cert_issuer"), "tls_versions": [], "tls_ciphers": [],
                "seen_count": 0,
            })  # fmt: skip
            c["seen_count"] += len(answers)
            for key in ("tls_version", "tls_cipher"):
                if tls.get(key) and tls[key] not in c[f"{key}s"]:
                    c[f"{key}s"].append(tls[key])
        for a in answers:
            answered += 1
            m = _find(members, a.get("fqdn"), a.get("fe_server"))
            m.seen[a["vdir"]] += 1
            row = per_vdir.setdefault(a["vdir"], _vdir_row())
            row["answers"] += 1
            row["members"][_who(a)] += 1
            if a["healthy"]:
                row["healthy"] += 1
            else:
                m.unhealthy_vip[(a["vdir"], a["answer"])] += 1
                bad = f"{_who(a)}: {a['answer']}"
                if bad not in row["unhealthy"]:
                    row["unhealthy"].append(bad)

    members.sort(key=lambda m: m.name)
    out_members = [_member_fact(m, params) for m in members]
    seen = [m for m in members if m.seen]
    facts["members"] = out_members
    facts["pool_size_seen"] = len(seen)
    facts["vip_certificates"] = list(certs.values())
    facts["requests"] = {**facts["requests"], "answered": answered, "unanswered": sent - answered}
    facts["vdir_health"] = {v: {**row, "members": dict(row["members"])}
                            for v, row in per_vdir.items()}  # fmt: skip
    offload = _offload(result.tls, certs, members)
    facts["offload"] = offload
    if offload["suspected"]:
        warnings.append(f"SSL offloading suspected: {offload['evidence']}. {EP_REASON}")
    if len(certs) > 1:
        warnings.append(f"the VIP presents {len(certs)} different certificates: the members of"
                        " an Exchange namespace must share one (load-balancing.md)")  # fmt: skip
    seen_text = (f"{len(seen)} member(s) seen in {answered} answer(s) to {sent} request(s)"
                 + (": " + ", ".join(f"{m.name} x{sum(m.seen.values())}" for m in seen)
                    if seen else ""))  # fmt: skip
    if len(seen) == 1 and len(params["members"]) > 1:
        warnings.append(f"members lists {len(params['members'])} but only {seen[0].name}"
                        f" answered in {answered} answer(s) via the VIP")  # fmt: skip
    for m in members:
        if params["members"] and m.seen and m.given is None:
            warnings.append(f"{m.name} answers via the VIP but is not in members")
        d = m.direct
        if not explicit and m.seen and m.fqdn is None:
            warnings.append(f"{m.name} answers without a server FQDN: not asked directly")
        if d is not None and not d.get("answers"):
            warnings.append(f"{m.name} not compared directly: {d.get('reason')}")
    problems = _problems(members)
    if failed:
        problems.append(f"{sum(failed.values())} of {sent} request(s) to the VIP got no answer ("
                        + "; ".join(f"{n}x {w}" for w, n in failed.items()) + ")")  # fmt: skip
    if answered == 0:
        return dataclasses.replace(result, facts=facts, warnings=tuple(warnings))
    if problems:
        return dataclasses.replace(
            result, facts=facts, warnings=tuple(dict.fromkeys(warnings)),
            status=Status.APPLICATION_ERROR, failed_step="members",
            message="; ".join(problems) + f" ({seen_text})",
        )  # fmt: skip
    return dataclasses.replace(result, facts=facts, warnings=tuple(dict.fromkeys(warnings)),
                               status=Status.SUCCESS, failed_step=None,
                               message=f"{seen_text}; every answer healthy")  # fmt: skip


def _vdir_row() -> dict[str, Any]:
    return {"answers": 0, "healthy": 0, "members": Counter(), "unhealthy": []}


def _params(result: CheckResult) -> dict[str, Any]:
    """The pool's params as its facts keep them (see `lb_pool`)."""
    asked = result.facts["requests"]
    return {"requests": int(asked["rounds"]), "vdirs": tuple(asked["vdirs"]),
            "members": tuple(result.facts.get("members_given", ()))}  # fmt: skip


def _member_fact(m: _Seen, params: dict[str, Any]) -> dict[str, Any]:
    direct = m.direct
    healthy: bool | None
    vip_ok = not m.unhealthy_vip
    if direct is not None and direct.get("answers"):
        healthy = vip_ok and bool(direct["healthy"])
    else:
        healthy = vip_ok if m.seen else None
    out: dict[str, Any] = {
        "fqdn": m.fqdn,
        "fe_server": m.fe_server,
        "seen_count": sum(m.seen.values()),
        "seen_per_vdir": dict(m.seen),
        "healthy": healthy,
        "direct": direct,
    }
    if params["members"]:
        out["given"] = m.given
    return out


def _problems(members: list[_Seen]) -> list[str]:
    """Per member and vdir, an unhealthy answer: via the VIP (clients are sent there) or
    only directly (the pool keeps it out)."""
    out: list[str] = []
    for m in members:
        direct_bad = {a["vdir"]: a["answer"] for a in (m.direct or {}).get("answers", [])
                      if not a["healthy"]}  # fmt: skip
        for (vdir, answer), n in m.unhealthy_vip.items():
            seen = m.seen[vdir]
            also = " and directly" if vdir in direct_bad else ""
            out.append(f"{vdir}: {m.name} answers {answer} via the VIP ({n} of {seen}){also}")
            direct_bad.pop(vdir, None)
        for vdir, answer in direct_bad.items():
            out.append(f"{vdir}: {m.name} answers {answer} when asked directly"
                       " (the VIP did not send us there for it)")  # fmt: skip
    return out


def _offload(
    vip_tls: str, certs: dict[str, dict[str, Any]], members: list[_Seen]
) -> dict[str, Any]:
    """SSL offloading suspected when a member asked directly shows another certificate,
    another TLS version, or plain HTTP while the VIP speaks TLS; None: nothing to compare."""
    if vip_tls != "implicit":
        return {"suspected": None, "evidence": "the VIP was asked without TLS"}
    if not certs:
        return {"suspected": None, "evidence": "no TLS session with the VIP"}
    vip_versions = {v for c in certs.values() for v in c["tls_versions"]}
    vip_ciphers = {v for c in certs.values() for v in c["tls_ciphers"]}
    evidence: list[str] = []
    ciphers: list[str] = []  # not evidence of offloading: noted
    other_cert: dict[str, list[str]] = {}  # a certificate the VIP never showed -> members
    subjects: dict[str, str] = {}
    same: list[str] = []
    missing: list[str] = []
    for m in members:
        d = m.direct
        if d is None or not d.get("answers"):
            missing.append(m.name)
            continue
        if d["tls"] != "implicit":
            evidence.append(f"{m.name} answers plain HTTP at {d['asked']} while the VIP speaks TLS")
        elif d.get("cert_sha256") not in certs:
            sha = str(d.get("cert_sha256"))
            other_cert.setdefault(sha, []).append(m.name)
            subjects[sha] = str(d.get("cert_subject"))
        elif d.get("tls_version") not in vip_versions:
            evidence.append(f"the VIP negotiates {'/'.join(sorted(vip_versions))} but {m.name}"
                            f" {d.get('tls_version')}")  # fmt: skip
        else:
            same.append(m.name)
            if d.get("tls_cipher") not in vip_ciphers:
                ciphers.append(f"{m.name} {d.get('tls_cipher')}")
    if other_cert:
        shown = "; ".join(f"{c['subject']} (sha256 {c['sha256'][:16]}...)" for c in certs.values())
        theirs = "; ".join(f"{' and '.join(names)} {subjects[sha]} (sha256 {sha[:16]}...)"
                           for sha, names in other_cert.items())  # fmt: skip
        evidence.insert(0, f"the VIP presents {shown} but directly {theirs}")
    if evidence:
        return {"suspected": True, "evidence": "; ".join(evidence)}
    if not same:
        return {"suspected": None, "evidence": "no member answered directly: nothing compared"}
    vc = next(iter(certs.values()))
    text = (f"the VIP and {len(same)} member(s) asked directly present the same certificate"
            f" (sha256 {vc['sha256'][:16]}...) and TLS version")  # fmt: skip
    if len(certs) > 1:
        text = (f"each of the VIP's {len(certs)} certificates is a member's: TLS passes"
                " through to the members")  # fmt: skip
    if ciphers:
        text += (f"; the cipher differs (the VIP {'/'.join(sorted(vip_ciphers))},"
                 f" {', '.join(ciphers)}): another TLS stack answers on the VIP")  # fmt: skip
    if missing:
        text += f"; not compared: {', '.join(missing)}"
    return {"suspected": False, "evidence": text}
