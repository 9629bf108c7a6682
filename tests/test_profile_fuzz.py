"""Arbitrary TOML into the profile loader: a profile or one clean line, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exprobe.errors import InputError
from exprobe.profile import load_profile

KEYS = ["schema_version", "title", "description", "extends", "checks", "scenarios", "probe",
        "port", "tls", "all", "any", "hints", "text", "kb", "when", "on", "vantage",
        "components", "expect_is", "calling_tsap", "x", "smtp", "epm", "epm.is", "pop3"]
scalars = st.one_of(
    st.integers(-5, 70000), st.booleans(), st.text(max_size=12),
    st.sampled_from(["smtp", "tcp", "msrpc-epm", "implicit", "starttls", "exchange40", "epm.is"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=12,
)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)


def to_toml(doc: dict[str, object]) -> str:
    """Inline-table TOML (JSON strings are valid TOML basic strings)."""

    def val(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        assert isinstance(v, dict)
        return "{" + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items()) + "}"

    return "".join(f"{json.dumps(k)} = {val(v)}\n" for k, v in doc.items())


def check_loads_or_fails_cleanly(f: Path) -> None:
    message = None
    try:
        load_profile(str(f))
    except InputError as exc:
        message = str(exc)
    if message is not None:
        assert "\n" not in message
        assert "fuzz.toml" in message


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(documents)
def test_structured_garbage(tmp_path: Path, doc: dict[str, object]) -> None:
    f = tmp_path / "fuzz.toml"
    f.write_text(to_toml(doc))
    check_loads_or_fails_cleanly(f)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    f = tmp_path / "fuzz.toml"
    f.write_bytes(data)
    check_loads_or_fails_cleanly(f)
