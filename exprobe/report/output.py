"""Writing reports: atomically to a file (temporary file, then rename) or to stdout."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import tempfile
from pathlib import Path

from exprobe.errors import InputError


def check_writable(path: str) -> None:
    """Fail early (before probing) when `path` cannot be written."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise InputError(f"output {path}: is a directory")
    if not parent.is_dir():
        raise InputError(f"output {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise InputError(f"output {path}: not writable")


def write_atomic(path: str, text: str) -> None:
    """Replace `path` with `text` in one rename: readers see old or new, never half."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def emit(text: str, path: str | None) -> None:
    if path:
        write_atomic(path, text)
        return
    if not text.endswith("\n"):
        text += "\n"
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a stream of no descriptor (tests)
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    sys.stdout.flush()
    write_all(fd, text.encode(sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict"))


def write_all(fd: int, data: bytes) -> None:
    """`data` to `fd`, all of it.  After a uvloop loop has run, a write into a full pipe
    can return short once, and Python's stdout then drops the rest without a word
    (`exprobe run --format json | slow-reader` got 64 KiB of a larger report)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        view = view[n:]
