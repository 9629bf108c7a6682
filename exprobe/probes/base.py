"""The probe contract: one async function over a connected stream, typed params, a step log.

A probe never opens sockets, sets its own deadline, or closes what it did not open: the
runner (`exprobe.engine.runner`) owns all of that.  A probe records facts and warnings
in its `ProbeContext`, names its current step, and raises `ProbeError` subclasses to
conclude; network exceptions are left to propagate for the runner to classify.
"""

from __future__ import annotations

import dataclasses
import time
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from exprobe.errors import InputError, TlsError
from exprobe.net.stream import Stream
from exprobe.net.tls import TlsOptions, client_context, describe_session

TlsMode = Literal["none", "starttls", "implicit"]
TLS_MODES: tuple[TlsMode, ...] = ("none", "starttls", "implicit")


TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
# Accepted, but retired (RFC 8996); Exchange 2019 and later refuse them when hardened.
RETIRED_TLS = ("1.0", "1.1")


@dataclass(frozen=True, slots=True)
class Params:
    """Parameters every probe takes.  Subclasses add their own (frozen, hashable fields).

    `tls_versions`: after a TLS handshake, also try each of TLS 1.0-1.3 alone (derived
    checks `<id>/tls1.0` ... with `tls_version` pinned); `tls_version`: offer only that
    version (what those derived checks do)."""

    tls: TlsMode = "none"
    tls_versions: bool = False
    tls_version: str = ""

    def __post_init__(self) -> None:
        if self.tls_version and self.tls_version not in TLS_VERSIONS:
            raise ValueError(
                f"tls_version {self.tls_version!r} is not one of {', '.join(TLS_VERSIONS)}"
            )


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One probe with its parameters against one address and port: the unit of work."""

    id: str
    probe: str
    address: str | None  # None when the target's name did not resolve
    port: int
    params: Params
    target: str  # the target as the user gave it
    server_name: str | None = None  # host name for SNI and certificate matching
    parent: str | None = None  # id of the check this one was derived from
    labels: tuple[tuple[str, str], ...] = ()
    meta: tuple[tuple[str, Any], ...] = ()  # e.g. the EPM component a derived check tests


@dataclass(slots=True)
class Step:
    name: str
    started: float
    elapsed_ms: float | None = None
    outcome: str = "ok"


@dataclass(slots=True)
class ProbeContext:
    """What a probe writes into while it runs."""

    check: CheckSpec
    tls_options: TlsOptions = field(default_factory=TlsOptions)
    facts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    derived: list[CheckSpec] = field(default_factory=list)
    summary: str | None = None  # one line for humans on success
    verbose: bool = False
    port_offset: int = 0  # `--port-offset`: ports a profile pins are shifted like every port
    dns_server: str | None = None  # `--dns-server`: where a probe's own lookups go

    @property
    def current_step(self) -> str | None:
        return self.steps[-1].name if self.steps else None

    def step(self, name: str) -> None:
        """Enter a new step: the one reported as `failed_step` if the check ends now."""
        now = time.perf_counter()
        if self.steps and self.steps[-1].elapsed_ms is None:
            prev = self.steps[-1]
            prev.elapsed_ms = round((now - prev.started) * 1000, 3)
        self.steps.append(Step(name, now))

    def finish_steps(self, outcome: str | None = None) -> None:
        if self.steps and self.steps[-1].elapsed_ms is None:
            last = self.steps[-1]
            last.elapsed_ms = round((time.perf_counter() - last.started) * 1000, 3)
            if outcome:
                last.outcome = outcome

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def derive(self, spec: CheckSpec) -> None:
        """Ask the scheduler to run a follow-up check (e.g. a port the EPM handed out)."""
        self.derived.append(spec)

    async def start_tls(self, stream: Stream, *, step: str = "tls-handshake") -> None:
        """Handshake (implicit TLS or after STARTTLS) and record the certificate facts."""
        self.step(step)
        name = self.tls_options.server_name or self.check.server_name
        sni = name if name and not _is_ip(name) else None
        pinned = self.check.params.tls_version
        without = tuple(getattr(self.check.params, "tls_exclude", ()))  # cipher rounds (tls)
        try:
            obj = await stream.start_tls(client_context(pinned or None, without), sni)
        except OSError as exc:  # ssl.SSLError is an OSError
            if type(exc).__module__ == "ssl" or exc.__class__.__name__.startswith("SSL"):
                said = _ssl_text(exc)
                if pinned:
                    raise TlsError(f"TLS {pinned} refused: {said}") from exc
                raise TlsError(f"TLS handshake failed: {said}") from exc
            raise
        stream.note(f"TLS established ({obj.version()})")
        if pinned:
            self.facts["tls_version_accepted"] = pinned
            if pinned in RETIRED_TLS:
                self.warn(f"TLS {pinned} accepted: a retired version (RFC 8996)")
        elif self.check.params.tls_versions:
            self._derive_tls_versions()
        report = describe_session(obj, name or self.check.address, self.tls_options)
        self.facts.update(report.facts)
        for w in report.warnings:
            self.warn(w)
        if self.tls_options.verify and report.problem:
            raise TlsError(f"certificate rejected: {report.problem}")

    def _derive_tls_versions(self) -> None:
        """One follow-up check per TLS version: the same dialogue, that version only."""
        check = self.check
        for version in TLS_VERSIONS:
            params = dataclasses.replace(check.params, tls_versions=False, tls_version=version)
            self.derive(
                dataclasses.replace(
                    check,
                    id=f"{check.id}/tls{version}",
                    params=params,
                    parent=check.id,
                    meta=(*check.meta, ("tls_version_tried", version)),
                )
            )


def _is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _ssl_text(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason).lower().replace("_", " ") if reason else (str(exc) or type(exc).__name__)


ProbeFunc = Callable[[Stream, Any, ProbeContext], Awaitable[None]]
P = TypeVar("P", bound=Params)


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """A registered probe: its function, parameter type and default ports."""

    name: str
    func: ProbeFunc | None  # None: connect only (the lean `tcp` path)
    params_type: type[Params]
    default_port: int | None
    tls_ports: dict[str, int] = field(default_factory=dict)  # tls mode -> default port
    summary: str = ""
    tls_capable: bool = False
    # False: the probe opens no connection (it looks things up and derives checks); the
    # runner calls it once per target, with no stream, within the check's deadline.
    connects: bool = True
    # After the run: the probe's result restated from its derived checks' results.
    summarise: Callable[[Any, list[Any]], Any] | None = None

    def port_for(self, params: Params, port: int | None) -> int:
        if port is not None:
            return port
        if params.tls in self.tls_ports:
            return self.tls_ports[params.tls]
        if self.default_port is None:
            raise InputError(f"probe {self.name!r} needs an explicit port")
        return self.default_port


REGISTRY: dict[str, ProbeSpec] = {}


def register(
    name: str,
    params_type: type[Params],
    *,
    default_port: int | None,
    tls_ports: dict[str, int] | None = None,
    summary: str = "",
    tls_capable: bool = False,
    connects: bool = True,
    summarise: Callable[[Any, list[Any]], Any] | None = None,
) -> Callable[[ProbeFunc], ProbeFunc]:
    """Decorator: add a probe function to the registry under `name`."""

    def deco(func: ProbeFunc) -> ProbeFunc:
        REGISTRY[name] = ProbeSpec(
            name, func, params_type, default_port, dict(tls_ports or {}), summary, tls_capable,
            connects, summarise,
        )  # fmt: skip
        return func

    return deco


# -- parameters from data (profiles, --set, --check) ------------------------------------


def param_fields(params_type: type[Params]) -> dict[str, Any]:
    """Field name -> resolved type annotation."""
    hints = typing.get_type_hints(params_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(params_type)}


def make_params(params_type: type[P], values: dict[str, Any], where: str) -> P:
    """Build a params object from data, validating every key and type.

    `where` names the place for error messages (e.g. "profile x.toml: checks.smtp").
    """
    fields = param_fields(params_type)
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise InputError(f"{where}: unknown parameter {key!r} (known: {known})")
        kwargs[key] = coerce(raw, fields[key], f"{where}.{key}")
    try:
        return params_type(**kwargs)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: {exc}") from exc


def coerce(raw: Any, tp: Any, where: str) -> Any:
    """Check (and gently convert) one value against a type annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if raw not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise InputError(f"{where}: {raw!r} is not one of {allowed}")
        return raw
    if origin in (types.UnionType, typing.Union):
        if raw is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(raw, arg, where)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0] if errors else f"{where}: bad value {raw!r}")
    if origin is tuple:
        if isinstance(raw, str):
            raw = [x for x in (p.strip() for p in raw.split(",")) if x]
        if not isinstance(raw, list | tuple):
            raise InputError(f"{where}: expected a list, got {raw!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(x, args[0], f"{where}[{i}]") for i, x in enumerate(raw))
        if len(args) != len(raw):
            raise InputError(f"{where}: expected {len(args)} items, got {len(raw)}")
        return tuple(
            coerce(x, a, f"{where}[{i}]") for i, (x, a) in enumerate(zip(args, raw, strict=True))
        )
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "yes", "1", "false", "no", "0"):
            return raw.lower() in ("true", "yes", "1")
        raise InputError(f"{where}: expected true or false, got {raw!r}")
    if tp is int:
        if isinstance(raw, bool):
            raise InputError(f"{where}: expected an integer, got {raw!r}")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw, 0)
            except ValueError:
                pass
        raise InputError(f"{where}: expected an integer, got {raw!r}")
    if tp is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
        raise InputError(f"{where}: expected a number, got {raw!r}")
    if tp is str:
        if isinstance(raw, str):
            return raw
        raise InputError(f"{where}: expected a string, got {raw!r}")
    raise InputError(f"{where}: unsupported parameter type {tp!r}")  # pragma: no cover
