"""`exprobe watch` in a pseudo-terminal: flips shown as they happen, Ctrl-C summary, stop rules."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator

import pexpect
import pytest

from exprobe.commands.watch import WatchState, observe
from tests.helpers import ROOT, closed_port, exprobe, free_port
from tests.reports import report, result, target, verdict

ENV = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "50"}
ENV.pop("NO_COLOR", None)
SGR = r"(?:\x1b\[[0-9;]*m)*"  # colour codes rich may put between two words
REVERSE = r"\x1b\[(?:[0-9]+;)*7(?:;[0-9]+)*m"  # the highlight of a fresh flip


class Listener:
    """A loopback port the test opens and closes between runs of the watch."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock: socket.socket | None = None

    def open(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        self.sock = s

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    try:
        yield lst
    finally:
        lst.close()


def spawn(*args: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable, ["-m", "exprobe", "watch", *args], cwd=str(ROOT), env=ENV,
        dimensions=(50, 200), encoding="utf-8", timeout=20,
    )


def test_flips_are_shown_live_and_summarised_on_ctrl_c(listener: Listener) -> None:
    child = spawn("127.0.0.1", "--port", str(listener.port), "--interval", "1")
    try:
        child.expect(f"tcp:{listener.port}")
        child.expect("connection-refused/closed")
        listener.open()
        child.expect(REVERSE + "success")
        child.expect(rf"connection-refused/closed → success at \d\d:\d\d:\d\d{SGR}\s+◀ changed")
        listener.close()
        child.expect(REVERSE + "connection-refused/closed")
        child.expect(rf"success → connection-refused/closed at \d\d:\d\d:\d\d{SGR}\s+◀ changed")
        child.expect(r"changes seen")
        child.sendintr()
        child.expect(r"stopped \(Ctrl-C\): \d+ runs, 2 changes; now 0 of 1 pass")
        child.expect(r"connection-refused/closed → success")
        child.expect(rf"success → connection-refused/closed{SGR}\s+│ refused \(RST\)")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_until_pass_ends_by_itself(listener: Listener) -> None:
    child = spawn("127.0.0.1", "--port", str(listener.port), "--interval", "1", "--until-pass")
    try:
        child.expect("connection-refused/closed")
        listener.open()
        child.expect(r"everything passes: \d+ runs, 1 changes; now 1 of 1 pass")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_until_stable_exits_by_itself() -> None:
    closed = closed_port()
    out = exprobe("watch", "127.0.0.1", "--port", str(closed), "--interval", "0.2",
                  "--until-stable", "2", timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr  # stable, but failing
    assert "stable for 2 runs: 3 runs, 0 changes; now 0 of 1 pass" in out.stdout
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        out = exprobe("watch", "127.0.0.1", "--port", str(port), "--interval", "0.2",
                      "--until-stable", "1", timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "stable for 1 runs: 2 runs, 0 changes; now 1 of 1 pass" in out.stdout


def test_bad_options_exit_2() -> None:
    out = exprobe("watch", "127.0.0.1", "--port", "1", "--interval", "0")
    assert out.returncode == 2
    assert "--interval must be at least 0.1 seconds" in out.stderr
    out = exprobe("watch", "127.0.0.1", "--port", "1", "--until-stable", "0")
    assert out.returncode == 2
    assert "--until-stable must be at least 1" in out.stderr


# -- the state machine, without a terminal ---------------------------------------------------


def test_state_counts_flips_and_stable_runs() -> None:
    from exprobe.status import Status

    state = WatchState()
    up = report(target("10.0.0.5", [result("tcp:25", 25)]))
    down = report(target("10.0.0.5", [result("tcp:25", 25, Status.CONNECTION_TIMEOUT)]))
    assert state.update(observe(down), 100.0) == []
    assert state.stable_runs == 0
    assert state.update(observe(down), 101.0) == []
    assert state.stable_runs == 1
    (flip,) = state.update(observe(up), 102.0)
    assert (flip.before, flip.after, flip.run) == ("connection-timeout/filtered", "success", 3)
    assert state.stable_runs == 0
    assert state.all_pass()
    row = state.rows[("10.0.0.5", "10.0.0.5", "tcp:25")]
    assert (row.since, row.changes, row.changed_run, row.previous) == (
        102.0, 1, 3, "connection-timeout/filtered")


def test_state_uses_scenarios_when_present_and_tracks_absent_rows() -> None:
    state = WatchState()
    first = report(target("10.0.0.5", [result("epm", 135)], [
        verdict("mapi-client", False), verdict("pop3-retrieve", True)]))
    state.update(observe(first), 1.0)
    assert sorted(k[2] for k in state.rows) == ["mapi-client", "pop3-retrieve"]
    second = report(target("10.0.0.5", [result("epm", 135)], [verdict("mapi-client", True)]))
    flips = state.update(observe(second), 2.0)
    assert [(f.key[2], f.before, f.after) for f in flips] == [
        ("mapi-client", "fail", "pass"), ("pop3-retrieve", "pass", "absent")]
    assert state.all_pass()  # absent rows do not count
