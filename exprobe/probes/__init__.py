"""Probes, one module each, and the registry they fill.

`get(name)` imports only the module that defines that probe, so a run of plain TCP
checks never loads the MSRPC or LDAP codecs; `load_all()` imports every module (for
profiles and listings, which name probes from any of them).
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
    "http",
    "tls",
    "autodiscover",
    "lbpool",
    "mx",
    "kerberos",
    "smb",
)

# Probes registered by a module of another name.
_MODULE_OF = {
    "banner": "tcp",
    "msrpc-epm": "msrpc",
    "msrpc-bind": "msrpc",
    "exchange-http": "http",
    "ldap-gc": "ldap",
    "lb-pool": "lbpool",
    "lb-healthcheck": "lbpool",
    "lb-member": "lbpool",
}

_loaded = False


def _import(mod: str) -> None:
    try:
        importlib.import_module(f"exprobe.probes.{mod}")
    except ModuleNotFoundError as exc:
        # A probe module not written yet must not break the others.
        if exc.name != f"exprobe.probes.{mod}":
            raise


def load_all() -> dict[str, ProbeSpec]:
    """The registry with every available probe module imported."""
    global _loaded
    if not _loaded:
        for mod in PROBE_MODULES:
            _import(mod)
        _loaded = True
    return REGISTRY


def get(name: str) -> ProbeSpec:
    """The probe registered as `name`, importing only its module; KeyError if none."""
    spec = REGISTRY.get(name)
    if spec is None:
        mod = _MODULE_OF.get(name, name)
        if mod in PROBE_MODULES:
            _import(mod)
        spec = REGISTRY.get(name)
    return spec if spec is not None else load_all()[name]
