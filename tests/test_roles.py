"""Roles, vantages, services shipped off, observed checks, unsupported filtering: the
profile keys of the modern Exchange profiles, and the verdicts they give (no network)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from exprobe.engine.evaluate import evaluate
from exprobe.engine.plan import CheckDef, plan
from exprobe.errors import InputError
from exprobe.probes import get as get_probe
from exprobe.profile import load_profile
from exprobe.report import render, status_exit_code
from exprobe.result import CheckResult, RunReport, TargetReport
from exprobe.status import PortState, Status
from exprobe.targets import Resolved, parse_target
from tests.helpers import exprobe

MBX, DC, DC2 = "10.0.0.5", "10.0.0.9", "10.0.0.10"

PROFILE = """\
schema_version = 1
title = "roles"

[vantages]
client = "the client subnet"
mbx = "another Mailbox server"

[roles]
dc = "a domain controller"

[checks.web]
probe = "tcp"
port = 443

[checks.pop3]
probe = "tcp"
port = 110
enabled = false

[checks.pop3s]
probe = "tcp"
port = 995
enabled = false

[checks.proxy]
probe = "tcp"
port = 465
title = "Client Proxy, internal"

[checks.gc]
probe = "tcp"
port = 3268
role = "dc"

[checks.kdc]
probe = "tcp"
port = 88
role = "dc"

[scenarios.web]
title = "Web"
vantages = ["client"]
all = ["web"]
observe = ["proxy"]

[scenarios.pop]
title = "POP3"
vantages = ["client"]
any = ["pop3s", "pop3"]

[scenarios.directory]
title = "Directory"
vantages = ["mbx"]
filtering = "unsupported"
all = ["gc", "kdc"]
"""


@pytest.fixture
def prof_path(tmp_path: Path) -> Path:
    p = tmp_path / "roles.toml"
    p.write_text(PROFILE)
    return p


def res(cid: str, port: int, status: Status = Status.SUCCESS, address: str = MBX,
        target: str | None = None) -> CheckResult:  # fmt: skip
    state = {Status.SUCCESS: PortState.OPEN, Status.CONNECTION_REFUSED: PortState.CLOSED,
             Status.CONNECTION_TIMEOUT: PortState.FILTERED}[status]  # fmt: skip
    return CheckResult(
        id=cid, probe="tcp", target=target or address, address=address, port=port,
        status=status, port_state=state, failed_step=None if status is Status.SUCCESS
        else "connect", elapsed_ms=1.0, connect_ms=1.0, started_at="2026-01-01T00:00:00Z",
        message="" if status is Status.SUCCESS else status.value,
    )  # fmt: skip


def report(*targets: TargetReport) -> RunReport:
    rep = RunReport(started_at="2026-01-01T00:00:00Z")
    rep.targets = list(targets)
    return rep


def run_eval(prof_path: Path, rep: RunReport, vantage: str | None = None,
             sets: list[str] | None = None) -> dict[tuple[str, str | None], Any]:  # fmt: skip
    prof = load_profile(str(prof_path)).with_overrides(sets or [])
    _defs, scenarios = prof.select([], vantage)
    evaluate(rep, scenarios, prof.judging(vantage))
    return {(v.id, v.address): v for t in rep.targets for v in t.scenarios}


# -- loading -----------------------------------------------------------------------------------


def test_loaded_keys(prof_path: Path) -> None:
    prof = load_profile(str(prof_path))
    assert prof.vantages == {"client": "the client subnet", "mbx": "another Mailbox server"}
    assert prof.roles == {"dc": "a domain controller"}
    assert prof.primary_role == "exchange"
    assert prof.checks["gc"].role == "dc"
    assert prof.checks["web"].role == ""
    assert prof.checks["pop3"].enabled is False
    assert prof.checks["web"].enabled is True
    assert prof.scenarios["directory"].filtering == "unsupported"
    assert [str(r) for r in prof.scenarios["web"].observe] == ["proxy"]
    j = prof.judging("client")
    assert j.check_roles == {"gc": "dc", "kdc": "dc"}
    assert j.disabled == frozenset({"pop3", "pop3s"})
    assert j.vantage == "the client subnet"
    shown = prof.to_dict()
    assert shown["roles"] == {"exchange": "the target(s) given", "dc": "a domain controller"}
    assert next(c for c in shown["checks"] if c["id"] == "gc")["role"] == "dc"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (('role = "dc"', 'role = "witness"'),
         "checks.gc.role: unknown role 'witness' (known: exchange, dc; declare it in [roles])"),
        (('vantages = ["mbx"]', 'vantages = ["dmz"]'),
         "scenarios.directory.vantages[0]: unknown vantage 'dmz' (known: client, mbx)"),
        (('filtering = "unsupported"', 'filtering = "none"'),
         "scenarios.directory.filtering: 'none': expected one of supported, unsupported"),
        (("enabled = false", 'enabled = "no"'),
         "checks.pop3.enabled: expected true or false, got a string 'no'"),
        (('observe = ["proxy"]', 'observe = ["nothere"]'),
         "scenarios.web.observe[0]: unknown check 'nothere'"),
        (('mbx = "another Mailbox server"', 'mbx = ""'),
         "vantages.mbx: expected a non-empty string saying what it is"),
    ],
)  # fmt: skip
def test_bad_keys(tmp_path: Path, change: tuple[str, str], error: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(PROFILE.replace(change[0], change[1], 1))
    with pytest.raises(InputError) as e:
        load_profile(str(p))
    assert str(e.value) == f"{p}: {error}"


def test_vantage_selects_scenarios(prof_path: Path) -> None:
    prof = load_profile(str(prof_path))
    defs, chosen = prof.select([], "mbx")
    assert [s.id for s in chosen] == ["directory"]
    assert [(d.id, d.role) for d in defs] == [("gc", "dc"), ("kdc", "dc")]
    defs, chosen = prof.select([], "client")
    assert [s.id for s in chosen] == ["web", "pop"]
    assert [d.id for d in defs] == ["web", "pop3", "pop3s", "proxy"]
    with pytest.raises(InputError) as e:
        prof.select([], "dmz")
    assert str(e.value) == "--vantage 'dmz': profile 'roles' has no such vantage (known: client, mbx)"
    with pytest.raises(InputError) as e:
        prof.select(["web"], "mbx")
    assert str(e.value) == "--vantage 'mbx': none of the selected scenarios applies from there"


def test_set_enabled(prof_path: Path) -> None:
    prof = load_profile(str(prof_path)).with_overrides(["pop3.enabled=true"])
    assert prof.checks["pop3"].enabled is True
    with pytest.raises(InputError) as e:
        prof.with_overrides(["pop3.enabled=maybe"])
    assert str(e.value) == "--set pop3.enabled=maybe: enabled: expected true or false, got 'maybe'"


# -- planning: each target gets its role's checks -------------------------------------------------


def test_plan_gives_each_role_its_checks() -> None:
    tcp = get_probe("tcp").params_type()
    defs = [CheckDef("web", "tcp", tcp, 443), CheckDef("gc", "tcp", tcp, 3268, "dc")]
    mbx = Resolved(parse_target(MBX), [MBX])
    dc = Resolved(parse_target(DC, labels=(("role", "dc"),)), [DC])
    got = [(c.id, c.address) for c in plan([mbx, dc], defs, primary_role="exchange")]
    assert got == [("web", MBX), ("gc", DC)]
    # Without roles (a classic profile), every target gets every check, labels or not.
    got = [(c.id, c.address) for c in plan([mbx, dc], defs)]
    assert got == [("web", MBX), ("gc", MBX), ("web", DC), ("gc", DC)]
    # One address bound to two roles gets both sets, each once.
    both = Resolved(parse_target(MBX, labels=(("role", "dc"),)), [MBX])
    got = [(c.id, c.address) for c in plan([mbx, both], defs, primary_role="exchange")]
    assert got == [("web", MBX), ("gc", MBX)]


# -- verdicts ------------------------------------------------------------------------------------


def test_role_checks_judged_at_the_role_hosts(prof_path: Path) -> None:
    rep = report(
        TargetReport("mbx", {}, [MBX], None, []),
        TargetReport("dc1", {"role": "dc"}, [DC], None,
                     [res("gc", 3268, address=DC), res("kdc", 88, address=DC)]),
        TargetReport("dc2", {"role": "dc"}, [DC2], None,
                     [res("gc", 3268, Status.CONNECTION_TIMEOUT, DC2), res("kdc", 88, address=DC2)]),
    )  # fmt: skip
    v = run_eval(prof_path, rep, "mbx")
    assert list(v) == [("directory", MBX)]  # verdicts only for the primary role's target
    d = v[("directory", MBX)]
    assert d.verdict == "fail"
    assert d.reason == (
        "Directory fails: dc 10.0.0.10: 3268 filtered (connection-timeout)"
    )
    assert d.hints == (
        "Remove the filter on TCP 3268 from another Mailbox server to 10.0.0.10: this path"
        " must not be filtered at all.",
    )
    assert d.checks == ("gc",)
    assert rep.targets[1].scenarios == []
    assert rep.targets[2].scenarios == []


def test_role_checks_pass_named_once(prof_path: Path) -> None:
    rep = report(
        TargetReport("mbx", {}, [MBX], None, []),
        TargetReport("dc1", {"role": "dc"}, [DC], None,
                     [res("gc", 3268, address=DC), res("kdc", 88, address=DC)]),
    )  # fmt: skip
    d = run_eval(prof_path, rep, "mbx")[("directory", MBX)]
    assert (d.verdict, d.reason) == ("pass", "Directory works: dc 10.0.0.9: 3268 open, 88 open")


def test_unbound_role_skips(prof_path: Path) -> None:
    rep = report(TargetReport("mbx", {}, [MBX], None, []))
    d = run_eval(prof_path, rep, "mbx")[("directory", MBX)]
    assert d.verdict == "skipped"
    assert d.reason == "Directory skipped: no host bound to the role 'dc' (a domain controller)"
    assert d.hints == (
        "Bind one with --role dc=HOST, or label a target in the targets file role=NAME.",
    )
    assert status_exit_code("table", rep) == 0
    assert rep.summary()["scenarios"] == {"pass": 0, "fail": 0, "skipped": 1}


def test_unresolved_role_host_fails(prof_path: Path) -> None:
    rep = report(
        TargetReport("mbx", {}, [MBX], None, []),
        TargetReport("dc.example", {"role": "dc"}, [], "NXDOMAIN", []),
    )
    d = run_eval(prof_path, rep, "mbx")[("directory", MBX)]
    assert d.verdict == "fail"
    assert d.reason == (
        "Directory fails: dc dc.example: dc.example did not resolve (NXDOMAIN)"
    )


@pytest.mark.parametrize(
    ("statuses", "sets", "verdict", "reason"),
    [
        ((Status.CONNECTION_REFUSED, Status.CONNECTION_REFUSED), [], "not-enabled",
         "POP3: not-enabled: 995 refused (connection-refused) and 110 refused"
         " (connection-refused); nothing listens, and the profile marks the service off by"
         " default"),
        ((Status.CONNECTION_TIMEOUT, Status.CONNECTION_REFUSED), [], "unknown",
         "POP3: unknown: 995 filtered (connection-timeout) and 110 refused"
         " (connection-refused); cannot tell whether the service is enabled (the profile marks"
         " it off by default)"),
        ((Status.CONNECTION_REFUSED, Status.CONNECTION_REFUSED), ["pop3s.enabled=true"], "fail",
         "POP3 fails: 995 refused (connection-refused) and 110 refused (connection-refused)"),
        ((Status.CONNECTION_REFUSED, Status.SUCCESS), [], "pass",
         "POP3 works via 110; 995 refused (connection-refused)"),
    ],
)  # fmt: skip
def test_services_shipped_off(
    prof_path: Path, statuses: tuple[Status, Status], sets: list[str], verdict: str, reason: str
) -> None:
    rep = report(TargetReport("mbx", {}, [MBX], None, [
        res("pop3s", 995, statuses[0]), res("pop3", 110, statuses[1]),
        res("web", 443), res("proxy", 465)]))  # fmt: skip
    v = run_eval(prof_path, rep, "client", sets)[("pop", MBX)]
    assert (v.verdict, v.reason) == (verdict, reason)
    if verdict in ("not-enabled", "unknown"):
        assert v.hints == ("If the service should be on, say so with --set pop3s.enabled=true or"
                           " --set pop3.enabled=true.",)  # fmt: skip
        assert status_exit_code("table", rep) == 0
    if verdict == "fail":
        assert status_exit_code("table", rep) == 1


def test_observed_checks_never_decide(prof_path: Path) -> None:
    rep = report(TargetReport("mbx", {}, [MBX], None, [
        res("web", 443), res("proxy", 465, Status.CONNECTION_REFUSED),
        res("pop3", 110), res("pop3s", 995)]))  # fmt: skip
    v = run_eval(prof_path, rep, "client")[("web", MBX)]
    assert v.verdict == "pass"
    assert v.reason == (
        "Web works: 443 open; also seen: 465 refused (connection-refused) (Client Proxy, internal)"
    )
    assert v.checks == ("web", "proxy")


def test_reporters_show_the_new_verdicts(prof_path: Path) -> None:
    rep = report(TargetReport("mbx", {}, [MBX], None, [
        res("web", 443), res("proxy", 465), res("pop3", 110, Status.CONNECTION_TIMEOUT),
        res("pop3s", 995, Status.CONNECTION_REFUSED)]))  # fmt: skip
    run_eval(prof_path, rep)  # every vantage: directory skipped, pop unknown
    assert [v.verdict for v in rep.targets[0].scenarios] == ["pass", "unknown", "skipped"]
    data = json.loads(render("json", rep))
    assert [s["verdict"] for s in data["targets"][0]["scenarios"]] == ["pass", "unknown", "skipped"]
    assert data["summary"]["scenarios"] == {"pass": 1, "fail": 0, "unknown": 1, "skipped": 1}
    junit = render("junit", rep)
    assert junit.count("<skipped ") == 2
    assert "<failure" not in junit
    nagios = render("nagios", rep)
    assert nagios.splitlines()[0].startswith("EXPROBE WARNING")
    assert "UNKNOWN POP3 [pop] at 10.0.0.5: POP3: unknown: " in nagios
    assert "SKIPPED Directory [directory] at 10.0.0.5: Directory skipped" in nagios
    prom = render("prometheus", rep)
    assert ('exprobe_scenario_verdict{address="10.0.0.5",scenario="directory",target="mbx",'
            'verdict="skipped"} 1.0') in prom  # fmt: skip


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--role", "dc"], "--role 'dc': expected NAME=HOST, e.g. dc=dc1.corp.example"),
        (["--role", "gc=127.0.0.1"],
         "target 127.0.0.1: role 'gc' is not a role of profile 'roles' (known: exchange, dc)"),
        (["--vantage", "dmz"],
         "--vantage 'dmz': profile 'roles' has no such vantage (known: client, mbx)"),
    ],
)  # fmt: skip
def test_cli_errors(prof_path: Path, args: list[str], error: str) -> None:
    out = exprobe("run", "127.0.0.1", "-p", str(prof_path), *args)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr.strip() == f"exprobe: error: {error}"


def test_cli_role_needs_a_profile_with_roles() -> None:
    out = exprobe("run", "127.0.0.1", "-p", "exchange55", "--role", "dc=127.0.0.2")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "exprobe: error: --role 'dc=127.0.0.2': profile 'exchange55' binds no checks to roles"
    )
    out = exprobe("run", "127.0.0.1", "--port", "1", "--vantage", "client")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "exprobe: error: --scenario, --set, --vantage and --role need -p/--profile"
    )


def test_cli_target_file_role_label_checked(prof_path: Path, tmp_path: Path) -> None:
    targets = tmp_path / "t.txt"
    targets.write_text(textwrap.dedent("""\
        127.0.0.1
        127.0.0.2 role=witness
    """))
    out = exprobe("run", "-T", str(targets), "-p", str(prof_path))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "exprobe: error: target 127.0.0.2: role 'witness' is not a role of profile 'roles'"
        " (known: exchange, dc)"
    )


def test_shipped_modern_profiles_bind_roles() -> None:
    p = load_profile("exchange2019")
    assert p.role_names() == ["exchange", "dc", "witness", "edge"]
    assert set(p.vantages) == {"client", "internet", "dmz", "mbx", "admin", "onprem-out"}
    unsupported = sorted(s.id for s in p.scenarios.values() if s.filtering == "unsupported")
    assert unsupported == ["backend-proxy", "dag", "directory", "intra-org-transport"]
    assert sorted(c.id for c in p.checks.values() if not c.enabled) == [
        "imap", "imaps", "pop3", "pop3s"]  # fmt: skip
    edge = load_profile("exchange-edge")
    assert edge.role_names() == ["edge", "exchange"]
    assert load_profile("exchange2016").scenarios["um"].vantages == ("pbx",)
    with pytest.raises(InputError):
        load_profile("exchange2019").select([], "pbx")
