"""Read profile TOML files and validate them completely, at load time.

Every problem is an `InputError` with one line: the file, the key path and what is wrong
(`profiles/x.toml: scenarios.mapi.all[1]: unknown check 'is-port'`).  Parameter names and
types come from each probe's `Params` dataclass through the probe registry, so a new
probe parameter is accepted (and checked) in profiles and `--set` without touching this
module.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import exprobe
from exprobe.errors import InputError
from exprobe.probes import load_all
from exprobe.probes.base import Params, ProbeSpec, coerce, make_params, param_fields
from exprobe.profile.model import (
    COMPONENTS,
    FAILURE_KINDS,
    OTHER,
    PRIMARY_ROLE,
    SCHEMA_VERSION,
    CheckDecl,
    Hint,
    Profile,
    Requirement,
    Scenario,
)

TOP_KEYS = ("schema_version", "title", "description", "extends", "checks", "scenarios",
            "vantages", "roles", "primary_role")  # fmt: skip
CHECK_KEYS = ("probe", "port", "title", "role", "enabled")
SCENARIO_KEYS = ("title", "description", "vantage", "all", "any", "hints", "vantages",
                 "filtering", "observe", "docs")  # fmt: skip
HINT_KEYS = ("text", "kb", "when", "on", "docs")
FILTERING = ("supported", "unsupported")
ID_RE = re.compile(r"[a-z][a-z0-9_-]{0,47}")
MAX_EXTENDS_DEPTH = 16


# -- where profiles live ------------------------------------------------------------------


def shipped_dir() -> Path:
    """The directory of the shipped profiles.

    Installed from a wheel they are package data (`exprobe/profiles/`, mapped from the
    repository's top-level `profiles/` by pyproject.toml); in a source checkout or an
    editable install they are read from `profiles/` next to the package.
    """
    pkg = Path(exprobe.__file__).resolve().parent
    packaged = pkg / "profiles"
    if packaged.is_dir():
        return packaged
    return pkg.parent / "profiles"


def shipped_names() -> list[str]:
    d = shipped_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def _display(path: Path) -> str:
    """A path for messages: relative to the working directory when it lies below it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel


def load_profile(ref: str) -> Profile:
    """A shipped profile by name (`exchange55`) or a TOML file by path."""
    if _looks_like_path(ref):
        path = Path(ref)
        return _Loader().load(path, ref, ())
    names = shipped_names()
    if ref not in names:
        raise InputError(
            f"unknown profile {ref!r} (known: {', '.join(names) or 'none'});"
            " give a path to use a TOML file of your own"
        )
    path = shipped_dir() / f"{ref}.toml"
    return _Loader().load(path, _display(path), ())


def list_profiles() -> list[Profile]:
    """Every shipped profile, loaded (and so validated), by name."""
    return [load_profile(n) for n in shipped_names()]


def _looks_like_path(ref: str) -> bool:
    return ref.endswith(".toml") or "/" in ref or os.sep in ref


# -- small helpers --------------------------------------------------------------------------


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return f"a {type(v).__name__}"


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _strict_problem(raw: Any, tp: Any) -> str | None:
    """TOML has real types: refuse what `coerce` would kindly convert from a string."""
    inner, _ = _unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if inner in (int, float, bool) and isinstance(raw, str):
        kind = {int: "an integer", float: "a number", bool: "true or false"}[inner]
        return f"expected {kind}, got {_type_name(raw)} {raw!r}"
    if origin is tuple and not isinstance(raw, list):
        return f"expected an array, got {_type_name(raw)} {raw!r}"
    if origin is tuple and isinstance(raw, list):
        args = typing.get_args(inner)
        elem = args[0] if args else Any
        for i, x in enumerate(raw):
            p = _strict_problem(x, elem)
            if p:
                return f"[{i}]: {p}"
    return None


def components_of(spec: ProbeSpec) -> tuple[str, ...] | None:
    """The components a probe can derive follow-up checks for (None: it derives none)."""
    fields = param_fields(spec.params_type)
    tp = fields.get("components")
    if tp is None:
        return (*COMPONENTS, OTHER) if spec.name == "msrpc-epm" else None
    inner, _ = _unwrap_optional(tp)
    for arg in typing.get_args(inner):
        if typing.get_origin(arg) is Literal:
            return tuple(str(a) for a in typing.get_args(arg))
    return (*COMPONENTS, OTHER) if "interfaces" in param_fields(spec.params_type) else COMPONENTS


def declared_components(decl: CheckDecl, spec: ProbeSpec) -> tuple[str, ...]:
    """What the check derives checks for: its `components`, and `other` when it maps
    `interfaces` of its own (a domain controller's netlogon, say)."""
    extra = (OTHER,) if getattr(decl.params, "interfaces", None) else ()
    value = getattr(decl.params, "components", None)
    if isinstance(value, tuple):
        return (*(str(v) for v in value), *extra)
    return (*(components_of(spec) or ()), *extra)


# -- the loader -----------------------------------------------------------------------------


class _Loader:
    def __init__(self) -> None:
        self.registry = load_all()
        self.roles: tuple[str, dict[str, str]] = (PRIMARY_ROLE, {})  # of the file being read
        self.vantages: dict[str, str] = {}

    def load(self, path: Path, display: str, chain: tuple[Path, ...]) -> Profile:
        raw = self._read(path, display)
        f = _File(display)
        f.keys(raw, TOP_KEYS, "")
        if "schema_version" not in raw:
            raise f.error(
                "schema_version", f"missing (this exprobe reads schema_version = {SCHEMA_VERSION})"
            )
        sv = raw["schema_version"]
        if not isinstance(sv, int) or isinstance(sv, bool):
            raise f.error("schema_version", f"expected an integer, got {_type_name(sv)} {sv!r}")
        if sv != SCHEMA_VERSION:
            raise f.error(
                "schema_version", f"{sv} is not supported (this exprobe reads {SCHEMA_VERSION})"
            )
        title = f.string(raw, "title", "")
        description = f.string(raw, "description", "")

        base: Profile | None = None
        extends: tuple[str, ...] = ()
        if "extends" in raw:
            ref = f.string(raw, "extends", "")
            if not ref:
                raise f.error("extends", "empty profile name")
            base_path, base_display = self._resolve_extends(ref, path, f)
            here = path.resolve()
            full = (*chain, here)
            if base_path.resolve() in full:
                names = [p.stem for p in full] + [base_path.stem]
                raise f.error("extends", "cycle: " + " → ".join(names))
            if len(full) >= MAX_EXTENDS_DEPTH:
                raise f.error("extends", f"more than {MAX_EXTENDS_DEPTH} levels of extends")
            base = self.load(base_path, base_display, full)
            extends = (base.name, *base.extends)
            title = title or base.title
            description = description or base.description
        if not title:
            raise f.error("title", "missing")

        vantages = {**(base.vantages if base else {}), **f.names(raw, "vantages")}
        roles = {**(base.roles if base else {}), **f.names(raw, "roles")}
        primary = f.string(raw, "primary_role", base.primary_role if base else PRIMARY_ROLE)
        if not ID_RE.fullmatch(primary):
            raise f.error("primary_role", f"bad role name {primary!r}")
        roles.pop(primary, None)
        self.roles = (primary, roles)
        self.vantages = vantages
        checks = self._checks(raw.get("checks", {}), base, f)
        scenarios = self._scenarios(raw.get("scenarios", {}), base, checks, f)
        return Profile(
            name=path.stem,
            title=title,
            path=str(path),
            checks=checks,
            scenarios=scenarios,
            description=description,
            extends=extends,
            schema_version=sv,
            vantages=vantages,
            roles=roles,
            primary_role=primary,
        )

    @staticmethod
    def _read(path: Path, display: str) -> dict[str, Any]:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"{display}: cannot read ({exc.strerror or exc})") from None
        try:
            return tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"{display}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{display}: invalid TOML: {exc}") from None

    @staticmethod
    def _resolve_extends(ref: str, path: Path, f: _File) -> tuple[Path, str]:
        if _looks_like_path(ref):
            p = path.parent / ref
            if not p.is_file():
                raise f.error("extends", f"no profile file {ref!r} next to this one")
            return p, _display(p)
        sibling = path.parent / f"{ref}.toml"
        if sibling.is_file():
            return sibling, _display(sibling)
        shipped = shipped_dir() / f"{ref}.toml"
        if shipped.is_file():
            return shipped, _display(shipped)
        known = ", ".join(shipped_names()) or "none"
        raise f.error("extends", f"unknown profile {ref!r} (known: {known})")

    # -- checks --

    def _checks(self, table: Any, base: Profile | None, f: _File) -> dict[str, CheckDecl]:
        if not isinstance(table, dict):
            raise f.error("checks", f"expected a table, got {_type_name(table)}")
        checks: dict[str, CheckDecl] = dict(base.checks) if base else {}
        for cid, entry in table.items():
            f.check_id(cid, "checks")
            where = f"checks.{cid}"
            if not isinstance(entry, dict):
                raise f.error(where, f"expected a table, got {_type_name(entry)}")
            inherited = checks.get(cid)
            checks[cid] = self._check(cid, entry, inherited, f, where)
        return checks

    def _check(
        self, cid: str, entry: dict[str, Any], inherited: CheckDecl | None, f: _File, where: str
    ) -> CheckDecl:
        if "probe" in entry:
            probe = f.string(entry, "probe", "", where)
            if probe not in self.registry:
                known = ", ".join(sorted(self.registry))
                raise f.error(f"{where}.probe", f"unknown probe {probe!r} (known: {known})")
            if inherited is not None and inherited.probe != probe:
                inherited = None  # another probe: a new check, nothing to merge
        elif inherited is not None:
            probe = inherited.probe
        else:
            raise f.error(where, "missing key 'probe'")
        spec = self.registry[probe]
        fields = param_fields(spec.params_type)
        allowed = sorted({*CHECK_KEYS, *fields})
        f.keys(entry, allowed, where, f" for probe {probe!r}")

        values: dict[str, Any] = {}
        if inherited is not None:
            values = {
                fl.name: getattr(inherited.params, fl.name)
                for fl in dataclasses.fields(inherited.params)
            }
        for key, raw in entry.items():
            if key in CHECK_KEYS:
                continue
            problem = _strict_problem(raw, fields[key])
            if problem:
                sep = "" if problem.startswith("[") else ": "
                raise f.error(f"{where}.{key}", problem, sep=sep)
            values[key] = raw
        params = self._params(spec, values, f, where)

        title = f.string(entry, "title", inherited.title if inherited else "", where)
        role = f.string(entry, "role", inherited.role if inherited else "", where)
        primary, roles = self.roles
        if role == primary:
            role = ""
        elif role and role not in roles:
            known = ", ".join([primary, *roles])
            raise f.error(f"{where}.role", f"unknown role {role!r} (known: {known}; declare"
                          " it in [roles])")  # fmt: skip
        enabled = f.boolean(entry, "enabled", inherited.enabled if inherited else True, where)
        declared: int | None = None
        if "port" in entry:
            declared = f.port(entry["port"], f"{where}.port")
        elif inherited is not None and inherited.port_declared:
            declared = inherited.port
        try:
            port = spec.port_for(params, declared)
        except InputError:
            raise f.error(where, f"probe {probe!r} has no default port: give port = N") from None
        return CheckDecl(cid, probe, params, port, title, declared is not None, role, enabled)

    def _params(self, spec: ProbeSpec, values: dict[str, Any], f: _File, where: str) -> Params:
        tls = values.get("tls", "none")
        if tls != "none" and not spec.tls_capable:
            raise f.error(
                f"{where}.tls", f'probe {spec.name!r} does not speak TLS (only tls = "none")'
            )
        return make_params(spec.params_type, values, f"{f.display}: {where}")

    # -- scenarios --

    def _scenarios(
        self, table: Any, base: Profile | None, checks: dict[str, CheckDecl], f: _File
    ) -> dict[str, Scenario]:
        if not isinstance(table, dict):
            raise f.error("scenarios", f"expected a table, got {_type_name(table)}")
        scenarios: dict[str, Scenario] = dict(base.scenarios) if base else {}
        touched: set[str] = set()
        for sid, entry in table.items():
            f.check_id(sid, "scenarios")
            where = f"scenarios.{sid}"
            if not isinstance(entry, dict):
                raise f.error(where, f"expected a table, got {_type_name(entry)}")
            f.keys(entry, SCENARIO_KEYS, where)
            scenarios[sid] = self._scenario(sid, entry, scenarios.get(sid), f, where)
            touched.add(sid)
        for sid, s in scenarios.items():
            validate_scenario(
                s, checks, self.registry, f, f"scenarios.{sid}", inherited=sid not in touched
            )
        return scenarios

    def _scenario(
        self, sid: str, entry: dict[str, Any], inherited: Scenario | None, f: _File, where: str
    ) -> Scenario:
        base = inherited or Scenario(sid, "")
        title = f.string(entry, "title", base.title, where)
        if not title:
            raise f.error(where, "missing key 'title'")
        all_ = base.all
        any_ = base.any
        if "all" in entry:
            all_ = tuple(f.refs(entry["all"], f"{where}.all"))
        if "any" in entry:
            any_ = f.groups(entry["any"], f"{where}.any")
        if not all_ and not any_:
            raise f.error(where, "no requirements: give all = [...] and/or any = [...]")
        hints = base.hints
        if "hints" in entry:
            hints = f.hints(entry["hints"], f"{where}.hints")
        vantages = base.vantages
        if "vantages" in entry:
            vantages = tuple(f.strings(entry["vantages"], f"{where}.vantages"))
            for i, v in enumerate(vantages):
                if v not in self.vantages:
                    known = ", ".join(self.vantages) or "none: declare them in [vantages]"
                    raise f.error(
                        f"{where}.vantages[{i}]", f"unknown vantage {v!r} (known: {known})"
                    )
        filtering = f.string(entry, "filtering", base.filtering, where)
        if filtering not in FILTERING:
            raise f.error(
                f"{where}.filtering", f"{filtering!r}: expected one of {', '.join(FILTERING)}"
            )
        observe = base.observe
        if "observe" in entry:
            observe = tuple(f.refs(entry["observe"], f"{where}.observe"))
        docs = base.docs
        if "docs" in entry:
            docs = tuple(f.strings(entry["docs"], f"{where}.docs"))
        return Scenario(
            id=sid,
            title=title,
            description=f.string(entry, "description", base.description, where),
            vantage=f.string(entry, "vantage", base.vantage, where),
            all=all_,
            any=any_,
            hints=hints,
            vantages=vantages,
            filtering=filtering,
            observe=observe,
            docs=docs,
        )


def validate_scenario(
    s: Scenario,
    checks: dict[str, CheckDecl],
    registry: dict[str, ProbeSpec],
    f: _File,
    where: str,
    *,
    inherited: bool = False,
) -> None:
    """References to checks and components, duplicates, and hint conditions."""
    suffix = " (in a scenario inherited from the base profile)" if inherited else ""
    seen: set[str] = set()
    located: list[tuple[Requirement, str]] = [(r, f"{where}.all[{i}]") for i, r in enumerate(s.all)]
    for gi, group in enumerate(s.any):
        located += [(r, f"{where}.any[{gi}][{i}]") for i, r in enumerate(group)]
    if len(s.any) == 1:  # written as a flat list: report the flat position
        located = [(r, p.replace(f"{where}.any[0][", f"{where}.any[")) for r, p in located]
    located += [(r, f"{where}.observe[{i}]") for i, r in enumerate(s.observe)]
    for req, path in located:
        text = str(req)
        if text in seen:
            raise f.error(path, f"{text!r} is listed twice in this scenario")
        seen.add(text)
        decl = checks.get(req.check)
        if decl is None:
            raise f.error(path, f"unknown check {req.check!r}{suffix}")
        if req.component is None:
            continue
        spec = registry[decl.probe]
        allowed = components_of(spec)
        if allowed is None:
            raise f.error(
                path,
                f"{text!r}: check {req.check!r} (probe {decl.probe}) derives no component"
                f" checks; only endpoint-mapper checks do{suffix}",
            )
        if req.component not in allowed:
            raise f.error(
                path, f"{text!r}: unknown component {req.component!r} (known: {', '.join(allowed)})"
            )
        have = declared_components(decl, spec)
        if req.component not in have:
            raise f.error(
                path,
                f"{text!r}: check {req.check!r} does not look up component {req.component!r}"
                f" (its components: {', '.join(have) or 'none'}){suffix}",
            )
    targets = seen | {r.check for r in s.requirements()}
    for hi, h in enumerate(s.hints):
        for wi, w in enumerate(h.when):
            if w not in targets:
                raise f.error(
                    f"{where}.hints[{hi}].when[{wi}]",
                    f"{w!r} is not a requirement of this scenario{suffix}",
                )


class _File:
    """Error messages and typed reads for one profile file."""

    def __init__(self, display: str) -> None:
        self.display = display

    def error(self, path: str, problem: str, *, sep: str = ": ") -> InputError:
        if not path:
            return InputError(f"{self.display}: {problem}")
        return InputError(f"{self.display}: {path}{sep}{problem}")

    def keys(self, table: dict[str, Any], allowed: Any, where: str, extra: str = "") -> None:
        for key in table:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.error(where, f"unknown key {key!r}{extra} (known: {known})")

    def check_id(self, key: str, where: str) -> None:
        if not ID_RE.fullmatch(key):
            raise self.error(
                where,
                f"bad id {key!r}: use lower-case letters, digits, '-' and '_',"
                " starting with a letter (at most 48)",
            )

    def string(self, table: dict[str, Any], key: str, default: str, where: str = "") -> str:
        if key not in table:
            return default
        v = table[key]
        path = f"{where}.{key}" if where else key
        if not isinstance(v, str):
            raise self.error(path, f"expected a string, got {_type_name(v)} {v!r}")
        return v

    def port(self, v: Any, path: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(path, f"expected an integer, got {_type_name(v)} {v!r}")
        if not 1 <= v <= 65535:
            raise self.error(path, f"{v} is not in 1-65535")
        return v

    def refs(self, v: Any, path: str) -> list[Requirement]:
        if not isinstance(v, list):
            raise self.error(path, f"expected an array of check names, got {_type_name(v)}")
        if not v:
            raise self.error(path, "empty requirement group")
        out = []
        for i, item in enumerate(v):
            if not isinstance(item, str):
                raise self.error(
                    f"{path}[{i}]", f"expected a check name (string), got {_type_name(item)}"
                )
            parts = item.split(".")
            if len(parts) > 2 or not all(ID_RE.fullmatch(p) for p in parts):
                raise self.error(
                    f"{path}[{i}]", f"bad reference {item!r}: expected CHECK or CHECK.COMPONENT"
                )
            out.append(Requirement.parse(item))
        return out

    def groups(self, v: Any, path: str) -> tuple[tuple[Requirement, ...], ...]:
        """`any = ["a", "b"]` (one group) or `any = [["a", "b"], ["c", "d"]]`."""
        if not isinstance(v, list):
            raise self.error(path, f"expected an array, got {_type_name(v)}")
        if not v:
            raise self.error(path, "empty requirement group")
        if all(isinstance(x, list) for x in v):
            return tuple(tuple(self.refs(g, f"{path}[{i}]")) for i, g in enumerate(v))
        if any(isinstance(x, list) for x in v):
            raise self.error(
                path,
                'mixes check names and groups: write one group ["a", "b"]'
                ' or several [["a", "b"], ["c", "d"]]',
            )
        return (tuple(self.refs(v, path)),)

    def hints(self, v: Any, path: str) -> tuple[Hint, ...]:
        if not isinstance(v, list):
            raise self.error(path, f"expected an array of tables, got {_type_name(v)}")
        out = []
        for i, h in enumerate(v):
            where = f"{path}[{i}]"
            if not isinstance(h, dict):
                raise self.error(where, f"expected a table, got {_type_name(h)}")
            self.keys(h, HINT_KEYS, where)
            text = self.string(h, "text", "", where)
            if not text.strip():
                raise self.error(where, "missing key 'text'")
            kb_raw = h.get("kb", [])
            kb: tuple[str, ...]
            if not isinstance(kb_raw, list):  # a single article may be given bare
                kb_raw = [kb_raw]
                kb = (self._kb(kb_raw[0], f"{where}.kb"),)
            else:
                kb = tuple(self._kb(x, f"{where}.kb[{j}]") for j, x in enumerate(kb_raw))
            when = []
            for j, x in enumerate(self._list(h, "when", where)):
                if not isinstance(x, str):
                    raise self.error(
                        f"{where}.when[{j}]", f"expected a string, got {_type_name(x)}"
                    )
                when.append(x)
            on = []
            for j, x in enumerate(self._list(h, "on", where)):
                if x not in FAILURE_KINDS:
                    raise self.error(
                        f"{where}.on[{j}]",
                        f"unknown failure kind {x!r} (known: {', '.join(FAILURE_KINDS)})",
                    )
                on.append(x)
            docs = tuple(self.strings(h.get("docs", []), f"{where}.docs"))
            out.append(Hint(text.strip(), kb, tuple(when), tuple(on), docs))
        return tuple(out)

    def strings(self, v: Any, path: str) -> list[str]:
        if not isinstance(v, list):
            raise self.error(path, f"expected an array of strings, got {_type_name(v)}")
        for i, x in enumerate(v):
            if not isinstance(x, str) or not x.strip():
                raise self.error(f"{path}[{i}]", f"expected a non-empty string, got {x!r}")
        return [x.strip() for x in v]

    def boolean(self, table: dict[str, Any], key: str, default: bool, where: str) -> bool:
        if key not in table:
            return default
        v = table[key]
        if not isinstance(v, bool):
            raise self.error(f"{where}.{key}", f"expected true or false, got {_type_name(v)} {v!r}")
        return v

    def names(self, raw: dict[str, Any], key: str) -> dict[str, str]:
        """`[vantages]` / `[roles]`: NAME = "what it is", names shaped like ids."""
        v = raw.get(key, {})
        if not isinstance(v, dict):
            raise self.error(key, f"expected a table, got {_type_name(v)}")
        out: dict[str, str] = {}
        for name, text in v.items():
            if not ID_RE.fullmatch(name):
                raise self.error(f"{key}.{name}", f"bad name {name!r}: use lower-case letters,"
                                 " digits, '-' and '_', starting with a letter")  # fmt: skip
            if not isinstance(text, str) or not text.strip():
                raise self.error(f"{key}.{name}", "expected a non-empty string saying what it is")
            out[name] = text.strip()
        return out

    def _list(self, h: dict[str, Any], key: str, where: str) -> list[Any]:
        v = h.get(key, [])
        if not isinstance(v, list):
            raise self.error(f"{where}.{key}", f"expected an array, got {_type_name(v)}")
        return v

    def _kb(self, x: Any, path: str) -> str:
        if isinstance(x, int) and not isinstance(x, bool) and x > 0:
            return str(x)
        if isinstance(x, str) and x.isdigit():
            return x.lstrip("0") or "0"
        raise self.error(path, f"expected a KB article number, got {x!r}")


# -- --set CHECK.PARAM=VALUE ----------------------------------------------------------------


def apply_overrides(profile: Profile, sets: list[str]) -> Profile:
    """A copy of `profile` with each `--set` applied (later ones win), fully validated."""
    registry = load_all()
    checks = dict(profile.checks)
    for text in sets:
        f = _File(f"--set {text}")
        key, eq, value = text.partition("=")
        cid, dot, param = key.strip().partition(".")
        if not eq or not dot or not cid or not param:
            raise InputError(f"--set {text!r}: expected CHECK.PARAM=VALUE, e.g. x400.port=10102")
        decl = checks.get(cid)
        if decl is None:
            known = ", ".join(checks) or "none"
            raise f.error("", f"unknown check {cid!r} in profile {profile.name!r} (known: {known})")
        spec = registry[decl.probe]
        fields = param_fields(spec.params_type)
        value = value.strip()
        if param == "port":
            if not value.isdigit():
                raise f.error("", f"port: expected an integer in 1-65535, got {value!r}")
            port = f.port(int(value), "port")
            checks[cid] = dataclasses.replace(decl, port=port, port_declared=True)
            continue
        if param == "enabled":
            if value.lower() not in ("true", "false"):
                raise f.error("", f"enabled: expected true or false, got {value!r}")
            checks[cid] = dataclasses.replace(decl, enabled=value.lower() == "true")
            continue
        if param not in fields:
            known = ", ".join(sorted({"port", "enabled", *fields}))
            raise f.error(
                "",
                f"check {cid!r} (probe {decl.probe}) has no parameter {param!r} (known: {known})",
            )
        raw: Any = value
        _, optional = _unwrap_optional(fields[param])
        if optional and value.lower() in ("", "none", "null"):
            raw = None
        coerce(raw, fields[param], f"--set {text}")
        if param == "tls" and raw != "none" and not spec.tls_capable:
            raise f.error("", f"probe {decl.probe!r} does not speak TLS")
        values = {fl.name: getattr(decl.params, fl.name) for fl in dataclasses.fields(decl.params)}
        values[param] = raw
        try:
            params = make_params(spec.params_type, values, f"--set {text}")
        except InputError as exc:
            # make_params names the parameter again after `where`; keep the line short.
            raise InputError(str(exc).replace(f"--set {text}.{param}", f"--set {text}")) from None
        port = decl.port if decl.port_declared else spec.port_for(params, None)
        checks[cid] = dataclasses.replace(decl, params=params, port=port)
        for sid, s in profile.scenarios.items():  # e.g. components=ds while a scenario needs is
            validate_scenario(s, checks, registry, f, f"scenarios.{sid}")
    return dataclasses.replace(profile, checks=checks, overrides=(*profile.overrides, *sets))
