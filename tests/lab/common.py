"""What the namespace labs (hop, AD, web, DNS) share: running commands, starting and
ending their own processes by PID, deleting their namespaces, and a lock, because a
lab's namespace names and addresses are fixed: two test runs on one machine (two
checkouts, CI beside a developer) must take turns."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
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


ROOT = Path(__file__).resolve().parents[2]


def command(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30,
    input: str | None = None,
    error: type[Exception] = RuntimeError,
) -> str:
    """Run `argv`, return its stdout; with `check`, a failure raises `error` naming it."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, input=input,
                          timeout=timeout, check=False)  # fmt: skip
    if check and proc.returncode != 0:
        raise error(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def start_in(ns: str, argv: Sequence[str], *, ready: bool) -> subprocess.Popen[bytes]:
    """`argv` in namespace `ns`, in a session of its own (so that `stop` ends it and only
    it), with this checkout importable; `ready`: wait for its first line to be "ready"."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )  # fmt: skip
    if ready:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            stop([proc])
            raise RuntimeError(f"{' '.join(argv[:3])} did not start in {ns}")
    return proc


def run_in(ns: str, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `argv` in namespace `ns` (this checkout importable, no colour)."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}, check=False,
    )  # fmt: skip


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """End the processes `start_in` started (their sessions, by PID), then forget them."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
    procs.clear()


def delete_namespaces(names: Iterable[str]) -> None:
    """Delete the namespaces among `names` that exist (their veths go with them)."""
    present = set(command(["ip", "netns", "list"], check=False).split())
    for ns in names:
        if ns in present:
            command(["ip", "netns", "del", ns], check=False)
