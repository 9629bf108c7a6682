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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from exprobe.profile.model import BLOCKED, COMPONENT_NAMES, Requirement, Scenario
from exprobe.result import CheckResult, RunReport, ScenarioVerdict, TargetReport
from exprobe.status import PortState, Status

MESSAGE_LIMIT = 80


def evaluate(report: RunReport, scenarios: Sequence[Scenario]) -> None:
    """Fill each target's `scenarios` with one verdict per (scenario, address)."""
    for t in report.targets:
        t.scenarios = evaluate_target(t, scenarios)


def evaluate_target(t: TargetReport, scenarios: Sequence[Scenario]) -> list[ScenarioVerdict]:
    if t.error or not t.addresses:
        return [_unresolved(t, s) for s in scenarios]
    by_addr: dict[str | None, list[CheckResult]] = {}
    for r in t.results:
        by_addr.setdefault(r.address, []).append(r)
    return [
        evaluate_scenario(s, t.target, addr, by_addr.get(addr, []))
        for s in scenarios
        for addr in t.addresses
    ]


def _unresolved(t: TargetReport, s: Scenario) -> ScenarioVerdict:
    why = t.error or "no address"
    return ScenarioVerdict(
        id=s.id,
        title=s.title,
        target=t.target,
        address=None,
        verdict="fail",
        reason=f"{s.title} fails: {t.target} did not resolve ({why})",
        checks=tuple(s.check_ids()),
        hints=(f"Check that {t.target} resolves {_from(s)}.",),
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
        return f"{r.port} open"
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
    s: Scenario, target: str, address: str | None, results: Iterable[CheckResult]
) -> ScenarioVerdict:
    """The verdict of scenario `s` from the results of one address."""
    rs = _Results(results)
    all_atoms = [rs.atom(r) for r in s.all]
    groups = [[rs.atom(r) for r in g] for g in s.any]
    failed_all = [a for a in all_atoms if not a.ok]
    failed_groups = [g for g in groups if not any(a.ok for a in g)]
    everything = [*all_atoms, *(a for g in groups for a in g)]
    warnings = _warnings(everything)

    if not failed_all and not failed_groups:
        carriers = [next(a for a in g if a.ok) for g in groups]
        reason = f"{s.title} works"
        if all_atoms:
            reason += ": " + ", ".join(a.text for a in all_atoms)
        vias = [f"via {c.short}" for c, g in zip(carriers, groups, strict=True) if len(g) > 1]
        singles = [c.text for c, g in zip(carriers, groups, strict=True) if len(g) == 1]
        if singles:
            reason += (", " if all_atoms else ": ") + ", ".join(singles)
        if vias:
            reason += ("; " if all_atoms or singles else " ") + ", ".join(vias)
        others = [a.text for g in groups for a in g if not a.ok]
        if others:
            reason += "; " + ", ".join(others)
        via_ids = [str(c.req) for c, g in zip(carriers, groups, strict=True) if len(g) > 1]
        return ScenarioVerdict(
            id=s.id,
            title=s.title,
            target=target,
            address=address,
            verdict="pass",
            reason=reason,
            checks=_unique(c for a in (*all_atoms, *carriers) for c in a.checks),
            via=", ".join(via_ids) or None,
            warnings=warnings,
        )

    parts = _failure_parts(failed_all)
    parts += [" and ".join(a.text for a in g) for g in failed_groups]
    breaking = [*failed_all, *(a for g in failed_groups for a in g)]
    return ScenarioVerdict(
        id=s.id,
        title=s.title,
        target=target,
        address=address,
        verdict="fail",
        reason=f"{s.title} fails: " + "; ".join(parts),
        checks=_unique(c for a in breaking for c in a.checks),
        hints=_hints(s, address, failed_all, failed_groups),
        warnings=warnings,
    )


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
    for a in failed:
        check = a.req.check
        if check in upstream:
            if check in done:
                continue
            done.add(check)
            names = behind[check]
            verb = "listens" if len(names) == 1 else "listen"
            parts.append(
                f"{hop_text(upstream[check])}: the endpoint mapper cannot be asked"
                f" where the {_and(names)} {verb}"
            )
        else:
            parts.append(a.text)
    return parts


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


def _from(s: Scenario) -> str:
    return f"from {s.vantage}" if s.vantage else "from here"


def _matches(kind: str | None, on: tuple[str, ...]) -> bool:
    if not on:
        return True
    if kind is None:
        return False
    if kind in on:
        return True
    return "blocked" in on and kind in {st.value for st in BLOCKED}


def _port_hints(s: Scenario, address: str | None, atoms: list[Atom]) -> list[str]:
    """'Open TCP N ...' for hops a firewall drops; a refused port may be a stopped service."""
    filtered: list[str] = []
    refused: list[str] = []
    for a in atoms:
        for r in a.broken:
            label = str(r.port)
            comp = component_of(r) if r.parent else None
            if comp:
                label += f" ({COMPONENT_NAMES.get(comp, comp)})"
            if r.port_state is PortState.FILTERED:
                filtered.append(label)
            elif r.port_state is PortState.CLOSED:
                refused.append(label)
    out = []
    if filtered:
        dest = f" to {address}" if address else ""
        out.append(f"Open TCP {' or '.join(dict.fromkeys(filtered))} {_from(s)}{dest}.")
    if refused:
        out.append(
            f"Nothing accepted TCP {' or '.join(dict.fromkeys(refused))} on"
            f" {address or 'the server'} (refused): start the service there, or stop the"
            f" firewall rejecting it {_from(s)}."
        )
    return out


def _hints(
    s: Scenario, address: str | None, failed_all: list[Atom], failed_groups: list[list[Atom]]
) -> tuple[str, ...]:
    out: list[str] = []
    for a in failed_all:
        out += _port_hints(s, address, [a])
    for g in failed_groups:
        out += _port_hints(s, address, g)
    failures = [*failed_all, *(a for g in failed_groups for a in g)]
    for h in s.hints:
        for a in failures:
            if (not h.when or a.key in h.when) and _matches(a.kind, h.on):
                out.append(h.render())
                break
    return tuple(dict.fromkeys(out))
