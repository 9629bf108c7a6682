"""Which ports to open, and who answers each: from a profile's checks to `Listener`s.

Every check maps to the responder of its probe on the check's port (plus the offset);
a check with implicit TLS gets a listener that handshakes first.  The endpoint-mapper
check (`msrpc-epm`) opens 135 and one DCE/RPC listener per component (DS, IS, MTA, SA)
on the static port the check expects (`expect_ds`, `expect_is`, `expect_mta`,
`expect_sa`), or on `DEFAULT_STATIC_PORTS` when the profile names none; the endpoint
mapper then hands out exactly those ports, offset included, so `exprobe run
--port-offset N` follows them without adding N a second time.

Modern Exchange: `exchange-http`, `http` and `lb-pool` checks share one HTTP listener per
port, answering as Exchange's vdirs do (`exprobe.listen.exchange`): HTTPS where the check
asks for implicit TLS (`lb-pool` always), the plain site of port 80 otherwise.  A `tls`
check needs only the handshake: it shares any implicit-TLS listener on its port, and alone
gets a TLS listener that says nothing after the handshake.  Checks bound to another role
(`role = "dc"`: another host), probes that connect nowhere (`autodiscover`) and probes
without a responder (`kerberos`, `smb`) are not rehearsed, and the plan says so in a note.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from exprobe.engine.plan import CheckDef
from exprobe.errors import InputError
from exprobe.listen import mail
from exprobe.listen.core import Conn, Listener, Responder
from exprobe.probes import load_all

# Pinned ports used when a profile's msrpc-epm check names none (KB 155831 / 161931
# leave the choice to the administrator; these are the values docs/listen.md shows).
DEFAULT_STATIC_PORTS: dict[str, int] = {"ds": 1600, "is": 1601, "mta": 1602, "sa": 1603}
OTHER_PORT = 1610  # the interfaces a check maps itself (a dynamic port on Windows)
COMPONENTS = ("ds", "is", "mta", "sa")
IMPLICIT_LABEL = {"smtp": "smtps", "pop3": "pop3s", "imap": "imaps", "nntp": "nntps",
                  "ldap": "ldaps", "http": "https"}  # fmt: skip
HTTP_PROBES = frozenset({"http", "exchange-http", "lb-pool"})
"""Probes answered by the Exchange HTTP listener (one per port, whichever of them asks)."""
FAMILY = {"exchange-http": "http", "lb-pool": "http", "ldap-gc": "ldap"}
"""Probes answered by another probe's responder."""
NOT_REHEARSED = {
    "kerberos": "no Kerberos KDC here",
    "smb": "no SMB server here",
}
"""Probes without a responder, and why; their ports accept TCP only (the plan says so)."""


@dataclass(frozen=True, slots=True)
class HttpSite:
    """How the HTTP listeners answer: the build in `X-OWA-Version`, the DNS domain of the
    NTLM challenge (None: from the listener's name), and path prefixes a reverse proxy
    refuses (`/mapi/`: the demo's broken path)."""

    build: str = ""
    domain: str | None = None
    refused: tuple[str, ...] = ()


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


def _http_responder(site: HttpSite, *, tls: bool) -> Responder:
    """The Exchange HTTP responder, its site named after the listener (`--name`)."""
    from exprobe.listen import exchange, http

    sites: dict[str, exchange.ExchangeSite] = {}

    def answer(name: str) -> exchange.ExchangeSite:
        if name not in sites:
            sites.clear()  # one name per server: never grows
            sites[name] = exchange.ExchangeSite.for_host(
                name, site.build or exchange.default_build(None), domain=site.domain,
                server=exchange.REHEARSAL_SERVER, refused=site.refused,
            )  # fmt: skip
        return sites[name]

    async def respond(conn: Conn) -> None:
        ex = answer(conn.name)
        await http.responder(ex.answer if tls else ex.answer_plain)(conn)

    return respond


def _http_note(site: HttpSite, *, tls: bool) -> str:
    refused = f"; a proxy refuses {', '.join(site.refused)} (403)" if site.refused else ""
    if not tls:
        return "HTTP: 302 to https (Autodiscover redirect), /PowerShell/ 401 Kerberos" + refused
    from exprobe.listen.exchange import default_build
    from exprobe.wire.exchange import name_build

    build = site.build or default_build(None)
    named = (name_build(build) or {}).get("version")
    return (
        "Exchange vdirs: 401 Negotiate/NTLM + CHALLENGE, /owa/ 302, healthcheck.htm, "
        f"X-OWA-Version {build}" + (f" ({named})" if named else "") + refused
    )


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
    `--scenario`; `components = []` asks for none) are registered and opened: a
    registration with nothing listening behind it would send the client after a port this
    rehearsal never meant to open.  The interfaces a check maps itself (`interfaces`: the
    failover cluster's, on modern Exchange) are component `other`.
    """
    found: dict[str, int] = {}
    wanted: list[str] = []
    for d in defs:
        if d.probe != "msrpc-epm":
            continue
        comps = getattr(d.params, "components", None)
        for comp in comps if isinstance(comps, tuple) else COMPONENTS:
            if comp in COMPONENTS and comp not in wanted:
                wanted.append(comp)
        if getattr(d.params, "interfaces", ()) and "other" not in wanted:
            wanted.append("other")
        for comp in COMPONENTS:
            value = getattr(d.params, f"expect_{comp}", None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                if comp in found and found[comp] != value:
                    raise InputError(
                        f"check {d.id}: expect_{comp}={value} differs from another "
                        f"endpoint-mapper check ({found[comp]}); one listener cannot be both"
                    )
                found[comp] = value
    ordered = [c for c in (*COMPONENTS, "other") if c in wanted]
    return {c: found.get(c, DEFAULT_STATIC_PORTS.get(c, OTHER_PORT)) for c in ordered}, set(found)


def _extra_interfaces(defs: list[CheckDef]) -> list[tuple[str, tuple[int, int]]]:
    """The `interfaces` the msrpc-epm checks map themselves, each once."""
    from exprobe.probes.msrpc import parse_interface_spec

    out: list[tuple[str, tuple[int, int]]] = []
    for d in defs:
        if d.probe == "msrpc-epm":
            for spec in getattr(d.params, "interfaces", ()):
                iface = parse_interface_spec(spec)
                if iface not in out:
                    out.append(iface)
    return out


def _probe_info(probe: str) -> tuple[bool, bool]:
    """(known, connects) of a probe name: whether it is registered, and opens a connection."""
    spec = load_all().get(probe)
    return spec is not None, spec is None or spec.connects


def _skip_reason(d: CheckDef, primary_role: str | None) -> str | None:
    """Why this check gets no listener here, or None when it does."""
    if d.role and d.role != primary_role:
        return f"check {d.id} ({d.probe}) runs against the {d.role} host: not opened here"
    known, connects = _probe_info(d.probe)
    if known and not connects:
        return (
            f"check {d.id} ({d.probe}) looks names up and asks other hosts: "
            "not rehearsed by a listener"
        )
    return None


def _wanted(d: CheckDef) -> tuple[str, bool]:
    """The listener a check needs: the probe whose responder answers it, and implicit TLS."""
    probe = FAMILY.get(d.probe, d.probe)
    implicit = d.params.tls == "implicit"
    if d.probe == "lb-pool":
        implicit = True  # a load balancer VIP in front of HTTPS vdirs
    elif d.probe == "tls":
        implicit = True  # the handshake is the check, whatever `tls` says
    return probe, implicit


def build_plan(
    defs: Iterable[CheckDef],
    *,
    port_offset: int = 0,
    withhold: Iterable[int] = (),
    http_site: HttpSite | None = None,
    primary_role: str | None = None,
    skipped: dict[str, str] | None = None,
) -> ListenPlan:
    """Listeners for `defs`.  `withhold` names (offset) ports to plan but not start;
    `http_site` says how the HTTP listeners answer; `primary_role` is the role of this
    host (checks bound to another role are left out, with a note); `skipped` maps check
    ids to the reason they are left out (a note each)."""
    plan = ListenPlan()
    mine: list[CheckDef] = []
    for d in defs:
        why = (skipped or {}).get(d.id) or _skip_reason(d, primary_role)
        if why is None:
            mine.append(d)
        else:
            plan.notes.append(why)
    defs = mine
    slots: dict[int, _Slot] = {}
    ehlo: dict[int, list[str]] = {}  # port -> EHLO keywords the smtp checks expect

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
        elif old.probe == "tls" and implicit and probe != "tcp":
            old.probe = probe  # the handshake is all a tls check needs
        elif (probe == "tls" and old.implicit) or probe == "tcp":
            pass
        elif old.probe != probe or old.implicit != implicit:
            what = f"{old.probe}{' (TLS)' if old.implicit else ''}"
            raise InputError(
                f"port {port}: check {check} needs {probe}{' (TLS)' if implicit else ''} "
                f"but {', '.join(old.checks)} needs {what}; one port, one listener"
            )
        if check not in old.checks:
            old.checks.append(check)

    epm_checks = [d for d in defs if d.probe == "msrpc-epm"]
    for d in defs:
        probe, implicit = _wanted(d)
        port = _port(d, port_offset)
        if port > 65535 and port_offset:
            # 64327 (DAG replication) + 20000: rehearse the rest, say what is left out.
            plan.notes.append(
                f"check {d.id}: port {port - port_offset} + offset {port_offset} is past 65535:"
                f" not opened (an offset of at most {65535 - port + port_offset} keeps it)"
            )
            continue
        claim(port, probe, implicit, d.id)
        for kw in getattr(d.params, "expect_extensions", ()) if d.probe == "smtp" else ():
            known = [k.upper() for k in ehlo.setdefault(port, [])]
            if kw.upper() not in known and kw.upper() not in mail.BASE_EXTENSIONS:
                ehlo[port].append(kw)
        if d.probe == "lb-pool":
            plan.notes.append(
                f"check {d.id} (lb-pool) finds members by the FQDN the health pages name, "
                f"which resolves nowhere before the server exists: add `--set {d.id}.members="
                f"ADDRESS:{port}` to `exprobe run` to compare this listener directly"
            )

    if epm_checks:
        static, named = _static_ports(defs)
        plan.static_ports = {c: p + port_offset for c, p in static.items()}
        plus = f" (+{port_offset})" if port_offset else ""
        classic = {c: p for c, p in static.items() if c != "other"}
        if "other" in static:
            plan.notes.append(
                f"the endpoint mapper registers the interfaces the checks map themselves on "
                f"{static['other']}{plus} (a dynamic port on Windows)"
            )
        if classic and not named:
            shown = ", ".join(f"{c.upper()} {p}" for c, p in classic.items())
            plan.notes.append(
                "no pinned DS/IS/MTA ports given (msrpc-epm expect_ds/expect_is/expect_mta): "
                f"registering the defaults {shown}{plus}"
            )
        elif classic:
            unnamed = [c for c in classic if c not in named]
            if unnamed:
                plan.notes.append(
                    "no expected port for "
                    + ", ".join(f"{c.upper()} (using {static[c]})" for c in unnamed)
                )
        for comp, port in plan.static_ports.items():
            claim(port, f"dce-{comp}", False, f"{epm_checks[0].id}:{comp}")

    from exprobe.listen import msrpc

    registry = (
        msrpc.Registry.exchange55(plan.static_ports, _extra_interfaces(defs))
        if epm_checks
        else None
    )
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
        elif s.probe == "http":
            responder = _http_responder(http_site or HttpSite(), tls=s.implicit)
            note = _http_note(http_site or HttpSite(), tls=s.implicit)
        elif s.probe == "tls":
            responder, label = mail.tcp, "tls"
            note = "TLS handshake, then nothing (the check is the handshake)"
        elif s.probe == "smtp" and ehlo.get(port):
            responder = mail.smtp_with(tuple(ehlo[port]))
            note = (
                "220 banner, EHLO/HELO, STARTTLS, QUIT; EHLO also lists "
                + ", ".join(ehlo[port])
                + " (the profile expects them)"
            )
        else:
            responder = _responder(s.probe)
            if responder is None:
                why = NOT_REHEARSED.get(s.probe, "no responder for this probe")
                plan.notes.append(
                    f"port {port}: {s.probe} is not rehearsed ({why}; checks "
                    f"{', '.join(s.checks)}): TCP accept only, so those checks prove the "
                    "path and then fail at their first exchange"
                )
                responder, label = mail.tcp, f"tcp ({s.probe})"
                note = f"not rehearsed: TCP accept only ({why})"
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
