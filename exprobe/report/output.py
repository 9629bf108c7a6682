"""Writing reports: atomically to a file (temporary file, then rename) or to stdout."""

from __future__ import annotations

import contextlib
import os
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
    else:
        sys.stdout.write(text)
        if not text.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
