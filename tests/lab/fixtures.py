"""pytest fixtures for the exprobe lab.

Import them into a conftest with ``from tests.lab.fixtures import *``:

- ``lab`` (session): the running :class:`~tests.lab.lab.Lab`. It is started once and
  stopped at the end of the session, also when a test fails, on Ctrl-C and on SIGTERM
  (and, as a last resort, at interpreter exit). If the lab cannot start, every test
  that uses it *fails* with the reason; lab tests are never skipped silently. Run
  ``pytest -m 'not lab'`` to leave them out on purpose.
- ``fw`` (function): ``lab.set_firewall``; the firewall is opened again after the test.

Tests that need the lab carry ``@pytest.mark.lab``.
"""

from __future__ import annotations

import atexit
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Protocol, TypeVar

import pytest

from tests.lab.adlab import AdLab
from tests.lab.lab import Lab, LabError, preflight
from tests.lab.weblab import WebLab
from tests.lab.xlab import XLab

__all__ = ["fw", "lab"]

_DESELECT_HINT = "lab tests are never skipped: deselect them explicitly with -m 'not lab'"


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into the interruption pytest already handles: its session
    # teardown then runs the `lab` finalizer, which stops every lab process.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The lab, up for the whole session; torn down at its end whatever happens."""
    problem = preflight()
    if problem:
        pytest.fail(f"the exprobe lab cannot start: {problem} ({_DESELECT_HINT})", pytrace=False)
    instance = Lab()
    if instance.running():
        # A lab brought up by hand (`python -m tests.lab.lab up`) or by a concurrent
        # session: share it, and leave it running; stop only what this session spawned.
        try:
            yield instance
        finally:
            instance.stop_spawned()
            instance.set_firewall()
        return
    atexit.register(instance.down)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main else None
    if in_main:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        try:
            instance.up()
        except LabError as e:
            pytest.fail(f"the exprobe lab did not start: {e} ({_DESELECT_HINT})", pytrace=False)
        yield instance
    finally:
        instance.down()
        atexit.unregister(instance.down)
        if in_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def fw(lab: Lab) -> Iterator[Callable[..., None]]:
    """``lab.set_firewall(drop=..., reset=..., icmp=..., addresses=...)``; reopened afterwards."""
    lab.set_firewall()
    yield lab.set_firewall
    lab.set_firewall()


class _Lab(Protocol):
    def up(self) -> None: ...
    def down(self) -> None: ...


L = TypeVar("L", bound=_Lab)


def _up(lab: L) -> Iterator[L]:
    """`lab` up for as long as the fixture lives, down after whatever happens."""
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="session")
def adlab() -> Iterator[AdLab]:
    """The Samba AD DC lab (tests/lab/adlab.py), up for the whole session; the tests
    that use it are marked `lab`."""
    yield from _up(AdLab())


@pytest.fixture(scope="session")
def weblab() -> Iterator[WebLab]:
    """The web lab (tests/lab/weblab.py: nginx in front of scripted Exchange backends, the
    pools and middleboxes), up for the whole session; its tests are marked `lab`."""
    yield from _up(WebLab())


@pytest.fixture(scope="session")
def xlab() -> Iterator[XLab]:
    """The modern Exchange lab (tests/lab/xlab.py), up for the whole session under rule
    set `open`; the tests that use it are marked `lab`."""
    yield from _up(XLab())
