"""Expectations: what must hold from this vantage point, judged against a run's results.

An expectations file (TOML, `schema_version = 1`) lists `[[expect]]` entries.  Each one
selects targets (`target = "10.0.0.5"`, a host name, a CIDR block or `"*"`, and/or
`labels = { zone = "dmz" }`) and states scenarios that must pass or must fail and ports
that must be `open`, `closed`, `filtered` or `not_open` (closed or filtered)::

    schema_version = 1
    title = "CHG-1234: DMZ to Exchange"

    [[expect]]
    name = "dmz-no-mapi"
    why = "from the DMZ, MAPI must not work"
    labels = { zone = "dmz" }
    fail = ["mapi-client"]
    pass = ["smtp-inbound"]
    not_open = [135]

The file is validated completely at load time: an unknown key, a wrong type, a port
outside 1-65535 or a port/scenario named twice is one `InputError` naming the file and
key.  Port evidence comes from every check that ran on the port at that address (any
probe: a TLS failure on 993 still proves 993 open).  So that a port expectation can
always be judged, `add_port_checks` adds a plain TCP connect check for each expectation
port that no planned check covers; a port still without a result (e.g. a `host:port`
target that names its own port) is violated as "not checked".  A selector that matches
no target is violated too: a policy that checks nothing must not pass silently.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exprobe.errors import InputError
from exprobe.result import CheckResult, RunReport, TargetReport
from exprobe.status import PortState

SCHEMA_VERSION = 1
MAX_FILE_BYTES = 1 << 20
PORT_KINDS = ("open", "closed", "filtered", "not_open")
SCENARIO_KINDS = ("pass", "fail")
_TOP_KEYS = {"schema_version", "title", "expect"}
_ENTRY_KEYS = {"name", "why", "target", "labels", *SCENARIO_KINDS, *PORT_KINDS}
_LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_SCENARIO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Expectation:
    """One `[[expect]]` entry."""

    index: int
    name: str
    where: str  # "policy.toml: expect[0]" for messages and the report
    target: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    why: str | None = None
    scenarios: tuple[tuple[str, str], ...] = ()  # (kind, scenario id)
    ports: tuple[tuple[str, int], ...] = ()  # (kind, port)

    def selector_text(self) -> str:
        parts = []
        if self.target is not None:
            parts.append(f"target={self.target}")
        if self.labels:
            parts.append("labels=" + ",".join(f"{k}={v}" for k, v in self.labels))
        return " ".join(parts)


@dataclass(slots=True)
class Expectations:
    """A loaded expectations file; `apply` judges it against a finished run."""

    path: str
    items: list[Expectation]
    title: str | None = None
    port_offset: int = 0
    added_checks: list[str] = field(default_factory=list)

    def ports(self) -> list[int]:
        return sorted({p for e in self.items for _, p in e.ports})

    def scenario_ids(self) -> list[str]:
        return sorted({s for e in self.items for _, s in e.scenarios})

    def check_scenarios(self, has_profile: bool, selected: list[str] | None) -> None:
        """Before probing: scenario expectations need a profile that selects them.

        `selected` are the scenario ids the run evaluates (None: not known here).
        """
        for e in self.items:
            for kind, sid in e.scenarios:
                if not has_profile:
                    raise InputError(
                        f"{e.where}.{kind}: scenario {sid!r} needs a profile (-p/--profile)"
                    )
                if selected is not None and sid not in selected:
                    known = ", ".join(selected) or "none"
                    raise InputError(
                        f"{e.where}.{kind}: scenario {sid!r} is not evaluated by this run "
                        f"(selected: {known})"
                    )

    def add_port_checks(self, defs: list[Any], port_offset: int = 0) -> list[Any]:
        """`defs` plus a TCP connect check for every expectation port no def covers.

        The added checks run on every target of the run (a connect is cheap, and the
        plan stays one list); their ids are the ad hoc ones (`tcp:135`).
        """
        from exprobe.engine.plan import CheckDef, adhoc_id
        from exprobe.probes import get as get_probe

        self.port_offset = port_offset
        covered: set[int] = set()
        for d in defs:
            try:
                covered.add(d.resolved_port())
            except InputError:
                continue
        ids = {d.id for d in defs}
        out = list(defs)
        tcp = get_probe("tcp")
        for port in self.ports():
            if port in covered:
                continue
            cid = adhoc_id("tcp", port, "none")
            if cid in ids:
                cid = f"expect-{cid}"
            out.append(CheckDef(cid, "tcp", tcp.params_type(), port))
            self.added_checks.append(cid)
        return out

    def apply(self, report: RunReport) -> bool:
        """Judge every expectation; set `report.expectations`; True when all are met."""
        records: list[dict[str, Any]] = []
        for e in self.items:
            records.extend(judge(e, report, self.port_offset))
        report.expectations = records
        return all(r["met"] for r in records)


# -- loading and validation ------------------------------------------------------------


def load_expectations(path: str) -> Expectations:
    """Read and validate an expectations file; any problem is one `InputError` line."""
    p = Path(path)
    try:
        if p.is_dir():
            raise InputError(f"{path}: is a directory")
        if p.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
    return parse_expectations(data, path)


def parse_expectations(data: dict[str, Any], path: str) -> Expectations:
    """Validate already-parsed TOML data (`path` names the file in messages)."""
    _unknown_keys(data, _TOP_KEYS, path)
    if "schema_version" not in data:
        raise InputError(f"{path}: schema_version: missing (this exprobe reads 1)")
    version = data["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"{path}: schema_version: expected an integer, got {version!r}")
    if version != SCHEMA_VERSION:
        raise InputError(
            f"{path}: schema_version: {version} is not supported (this exprobe reads 1)"
        )
    title = data.get("title")
    if title is not None and not isinstance(title, str):
        raise InputError(f"{path}: title: expected a string, got {title!r}")
    entries = data.get("expect")
    if entries is None:
        raise InputError(f"{path}: expect: missing (add at least one [[expect]] table)")
    if not isinstance(entries, list) or not all(isinstance(x, dict) for x in entries):
        raise InputError(f"{path}: expect: expected an array of tables ([[expect]])")
    if not entries:
        raise InputError(f"{path}: expect: empty (add at least one [[expect]] table)")
    items: list[Expectation] = []
    names: dict[str, str] = {}
    for i, entry in enumerate(entries):
        item = _parse_entry(entry, i, f"{path}: expect[{i}]")
        if item.name in names:
            raise InputError(f"{item.where}.name: {item.name!r} already names {names[item.name]}")
        names[item.name] = f"expect[{i}]"
        items.append(item)
    return Expectations(path, items, title)


def _unknown_keys(table: dict[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            sep = "." if where.endswith("]") else ": "
            raise InputError(
                f"{where}{sep}{key}: unknown key (known: {', '.join(sorted(known))})"
            )


def _parse_entry(entry: dict[str, Any], index: int, where: str) -> Expectation:
    _unknown_keys(entry, _ENTRY_KEYS, where)
    name = entry.get("name", f"expect[{index}]")
    if "name" in entry and (not isinstance(name, str) or not _NAME_RE.match(name)):
        raise InputError(
            f"{where}.name: expected a short name (letters, digits, _.:-), got {name!r}"
        )
    why = entry.get("why")
    if why is not None and (not isinstance(why, str) or len(why) > 500):
        raise InputError(f"{where}.why: expected a string of at most 500 characters")

    target = entry.get("target")
    if target is not None:
        target = _parse_selector_target(target, f"{where}.target")
    labels: list[tuple[str, str]] = []
    if "labels" in entry:
        raw = entry["labels"]
        if not isinstance(raw, dict) or not raw:
            raise InputError(
                f"{where}.labels: expected a non-empty table, e.g. {{ zone = \"dmz\" }}"
            )
        for k, v in raw.items():
            if not _LABEL_RE.match(k):
                raise InputError(f"{where}.labels.{k}: not a valid label name")
            if not isinstance(v, str) or not v:
                raise InputError(f"{where}.labels.{k}: expected a non-empty string, got {v!r}")
            labels.append((k, v))
    if target is None and not labels:
        raise InputError(
            f"{where}: needs target = \"...\" or labels = {{ ... }} (or target = \"*\")"
        )

    scenarios: list[tuple[str, str]] = []
    seen_s: dict[str, str] = {}
    for kind in SCENARIO_KINDS:
        for j, sid in enumerate(_list(entry, kind, where)):
            key = f"{where}.{kind}[{j}]"
            if not isinstance(sid, str) or not _SCENARIO_RE.match(sid):
                raise InputError(f"{key}: expected a scenario id, got {sid!r}")
            if sid in seen_s:
                raise InputError(f"{key}: scenario {sid!r} is already listed in {seen_s[sid]}")
            seen_s[sid] = kind
            scenarios.append((kind, sid))
    ports: list[tuple[str, int]] = []
    seen_p: dict[int, str] = {}
    for kind in PORT_KINDS:
        for j, port in enumerate(_list(entry, kind, where)):
            key = f"{where}.{kind}[{j}]"
            if not isinstance(port, int) or isinstance(port, bool):
                raise InputError(f"{key}: expected a port number, got {port!r}")
            if not 1 <= port <= 65535:
                raise InputError(f"{key}: {port} is not a port (1-65535)")
            if port in seen_p:
                raise InputError(f"{key}: port {port} is already listed in {seen_p[port]}")
            seen_p[port] = kind
            ports.append((kind, port))
    if not scenarios and not ports:
        kinds = ", ".join((*SCENARIO_KINDS, *PORT_KINDS))
        raise InputError(f"{where}: expects nothing (give at least one of {kinds})")
    return Expectation(
        index=index,
        name=name,
        where=where,
        target=target,
        labels=tuple(labels),
        why=why,
        scenarios=tuple(scenarios),
        ports=tuple(ports),
    )


def _list(entry: dict[str, Any], key: str, where: str) -> list[Any]:
    if key not in entry:
        return []
    value = entry[key]
    if not isinstance(value, list):
        raise InputError(f"{where}.{key}: expected a list, got {value!r}")
    if not value:
        raise InputError(f"{where}.{key}: empty list (leave the key out instead)")
    return value


def _parse_selector_target(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: expected a host name, address, CIDR block or \"*\"")
    if value == "*":
        return value
    from exprobe.targets import parse_target

    try:
        parse_target(value, where=where)
    except InputError as exc:
        raise InputError(str(exc)) from None
    return value.strip()


# -- judging -----------------------------------------------------------------------------


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def select(e: Expectation, report: RunReport) -> list[tuple[TargetReport, list[str | None]]]:
    """The targets an expectation selects, each with the addresses to judge."""
    out: list[tuple[TargetReport, list[str | None]]] = []
    for t in report.targets:
        if e.labels and any(t.labels.get(k) != v for k, v in e.labels):
            continue
        addrs: list[str | None] = list(t.addresses) or [None]
        if e.target is not None and e.target != "*":
            addrs = _match_target(e.target, t)
        if addrs:
            out.append((t, addrs))
    return out


def _match_target(sel: str, t: TargetReport) -> list[str | None]:
    all_addrs: list[str | None] = list(t.addresses) or [None]
    if sel.lower() == t.target.lower():
        return all_addrs
    ip = _ip(sel)
    if ip is not None:
        return [a for a in t.addresses if _ip(a) == ip]
    if "/" in sel:
        try:
            net = ipaddress.ip_network(sel, strict=False)
        except ValueError:
            return []
        return [a for a in t.addresses if (x := _ip(a)) is not None and x in net]
    return []


def judge(e: Expectation, report: RunReport, port_offset: int = 0) -> list[dict[str, Any]]:
    """One record per (selected target, address, scenario or port) of `e`."""
    base = {"expectation": e.name, "source": e.where}
    if e.why:
        base["why"] = e.why
    selected = select(e, report)
    if not selected:
        return [
            {
                **base,
                "kind": "selector",
                "target": e.selector_text(),
                "address": None,
                "expected": "a matching target",
                "observed": "no match",
                "met": False,
                "evidence": f"no target of this run matches {e.selector_text()}",
                "checks": [],
            }
        ]
    records: list[dict[str, Any]] = []
    for t, addrs in selected:
        for addr in addrs:
            for kind, sid in e.scenarios:
                records.append({**base, **_judge_scenario(t, addr, kind, sid)})
            for kind, port in e.ports:
                records.append({**base, **_judge_port(t, addr, kind, port, port_offset)})
    return records


def _judge_scenario(t: TargetReport, addr: str | None, kind: str, sid: str) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "kind": kind,
        "target": t.target,
        "address": addr,
        "scenario": sid,
        "expected": kind,
    }
    verdicts = [v for v in t.scenarios if v.id == sid and v.address == addr]
    if not verdicts:
        where = addr or t.target
        why = f"; {t.error}" if t.error else ""
        return {
            **rec,
            "observed": "not evaluated",
            "met": False,
            "evidence": f"no verdict for scenario {sid} at {where} in this run{why}",
            "checks": [],
        }
    v = verdicts[0]
    evidence = f"{v.verdict}: {v.reason}"
    if v.via:
        evidence += f" (via {v.via})"
    return {
        **rec,
        "observed": v.verdict,
        "met": v.verdict == kind,
        "evidence": evidence,
        "checks": list(v.checks),
    }


_STATE_ORDER = (PortState.OPEN, PortState.CLOSED, PortState.FILTERED)


def port_evidence(
    results: list[CheckResult], addr: str | None, port: int
) -> tuple[PortState | None, list[CheckResult]]:
    """The observed state of `port` at `addr` from every check that ran on it.

    Any check that connected proves the port open; otherwise a RST beats silence (the
    checks disagreeing would be odd, and "closed" is the more specific answer).
    None: no check ran on that port.
    """
    rs = [r for r in results if r.address == addr and r.port == port]
    if not rs:
        return None, []
    states = {r.port_state for r in rs}
    for s in _STATE_ORDER:
        if s in states:
            return s, rs
    return PortState.UNKNOWN, rs


def _describe(r: CheckResult) -> str:
    text = f"{r.id} {r.status.value}/{r.port_state.value}"
    if r.message and not r.ok:
        text += f" ({r.message})"
    return text


def _judge_port(
    t: TargetReport, addr: str | None, kind: str, port: int, offset: int
) -> dict[str, Any]:
    actual = port + offset
    rec: dict[str, Any] = {
        "kind": kind,
        "target": t.target,
        "address": addr,
        "port": port,
        "expected": "closed or filtered" if kind == "not_open" else kind,
    }
    state, rs = port_evidence(t.results, addr, actual)
    where = f"{addr or t.target}:{actual}"
    if state is None:
        return {
            **rec,
            "observed": "not checked",
            "met": False,
            "evidence": f"not checked: no check ran on {where}",
            "checks": [],
        }
    if state is PortState.UNKNOWN:
        met = False
    elif kind == "not_open":
        met = state in (PortState.CLOSED, PortState.FILTERED)
    else:
        met = state.value == kind
    evidence = f"{where} {state.value}: " + "; ".join(_describe(r) for r in rs[:4])
    if len(rs) > 4:
        evidence += f"; and {len(rs) - 4} more"
    return {
        **rec,
        "observed": state.value,
        "met": met,
        "evidence": evidence,
        "checks": [r.id for r in rs],
    }


# -- human output --------------------------------------------------------------------------


def expected_text(rec: dict[str, Any]) -> str:
    if "scenario" in rec:
        return f"{rec['scenario']} {'passes' if rec['kind'] == 'pass' else 'fails'}"
    if "port" in rec:
        return f"{rec['port']} {rec['expected']}"
    return str(rec.get("expected", ""))


def expectations_table(records: list[dict[str, Any]]) -> Any:
    """A rich table of expectation records (network text shown literally)."""
    from rich.table import Table
    from rich.text import Text

    from exprobe.report.safe import printable

    table = Table(show_edge=False, header_style="bold", pad_edge=False, title_justify="left")
    for col in ("expectation", "target", "address", "expected", "observed", "", "evidence"):
        table.add_column(col, no_wrap=col not in ("evidence", "expectation"), overflow="fold")
    for r in sorted(records, key=lambda r: r["met"]):
        table.add_row(
            Text(printable(r["expectation"], 40)),
            Text(printable(r["target"], 40)),
            Text(r["address"] or "-"),
            Text(printable(expected_text(r), 60)),
            Text(printable(r["observed"], 40)),
            Text("MET", style="bold green") if r["met"] else Text("VIOLATED", style="bold red"),
            Text(printable(r["evidence"], 400), style="" if r["met"] else "red"),
        )
    met = sum(1 for r in records if r["met"])
    violated = len(records) - met
    from rich.console import Group

    summary = Text(
        f"expectations: {met} met, {violated} violated",
        style="bold red" if violated else "bold green",
    )
    return Group(table, summary)
