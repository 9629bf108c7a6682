"""Sub-commands, one module each; importing this package registers them on `cli.app`."""

from __future__ import annotations

import importlib

COMMAND_MODULES = ("run", "check", "epm", "profiles", "diff", "watch", "listen", "demo", "serve",
                   "trace")

for _name in COMMAND_MODULES:
    try:
        importlib.import_module(f"exprobe.commands.{_name}")
    except ModuleNotFoundError as _exc:  # a command not written yet must not break the others
        if _exc.name != f"exprobe.commands.{_name}":
            raise
