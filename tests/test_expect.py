"""Expectations: the file format (one bad file per rule, exact messages) and the judging."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from exprobe.engine.plan import CheckDef
from exprobe.errors import InputError
from exprobe.expect import load_expectations
from exprobe.probes import load_all
from exprobe.status import PortState, Status
from tests.helpers import LoopbackServer, closed_port, exprobe, validate_report
from tests.reports import report, result, target, verdict


def write(tmp_path: Path, body: str, name: str = "policy.toml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return str(p)


def load(tmp_path: Path, body: str) -> object:
    return load_expectations(write(tmp_path, body))


def error_of(tmp_path: Path, body: str) -> str:
    path = write(tmp_path, body)
    with pytest.raises(InputError) as info:
        load_expectations(path)
    msg = str(info.value)
    assert "\n" not in msg
    return msg.replace(path, "F")


GOOD = """
    schema_version = 1
    title = "CHG-1: DMZ"

    [[expect]]
    name = "dmz"
    why = "from the DMZ MAPI must not work"
    labels = { zone = "dmz" }
    fail = ["mapi-client"]
    pass = ["smtp-inbound"]
    closed = [135]
    not_open = [1026, 1027]

    [[expect]]
    target = "10.0.0.0/24"
    open = [25]
    filtered = [102]
"""


def test_good_file_loads(tmp_path: Path) -> None:
    exp = load_expectations(write(tmp_path, GOOD))
    assert exp.title == "CHG-1: DMZ"
    first, second = exp.items
    assert first.name == "dmz"
    assert first.labels == (("zone", "dmz"),)
    assert first.scenarios == (("pass", "smtp-inbound"), ("fail", "mapi-client"))
    assert first.ports == (("closed", 135), ("not_open", 1026), ("not_open", 1027))
    assert second.name == "expect[1]"
    assert second.target == "10.0.0.0/24"
    assert exp.ports() == [25, 102, 135, 1026, 1027]
    assert exp.scenario_ids() == ["mapi-client", "smtp-inbound"]


BAD = [
    ("", "F: schema_version: missing (this exprobe reads 1)"),
    ("schema_version = 2\n", "F: schema_version: 2 is not supported (this exprobe reads 1)"),
    ('schema_version = "1"\n', "F: schema_version: expected an integer, got '1'"),
    ("schema_version = 1\n", "F: expect: missing (add at least one [[expect]] table)"),
    ("schema_version = 1\nexpect = []\n", "F: expect: empty (add at least one [[expect]] table)"),
    ("schema_version = 1\nexpect = [1]\n", "F: expect: expected an array of tables ([[expect]])"),
    ("schema_version = 1\ntitle = 3\n", "F: title: expected a string, got 3"),
    (
        "schema_version = 1\nbogus = 1\n",
        "F: bogus: unknown key (known: expect, schema_version, title)",
    ),
    (
        'schema_version = 1\n[[expect]]\ntarget = "a"\nclosd = [135]\n',
        "F: expect[0].closd: unknown key (known: closed, fail, filtered, labels, name, not_open,"
        " open, pass, target, why)",
    ),
    (
        "schema_version = 1\n[[expect]]\nclosed = [135]\n",
        'F: expect[0]: needs target = "..." or labels = { ... } (or target = "*")',
    ),
    (
        'schema_version = 1\n[[expect]]\ntarget = "a"\n',
        "F: expect[0]: expects nothing (give at least one of pass, fail, open, closed, filtered,"
        " not_open)",
    ),
    (
        'schema_version = 1\n[[expect]]\ntarget = "a"\nclosed = [70000]\n',
        "F: expect[0].closed[0]: 70000 is not a port (1-65535)",
    ),
    (
        'schema_version = 1\n[[expect]]\ntarget = "a"\nclosed = [true]\n',
        "F: expect[0].closed[0]: expected a port number, got True",
    ),
    (
        'schema_version = 1\n[[expect]]\ntarget = "a"\nclosed = ["135"]\n',
        "F: expect[0].closed[0]: expected a port number, got '135'",
    ),
    (
        'schema_version = 1\n[[expect]]\ntarget = "a"\nclosed = 135\n',
        "F: expect[0].closed: expected a list, got 135",
    ),
    (
        'schema_version = 1\n[[expect]]\ntarget = "a"\nclosed = []\n',
        "F: expect[0].closed: empty list (leave the key out instead)",
    ),
    (
        'schema_version = 1\n[[expect]]\ntarget = "a"\nclosed = [135]\nnot_open = [135]\n',
        "F: expect[0].not_open[0]: port 135 is already listed in closed",
    ),
    (
        'schema_version = 1\n[[expect]]\ntarget = "a"\npass = ["mapi"]\nfail = ["mapi"]\n',
        "F: expect[0].fail[0]: scenario 'mapi' is already listed in pass",
    ),
    (
        'schema_version = 1\n[[expect]]\ntarget = "a"\npass = [""]\n',
        "F: expect[0].pass[0]: expected a scenario id, got ''",
    ),
    (
        'schema_version = 1\n[[expect]]\ntarget = 5\nopen = [1]\n',
        'F: expect[0].target: expected a host name, address, CIDR block or "*"',
    ),
    (
        'schema_version = 1\n[[expect]]\ntarget = "10.0.0.0/33"\nopen = [1]\n',
        "F: expect[0].target: '10.0.0.0/33' is not a valid CIDR block",
    ),
    (
        'schema_version = 1\n[[expect]]\nlabels = "dmz"\nopen = [1]\n',
        'F: expect[0].labels: expected a non-empty table, e.g. { zone = "dmz" }',
    ),
    (
        'schema_version = 1\n[[expect]]\nlabels = { zone = 1 }\nopen = [1]\n',
        "F: expect[0].labels.zone: expected a non-empty string, got 1",
    ),
    (
        'schema_version = 1\n[[expect]]\nname = "a b"\ntarget = "x"\nopen = [1]\n',
        "F: expect[0].name: expected a short name (letters, digits, _.:-), got 'a b'",
    ),
    (
        'schema_version = 1\n[[expect]]\nname = "x"\ntarget = "x"\nopen = [1]\n'
        '[[expect]]\nname = "x"\ntarget = "y"\nopen = [1]\n',
        "F: expect[1].name: 'x' already names expect[0]",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD)
def test_bad_file_one_line_naming_file_and_key(tmp_path: Path, body: str, message: str) -> None:
    assert error_of(tmp_path, body) == message


def test_not_toml_and_unreadable(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "schema_version = = 1\n")
    assert msg.startswith("F: not valid TOML (")
    with pytest.raises(InputError, match=r"nope\.toml: cannot read \(No such file or directory\)"):
        load_expectations(str(tmp_path / "nope.toml"))
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(InputError, match=r"bin\.toml: not UTF-8 text"):
        load_expectations(str(tmp_path / "bin.toml"))


# -- judging -------------------------------------------------------------------------------


def policy(tmp_path: Path, body: str) -> object:
    return load_expectations(write(tmp_path, "schema_version = 1\n" + textwrap.dedent(body)))


def test_scenario_must_fail_is_met_and_must_pass_violated(tmp_path: Path) -> None:
    exp = policy(tmp_path, """
        [[expect]]
        target = "10.0.0.5"
        fail = ["mapi-client"]
        pass = ["pop3-retrieve"]
    """)
    rep = report(
        target(
            "10.0.0.5",
            [result("epm", 135, Status.CONNECTION_TIMEOUT)],
            [
                verdict("mapi-client", False, reason="MAPI client fails: 135 filtered"),
                verdict("pop3-retrieve", False, reason="POP3 retrieve fails: 110 refused"),
            ],
        )
    )
    assert exp.apply(rep) is False  # type: ignore[attr-defined]
    by = {e["scenario"]: e for e in rep.expectations or []}
    mapi, pop = by["mapi-client"], by["pop3-retrieve"]
    assert (mapi["met"], mapi["kind"], mapi["expected"], mapi["observed"]) == (
        True, "fail", "fail", "fail")
    assert mapi["evidence"] == "fail: MAPI client fails: 135 filtered"
    assert (pop["met"], pop["observed"]) == (False, "fail")
    assert pop["evidence"] == "fail: POP3 retrieve fails: 110 refused"
    assert pop["target"] == "10.0.0.5"
    assert pop["address"] == "10.0.0.5"
    assert rep.summary()["expectations"] == {"met": 1, "violated": 1}


def test_all_met_even_though_scenarios_fail_by_design(tmp_path: Path) -> None:
    exp = policy(tmp_path, """
        [[expect]]
        target = "*"
        fail = ["mapi-client"]
        closed = [135]
    """)
    rep = report(
        target("10.0.0.5", [result("epm", 135, Status.CONNECTION_REFUSED)],
               [verdict("mapi-client", False)])
    )
    assert exp.apply(rep) is True  # type: ignore[attr-defined]
    port = next(e for e in rep.expectations or [] if e["kind"] == "closed")
    assert port["evidence"] == "10.0.0.5:135 closed: epm connection-refused/closed (connection-refused)"
    assert port["checks"] == ["epm"]


def test_scenario_not_evaluated_is_violated(tmp_path: Path) -> None:
    exp = policy(tmp_path, '[[expect]]\ntarget = "10.0.0.5"\npass = ["nntp"]\n')
    rep = report(target("10.0.0.5", [result("tcp:25", 25)]))
    assert exp.apply(rep) is False  # type: ignore[attr-defined]
    (e,) = rep.expectations or []
    assert (e["observed"], e["met"]) == ("not evaluated", False)
    assert e["evidence"] == "no verdict for scenario nntp at 10.0.0.5 in this run"


@pytest.mark.parametrize(
    ("kind", "status", "state", "met"),
    [
        ("closed", Status.CONNECTION_REFUSED, None, True),
        ("closed", Status.CONNECTION_TIMEOUT, None, False),
        ("closed", Status.SUCCESS, None, False),
        ("filtered", Status.CONNECTION_TIMEOUT, None, True),
        ("filtered", Status.UNREACHABLE, None, True),
        ("filtered", Status.CONNECTION_REFUSED, None, False),
        ("not_open", Status.CONNECTION_REFUSED, None, True),
        ("not_open", Status.UNREACHABLE, None, True),
        ("not_open", Status.SUCCESS, None, False),
        ("open", Status.SUCCESS, None, True),
        ("open", Status.TLS_ERROR, PortState.OPEN, True),  # any check that connected
        ("open", Status.CONNECTION_REFUSED, None, False),
        ("not_open", Status.CONNECTION_CLOSED, PortState.UNKNOWN, False),  # cannot judge
    ],
)
def test_port_states(
    tmp_path: Path, kind: str, status: Status, state: PortState | None, met: bool
) -> None:
    exp = policy(tmp_path, f'[[expect]]\ntarget = "10.0.0.5"\n{kind} = [993]\n')
    rep = report(target("10.0.0.5", [result("imaps", 993, status, probe="imap", state=state)]))
    assert exp.apply(rep) is met  # type: ignore[attr-defined]
    (e,) = rep.expectations or []
    observed = (state or result("x", 1, status).port_state).value
    assert e["observed"] == observed
    assert e["evidence"].startswith(f"10.0.0.5:993 {observed}: imaps {status.value}/{observed}")


def test_open_beats_other_evidence_on_the_same_port(tmp_path: Path) -> None:
    exp = policy(tmp_path, '[[expect]]\ntarget = "10.0.0.5"\nclosed = [25]\n')
    rep = report(target("10.0.0.5", [
        result("smtp", 25, Status.PROTOCOL_ERROR, probe="smtp", state=PortState.OPEN,
               message="banner masked"),
        result("tcp:25", 25, Status.SUCCESS),
    ]))
    assert exp.apply(rep) is False  # type: ignore[attr-defined]
    (e,) = rep.expectations or []
    assert e["observed"] == "open"
    assert e["evidence"] == (
        "10.0.0.5:25 open: smtp protocol-error/open (banner masked); tcp:25 success/open"
    )


def test_port_not_checked_is_violated(tmp_path: Path) -> None:
    exp = policy(tmp_path, '[[expect]]\ntarget = "10.0.0.5"\nclosed = [135]\n')
    rep = report(target("10.0.0.5", [result("tcp:25", 25)]))
    assert exp.apply(rep) is False  # type: ignore[attr-defined]
    (e,) = rep.expectations or []
    assert (e["observed"], e["evidence"]) == (
        "not checked", "not checked: no check ran on 10.0.0.5:135")


def test_selectors_labels_cidr_address_of_a_name_and_no_match(tmp_path: Path) -> None:
    exp = policy(tmp_path, """
        [[expect]]
        name = "dmz"
        labels = { zone = "dmz" }
        closed = [135]

        [[expect]]
        name = "by-address"
        target = "10.0.0.7"
        closed = [135]

        [[expect]]
        name = "by-cidr"
        target = "10.0.0.0/31"
        closed = [135]

        [[expect]]
        name = "nobody"
        target = "192.0.2.1"
        closed = [135]
    """)
    mail = target(
        "mail.example.test",
        [result("tcp:135", 135, Status.CONNECTION_REFUSED, address=a)
         for a in ("10.0.0.6", "10.0.0.7")],
        labels={"zone": "dmz"},
    )
    other = target("10.0.0.1", [result("tcp:135", 135, Status.SUCCESS, address="10.0.0.1")],
                   labels={"zone": "lan"})
    rep = report(mail, other)
    assert exp.apply(rep) is False  # type: ignore[attr-defined]
    got = [(e["expectation"], e["target"], e["address"], e["met"]) for e in rep.expectations or []]
    assert got == [
        ("dmz", "mail.example.test", "10.0.0.6", True),
        ("dmz", "mail.example.test", "10.0.0.7", True),
        ("by-address", "mail.example.test", "10.0.0.7", True),
        ("by-cidr", "10.0.0.1", "10.0.0.1", False),
        ("nobody", "target=192.0.2.1", None, False),
    ]
    nobody = (rep.expectations or [])[-1]
    assert nobody["kind"] == "selector"
    assert nobody["evidence"] == "no target of this run matches target=192.0.2.1"


def test_unresolved_target_cannot_be_judged(tmp_path: Path) -> None:
    exp = policy(tmp_path, '[[expect]]\ntarget = "gone.example.test"\nnot_open = [135]\n')
    rep = report(target(
        "gone.example.test",
        [result("tcp:135", 135, Status.DNS_ERROR, address=None, target="gone.example.test")],
        error="name did not resolve",
    ))
    assert exp.apply(rep) is False  # type: ignore[attr-defined]
    (e,) = rep.expectations or []
    assert (e["address"], e["observed"]) == (None, "unknown")


def test_port_offset_maps_to_the_probed_port(tmp_path: Path) -> None:
    exp = policy(tmp_path, '[[expect]]\ntarget = "10.0.0.5"\nclosed = [135]\n')
    exp.add_port_checks([], port_offset=10000)  # type: ignore[attr-defined]
    rep = report(target("10.0.0.5", [result("tcp:135", 10135, Status.CONNECTION_REFUSED)]))
    assert exp.apply(rep) is True  # type: ignore[attr-defined]
    assert (rep.expectations or [])[0]["port"] == 135


def test_add_port_checks_only_for_uncovered_ports(tmp_path: Path) -> None:
    exp = policy(tmp_path, '[[expect]]\ntarget = "*"\nclosed = [135, 25]\nopen = [110]\n')
    smtp = load_all()["tcp"]
    defs = [CheckDef("smtp", "tcp", smtp.params_type(), 25), CheckDef("tcp:110", "tcp",
                                                                         smtp.params_type(), 25)]
    out = exp.add_port_checks(defs)  # type: ignore[attr-defined]
    added = [(d.id, d.probe, d.port) for d in out[2:]]
    # 25 is covered; tcp:110 is taken by a def on another port, so the id is prefixed.
    assert added == [("expect-tcp:110", "tcp", 110), ("tcp:135", "tcp", 135)]
    assert exp.added_checks == ["expect-tcp:110", "tcp:135"]  # type: ignore[attr-defined]


def test_scenario_expectations_need_a_profile_that_selects_them(tmp_path: Path) -> None:
    exp = policy(tmp_path, '[[expect]]\ntarget = "*"\npass = ["mapi-client"]\n')
    with pytest.raises(InputError, match=r"expect\[0\]\.pass: scenario 'mapi-client' needs a "
                                         r"profile \(-p/--profile\)"):
        exp.check_scenarios(False, None)  # type: ignore[attr-defined]
    with pytest.raises(InputError, match=r"is not evaluated by this run \(selected: pop3\)"):
        exp.check_scenarios(True, ["pop3"])  # type: ignore[attr-defined]
    exp.check_scenarios(True, ["mapi-client"])  # type: ignore[attr-defined]


# -- end to end on loopback ----------------------------------------------------------------


def test_run_expect_violated_exit_1_with_evidence(tmp_path: Path) -> None:
    closed = closed_port()
    with LoopbackServer() as srv:
        path = write(tmp_path, f"""
            schema_version = 1
            [[expect]]
            name = "must-be-shut"
            target = "127.0.0.1"
            closed = [{srv.port}, {closed}]
        """)
        out = exprobe("run", "127.0.0.1", "--expect", path, "--format", "json")
    assert out.returncode == 1, out.stderr
    rep = validate_report(json.loads(out.stdout))
    by_port = {e["port"]: e for e in rep["expectations"]}
    assert by_port[srv.port]["met"] is False
    assert by_port[srv.port]["evidence"] == (
        f"127.0.0.1:{srv.port} open: tcp:{srv.port} success/open")
    assert by_port[closed]["met"] is True
    # The run added the TCP checks itself: no --port was given.
    assert sorted(r["id"] for r in rep["targets"][0]["results"]) == sorted(
        [f"tcp:{srv.port}", f"tcp:{closed}"])
    assert rep["summary"]["expectations"] == {"met": 1, "violated": 1}


def test_run_expect_all_met_exit_0_although_checks_fail(tmp_path: Path) -> None:
    closed = closed_port()
    path = write(tmp_path, f"""
        schema_version = 1
        [[expect]]
        target = "127.0.0.1"
        not_open = [{closed}]
    """)
    out = exprobe("run", "127.0.0.1", "--port", str(closed), "--expect", path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "MET" in out.stdout
    assert "expectations: 1 met, 0 violated" in out.stdout


def test_run_bad_expectations_file_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "schema_version = 1\n[[expect]]\ntarget = \"x\"\nopen = [0]\n")
    out = exprobe("run", "127.0.0.1", "--port", "1", "--expect", path)
    assert out.returncode == 2
    assert out.stderr == f"exprobe: error: {path}: expect[0].open[0]: 0 is not a port (1-65535)\n"
    out = exprobe("run", "127.0.0.1", "--port", "1", "--expect",
                  write(tmp_path, '[[expect]]\ntarget="*"\npass=["x"]\n', "p2.toml"))
    assert out.returncode == 2
    assert "schema_version: missing" in out.stderr
    scen = write(tmp_path, 'schema_version = 1\n[[expect]]\ntarget="*"\npass=["x"]\n', "p3.toml")
    out = exprobe("run", "127.0.0.1", "--port", "1", "--expect", scen)
    assert out.returncode == 2
    assert "expect[0].pass: scenario 'x' needs a profile (-p/--profile)" in out.stderr


def test_run_expect_jsonl_records(tmp_path: Path) -> None:
    closed = closed_port()
    path = write(tmp_path, f'schema_version = 1\n[[expect]]\ntarget = "127.0.0.1"\nclosed = [{closed}]\n')
    out = exprobe("run", "127.0.0.1", "--expect", path, "--format", "jsonl")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["type"] for r in records] == ["check", "expectation", "summary"]
    assert records[1]["met"] is True
    assert records[1]["port"] == closed
    assert records[2]["expectations"] == {"met": 1, "violated": 0}
