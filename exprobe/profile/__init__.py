"""Profiles: TOML files that declare checks and the Exchange scenarios built from them.

`load_profile("exchange55")` or `load_profile("path/to/site.toml")` returns a validated,
immutable `Profile`; `list_profiles()` the shipped ones.  See docs/profiles.md.
"""

from __future__ import annotations

from exprobe.profile.loader import list_profiles, load_profile, shipped_dir, shipped_names
from exprobe.profile.model import CheckDecl, Hint, Profile, Requirement, Scenario

__all__ = [
    "CheckDecl",
    "Hint",
    "Profile",
    "Requirement",
    "Scenario",
    "list_profiles",
    "load_profile",
    "shipped_dir",
    "shipped_names",
]
