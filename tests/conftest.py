"""Shared fixtures.  The network-namespace lab lives in tests/lab/."""

from __future__ import annotations

pytest_plugins = ["tests.lab.fixtures"]
