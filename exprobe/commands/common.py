"""What `run`, `watch` and `serve` share: building checks and a session from options."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

from exprobe.engine.plan import CheckDef, adhoc_id
from exprobe.engine.runner import RunOptions
from exprobe.engine.scheduler import Limits
from exprobe.engine.tracing import MODES, TraceOptions
from exprobe.errors import InputError
from exprobe.net.dns import Resolver, parse_server
from exprobe.net.tls import TlsOptions
from exprobe.net.trace import MAX_HOPS
from exprobe.probes import get as get_probe
from exprobe.probes import load_all
from exprobe.probes.base import TLS_MODES, make_params
from exprobe.targets import Target, consent_problem, parse_file, parse_target

DEFAULT_CONCURRENCY = 512
FD_RESERVE = 64


def parse_check_option(text: str, values: dict[str, str] | None = None) -> CheckDef:
    """`PROBE[:PORT[:TLS]]`, e.g. `smtp:25:starttls`, `imap:993:implicit`, `rfc1006:102`.

    `values` are further probe parameters as text (`exprobe check --set PARAM=VALUE`).
    """
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise InputError(f"--check {text!r}: expected PROBE[:PORT[:TLS]]")
    name = parts[0].lower()
    try:
        spec = get_probe(name)
    except KeyError:
        known = ", ".join(sorted(load_all()))
        raise InputError(f"--check {text!r}: unknown probe {name!r} (known: {known})") from None
    port: int | None = None
    if len(parts) > 1 and parts[1]:
        if not parts[1].isdigit() or not 1 <= int(parts[1]) <= 65535:
            raise InputError(f"--check {text!r}: port {parts[1]!r} is not in 1-65535")
        port = int(parts[1])
    tls = parts[2].lower() if len(parts) > 2 and parts[2] else "none"
    if tls not in TLS_MODES:
        raise InputError(
            f"--check {text!r}: TLS mode {tls!r} is not one of none, starttls, implicit"
        )
    if tls != "none" and not spec.tls_capable:
        raise InputError(f"--check {text!r}: probe {name!r} does not speak TLS")
    params = make_params(spec.params_type, {**(values or {}), "tls": tls}, f"--check {text}")
    port = spec.port_for(params, port)
    return CheckDef(adhoc_id(name, port, tls), name, params, port)


def with_tls_versions(defs: list[CheckDef]) -> list[CheckDef]:
    """`--tls-versions`: every check that speaks TLS also tries each TLS version alone."""
    return [
        d
        if d.params.tls == "none" and d.probe != "tls"
        else dataclasses.replace(d, params=dataclasses.replace(d.params, tls_versions=True))
        for d in defs
    ]


def adhoc_defs(ports: list[int], checks: list[str]) -> list[CheckDef]:
    defs: dict[str, CheckDef] = {}
    tcp = get_probe("tcp")
    for p in ports:
        if not 1 <= p <= 65535:
            raise InputError(f"--port {p}: outside 1-65535")
        cid = adhoc_id("tcp", p, "none")
        defs.setdefault(cid, CheckDef(cid, "tcp", tcp.params_type(), p))
    for c in checks:
        d = parse_check_option(c)
        defs.setdefault(d.id, d)
    return list(defs.values())


def gather_targets(args: list[str], files: list[str], *, yes: bool) -> list[Target]:
    targets = [parse_target(a) for a in args]
    for f in files:
        targets += parse_file(f)
    if not targets:
        raise InputError("no targets given (name them as arguments or with -T FILE)")
    problem = consent_problem(targets)
    if problem and not yes:
        raise InputError(f"{problem}: pass --yes to scan that much")
    return targets


def check_port_offset(defs: list[CheckDef], offset: int) -> None:
    """`--port-offset` must keep every check's port within 1-65535 (exit 2 otherwise)."""
    if not offset:
        return
    for d in defs:
        port = d.resolved_port(offset)
        if not 1 <= port <= 65535:
            raise InputError(
                f"--port-offset {offset}: check {d.id!r} would use port {port}, outside 1-65535"
            )


def validate_source(source: str | None) -> None:
    """A source address must be an address of this machine: test-bind it once."""
    if not source:
        return
    try:
        addr = ipaddress.ip_address(source)
    except ValueError:
        raise InputError(f"--source {source!r}: not an IP address") from None
    fam = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        try:
            s.bind((source, 0))
        except OSError as exc:
            raise InputError(
                f"--source {source}: not an address of this machine ({exc.strerror})"
            ) from None


def make_resolver(server: str | None) -> Resolver | None:
    """`--dns-server ADDR[:PORT]`, validated (InputError), or None: the system's resolver."""
    if server is None:
        return None
    parse_server(server)
    return Resolver(server)


def trace_options(
    mode: str | None, max_hops: int, resolve_hops: bool, opts: RunOptions
) -> TraceOptions | None:
    """`--trace [failing|all]`, `--max-hops`, `--resolve-hops`, validated."""
    if mode is None:
        if resolve_hops:
            raise InputError("--resolve-hops needs --trace")
        return None
    if mode not in MODES:
        raise InputError(
            f"--trace {mode!r}: expected failing or all (give targets before --trace)"
        )
    if not 1 <= max_hops <= MAX_HOPS:
        raise InputError(f"--max-hops {max_hops}: outside 1-{MAX_HOPS}")
    return TraceOptions(mode, max_hops, resolve_hops, opts.connect_timeout, opts.source)


@dataclass(slots=True)
class EngineArgs:
    """Options of the engine, as typed on the command line."""

    timeout: float = 10.0
    connect_timeout: float = 3.0
    retries: int = 0
    concurrency: int | None = None
    per_host: int = 4
    rate: float | None = None
    source: str | None = None
    tls_verify: bool = False
    ca_file: str | None = None
    cert_warn_days: int = 14
    verbose: bool = False
    port_offset: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def build(self, fd_limit: int) -> tuple[RunOptions, Limits]:
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise InputError("--timeout and --connect-timeout must be positive")
        if self.retries < 0 or self.per_host < 1:
            raise InputError("--retries must be >= 0 and --per-host >= 1")
        if self.rate is not None and self.rate <= 0:
            raise InputError("--rate must be positive")
        if self.ca_file:
            try:
                with open(self.ca_file, "rb"):
                    pass
            except OSError as exc:
                raise InputError(
                    f"--ca-file {self.ca_file}: cannot read ({exc.strerror})"
                ) from None
        validate_source(self.source)
        cap = max(1, fd_limit - FD_RESERVE)
        concurrency = self.concurrency or DEFAULT_CONCURRENCY
        if concurrency < 1:
            raise InputError("--concurrency must be >= 1")
        concurrency = min(concurrency, cap)
        opts = RunOptions(
            connect_timeout=min(self.connect_timeout, self.timeout),
            timeout=self.timeout,
            retries=self.retries,
            source=self.source,
            tls=TlsOptions(
                verify=self.tls_verify, ca_file=self.ca_file, cert_warn_days=self.cert_warn_days
            ),
            verbose=self.verbose,
            port_offset=self.port_offset,
        )
        return opts, Limits(concurrency=concurrency, per_host=self.per_host, rate=self.rate)


@dataclass(slots=True)
class ProfilePlan:
    """A profile made ready for one run: its checks and scenarios (`--scenario`,
    `--vantage`), how to judge them, and the targets bound to its roles."""

    defs: list[CheckDef]
    scenarios: list[Any]
    judging: Any  # exprobe.profile.model.Judging
    info: dict[str, Any]
    primary_role: str | None  # None: the profile binds no check to a role


def profile_plan(
    ref: str,
    *,
    sets: list[str] | None = None,
    scenarios: list[str] | None = None,
    vantage: str | None = None,
) -> ProfilePlan:
    """Load `-p REF`, apply `--set`, select `--scenario`/`--vantage` (exit 2 on any error)."""
    from exprobe.profile import load_profile

    prof = load_profile(ref).with_overrides(sets or [])
    defs, chosen = prof.select(scenarios or [], vantage)
    info = prof.info()
    if vantage:
        info["vantage"] = vantage
    return ProfilePlan(
        defs, chosen, prof.judging(vantage), info, prof.primary_role if prof.roles else None
    )


def bind_roles(
    plan: ProfilePlan, targets: list[Target], roles: list[str] | None
) -> list[Target]:
    """The targets plus one per `--role NAME=HOST`, each labelled `role=NAME`; every role
    named (also by a target file's `role=` label) must be one the profile knows."""
    known = plan.judging.role_names()
    out = list(targets)
    for text in roles or []:
        name, eq, host = text.partition("=")
        name, host = name.strip(), host.strip()
        if not eq or not name or not host:
            raise InputError(f"--role {text!r}: expected NAME=HOST, e.g. dc=dc1.corp.example")
        if plan.primary_role is None:
            raise InputError(f"--role {text!r}: profile {plan.info['name']!r} binds no checks to roles")
        t = parse_target(host, where=f"--role {text}", labels=(("role", name),))
        out.append(t)
    if plan.primary_role is None:
        return out
    for t in out:
        role = dict(t.labels).get("role")
        if role is not None and role not in known:
            raise InputError(
                f"target {t.text}: role {role!r} is not a role of profile {plan.info['name']!r}"
                f" (known: {', '.join(known)})"
            )
    return out
