"""Which ports to open, and who answers each: from a profile's checks to `Listener`s.

Every check maps to the responder of its probe on the check's port (plus the offset);
a check with implicit TLS gets a listener that handshakes first.  The endpoint-mapper
check (`msrpc-epm`) opens 135 and one DCE/RPC listener per component (DS, IS, MTA, SA)
on the static port the check expects (`expect_ds`, `expect_is`, `expect_mta`,
`expect_sa`), or on `DEFAULT_STATIC_PORTS` when the profile names none; the endpoint
mapper then hands out exactly those ports, offset included, so `exprobe run
--port-offset N` follows them without adding N a second time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from exprobe.engine.plan import CheckDef
from exprobe.errors import InputError
from exprobe.listen import mail
from exprobe.listen.core import Listener, Responder
from exprobe.probes import load_all

# Pinned ports used when a profile's msrpc-epm check names none (KB 155831 / 161931
# leave the choice to the administrator; these are the values docs/listen.md shows).
DEFAULT_STATIC_PORTS: dict[str, int] = {"ds": 1600, "is": 1601, "mta": 1602, "sa": 1603}
COMPONENTS = ("ds", "is", "mta", "sa")
IMPLICIT_LABEL = {"smtp": "smtps", "pop3": "pop3s", "imap": "imaps", "nntp": "nntps",
                  "ldap": "ldaps"}  # fmt: skip


def _responder(probe: str) -> Responder | None:
    if probe == "smtp":
        return mail.smtp
    if probe == "pop3":
        return mail.pop3
    if probe == "imap":
        return mail.imap
    if probe == "nntp":
        return mail.nntp
    if probe == "ldap":
        from exprobe.listen.ldap import ldap

        return ldap
    if probe == "rfc1006":
        from exprobe.listen.rfc1006 import rfc1006

        return rfc1006
    if probe == "tcp":
        return mail.tcp
    return None


@dataclass(slots=True)
class ListenPlan:
    """The listeners to start, and what the operator should be told about the choice."""

    listeners: list[Listener] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    static_ports: dict[str, int] = field(default_factory=dict)  # component -> port (offset)
    withheld: list[Listener] = field(default_factory=list)  # planned but not started

    def ports(self) -> list[int]:
        return sorted(x.port for x in self.listeners)


@dataclass(slots=True)
class _Slot:
    port: int
    probe: str
    implicit: bool
    checks: list[str]
    extra: dict[str, int] = field(default_factory=dict)


def _port(d: CheckDef, offset: int) -> int:
    if d.port is None and d.probe not in load_all():
        raise InputError(f"check {d.id}: probe {d.probe!r} is not available and names no port")
    return d.port + offset if d.port is not None else d.resolved_port(offset)


def _static_ports(defs: list[CheckDef]) -> tuple[dict[str, int], set[str]]:
    """Component -> expected port from the msrpc-epm checks, and the components named.

    Only the components the checks ask for (their `components` parameter, narrowed by
    `--scenario`) are registered and opened: a registration with nothing listening behind
    it would send the client after a port this rehearsal never meant to open.
    """
    found: dict[str, int] = {}
    wanted: list[str] = []
    for d in defs:
        if d.probe != "msrpc-epm":
            continue
        comps = getattr(d.params, "components", None)
        for comp in comps if isinstance(comps, tuple) and comps else COMPONENTS:
            if comp in COMPONENTS and comp not in wanted:
                wanted.append(comp)
        for comp in COMPONENTS:
            value = getattr(d.params, f"expect_{comp}", None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                if comp in found and found[comp] != value:
                    raise InputError(
                        f"check {d.id}: expect_{comp}={value} differs from another "
                        f"endpoint-mapper check ({found[comp]}); one listener cannot be both"
                    )
                found[comp] = value
    ordered = [c for c in COMPONENTS if c in wanted]
    return {c: found.get(c, DEFAULT_STATIC_PORTS[c]) for c in ordered}, set(found)


def build_plan(
    defs: Iterable[CheckDef], *, port_offset: int = 0, withhold: Iterable[int] = ()
) -> ListenPlan:
    """Listeners for `defs`.  `withhold` names (offset) ports to plan but not start."""
    defs = list(defs)
    plan = ListenPlan()
    slots: dict[int, _Slot] = {}

    def claim(port: int, probe: str, implicit: bool, check: str) -> None:
        if not 1 <= port <= 65535:
            raise InputError(
                f"check {check}: port {port} (with --port-offset {port_offset}) is outside 1-65535"
            )
        old = slots.get(port)
        if old is None:
            slots[port] = _Slot(port, probe, implicit, [check])
            return
        if old.probe == "tcp" and probe != "tcp":
            old.probe, old.implicit = probe, implicit
        elif probe != "tcp" and (old.probe != probe or old.implicit != implicit):
            what = f"{old.probe}{' (TLS)' if old.implicit else ''}"
            raise InputError(
                f"port {port}: check {check} needs {probe}{' (TLS)' if implicit else ''} "
                f"but {', '.join(old.checks)} needs {what}; one port, one listener"
            )
        if check not in old.checks:
            old.checks.append(check)

    epm_checks = [d for d in defs if d.probe == "msrpc-epm"]
    for d in defs:
        claim(_port(d, port_offset), d.probe, d.params.tls == "implicit", d.id)

    if epm_checks:
        static, named = _static_ports(defs)
        plan.static_ports = {c: p + port_offset for c, p in static.items()}
        if not named:
            shown = ", ".join(f"{c.upper()} {p}" for c, p in static.items())
            plan.notes.append(
                "no pinned DS/IS/MTA ports given (msrpc-epm expect_ds/expect_is/expect_mta): "
                f"registering the defaults {shown}" + (f" (+{port_offset})" if port_offset else "")
            )
        else:
            unnamed = [c for c in static if c not in named]
            if unnamed:
                plan.notes.append(
                    "no expected port for "
                    + ", ".join(f"{c.upper()} (using {static[c]})" for c in unnamed)
                )
        for comp, port in plan.static_ports.items():
            claim(port, f"dce-{comp}", False, f"{epm_checks[0].id}:{comp}")

    from exprobe.listen import msrpc

    registry = msrpc.Registry.exchange55(plan.static_ports) if epm_checks else None
    withheld = set(withhold)
    for port in sorted(slots):
        s = slots[port]
        label = IMPLICIT_LABEL.get(s.probe, s.probe) if s.implicit else s.probe
        note = ""
        responder: Responder | None
        if s.probe == "msrpc-epm":
            assert registry is not None
            responder = msrpc.epm_responder(registry)
            note = "endpoint mapper: " + registry.describe()
        elif s.probe.startswith("dce-"):
            assert registry is not None
            comp = s.probe[4:]
            responder = msrpc.dce_responder(registry, comp)
            label = f"msrpc-{comp}"
            note = registry.describe_component(comp)
        else:
            responder = _responder(s.probe)
            if responder is None:
                plan.notes.append(
                    f"port {port}: no responder for probe {s.probe!r}; accepting TCP only"
                )
                responder, label = mail.tcp, f"tcp ({s.probe})"
        lst = Listener(
            port,
            label,
            responder,
            implicit_tls=s.implicit,
            checks=tuple(s.checks),
            note=note,
        )
        (plan.withheld if port in withheld else plan.listeners).append(lst)
    return plan
