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
    """The report to `path` (atomically) or to stdout, ending with a newline."""
    if path:
        write_atomic(path, text)
    else:
        write_stdout(text if text.endswith("\n") else text + "\n")


def write_stdout(text: str) -> None:
    """All of `text` to stdout, however large.

    With PYTHONUNBUFFERED=1 (common in containers) sys.stdout writes straight to the file
    descriptor and takes a short write to a pipe as done: a 200 kB report through a pipe
    came out cut at 64 kB.  So the bytes go to the descriptor in a loop, waiting while a
    non-blocking pipe is full; stdout without a descriptor (a test's capture) gets a
    plain write.
    """
    stream = sys.stdout
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        stream.write(text)
        stream.flush()
        return
    stream.flush()
    view = memoryview(text.encode(stream.encoding or "utf-8", "replace"))
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        view = view[n:]
