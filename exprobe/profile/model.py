"""What a profile is once loaded: checks, scenarios, requirement groups and hints.

Everything here is immutable and already validated (`exprobe.profile.loader` builds it);
`Profile.with_overrides` (`--set`) and `Profile.select` (`--scenario`) return new values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from exprobe.engine.plan import CheckDef
from exprobe.errors import InputError
from exprobe.probes.base import Params
from exprobe.status import Status

SCHEMA_VERSION = 1
PRIMARY_ROLE = "exchange"  # the role of targets given without a `role=` label

# Endpoint-mapper components a `msrpc-epm` check can derive follow-up checks for.
COMPONENTS = ("ds", "is", "mta", "sa")
COMPONENT_NAMES = {"ds": "DS", "is": "IS", "mta": "MTA", "sa": "System Attendant",
                   "other": "RPC interface"}  # fmt: skip
OTHER = "other"  # the component of the extra `interfaces` an endpoint-mapper check maps

# Failure kinds a hint can be restricted to (`on = [...]`): every failing status, plus
# "blocked" (refused, timed out or unreachable: what a firewall does), "not-registered"
# (the endpoint mapper does not know the component) and "not-run" (interrupted run).
BLOCKED = frozenset({Status.CONNECTION_REFUSED, Status.CONNECTION_TIMEOUT, Status.UNREACHABLE})
FAILURE_KINDS = (
    *(s.value for s in Status if s is not Status.SUCCESS),
    "blocked",
    "not-registered",
    "not-run",
)


@dataclass(frozen=True, slots=True)
class CheckDecl:
    """A check as a profile declares it: a probe, its parameters, and a port."""

    id: str
    probe: str
    params: Params
    port: int  # resolved: the declared port, or the probe's default for the TLS mode
    title: str = ""
    port_declared: bool = True  # False: `port` follows the probe's default for the TLS mode
    role: str = ""  # the host it runs against: "" is the profile's primary role
    enabled: bool = True  # False: the product ships this service switched off

    def to_def(self) -> CheckDef:
        return CheckDef(self.id, self.probe, self.params, self.port, self.role or None)

    def param_values(self) -> dict[str, Any]:
        """Every parameter with its value (tuples as lists), for display and JSON."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self.params):
            v = getattr(self.params, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "probe": self.probe,
            "port": self.port,
            "title": self.title,
            "params": self.param_values(),
        }
        if self.role:
            d["role"] = self.role
        if not self.enabled:
            d["enabled"] = False
        return d


@dataclass(frozen=True, slots=True)
class Requirement:
    """One thing a scenario needs: a check (`smtp`) or the derived checks of one
    endpoint-mapper component (`epm.is`: every port the check `epm` hands out for the IS)."""

    check: str
    component: str | None = None

    @classmethod
    def parse(cls, text: str) -> Requirement:
        check, _, component = text.partition(".")
        return cls(check, component or None)

    def __str__(self) -> str:
        return f"{self.check}.{self.component}" if self.component else self.check


@dataclass(frozen=True, slots=True)
class Hint:
    """Remediation advice shown only when the checks it names fail in the way it names.

    `when`: requirement texts (`"epm.is"`) or check ids; empty means any failure of the
    scenario.  `on`: failure kinds (see `FAILURE_KINDS`); empty means any kind.
    """

    text: str
    kb: tuple[str, ...] = ()
    when: tuple[str, ...] = ()
    on: tuple[str, ...] = ()
    docs: tuple[str, ...] = ()  # documents to read: "https://learn.microsoft.com/..."

    def render(self) -> str:
        refs = [*("KB " + k for k in self.kb), *self.docs]
        if not refs:
            return self.text
        return f"{self.text} ({'; '.join(refs)})"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "text": self.text,
            "kb": list(self.kb),
            "when": list(self.when),
            "on": list(self.on),
        }
        if self.docs:
            d["docs"] = list(self.docs)
        return d


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named requirement: every check of `all` must succeed, and from each group of
    `any` at least one."""

    id: str
    title: str
    description: str = ""
    vantage: str = ""  # where the probe should run, read after "from": "the client subnet"
    all: tuple[Requirement, ...] = ()
    any: tuple[tuple[Requirement, ...], ...] = ()
    hints: tuple[Hint, ...] = ()
    vantages: tuple[str, ...] = ()  # the profile's vantage names it applies to; () = all
    filtering: str = "supported"  # "unsupported": any filter on this path is the finding
    observe: tuple[Requirement, ...] = ()  # reported with the verdict, never deciding it
    docs: tuple[str, ...] = ()  # the documents the scenario is built from

    def requirements(self) -> list[Requirement]:
        """What decides the verdict: `all`, then every `any` group."""
        out = list(self.all)
        for group in self.any:
            out.extend(group)
        return out

    def checks_needed(self) -> list[Requirement]:
        """Everything the scenario runs: its requirements and what it only observes."""
        return [*self.requirements(), *self.observe]

    def check_ids(self) -> list[str]:
        """The profile checks this scenario needs (each once, in order of mention)."""
        seen: dict[str, None] = {}
        for r in self.checks_needed():
            seen.setdefault(r.check, None)
        return list(seen)

    def to_dict(self, checks: dict[str, CheckDecl] | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "vantage": self.vantage,
            "all": [str(r) for r in self.all],
            "any": [[str(r) for r in g] for g in self.any],
            "hints": [h.to_dict() for h in self.hints],
        }
        if self.vantages:
            d["vantages"] = list(self.vantages)
        if self.filtering != "supported":
            d["filtering"] = self.filtering
        if self.observe:
            d["observe"] = [str(r) for r in self.observe]
        if self.docs:
            d["docs"] = list(self.docs)
        if checks is not None:
            d["checks"] = [checks[c].to_dict() for c in self.check_ids()]
        return d


@dataclass(frozen=True, slots=True)
class Judging:
    """Profile knowledge the verdicts use (see `Profile.judging`).

    `check_roles`: check id to role, for checks that run against another role's hosts
    (a domain controller, a witness); `disabled`: checks of services the product ships
    switched off (a refusal there is "not enabled", not a failure); `vantage`: the
    description of the vantage the run was made from ("the client subnet"), if given.
    """

    primary_role: str = PRIMARY_ROLE
    check_roles: dict[str, str] = dataclasses.field(default_factory=dict)
    disabled: frozenset[str] = frozenset()
    vantage: str = ""
    roles: dict[str, str] = dataclasses.field(default_factory=dict)
    titles: dict[str, str] = dataclasses.field(default_factory=dict)  # check id: its title

    def role_names(self) -> list[str]:
        """Every role a target can be bound to: the primary one, then the declared ones."""
        return [self.primary_role, *(r for r in self.roles if r != self.primary_role)]


@dataclass(frozen=True, slots=True)
class Profile:
    """A validated profile: checks by id and scenarios by id, in declaration order."""

    name: str
    title: str
    path: str
    checks: dict[str, CheckDecl]
    scenarios: dict[str, Scenario]
    description: str = ""
    extends: tuple[str, ...] = ()  # the chain of base profiles, nearest first
    schema_version: int = SCHEMA_VERSION
    overrides: tuple[str, ...] = ()  # the --set options applied
    vantages: dict[str, str] = dataclasses.field(default_factory=dict)  # name: "the client subnet"
    roles: dict[str, str] = dataclasses.field(default_factory=dict)  # name: what host plays it
    primary_role: str = PRIMARY_ROLE  # the role of every target not labelled otherwise

    def with_overrides(self, sets: list[str]) -> Profile:
        """Apply `--set CHECK.PARAM=VALUE` options, validated like the profile itself."""
        if not sets:
            return self
        from exprobe.profile.loader import apply_overrides

        return apply_overrides(self, sets)

    def select(
        self, ids: list[str], vantage: str | None = None
    ) -> tuple[list[CheckDef], list[Scenario]]:
        """The scenarios named (all when `ids` is empty) that apply from `vantage` (all
        when None), and the checks they need, each once.

        An endpoint-mapper check only derives the components the selected scenarios refer
        to, so `--scenario mapi-client` does not probe the MTA's port.
        """
        if vantage is not None and vantage not in self.vantages:
            known = ", ".join(self.vantages) or "none"
            raise InputError(
                f"--vantage {vantage!r}: profile {self.name!r} has no such vantage (known: {known})"
            )
        if ids:
            unknown = [i for i in ids if i not in self.scenarios]
            if unknown:
                known = ", ".join(self.scenarios)
                raise InputError(
                    f"--scenario {unknown[0]!r}: no such scenario in profile {self.name!r}"
                    f" (known: {known})"
                )
            chosen = [self.scenarios[i] for i in dict.fromkeys(ids)]
        else:
            chosen = list(self.scenarios.values())
        if vantage is not None:
            chosen = [s for s in chosen if not s.vantages or vantage in s.vantages]
            if not chosen:
                raise InputError(
                    f"--vantage {vantage!r}: none of the selected scenarios applies from there"
                )
        needed: set[str] = set()
        components: dict[str, set[str]] = {}
        for s in chosen:
            for r in s.checks_needed():
                needed.add(r.check)
                if r.component:
                    components.setdefault(r.check, set()).add(r.component)
        defs: list[CheckDef] = []
        for cid, decl in self.checks.items():
            if cid not in needed:
                continue
            params = decl.params
            wanted = components.get(cid)
            current = getattr(params, "components", None)
            if wanted and isinstance(current, tuple):
                narrowed = tuple(c for c in current if c in wanted)
                if narrowed != current:
                    params = dataclasses.replace(params, components=narrowed)  # type: ignore[call-arg]
            defs.append(CheckDef(cid, decl.probe, params, decl.port, decl.role or None))
        return defs, chosen

    def judging(self, vantage: str | None = None) -> Judging:
        """What the verdicts need to know beyond the scenarios: which checks run against
        which role's hosts, which services ship switched off, where the run stands."""
        return Judging(
            primary_role=self.primary_role,
            check_roles={c.id: c.role for c in self.checks.values() if c.role},
            disabled=frozenset(c.id for c in self.checks.values() if not c.enabled),
            vantage=self.vantages.get(vantage, "") if vantage else "",
            roles=dict(self.roles),
            titles={c.id: c.title for c in self.checks.values() if c.title},
        )

    def role_names(self) -> list[str]:
        """Every role a target can be bound to (see `Judging.role_names`)."""
        return self.judging().role_names()

    def info(self) -> dict[str, Any]:
        """The report's `profile` object."""
        d: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "path": self.path,
            "schema_version": self.schema_version,
        }
        if self.extends:
            d["extends"] = list(self.extends)
        if self.overrides:
            d["overrides"] = list(self.overrides)
        return d

    def to_dict(self) -> dict[str, Any]:
        """`exprobe profiles show --format json`."""
        extra: dict[str, Any] = {}
        if self.vantages:
            extra["vantages"] = dict(self.vantages)
        if self.roles:
            extra["roles"] = {self.primary_role: "the target(s) given", **self.roles}
        return {
            **self.info(),
            "description": self.description,
            **extra,
            "checks": [c.to_dict() for c in self.checks.values()],
            "scenarios": [s.to_dict(self.checks) for s in self.scenarios.values()],
        }
