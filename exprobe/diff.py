"""What changed between two JSON reports: verdicts, check statuses, addresses, EPM ports.

`diff_reports(before, after)` compares two `--format json` reports (as dicts) and returns
`Changes`: scenario verdicts that flipped, checks whose status or port state changed,
targets and addresses that appeared or vanished, and endpoint-mapper ports that moved
(derived checks matched by parent check and `facts.component`, their ports compared),
and, for checks traced in both (`--trace`), a break that moved to another hop.

What counts as a *regression* (exit 1): a scenario that passed and now fails; a target
that resolved and now does not; and, for targets without scenario verdicts (ad hoc
checks), a check that succeeded and now fails, or an endpoint whose checks succeeded
and now fail.  With scenarios, a check that got worse while every scenario still
passes is listed but is not a regression: the verdict is what the user relies on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exprobe.errors import InputError
from exprobe.hops import break_where
from exprobe.result import SCHEMA_VERSION

MAX_REPORT_BYTES = 1 << 30
FORMATS = ("table", "json", "markdown")

# Sort order of change directions: regressions first, then fixes, then the rest.
DIRECTIONS = ("regression", "worse", "fix", "better", "changed", "moved", "appeared", "vanished")


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between the reports."""

    what: str  # "scenario" | "check" | "endpoint" | "hop" | "target" | "address"
    direction: str  # one of DIRECTIONS
    target: str
    address: str | None
    item: str  # scenario id, check id, "parent component", or ""
    before: str | None
    after: str | None
    detail: str = ""
    regression: bool = False

    @property
    def fix(self) -> bool:
        return self.direction == "fix"

    def to_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "direction": self.direction,
            "regression": self.regression,
            "target": self.target,
            "address": self.address,
            "item": self.item,
            "before": self.before,
            "after": self.after,
            "detail": self.detail,
        }


@dataclass(slots=True)
class Changes:
    """Every change, regressions first."""

    changes: list[Change] = field(default_factory=list)
    before: dict[str, Any] = field(default_factory=dict)  # started_at, vantage, profile
    after: dict[str, Any] = field(default_factory=dict)

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regression]

    @property
    def fixes(self) -> list[Change]:
        return [c for c in self.changes if c.direction == "fix"]

    def summary(self) -> dict[str, int]:
        return {
            "changes": len(self.changes),
            "regressions": len(self.regressions),
            "fixes": len(self.fixes),
            "other": len(self.changes) - len(self.regressions) - len(self.fixes),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "before": self.before,
            "after": self.after,
            "summary": self.summary(),
            "changes": [c.to_dict() for c in self.changes],
        }


# -- loading ---------------------------------------------------------------------------


def load_report(path: str) -> dict[str, Any]:
    """A `--format json` report from `path`, checked for shape and schema version."""
    p = Path(path)
    try:
        if p.is_dir():
            raise InputError(f"{path}: is a directory")
        if p.stat().st_size > MAX_REPORT_BYTES:
            raise InputError(f"{path}: larger than {MAX_REPORT_BYTES >> 30} GiB")
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        hint = ""
        if raw.lstrip().startswith(b'{"type":'):
            hint = "; it looks like JSON Lines: diff needs --format json reports"
        raise InputError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}){hint}"
        ) from None
    check_report(data, path)
    return data  # type: ignore[no-any-return]


def check_report(data: Any, where: str) -> None:
    """Raise `InputError` naming the key when `data` is not a report this code can diff."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: not an exprobe JSON report (expected an object)")
    version = data.get("schema_version")
    if version is None:
        raise InputError(f"{where}: not an exprobe JSON report (no schema_version)")
    major = SCHEMA_VERSION.split(".")[0]
    if not isinstance(version, str) or version.split(".")[0] != major:
        raise InputError(
            f"{where}: schema_version {version!r} is not supported (this exprobe reads {major}.x)"
        )
    targets = data.get("targets")
    if not isinstance(targets, list):
        raise InputError(f"{where}: targets: expected a list")
    for i, t in enumerate(targets):
        key = f"{where}: targets[{i}]"
        if not isinstance(t, dict):
            raise InputError(f"{key}: expected an object")
        _need(t, "target", str, key)
        _need(t, "addresses", list, key)
        _need(t, "results", list, key)
        for j, r in enumerate(t["results"]):
            rk = f"{key}.results[{j}]"
            if not isinstance(r, dict):
                raise InputError(f"{rk}: expected an object")
            for name, tp in (("id", str), ("status", str), ("port_state", str), ("port", int)):
                _need(r, name, tp, rk)
        for j, s in enumerate(t.get("scenarios") or []):
            sk = f"{key}.scenarios[{j}]"
            if not isinstance(s, dict):
                raise InputError(f"{sk}: expected an object")
            for name in ("id", "verdict"):
                _need(s, name, str, sk)


def _need(obj: dict[str, Any], key: str, tp: type, where: str) -> None:
    if key not in obj:
        raise InputError(f"{where}.{key}: missing")
    value = obj[key]
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise InputError(f"{where}.{key}: expected {tp.__name__}, got {type(value).__name__}")


# -- comparing ---------------------------------------------------------------------------


def _info(report: dict[str, Any]) -> dict[str, Any]:
    profile = report.get("profile") or {}
    return {
        "started_at": report.get("started_at"),
        "vantage": (report.get("vantage") or {}).get("hostname"),
        "profile": profile.get("name") if isinstance(profile, dict) else None,
    }


def _state(r: dict[str, Any]) -> str:
    return f"{r['status']}/{r['port_state']}"


def _ok(r: dict[str, Any]) -> bool:
    return bool(r["status"] == "success")


_TRAILING_PORT = re.compile(r":\d+$")


def _component(r: dict[str, Any]) -> str:
    facts = r.get("facts")
    if isinstance(facts, dict) and isinstance(facts.get("component"), str):
        return str(facts["component"])
    return _TRAILING_PORT.sub("", str(r["id"]))


def diff_reports(before: dict[str, Any], after: dict[str, Any]) -> Changes:
    """Every change from `before` to `after` (both validated report dicts)."""
    out = Changes(before=_info(before), after=_info(after))
    b_targets = {t["target"]: t for t in before["targets"]}
    a_targets = {t["target"]: t for t in after["targets"]}
    items: list[Change] = []
    for name in b_targets.keys() - a_targets.keys():
        items.append(Change("target", "vanished", name, None, "", "present", None))
    for name in a_targets.keys() - b_targets.keys():
        items.append(Change("target", "appeared", name, None, "", None, "present"))
    for name in [n for n in a_targets if n in b_targets]:
        items.extend(_diff_target(b_targets[name], a_targets[name]))
    order = {d: i for i, d in enumerate(DIRECTIONS)}
    kinds = {"scenario": 0, "target": 1, "endpoint": 2, "check": 3, "hop": 4, "address": 5}
    items.sort(
        key=lambda c: (not c.regression, order[c.direction], kinds[c.what], c.target,
                       c.address or "", c.item)
    )
    out.changes = items
    return out


def _diff_target(b: dict[str, Any], a: dict[str, Any]) -> list[Change]:
    name = a["target"]
    out: list[Change] = []
    b_err, a_err = b.get("error"), a.get("error")
    if b_err != a_err:
        if a_err and not b_err:
            out.append(Change("target", "regression", name, None, "", "resolved", "error",
                              str(a_err), regression=True))
        elif b_err and not a_err:
            out.append(Change("target", "fix", name, None, "", "error", "resolved", str(b_err)))
        else:
            out.append(Change("target", "changed", name, None, "", str(b_err), str(a_err)))
    b_addrs, a_addrs = set(b["addresses"]), set(a["addresses"])
    for addr in sorted(b_addrs - a_addrs):
        out.append(Change("address", "vanished", name, addr, "", "present", None))
    for addr in sorted(a_addrs - b_addrs):
        out.append(Change("address", "appeared", name, addr, "", None, "present"))

    b_verdicts = {(s.get("address"), s["id"]): s for s in b.get("scenarios") or []}
    a_verdicts = {(s.get("address"), s["id"]): s for s in a.get("scenarios") or []}
    with_scenarios = {addr for addr, _ in b_verdicts} | {addr for addr, _ in a_verdicts}
    for key in sorted(b_verdicts.keys() & a_verdicts.keys(), key=_sort_key):
        bv, av = b_verdicts[key], a_verdicts[key]
        if bv["verdict"] == av["verdict"]:
            continue
        regress = bv["verdict"] == "pass" and av["verdict"] in ("fail", "unknown")
        direction = "regression" if regress else "fix" if av["verdict"] == "pass" else "changed"
        out.append(
            Change(
                "scenario",
                direction,
                name,
                key[0],
                key[1],
                bv["verdict"],
                av["verdict"],
                str(av.get("reason", "")) if regress else _via(av),
                regression=regress,
            )
        )
    shared = (b_addrs & a_addrs) | ({None} if b_err and a_err else set())
    for key in sorted(a_verdicts.keys() - b_verdicts.keys(), key=_sort_key):
        if key[0] in shared:
            av = a_verdicts[key]
            out.append(Change("scenario", "appeared", name, key[0], key[1], None, av["verdict"],
                              str(av.get("reason", ""))))
    for key in sorted(b_verdicts.keys() - a_verdicts.keys(), key=_sort_key):
        if key[0] in shared:
            out.append(Change("scenario", "vanished", name, key[0], key[1],
                              b_verdicts[key]["verdict"], None))

    b_res = [r for r in b["results"] if r.get("address") in shared]
    a_res = [r for r in a["results"] if r.get("address") in shared]
    moves, b_res, a_res = _endpoint_moves(name, b_res, a_res, with_scenarios)
    out.extend(moves)
    out.extend(_diff_checks(name, b_res, a_res, with_scenarios))
    return out


def _sort_key(key: tuple[str | None, str]) -> tuple[str, str]:
    return (key[0] or "", key[1])


def _via(v: dict[str, Any]) -> str:
    return f"via {v['via']}" if v.get("via") else str(v.get("reason", ""))


def _endpoint_moves(
    target: str,
    b_res: list[dict[str, Any]],
    a_res: list[dict[str, Any]],
    with_scenarios: set[str | None],
) -> tuple[list[Change], list[dict[str, Any]], list[dict[str, Any]]]:
    """Derived checks grouped by (address, parent, component): ports that moved.

    Results taken into a move are removed from the per-check comparison (their ids
    carry the port, so they would show up as one vanished and one appeared check).
    """

    def groups(rs: list[dict[str, Any]]) -> dict[tuple[Any, str, str], list[dict[str, Any]]]:
        g: dict[tuple[Any, str, str], list[dict[str, Any]]] = {}
        for r in rs:
            if r.get("parent"):
                g.setdefault((r.get("address"), str(r["parent"]), _component(r)), []).append(r)
        return g

    bg, ag = groups(b_res), groups(a_res)
    moved_ids: set[int] = set()
    out: list[Change] = []
    for key in sorted(bg.keys() & ag.keys(), key=lambda k: (k[0] or "", k[1], k[2])):
        b_ports = sorted({int(r["port"]) for r in bg[key]})
        a_ports = sorted({int(r["port"]) for r in ag[key]})
        if b_ports == a_ports:
            continue
        moved_ids.update(id(r) for r in bg[key] + ag[key])
        b_ok = all(_ok(r) for r in bg[key])
        a_ok = all(_ok(r) for r in ag[key])
        worse = b_ok and not a_ok
        direction = "worse" if worse else "better" if (a_ok and not b_ok) else "moved"
        regress = worse and key[0] not in with_scenarios
        if regress:
            direction = "regression"
        out.append(
            Change(
                "endpoint",
                direction,
                target,
                key[0],
                f"{key[1]} {key[2]}",
                _ports_text(bg[key], b_ports),
                _ports_text(ag[key], a_ports),
                "registered port changed (dynamic unless pinned)",
                regression=regress,
            )
        )
    keep_b = [r for r in b_res if id(r) not in moved_ids]
    keep_a = [r for r in a_res if id(r) not in moved_ids]
    return out, keep_b, keep_a


def _ports_text(rs: list[dict[str, Any]], ports: list[int]) -> str:
    by_port = {int(r["port"]): r for r in rs}
    return ", ".join(f"{p} {_state(by_port[p])}" for p in ports)


def _diff_checks(
    target: str,
    b_res: list[dict[str, Any]],
    a_res: list[dict[str, Any]],
    with_scenarios: set[str | None],
) -> list[Change]:
    bm = {(r.get("address"), r["id"]): r for r in b_res}
    am = {(r.get("address"), r["id"]): r for r in a_res}
    out: list[Change] = []
    for key in sorted(bm.keys() & am.keys(), key=_sort_key):
        br, ar = bm[key], am[key]
        b_brk, a_brk = _break_text(br), _break_text(ar)
        if b_brk is not None and a_brk is not None and b_brk != a_brk:
            brk = (ar.get("trace") or {}).get("break") or {}
            out.append(Change("hop", "moved", target, key[0], _check_item(ar), b_brk, a_brk,
                              str(brk.get("summary") or "no break now")))  # fmt: skip
        if _state(br) == _state(ar):
            continue
        item = _check_item(ar)
        if _ok(br) and not _ok(ar):
            regress = key[0] not in with_scenarios
            direction = "regression" if regress else "worse"
            detail = _failure_text(ar)
        elif _ok(ar) and not _ok(br):
            regress, direction, detail = False, "fix", str(ar.get("message") or "")
        else:
            regress, direction, detail = False, "changed", _failure_text(ar)
        out.append(
            Change("check", direction, target, key[0], item, _state(br), _state(ar), detail,
                   regression=regress)
        )
    for key in sorted(am.keys() - bm.keys(), key=_sort_key):
        ar = am[key]
        out.append(Change("check", "appeared", target, key[0], _check_item(ar), None,
                          _state(ar), _failure_text(ar) if not _ok(ar) else ""))
    for key in sorted(bm.keys() - am.keys(), key=_sort_key):
        br = bm[key]
        out.append(Change("check", "vanished", target, key[0], _check_item(br), _state(br),
                          None))
    return out


def _break_text(r: dict[str, Any]) -> str | None:
    """Where a traced check's path breaks ("drop at hop 2 (10.1.0.1)", "no break"); None
    when the check was not traced (then nothing is compared)."""
    trace = r.get("trace")
    if not isinstance(trace, dict) or "break" not in trace:
        return None
    brk = trace["break"]
    return break_where(brk) if isinstance(brk, dict) else "no break"


def _check_item(r: dict[str, Any]) -> str:
    cid = str(r["id"])
    port = str(r["port"])
    return cid if port in cid.split(":") else f"{cid} ({port})"


def _failure_text(r: dict[str, Any]) -> str:
    step = r.get("failed_step")
    msg = str(r.get("message") or "")
    return f"{step}: {msg}" if step else msg


# -- rendering -----------------------------------------------------------------------------

_STYLE = {
    "regression": "bold red",
    "worse": "red",
    "fix": "bold green",
    "better": "green",
    "changed": "yellow",
    "moved": "yellow",
    "appeared": "cyan",
    "vanished": "magenta",
}


def _arrow(c: Change) -> str:
    return f"{c.before or '-'} → {c.after or '-'}"


def headline(changes: Changes) -> str:
    s = changes.summary()
    if not s["changes"]:
        return "no changes"
    return (
        f"{s['changes']} changes: {s['regressions']} regressions, {s['fixes']} fixes, "
        f"{s['other']} other"
    )


def render_diff(changes: Changes, fmt: str) -> Any:
    """`table`: a rich renderable; `json` and `markdown`: a string."""
    if fmt == "json":
        return json.dumps(changes.to_dict(), ensure_ascii=False, indent=2) + "\n"
    if fmt == "markdown":
        return _markdown(changes)
    if fmt != "table":
        raise InputError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from exprobe.report.safe import printable

    s = changes.summary()
    head = Text(headline(changes), style="bold red" if s["regressions"] else "bold")
    if not changes.changes:
        return head
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    for col in ("change", "what", "target", "address", "item", "before → after", "detail"):
        table.add_column(col, no_wrap=col not in ("detail", "item"), overflow="fold")
    for c in changes.changes:
        style = _STYLE[c.direction]
        table.add_row(
            Text(c.direction.upper() if c.regression or c.fix else c.direction, style=style),
            c.what,
            Text(printable(c.target, 40)),
            Text(c.address or "-"),
            Text(printable(c.item, 60)),
            Text(printable(_arrow(c), 80), style=style),
            Text(printable(c.detail, 300)),
        )
    return Group(head, table)


def _md(text: object) -> str:
    from exprobe.report.safe import printable

    s = printable(text, 300)
    for ch in ("\\", "|", "`", "*", "_", "<", ">", "[", "]"):
        s = s.replace(ch, "\\" + ch)
    return s


def _markdown(changes: Changes) -> str:
    b, a = changes.before, changes.after
    lines = [
        "### exprobe diff",
        "",
        f"Before: {_md(b.get('started_at') or '?')} ({_md(b.get('vantage') or '?')}), "
        f"after: {_md(a.get('started_at') or '?')} ({_md(a.get('vantage') or '?')})",
        "",
        f"**{headline(changes)}**",
        "",
    ]
    if changes.changes:
        lines += [
            "| change | what | target | address | item | before → after | detail |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in changes.changes:
            word = f"**{c.direction.upper()}**" if c.regression or c.fix else c.direction
            lines.append(
                f"| {word} | {c.what} | {_md(c.target)} | {_md(c.address or '-')} | "
                f"{_md(c.item)} | {_md(_arrow(c))} | {_md(c.detail)} |"
            )
    return "\n".join(lines) + "\n"
