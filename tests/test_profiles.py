"""Profiles: the shipped ones, extends, --set, selection, validation (one bad file per rule),
the `exprobe profiles` commands, and the packaging that ships profiles/*.toml."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

from exprobe.engine.evaluate import evaluate_scenario
from exprobe.errors import InputError
from exprobe.probes import load_all
from exprobe.profile import Profile, list_profiles, load_profile, shipped_dir, shipped_names
from exprobe.result import CheckResult
from exprobe.status import PortState, Status
from tests.helpers import ROOT, exprobe

BAD_DIR = Path("tests") / "profiles_bad"

# check id -> (probe, port, tls), per DESIGN.md §1 and issue 6
CHECKS_55 = {
    "smtp": ("smtp", 25, "none"),
    "epm": ("msrpc-epm", 135, "none"),
    "x400": ("rfc1006", 102, "none"),
    "pop3": ("pop3", 110, "none"),
    "pop3s": ("pop3", 995, "implicit"),
    "ldap": ("ldap", 389, "none"),
    "ldaps": ("ldap", 636, "implicit"),
    "nntp": ("nntp", 119, "none"),
    "nntps": ("nntp", 563, "implicit"),
    "imap": ("imap", 143, "none"),
    "imaps": ("imap", 993, "implicit"),
}
# scenario -> (all, any groups)
SCENARIOS_40 = {
    "smtp-inbound": (["smtp"], []),
    "mapi-client": (["epm", "epm.ds", "epm.is"], []),
    "intrasite": (["epm", "epm.ds", "epm.mta"], []),
    "intersite-rpc": (["epm", "epm.mta"], []),
    "intersite-x400": (["x400"], []),
}
SCENARIOS_50 = {
    **SCENARIOS_40,
    "pop3-retrieve": ([], [["pop3", "pop3s"]]),
    "pop3-send": (["smtp"], []),
    "ldap-directory": ([], [["ldap", "ldaps"]]),
    "nntp-news": ([], [["nntp", "nntps"]]),
}
SCENARIOS_55 = {
    **SCENARIOS_50,
    "imap-retrieve": ([], [["imap", "imaps"]]),
    "imap-send": (["smtp"], []),
}
KBS = {
    "mapi-client": {"155831"},
    "intrasite": {"155831", "161931", "180795"},
    "intersite-rpc": {"161931"},
    "intersite-x400": {"161931"},
}


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # error messages name files relative to the working directory


def shape(p: Profile) -> dict[str, tuple[list[str], list[list[str]]]]:
    return {
        s.id: ([str(r) for r in s.all], [[str(r) for r in g] for g in s.any])
        for s in p.scenarios.values()
    }


# -- the shipped profiles ---------------------------------------------------------------------


def test_shipped_names() -> None:
    assert shipped_names() == [
        "exchange-edge", "exchange-hybrid", "exchange-se", "exchange2013", "exchange2016",
        "exchange2019", "exchange40", "exchange50", "exchange55",
    ]
    assert [p.name for p in list_profiles()] == shipped_names()


@pytest.mark.parametrize(
    ("name", "scenarios", "extends"),
    [
        ("exchange40", SCENARIOS_40, ()),
        ("exchange50", SCENARIOS_50, ("exchange40",)),
        ("exchange55", SCENARIOS_55, ("exchange50", "exchange40")),
    ],
)
def test_shipped_profile_scenarios(
    name: str, scenarios: dict[str, tuple[list[str], list[list[str]]]], extends: tuple[str, ...]
) -> None:
    p = load_profile(name)
    assert shape(p) == scenarios
    assert p.extends == extends
    assert p.title == f"Microsoft Exchange Server {name[-2]}.{name[-1]}"
    for s in p.scenarios.values():
        assert s.title, s.id
        assert s.description.strip(), s.id
        assert s.vantage, s.id
        kbs = {k for h in s.hints for k in h.kb}
        assert KBS.get(s.id, set()) <= kbs, s.id


def test_shipped_checks_ports_and_handshakes() -> None:
    p = load_profile("exchange55")
    got = {cid: (c.probe, c.port, c.params.tls) for cid, c in p.checks.items()}
    assert got == CHECKS_55
    assert p.checks["epm"].params.components == ("ds", "is", "mta")  # type: ignore[attr-defined]
    assert set(load_profile("exchange40").checks) == {"smtp", "epm", "x400"}


def test_profile_info() -> None:
    p = load_profile("exchange55")
    assert p.info() == {
        "name": "exchange55",
        "title": "Microsoft Exchange Server 5.5",
        "path": str(shipped_dir() / "exchange55.toml"),
        "schema_version": 1,
        "extends": ["exchange50", "exchange40"],
    }
    assert p.with_overrides(["x400.port=10102"]).info()["overrides"] == ["x400.port=10102"]


def test_shipped_mapi_hints_follow_the_failure() -> None:
    s = load_profile("exchange55").scenarios["mapi-client"]

    def r(cid: str, port: int, status: Status, state: PortState, **kw: object) -> CheckResult:
        return CheckResult(
            cid,
            "x",
            "t",
            "10.0.0.5",
            port,
            status,
            state,
            None,
            1.0,
            1.0,
            "now",
            **kw,  # type: ignore[arg-type]
        )

    facts = {
        "components": {
            "ds": {"registered": True, "ports": [1025]},
            "is": {"registered": True, "ports": [1026]},
        }
    }
    e = r("epm", 135, Status.SUCCESS, PortState.OPEN, facts=facts)
    ds = r("epm/ds:1025", 1025, Status.SUCCESS, PortState.OPEN, parent="epm")
    is_ = r("epm/is:1026", 1026, Status.CONNECTION_TIMEOUT, PortState.FILTERED, parent="epm")
    v = evaluate_scenario(s, "t", "10.0.0.5", [e, ds, is_])
    assert v.hints[0] == "Open TCP 1026 (IS) from the client subnet to 10.0.0.5."
    assert len(v.hints) == 2
    assert v.hints[1].endswith("(KB 155831)")
    v = evaluate_scenario(
        s, "t", "10.0.0.5", [r("epm", 135, Status.CONNECTION_TIMEOUT, PortState.FILTERED)]
    )
    assert v.hints == ("Open TCP 135 from the client subnet to 10.0.0.5.",)


# -- extends and overrides ---------------------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_extends_overrides_a_port_without_copying(tmp_path: Path) -> None:
    f = write(
        tmp_path / "site.toml",
        'schema_version = 1\nextends = "exchange55"\n'
        "[checks.x400]\nport = 10102\n"
        "[checks.epm]\nexpect_is = 1601\nexpect_ds = 1600\n",
    )
    p = load_profile(f)
    base = load_profile("exchange55")
    assert (p.name, p.title, p.extends) == (
        "site",
        base.title,
        ("exchange55", "exchange50", "exchange40"),
    )
    assert p.checks["x400"].port == 10102
    assert p.checks["x400"].params == base.checks["x400"].params
    epm = p.checks["epm"].params
    assert (epm.expect_is, epm.expect_ds, epm.components) == (1601, 1600, ("ds", "is", "mta"))  # type: ignore[attr-defined]
    assert shape(p) == shape(base)
    assert p.checks["pop3s"] == base.checks["pop3s"]


def test_extends_tls_change_follows_the_default_port(tmp_path: Path) -> None:
    base = write(
        tmp_path / "base.toml", 'schema_version = 1\ntitle = "b"\n[checks.mail]\nprobe = "pop3"\n'
    )
    child = write(
        tmp_path / "child.toml",
        'schema_version = 1\nextends = "base"\n[checks.mail]\ntls = "implicit"\n',
    )
    assert load_profile(base).checks["mail"].port == 110
    c = load_profile(child).checks["mail"]
    assert (c.port, c.params.tls, c.port_declared) == (995, "implicit", False)


def test_extends_another_probe_replaces_the_check(tmp_path: Path) -> None:
    f = write(
        tmp_path / "site.toml",
        'schema_version = 1\nextends = "exchange40"\n[checks.smtp]\nprobe = "banner"\nport = 2525\n',
    )
    c = load_profile(f).checks["smtp"]
    assert (c.probe, c.port, c.title) == ("banner", 2525, "")


def test_extends_by_relative_path_and_scenario_override(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    write(
        tmp_path / "lib" / "common.toml",
        'schema_version = 1\ntitle = "common"\n[checks.smtp]\nprobe = "smtp"\n'
        '[scenarios.send]\ntitle = "Send"\nvantage = "the LAN"\nany = ["smtp"]\n',
    )
    f = write(
        tmp_path / "site.toml",
        'schema_version = 1\ntitle = "site"\nextends = "lib/common.toml"\n'
        '[checks.smtps]\nprobe = "smtp"\ntls = "implicit"\n'
        '[scenarios.send]\nany = ["smtp", "smtps"]\n',
    )
    p = load_profile(f)
    s = p.scenarios["send"]
    assert (s.title, s.vantage, s.all) == ("Send", "the LAN", ())
    assert [[str(r) for r in g] for g in s.any] == [["smtp", "smtps"]]
    assert p.checks["smtps"].port == 465


def test_any_as_several_groups(tmp_path: Path) -> None:
    f = write(
        tmp_path / "p.toml",
        'schema_version = 1\ntitle = "t"\n[checks.a]\nprobe = "pop3"\n[checks.b]\nprobe = "imap"\n'
        '[scenarios.s]\ntitle = "S"\nany = [["a"], ["b"]]\n'
        '[[scenarios.s.hints]]\ntext = "x"\nkb = 155831\nwhen = ["a"]\non = ["blocked"]\n',
    )
    s = load_profile(f).scenarios["s"]
    assert [[str(r) for r in g] for g in s.any] == [["a"], ["b"]]
    assert s.hints[0].render() == "x (KB 155831)"


def test_missing_file_and_unknown_name() -> None:
    with pytest.raises(InputError) as e:
        load_profile("nothere/site.toml")
    assert str(e.value) == "nothere/site.toml: cannot read (No such file or directory)"
    with pytest.raises(InputError) as e:
        load_profile("exchange2020")
    assert str(e.value) == (
        "unknown profile 'exchange2020' (known: exchange-edge, exchange-hybrid, exchange-se,"
        " exchange2013, exchange2016, exchange2019, exchange40, exchange50, exchange55);"
        " give a path to use a TOML file of your own"
    )


# -- --set ----------------------------------------------------------------------------------


def test_set_overrides_port_and_params() -> None:
    p = load_profile("exchange55").with_overrides(
        ["x400.port=10102", "epm.expect_is=1601", "smtp.tls=starttls", "epm.components=is,ds,mta"]
    )
    assert p.checks["x400"].port == 10102
    epm = p.checks["epm"].params
    assert (epm.expect_is, epm.components) == (1601, ("is", "ds", "mta"))  # type: ignore[attr-defined]
    assert (p.checks["smtp"].params.tls, p.checks["smtp"].port) == ("starttls", 25)
    assert p.overrides == (
        "x400.port=10102",
        "epm.expect_is=1601",
        "smtp.tls=starttls",
        "epm.components=is,ds,mta",
    )
    again = p.with_overrides(["epm.expect_is=none"])
    assert again.checks["epm"].params.expect_is is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            "x401.port=1",
            "--set x401.port=1: unknown check 'x401' in profile 'exchange55' (known: smtp, epm,"
            " x400, pop3, pop3s, ldap, ldaps, nntp, nntps, imap, imaps)",
        ),
        (
            "x400.rfc1006_port=10102",
            "--set x400.rfc1006_port=10102: check 'x400' (probe rfc1006) has no parameter"
            " 'rfc1006_port' (known: called_tsap, calling_tsap, enabled, port, tls, tls_version, tls_versions, tpdu_size)",
        ),
        ("x400.port=ten", "--set x400.port=ten: port: expected an integer in 1-65535, got 'ten'"),
        ("x400.port=0", "--set x400.port=0: port: 0 is not in 1-65535"),
        ("epm.expect_is=high", "--set epm.expect_is=high: expected an integer, got 'high'"),
        ("x400.tls=implicit", "--set x400.tls=implicit: probe 'rfc1006' does not speak TLS"),
        (
            "x400.tpdu_size=1000",
            "--set x400.tpdu_size=1000: tpdu_size 1000 is not one of 128, 256, 512, 1024, 2048, 4096, 8192",
        ),
        ("x400port=1", "--set 'x400port=1': expected CHECK.PARAM=VALUE, e.g. x400.port=10102"),
        ("x400.port", "--set 'x400.port': expected CHECK.PARAM=VALUE, e.g. x400.port=10102"),
        (
            "epm.components=ds",
            "--set epm.components=ds: scenarios.mapi-client.all[2]: 'epm.is': check 'epm' does not"
            " look up component 'is' (its components: ds)",
        ),
    ],
)
def test_set_is_validated_like_the_profile(option: str, message: str) -> None:
    with pytest.raises(InputError) as e:
        load_profile("exchange55").with_overrides([option])
    assert str(e.value) == message


# -- selection ------------------------------------------------------------------------------


def test_select_runs_only_needed_checks_once() -> None:
    p = load_profile("exchange55")
    defs, scenarios = p.select(["pop3-send", "imap-send", "pop3-retrieve"])
    assert [s.id for s in scenarios] == ["pop3-send", "imap-send", "pop3-retrieve"]
    assert [(d.id, d.probe, d.port) for d in defs] == [
        ("smtp", "smtp", 25),
        ("pop3", "pop3", 110),
        ("pop3s", "pop3", 995),
    ]
    defs, scenarios = p.select([])
    assert [s.id for s in scenarios] == list(SCENARIOS_55)
    assert [d.id for d in defs] == list(CHECKS_55)


def test_select_narrows_the_endpoint_mapper_components() -> None:
    p = load_profile("exchange55")
    (d,), _ = p.select(["mapi-client"])
    assert d.params.components == ("ds", "is")  # type: ignore[attr-defined]
    (d,), _ = p.select(["intersite-rpc"])
    assert d.params.components == ("mta",)  # type: ignore[attr-defined]
    (d,), _ = p.select(["intersite-rpc", "mapi-client"])
    assert d.params.components == ("ds", "is", "mta")  # type: ignore[attr-defined]


def test_select_unknown_scenario() -> None:
    with pytest.raises(InputError) as e:
        load_profile("exchange40").select(["pop3-retrieve"])
    assert str(e.value) == (
        "--scenario 'pop3-retrieve': no such scenario in profile 'exchange40' (known:"
        " smtp-inbound, mapi-client, intrasite, intersite-rpc, intersite-x400)"
    )


# -- validation: one bad file per rule -----------------------------------------------------------


def expected_error(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# error: "), path
    return (
        first.removeprefix("# error: ")
        .replace("{file}", str(path))
        .replace("{dir}", str(path.parent))
        .replace("{probes}", ", ".join(sorted(load_all())))
    )


BAD_FILES = sorted((ROOT / BAD_DIR).glob("*.toml"))


def test_there_is_a_bad_file_per_rule() -> None:
    assert len(BAD_FILES) >= 40


@pytest.mark.parametrize("path", [BAD_DIR / p.name for p in BAD_FILES], ids=lambda p: p.stem)
def test_bad_profile(path: Path) -> None:
    with pytest.raises(InputError) as e:
        load_profile(str(path))
    assert str(e.value) == expected_error(path)
    assert "\n" not in str(e.value)


def test_profiles_check_cli_on_a_bad_file() -> None:
    path = BAD_DIR / "scenario_unknown_check.toml"
    out = exprobe("profiles", "check", str(path))
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr == f"exprobe: error: {path}: scenarios.mapi.all[1]: unknown check 'is-port'\n"


def test_run_with_a_bad_profile_probes_nothing() -> None:
    path = BAD_DIR / "check_tls_conflict.toml"
    out = exprobe("run", "127.0.0.1", "-p", str(path), "--format", "json")
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == f"exprobe: error: {expected_error(path)}\n"


def test_run_with_a_bad_set_and_a_port_target() -> None:
    out = exprobe("run", "127.0.0.1", "-p", "exchange55", "--set", "x400.port=abc")
    assert (out.returncode, out.stdout) == (2, "")
    assert (
        out.stderr
        == "exprobe: error: --set x400.port=abc: port: expected an integer in 1-65535, got 'abc'\n"
    )
    out = exprobe("run", "127.0.0.1:2525", "-p", "exchange55")
    assert out.returncode == 2
    assert "give targets without a port" in out.stderr


# -- the commands -----------------------------------------------------------------------------


def test_profiles_list() -> None:
    out = exprobe("profiles", "list")
    assert out.returncode == 0, out.stderr
    lines = [line.split("│") for line in out.stdout.splitlines()[2:]]
    rows = [[c.strip() for c in line] for line in lines]
    assert rows == [
        ["exchange-edge", "Microsoft Exchange Edge Transport server", "4", ""],
        ["exchange-hybrid", "Microsoft Exchange Server 2019, hybrid with Exchange Online", "21",
         "exchange2019"],
        ["exchange-se", "Microsoft Exchange Server Subscription Edition", "19", "exchange2019"],
        ["exchange2013", "Microsoft Exchange Server 2013", "20", "exchange2016 → exchange2019"],
        ["exchange2016", "Microsoft Exchange Server 2016", "20", "exchange2019"],
        ["exchange2019", "Microsoft Exchange Server 2019", "19", ""],
        ["exchange40", "Microsoft Exchange Server 4.0", "5", ""],
        ["exchange50", "Microsoft Exchange Server 5.0", "9", "exchange40"],
        ["exchange55", "Microsoft Exchange Server 5.5", "11", "exchange50 → exchange40"],
    ]
    out = exprobe("profiles", "list", "--format", "json")
    data = json.loads(out.stdout)
    assert [(d["name"], d["scenarios"], d["checks"]) for d in data] == [
        ("exchange-edge", 4, 5),
        ("exchange-hybrid", 21, 44),
        ("exchange-se", 19, 39),
        ("exchange2013", 20, 45),
        ("exchange2016", 20, 45),
        ("exchange2019", 19, 39),
        ("exchange40", 5, 3),
        ("exchange50", 9, 9),
        ("exchange55", 11, 11),
    ]


def test_profiles_show_json() -> None:
    out = exprobe("profiles", "show", "exchange55", "--format", "json", "--set", "x400.port=10102")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert (d["name"], d["schema_version"], d["overrides"]) == (
        "exchange55",
        1,
        ["x400.port=10102"],
    )
    by_id = {s["id"]: s for s in d["scenarios"]}
    assert list(by_id) == list(SCENARIOS_55)
    x400 = by_id["intersite-x400"]
    assert (x400["all"], x400["any"]) == (["x400"], [])
    assert x400["checks"] == [
        {
            "id": "x400",
            "probe": "rfc1006",
            "port": 10102,
            "title": "MTA over RFC 1006 (ISO transport over TCP), X.400 connector",
            "params": {"tls": "none", "tls_versions": False, "tls_version": "", "calling_tsap": "",
                       "called_tsap": "", "tpdu_size": 1024},
        }
    ]
    pop = by_id["pop3-retrieve"]
    assert [(c["id"], c["port"], c["params"]["tls"]) for c in pop["checks"]] == [
        ("pop3", 110, "none"),
        ("pop3s", 995, "implicit"),
    ]
    assert by_id["mapi-client"]["hints"][0]["kb"] == ["155831"]


def test_profiles_show_tree() -> None:
    out = exprobe("profiles", "show", "exchange50")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in (
        "exchange50  Microsoft Exchange Server 5.0",
        "extends exchange40",
        "pop3-retrieve  POP3 retrieve  from the client subnet",
        "pop3s  pop3 995  tls=implicit  POP3 over SSL",
        "epm.is  the IS ports handed out by 'epm' (msrpc-epm on 135)",
        "any of:",
        "(KB 161931)",
    ):
        assert needle in text, needle
    assert "imap" not in text
    out = exprobe("profiles", "show", "exchange60")
    assert out.returncode == 2
    assert out.stderr.startswith("exprobe: error: unknown profile 'exchange60'")


def test_profiles_check_ok() -> None:
    for name in shipped_names():
        path = Path("profiles") / f"{name}.toml"
        out = exprobe("profiles", "check", str(path))
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"ok: {path}: ")


# -- packaging --------------------------------------------------------------------------------


def test_pyproject_ships_every_package_and_the_profiles() -> None:
    from setuptools import find_packages

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(where=str(ROOT), include=["exprobe", "exprobe.*"]))
    assert set(cfg["packages"]) == found | {"exprobe.profiles"}, "update pyproject's packages"
    assert cfg["package-dir"] == {"exprobe.profiles": "profiles"}
    assert cfg["package-data"]["exprobe.profiles"] == ["*.toml"]
    assert sorted(os.listdir(ROOT / "profiles")) == [f"{n}.toml" for n in shipped_names()]
