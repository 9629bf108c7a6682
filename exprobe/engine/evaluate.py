"""Scenario verdicts from check results.  Pure: no I/O, no clock, no registry.

For every target address and selected scenario, one `ScenarioVerdict`: pass when every
requirement of `all` holds and at least one of each `any` group; otherwise fail, with a
sentence naming the breaking hop and its status, the checks that decided it, the hints
that apply to this failure, and the warnings of the checks involved.

A requirement `CHECK.COMPONENT` (e.g. `epm.is`) holds when the endpoint-mapper check
`CHECK` succeeded, reported the component as registered, and every follow-up check it
derived for that component (results with `parent == CHECK` and
`facts["component"] == COMPONENT`) succeeded.  When the endpoint mapper itself failed,
that failure is the breaking hop, not the missing follow-up checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from exprobe.engine.plan import role_of
from exprobe.profile.model import BLOCKED, COMPONENT_NAMES, Judging, Requirement, Scenario
from exprobe.result import CheckResult, RunReport, ScenarioVerdict, TargetReport
from exprobe.status import PortState, Status

MESSAGE_LIMIT = 80
IDENTITY_FACTS = ("exchange_build",)
"""Facts of the checks behind a verdict that say what answered, carried up to it: the
Exchange build an exchange-http check named from X-OWA-Version ("Exchange 2019 CU14")."""


def evaluate(
    report: RunReport, scenarios: Sequence[Scenario], judging: Judging | None = None
) -> None:
    """Fill each target's `scenarios` with one verdict per (scenario, address).

    With a profile that binds checks to roles (`judging.roles`), verdicts go to the
    targets of the primary role; the checks of another role (a domain controller) are
    judged from the results of the targets bound to that role, every one of them.
    """
    j = judging or Judging()
    if not j.roles:
        for t in report.targets:
            t.scenarios = evaluate_target(t, scenarios, j)
        return
    bound: dict[str, list[TargetReport]] = {}
    for t in report.targets:
        bound.setdefault(role_of(tuple(t.labels.items()), j.primary_role), []).append(t)
    others: RoleHosts = {
        role: [host for t in ts for host in _host_results(t)]
        for role, ts in bound.items()
        if role != j.primary_role
    }
    for t in report.targets:
        if role_of(tuple(t.labels.items()), j.primary_role) == j.primary_role:
            t.scenarios = evaluate_target(t, scenarios, j, others)
        else:
            t.scenarios = []


RoleHosts = dict[str, list[tuple[str, "_Results | str"]]]
"""Per role: each bound host's address (or target) and its results, or why it has none."""


def _host_results(t: TargetReport) -> list[tuple[str, _Results | str]]:
    if t.error or not t.addresses:
        return [(t.target, f"{t.target} did not resolve ({t.error or 'no address'})")]
    by_addr = _by_address(t)
    return [(a, _Results(by_addr.get(a, []))) for a in t.addresses]


def _by_address(t: TargetReport) -> dict[str | None, list[CheckResult]]:
    """A target's results per address; a lookup probe's (autodiscover, mx: no address,
    it asked DNS for the target as a whole) count at every address of the target."""
    by_addr: dict[str | None, list[CheckResult]] = {}
    shared = [r for r in t.results if r.address is None]
    for a in t.addresses:
        by_addr[a] = list(shared)
    for r in t.results:
        if r.address is not None:
            by_addr.setdefault(r.address, []).append(r)
    return by_addr


def evaluate_target(
    t: TargetReport,
    scenarios: Sequence[Scenario],
    judging: Judging | None = None,
    others: RoleHosts | None = None,
) -> list[ScenarioVerdict]:
    if t.error or not t.addresses:
        return [_unresolved(t, s, judging) for s in scenarios]
    by_addr = _by_address(t)
    return [
        evaluate_scenario(
            s, t.target, addr, by_addr.get(addr, []), judging=judging, others=others
        )
        for s in scenarios
        for addr in t.addresses
    ]


def _unresolved(t: TargetReport, s: Scenario, judging: Judging | None) -> ScenarioVerdict:
    why = t.error or "no address"
    return ScenarioVerdict(
        id=s.id,
        title=s.title,
        target=t.target,
        address=None,
        verdict="fail",
        reason=f"{s.title} fails: {t.target} did not resolve ({why})",
        checks=tuple(s.check_ids()),
        hints=(f"Check that {t.target} resolves {_from(s, judging)}.",),
    )


# -- one requirement --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Atom:
    """How one requirement fared at one address."""

    req: Requirement
    ok: bool
    text: str  # for a reason: "995 open", "110 filtered (connection-timeout)", ...
    short: str  # for "via ...": "995", "IS on 1026"
    checks: tuple[str, ...]  # the check ids that decided it
    looked_at: tuple[CheckResult, ...]  # every result consulted (their warnings count)
    kind: str | None = None  # failure kind: a status value, "not-registered" or "not-run"
    upstream: CheckResult | None = None  # the failed endpoint-mapper check behind it
    broken: tuple[CheckResult, ...] = ()  # the failed results (for "open port" hints)
    off: str | None = None  # a service shipped switched off: "not-enabled" or "unknown"
    where: str = ""  # another role's host it was judged at: "dc 10.0.0.9"

    @property
    def state(self) -> str:
        """How this failure counts: "fail", or for a service shipped switched off,
        "not-enabled" (refused: nothing listens) or "unknown" (filtered: can't tell)."""
        return self.off or "fail"

    @property
    def key(self) -> str:
        """What hints' `when` match: the EPM check when it is the breaking hop."""
        return self.req.check if self.upstream is not None else str(self.req)


def hop_text(r: CheckResult) -> str:
    """One hop and its outcome in firewall words: "143 filtered (connection-timeout)",
    and where its path breaks when it was traced: "..., dropped by hop 2 (10.1.0.1), the
    last hop that forwards it; 25 passes there"."""
    text = _port_text(r)
    brk = (r.trace or {}).get("break")
    if isinstance(brk, dict) and brk.get("summary"):
        text += f", {brk['summary']}"
    return text


def _port_text(r: CheckResult) -> str:
    status = r.status.value
    if r.status is Status.SUCCESS:
        # A lookup probe (autodiscover, mx) has no port of its own: its message says it.
        return f"{r.port} open" if r.address is not None or not r.message else _short(r.message)
    if r.status is Status.DNS_ERROR:
        return "name did not resolve (dns-error)"
    if r.status is Status.SKIPPED:
        return f"{r.port} skipped"
    if r.port_state is PortState.CLOSED:
        return f"{r.port} refused ({status})"
    if r.port_state is PortState.FILTERED:
        return f"{r.port} filtered ({status})"
    msg = _short(r.message)
    if r.port_state is PortState.OPEN:
        step = f", {r.failed_step} failed" if r.failed_step else ""
        return f"{r.port} open{step} ({status}{': ' + msg if msg else ''})"
    return f"{r.port} {status}{': ' + msg if msg else ''}"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _and(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def component_of(r: CheckResult) -> str | None:
    """The endpoint-mapper component a derived check tests: its `component` fact, or
    (for a plain TCP follow-up, which records no facts) its id `<parent>/<component>:<port>`."""
    comp = r.facts.get("component")
    if isinstance(comp, str):
        return comp
    if r.parent and r.id.startswith(r.parent + "/"):
        head = r.id[len(r.parent) + 1 :].partition(":")[0]
        return head or None
    return None


class _Results:
    """The results of one address, by id and by parent."""

    def __init__(self, results: Iterable[CheckResult]) -> None:
        self.by_id: dict[str, CheckResult] = {}
        self.children: dict[str, list[CheckResult]] = {}
        for r in results:
            self.by_id[r.id] = r
            if r.parent:
                self.children.setdefault(r.parent, []).append(r)

    def atom(self, req: Requirement) -> Atom:
        r = self.by_id.get(req.check)
        if r is None:
            return Atom(req, False, f"{req.check} not run", req.check, (req.check,), (), "not-run")
        if req.component is None:
            if r.ok:
                return Atom(req, True, hop_text(r), str(r.port), (r.id,), (r,))
            return Atom(
                req, False, hop_text(r), str(r.port), (r.id,), (r,), r.status.value, broken=(r,)
            )
        return self._component(req, req.component, r)

    def _component(self, req: Requirement, comp: str, epm: CheckResult) -> Atom:
        name = COMPONENT_NAMES.get(comp, comp.upper())
        if not epm.ok:
            return Atom(
                req,
                False,
                hop_text(epm),
                str(epm.port),
                (epm.id,),
                (epm,),
                epm.status.value,
                upstream=epm,
                broken=(epm,),
            )
        comps = epm.facts.get("components")
        info = comps.get(comp) if isinstance(comps, dict) else None
        if not isinstance(info, dict) or not info.get("registered"):
            return Atom(
                req,
                False,
                f"{epm.port} open, {name} not registered on the endpoint mapper",
                name,
                (epm.id,),
                (epm,),
                "not-registered",
            )
        derived = [r for r in self.children.get(epm.id, []) if component_of(r) == comp]
        if not derived:
            ports = info.get("ports") or []
            if ports:
                listed = ", ".join(str(p) for p in ports)
                return Atom(
                    req,
                    False,
                    f"{epm.port} open, {name} registered on {listed}, not checked",
                    name,
                    (epm.id,),
                    (epm,),
                    "not-run",
                )
            return Atom(
                req,
                False,
                f"{epm.port} open, {name} registered but not on a TCP port",
                name,
                (epm.id,),
                (epm,),
                "not-registered",
            )
        looked = (epm, *derived)
        failed = [r for r in derived if not r.ok]
        if failed:
            where = ", ".join(r.endpoint for r in derived)
            text = f"{epm.port} open, {name} registered on {where}, " + " and ".join(
                hop_text(r) for r in failed
            )
            return Atom(
                req,
                False,
                text,
                name,
                (epm.id, *(r.id for r in failed)),
                looked,
                failed[0].status.value,
                broken=tuple(failed),
            )
        ports = ", ".join(str(r.port) for r in derived)
        return Atom(
            req,
            True,
            f"{name} on {ports} open",
            f"{name} on {ports}",
            (epm.id, *(r.id for r in derived)),
            looked,
        )


# -- one scenario -----------------------------------------------------------------------


def evaluate_scenario(
    s: Scenario,
    target: str,
    address: str | None,
    results: Iterable[CheckResult],
    *,
    judging: Judging | None = None,
    others: RoleHosts | None = None,
) -> ScenarioVerdict:
    """The verdict of scenario `s` from the results of one address (and, for checks bound
    to another role, from the results of that role's hosts in `others`)."""
    j = judging or Judging()
    site = _Site(_Results(results), others or {}, j)
    missing = [
        role
        for role in dict.fromkeys(j.check_roles[c] for c in s.check_ids() if c in j.check_roles)
        if not site.others.get(role)
    ]
    if missing:
        return _skipped(s, target, address, missing, j)
    all_atoms = [site.atom(r) for r in s.all]
    groups = [[site.atom(r) for r in g] for g in s.any]
    seen = [site.atom(r) for r in s.observe]
    failed_all = [a for a in all_atoms if not a.ok]
    failed_groups = [g for g in groups if not any(a.ok for a in g)]
    everything = [*all_atoms, *(a for g in groups for a in g), *seen]
    warnings = _warnings(everything)
    also = _observed(seen, j)
    facts = _identity(everything)

    if not failed_all and not failed_groups:
        carriers = [next(a for a in g if a.ok) for g in groups]
        reason = f"{s.title} works"
        if all_atoms:
            reason += ": " + ", ".join(_texts(all_atoms))
        vias = [f"via {c.short}" for c, g in zip(carriers, groups, strict=True) if len(g) > 1]
        singles = [c.text for c, g in zip(carriers, groups, strict=True) if len(g) == 1]
        if singles:
            reason += (", " if all_atoms else ": ") + ", ".join(singles)
        if vias:
            reason += ("; " if all_atoms or singles else " ") + ", ".join(vias)
        others_text = [a.text for g in groups for a in g if not a.ok]
        if others_text:
            reason += "; " + ", ".join(others_text)
        via_ids = [str(c.req) for c, g in zip(carriers, groups, strict=True) if len(g) > 1]
        return ScenarioVerdict(
            id=s.id,
            title=s.title,
            target=target,
            address=address,
            verdict="pass",
            reason=reason + also,
            checks=_unique(c for a in (*all_atoms, *carriers, *seen) for c in a.checks),
            via=", ".join(via_ids) or None,
            warnings=warnings,
            facts=facts,
        )

    parts = _failure_parts(failed_all)
    parts += [" and ".join(_texts(g)) for g in failed_groups]
    breaking = [*failed_all, *(a for g in failed_groups for a in g)]
    verdict = _failure_verdict(failed_all, failed_groups)
    if verdict == "fail":
        reason = f"{s.title} fails: " + "; ".join(parts)
        hints = _hints(s, address, failed_all, failed_groups, j)
    else:
        off = " or ".join(f"--set {c}.enabled=true" for c in _unique(a.req.check for a in breaking))
        if verdict == "not-enabled":
            why = "nothing listens, and the profile marks the service off by default"
        else:
            why = "cannot tell whether the service is enabled (the profile marks it off by default)"
        reason = f"{s.title}: {verdict}: " + "; ".join(parts) + f"; {why}"
        hints = (f"If the service should be on, say so with {off}.",)
    return ScenarioVerdict(
        id=s.id,
        title=s.title,
        target=target,
        address=address,
        verdict=verdict,
        reason=reason + also,
        checks=_unique(c for a in (*breaking, *seen) for c in a.checks),
        hints=hints,
        warnings=warnings,
        facts=facts,
    )


def _texts(atoms: Sequence[Atom]) -> list[str]:
    """Each atom's text, the host of another role named once before a run of its atoms:
    "389 open, dc 10.0.0.9: 3268 open, 88 open"."""
    out: list[str] = []
    last = ""
    for a in atoms:
        out.append(f"{a.where}: {a.text}" if a.where and a.where != last else a.text)
        last = a.where
    return out


def _failure_verdict(failed_all: list[Atom], failed_groups: list[list[Atom]]) -> str:
    """fail, unless every failure is a service shipped switched off: then not-enabled
    (every one refused) or unknown (some filtered: it may be on behind a firewall)."""
    states = [a.state for a in failed_all]
    for g in failed_groups:
        mine = {a.state for a in g}
        states.append("fail" if "fail" in mine else "unknown" if "unknown" in mine else mine.pop())
    if "fail" in states:
        return "fail"
    return "unknown" if "unknown" in states else "not-enabled"


def _skipped(
    s: Scenario, target: str, address: str | None, missing: list[str], j: Judging
) -> ScenarioVerdict:
    named = _and([f"{r!r} ({j.roles[r]})" if j.roles.get(r) else repr(r) for r in missing])
    noun = "role" if len(missing) == 1 else "roles"
    how = " ".join(f"--role {r}=HOST" for r in missing)
    return ScenarioVerdict(
        id=s.id,
        title=s.title,
        target=target,
        address=address,
        verdict="skipped",
        reason=f"{s.title} skipped: no host bound to the {noun} {named}",
        checks=(),
        hints=(f"Bind one with {how}, or label a target in the targets file role=NAME.",),
    )


def _observed(seen: list[Atom], j: Judging) -> str:
    """The reason's tail for observed checks: "; also seen: 465 open (its title)"."""
    if not seen:
        return ""
    texts = []
    for a in seen:
        title = j.titles.get(a.req.check, "")
        texts.append(f"{a.text} ({title})" if title else a.text)
    return "; also seen: " + ", ".join(texts)


class _Site:
    """Where a scenario's requirements are looked up: the address judged, or for a check
    bound to another role, every host bound to that role (each must hold)."""

    def __init__(self, own: _Results, others: RoleHosts, j: Judging) -> None:
        self.own = own
        self.others = others
        self.j = j

    def atom(self, req: Requirement) -> Atom:
        role = self.j.check_roles.get(req.check)
        atom = self.own.atom(req) if role is None else self._role_atom(role, req)
        if atom.ok or req.check not in self.j.disabled:
            return atom
        return dataclasses.replace(atom, off=_off_state(atom))

    def _role_atom(self, role: str, req: Requirement) -> Atom:
        parts: list[tuple[str, Atom]] = []
        for where, res in self.others[role]:
            if isinstance(res, str):
                dead = Atom(req, False, res, where, (req.check,), (), Status.DNS_ERROR.value)
                parts.append((where, dead))
            else:
                parts.append((where, res.atom(req)))
        failed = [(w, a) for w, a in parts if not a.ok]
        shown = failed or parts
        first = shown[0][1]
        if len(shown) == 1:
            where, text = f"{role} {shown[0][0]}", first.text
        else:
            where, text = role, ", ".join(f"{w}: {a.text}" for w, a in shown)
        return Atom(
            req,
            not failed,
            text,
            first.short,
            _unique(c for _, a in parts for c in a.checks),
            tuple(r for _, a in parts for r in a.looked_at),
            first.kind if failed else None,
            upstream=first.upstream if failed else None,
            broken=tuple(r for _, a in failed for r in a.broken),
            where=where,
        )


def _off_state(a: Atom) -> str | None:
    """A failed check of a service shipped off: not-enabled when every result refused
    (nothing listens), unknown when filtered, None (a plain failure) otherwise: a
    service that answers and fails is on."""
    if a.kind == "not-run" or not a.broken:
        return None
    states = {r.port_state for r in a.broken}
    if states == {PortState.CLOSED}:
        return "not-enabled"
    if states <= {PortState.CLOSED, PortState.FILTERED}:
        return "unknown"
    return None


def _failure_parts(failed: list[Atom]) -> list[str]:
    """Reason fragments; component requirements behind one failed endpoint mapper merge
    into that hop: "135 filtered (connection-timeout): the endpoint mapper cannot be
    asked where the DS and IS listen"."""
    behind: dict[str, list[str]] = {}
    upstream: dict[str, CheckResult] = {}
    for a in failed:
        if a.upstream is not None and a.req.component:
            behind.setdefault(a.req.check, []).append(
                COMPONENT_NAMES.get(a.req.component, a.req.component)
            )
            upstream[a.req.check] = a.upstream
    parts: list[str] = []
    done: set[str] = set()
    done_texts: set[tuple[str, str]] = set()
    last = ""
    for a in failed:
        check = a.req.check
        if check in upstream:
            if check in done:
                continue
            done.add(check)
            names = behind[check]
            verb = "listens" if len(names) == 1 else "listen"
            text = (
                f"{hop_text(upstream[check])}: the endpoint mapper cannot be asked"
                f" where the {_and(names)} {verb}"
            )
        else:
            text = a.text
        if (a.where, text) in done_texts:  # two checks of one unresolved host fail alike
            continue
        done_texts.add((a.where, text))
        parts.append(f"{a.where}: {text}" if a.where and a.where != last else text)
        last = a.where
    return parts


def _identity(atoms: Iterable[Atom]) -> dict[str, object]:
    """The first of each IDENTITY_FACTS among the results the verdict looked at."""
    out: dict[str, object] = {}
    for a in atoms:
        for r in a.looked_at:
            for key in IDENTITY_FACTS:
                if key not in out and r.facts.get(key):
                    out[key] = r.facts[key]
    return out


def _warnings(atoms: Iterable[Atom]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for a in atoms:
        for r in a.looked_at:
            for w in r.warnings:
                seen.setdefault(f"{r.port}: {w}", None)
    return tuple(seen)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# -- hints ------------------------------------------------------------------------------


def _from(s: Scenario, j: Judging | None = None) -> str:
    vantage = (j.vantage if j is not None else "") or s.vantage
    return f"from {vantage}" if vantage else "from here"


def _matches(kind: str | None, on: tuple[str, ...]) -> bool:
    if not on:
        return True
    if kind is None:
        return False
    if kind in on:
        return True
    return "blocked" in on and kind in {st.value for st in BLOCKED}


def _port_hints(s: Scenario, address: str | None, atoms: list[Atom], j: Judging) -> list[str]:
    """'Open TCP N ...' for hops a firewall drops; a refused port may be a stopped service.
    On a path that must not be filtered at all, the advice is to remove the filter."""
    filtered: dict[str | None, list[str]] = {}
    refused: dict[str | None, list[str]] = {}
    for a in atoms:
        for r in a.broken:
            label = str(r.port)
            comp = component_of(r) if r.parent else None
            if comp:
                label += f" ({COMPONENT_NAMES.get(comp, comp)})"
            # A check of another role's host names that host, not the address judged.
            dest = r.address if a.req.check in j.check_roles else address
            if r.port_state is PortState.FILTERED:
                filtered.setdefault(dest, []).append(label)
            elif r.port_state is PortState.CLOSED:
                refused.setdefault(dest, []).append(label)
    unsupported = s.filtering == "unsupported"
    out = []
    for dest, labels in filtered.items():
        ports = " or ".join(dict.fromkeys(labels))
        to = f" to {dest}" if dest else ""
        if unsupported:
            out.append(
                f"Remove the filter on TCP {ports} {_from(s, j)}{to}: this path must not be"
                " filtered at all."
            )
        else:
            out.append(f"Open TCP {ports} {_from(s, j)}{to}.")
    for dest, labels in refused.items():
        ports = " or ".join(dict.fromkeys(labels))
        stop = "remove the filter rejecting it" if unsupported else "stop the firewall rejecting it"
        out.append(
            f"Nothing accepted TCP {ports} on {dest or 'the server'} (refused): start the"
            f" service there, or {stop} {_from(s, j)}."
        )
    return out


def _hints(
    s: Scenario,
    address: str | None,
    failed_all: list[Atom],
    failed_groups: list[list[Atom]],
    j: Judging,
) -> tuple[str, ...]:
    out: list[str] = []
    for a in failed_all:
        out += _port_hints(s, address, [a], j)
    for g in failed_groups:
        out += _port_hints(s, address, g, j)
    failures = [*failed_all, *(a for g in failed_groups for a in g)]
    for h in s.hints:
        for a in failures:
            if (not h.when or a.key in h.when) and _matches(a.kind, h.on):
                out.append(h.render())
                break
    return tuple(dict.fromkeys(out))
