"""One lab of a kind per machine: its namespace names and addresses are fixed, so two
test runs (two checkouts, CI beside a developer) must take turns."""

from __future__ import annotations

import fcntl
import time
from typing import IO


class LabLock:
    """An exclusive `flock` on `path`, held from `acquire()` to `release()`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self, wait: float = 900) -> None:
        """Wait up to `wait` seconds for the lock (RuntimeError after); a no-op if held."""
        if self._file is not None:
            return
        self._file = open(self.path, "w")  # noqa: SIM115 - held until release()
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.release()
                    raise RuntimeError(f"{self.path} held by another run for {wait:.0f} s") from None
                time.sleep(0.5)

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the flock
            self._file = None
