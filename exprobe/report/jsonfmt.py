"""JSON (whole report) and JSON Lines (one object per finished check, streamed).

Both are written with large runs in mind (100,000 checks): JSON Lines through one
reusable C encoder, flushed once per event-loop pass rather than once per line; the
whole report one target at a time, never as one tree of dicts for the whole run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import IO, Any

from exprobe.report.output import write_stdout
from exprobe.result import CheckResult, RunReport


def _make_compact() -> Callable[[Any], str]:
    """`json.dumps(o, ensure_ascii=False, default=str)`, with the C encoder made once
    rather than once per call (no cycle check: results hold no cycles)."""
    c_make = getattr(json.encoder, "c_make_encoder", None)
    if c_make is None:  # pragma: no cover - CPython always has it
        return json.JSONEncoder(ensure_ascii=False, default=str).encode
    enc = c_make(None, str, json.encoder.encode_basestring, None, ": ", ", ", False, False, True)

    def compact(o: Any) -> str:
        return "".join(enc(o, 0))

    return compact


_compact = _make_compact()
_CHECK_PREFIX = '{"type": "check", '


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2, default=str)


# -- the whole report --------------------------------------------------------------------
#
# `json.dumps(indent=2)` runs the pure-Python encoder (the C one only does compact
# output) and builds one chunk per token: for 100,000 results that is seconds and
# hundreds of MB.  `_pretty` writes exactly the same text (same separators, key
# conversions, `default=str`, NaN handling), appending bigger pieces, and `render_json`
# joins each target's text as soon as it is done.

_encode_str: Callable[[str], str] = json.encoder.encode_basestring
_float_repr = float.__repr__
_int_repr = int.__repr__


def _float(o: float) -> str:
    if o != o:
        return "NaN"
    if o == float("inf"):
        return "Infinity"
    if o == -float("inf"):
        return "-Infinity"
    return _float_repr(o)


def _key(k: Any) -> str:
    if isinstance(k, str):
        return _encode_str(k)
    if isinstance(k, float):
        return _encode_str(_float(k))
    if k is True:
        return '"true"'
    if k is False:
        return '"false"'
    if k is None:
        return '"null"'
    if isinstance(k, int):
        return _encode_str(_int_repr(k))
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")


def _pretty(o: Any, level: int, out: list[str]) -> None:
    """Append `o` as `json.dumps(o, indent=2, ensure_ascii=False, default=str)` would
    write it at nesting `level`."""
    if isinstance(o, str):
        out.append(_encode_str(o))
    elif o is None:
        out.append("null")
    elif o is True:
        out.append("true")
    elif o is False:
        out.append("false")
    elif isinstance(o, int):
        out.append(_int_repr(o))
    elif isinstance(o, float):
        out.append(_float(o))
    elif isinstance(o, dict):
        if not o:
            out.append("{}")
            return
        inner = "\n" + "  " * (level + 1)
        sep = "{" + inner
        for k, v in o.items():
            out.append(sep + _key(k) + ": ")
            _pretty(v, level + 1, out)
            sep = "," + inner
        out.append("\n" + "  " * level + "}")
    elif isinstance(o, list | tuple):
        if not o:
            out.append("[]")
            return
        inner = "\n" + "  " * (level + 1)
        sep = "[" + inner
        for v in o:
            out.append(sep)
            _pretty(v, level + 1, out)
            sep = "," + inner
        out.append("\n" + "  " * level + "]")
    else:
        _pretty(str(o), level, out)


def render_json(report: RunReport, *, verbose: bool = True) -> str:
    """The report as `json.dumps(report.to_dict(verbose), indent=2)` plus a newline."""
    targets = report.targets
    if not targets:
        return dumps(report.to_dict(verbose=verbose)) + "\n"
    # Everything but the targets, from a shell without them; the summary counts them.
    head = dataclasses.replace(report, targets=[]).to_dict(verbose=verbose)
    head["summary"] = report.summary()
    parts: list[str] = []
    for key, value in head.items():
        parts.append(("{\n  " if not parts else ",\n  ") + _key(key) + ": ")
        if key != "targets":
            piece: list[str] = []
            _pretty(value, 1, piece)
            parts.append("".join(piece))
            continue
        sep = "[\n    "
        for t in targets:
            piece = [sep]
            _pretty(t.to_dict(verbose=verbose), 2, piece)
            parts.append("".join(piece))  # one string per target, not one per token
            sep = ",\n    "
        parts.append("\n  ]")
    parts.append("\n}\n")
    return "".join(parts)


# -- JSON Lines ---------------------------------------------------------------------------


def _value(o: Any) -> str:
    t = type(o)
    if t is str:
        return _encode_str(o)
    if o is None:
        return "null"
    if t is int:
        return _int_repr(o)
    if t is float and o - o == 0.0:  # finite
        return _float_repr(o)
    return _compact(o)


def check_line(r: CheckResult, *, verbose: bool = False) -> str:
    """`{"type": "check", **r.to_dict(verbose)}` as one compact JSON line, the same text
    `json.dumps` gives, written field by field: a sweep writes tens of thousands a second.
    (tests/test_engine_load.py holds it to `to_dict`, key for key.)"""
    enc = _encode_str
    parts = [
        _CHECK_PREFIX,
        '"id": ', enc(r.id),
        ', "probe": ', enc(r.probe),
        ', "target": ', enc(r.target),
        ', "address": ', _value(r.address),
        ', "port": ', _value(r.port),
        ', "tls": ', enc(r.tls),
        ', "status": ', enc(r.status.value),
        ', "port_state": ', enc(r.port_state.value),
        ', "failed_step": ', _value(r.failed_step),
        ', "message": ', enc(r.message),
        ', "elapsed_ms": ', _value(r.elapsed_ms),
        ', "connect_ms": ', _value(r.connect_ms),
        ', "started_at": ', enc(r.started_at),
        ', "facts": ', _compact(r.facts) if r.facts else "{}",
        ', "warnings": ', _compact(list(r.warnings)) if r.warnings else "[]",
    ]  # fmt: skip
    if r.parent:
        parts += (', "parent": ', enc(r.parent))
    if r.labels:
        parts += (', "labels": ', _compact(r.labels))
    if verbose:
        parts += (', "steps": ', _compact(list(r.steps)))
        parts += (', "transcript": ', _compact(list(r.transcript)))
    parts.append("}\n")
    return "".join(parts)


class JsonLinesWriter:
    """Writes each result as one line the moment it finishes.  Lines are flushed once per
    event-loop pass (at once outside a loop), so a run killed half-way still leaves every
    finished result behind, without a system call per line in a sweep."""

    def __init__(self, stream: IO[str] | None = None, *, verbose: bool = False) -> None:
        self._out = stream or sys.stdout
        self._verbose = verbose
        self._flush_pending = False
        self._flush_error: BaseException | None = None
        self._lines: list[str] = []  # written at the next flush, all of them (write_stdout)

    def result(self, r: CheckResult) -> None:
        self._write(check_line(r, verbose=self._verbose))

    def record(self, kind: str, payload: dict[str, Any]) -> None:
        self._write(_compact({"type": kind, **payload}) + "\n")

    def _write(self, line: str) -> None:
        if self._flush_error is not None:
            err, self._flush_error = self._flush_error, None
            raise err
        self._lines.append(line)
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._send()
            return
        self._flush_pending = True
        loop.call_soon(self._flush)

    def close(self) -> None:
        """Write what is still pending (the loop may have ended before its flush)."""
        self._flush_pending = False
        if self._lines:
            self._send()

    def _send(self) -> None:
        text = "".join(self._lines)
        self._lines.clear()
        if self._out is sys.stdout:
            write_stdout(text)  # every byte, even through an unbuffered stdout
        else:
            self._out.write(text)
            self._out.flush()

    def _flush(self) -> None:
        self._flush_pending = False
        try:
            self._send()
        except Exception as exc:  # a closed pipe: raised by the next write, as before
            self._flush_error = exc


def render(report: RunReport, *, verbose: bool = False) -> str:
    """`--format json`: the whole report (transcripts and steps only with -v)."""
    return render_json(report, verbose=verbose)
