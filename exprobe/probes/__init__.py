"""Probes, one module each, and the registry they fill.

`load_all()` imports every probe module once; modules with heavy dependencies import
them lazily inside their functions so start-up stays fast.
"""

from __future__ import annotations

import importlib

from exprobe.probes.base import REGISTRY, ProbeSpec

PROBE_MODULES = (
    "tcp",
    "smtp",
    "pop3",
    "imap",
    "nntp",
    "ldap",
    "rfc1006",
    "msrpc",
)

_loaded = False


def load_all() -> dict[str, ProbeSpec]:
    """The registry with every available probe module imported."""
    global _loaded
    if not _loaded:
        for mod in PROBE_MODULES:
            try:
                importlib.import_module(f"exprobe.probes.{mod}")
            except ModuleNotFoundError as exc:
                # A probe module not written yet must not break the others.
                if exc.name != f"exprobe.probes.{mod}":
                    raise
        _loaded = True
    return REGISTRY


def get(name: str) -> ProbeSpec:
    """The probe registered as `name`; KeyError if there is none."""
    return load_all()[name]
