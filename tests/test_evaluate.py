"""Scenario evaluation as pure functions: results in, verdicts out (no network, no registry)."""

from __future__ import annotations

from typing import Any

import pytest

from exprobe.engine.evaluate import evaluate, evaluate_scenario, hop_text
from exprobe.profile.model import Hint, Requirement, Scenario
from exprobe.result import CheckResult, RunReport, ScenarioVerdict, TargetReport, scenario_rollup
from exprobe.status import PortState, Status

ADDR = "10.0.0.5"
R = Requirement.parse

STATE = {
    Status.SUCCESS: PortState.OPEN,
    Status.CONNECTION_REFUSED: PortState.CLOSED,
    Status.CONNECTION_TIMEOUT: PortState.FILTERED,
    Status.UNREACHABLE: PortState.FILTERED,
    Status.DNS_ERROR: PortState.UNKNOWN,
}


def res(
    cid: str,
    port: int,
    status: Status = Status.SUCCESS,
    *,
    address: str | None = ADDR,
    parent: str | None = None,
    facts: dict[str, Any] | None = None,
    warnings: tuple[str, ...] = (),
    failed_step: str | None = None,
    message: str = "",
    probe: str = "tcp",
) -> CheckResult:
    if failed_step is None and status in (
        Status.CONNECTION_REFUSED,
        Status.CONNECTION_TIMEOUT,
        Status.UNREACHABLE,
    ):
        failed_step = "connect"
    return CheckResult(
        id=cid,
        probe=probe,
        target="mail.example",
        address=address,
        port=port,
        status=status,
        port_state=STATE.get(status, PortState.OPEN),
        failed_step=failed_step,
        elapsed_ms=1.0,
        connect_ms=1.0,
        started_at="2026-01-01T00:00:00.000Z",
        message=message,
        facts=facts or {},
        warnings=warnings,
        parent=parent,
    )


def epm(
    *,
    status: Status = Status.SUCCESS,
    registered: tuple[str, ...] = ("ds", "is", "mta"),
    ports: dict[str, list[int]] | None = None,
) -> CheckResult:
    ports = ports or {"ds": [1025], "is": [1026], "mta": [1027]}
    comps = {
        c: {"registered": c in registered, "ports": ports.get(c, []) if c in registered else []}
        for c in ("ds", "is", "mta")
    }
    facts = {"components": comps} if status is Status.SUCCESS else {}
    return res("epm", 135, status, facts=facts, probe="msrpc-epm")


def derived(comp: str, port: int, status: Status = Status.SUCCESS, **kw: Any) -> CheckResult:
    facts = {"component": comp} if kw.pop("with_fact", True) else {}
    return res(f"epm/{comp}:{port}", port, status, parent="epm", facts=facts, **kw)


SMTP = Scenario("smtp-inbound", "Inbound SMTP", vantage="the sending SMTP host", all=(R("smtp"),))
POP3 = Scenario(
    "pop3-retrieve", "POP3 retrieve", vantage="the client subnet", any=((R("pop3"), R("pop3s")),)
)
IMAP = Scenario(
    "imap-retrieve", "IMAP4 retrieve", vantage="the client subnet", any=((R("imap"), R("imaps")),)
)
PIN_HINT = Hint("Pin the DS and IS ports", ("155831",), ("epm.ds", "epm.is"), ("blocked",))
NOT_REG_HINT = Hint("Start the services", (), ("epm.ds", "epm.is"), ("not-registered",))
EPM_HINT = Hint("The endpoint mapper misbehaves", (), ("epm",), ("application-error",))
MAPI = Scenario(
    "mapi-client",
    "MAPI client",
    vantage="the client subnet",
    all=(R("epm"), R("epm.ds"), R("epm.is")),
    hints=(PIN_HINT, NOT_REG_HINT, EPM_HINT),
)
SITE_RPC = Scenario(
    "intersite-rpc", "Intersite RPC", vantage="the other site", all=(R("epm"), R("epm.mta"))
)


def one(s: Scenario, *results: CheckResult, address: str | None = ADDR) -> ScenarioVerdict:
    return evaluate_scenario(s, "mail.example", address, results)


# -- all / any ------------------------------------------------------------------------------


def test_all_passes() -> None:
    v = one(SMTP, res("smtp", 25, probe="smtp"))
    assert (v.verdict, v.reason) == ("pass", "Inbound SMTP works: 25 open")
    assert (v.checks, v.via, v.hints, v.warnings) == (("smtp",), None, (), ())
    assert (v.id, v.title, v.target, v.address) == (
        "smtp-inbound",
        "Inbound SMTP",
        "mail.example",
        ADDR,
    )


def test_all_fails_naming_the_refused_port() -> None:
    v = one(SMTP, res("smtp", 25, Status.CONNECTION_REFUSED))
    assert v.verdict == "fail"
    assert v.reason == "Inbound SMTP fails: 25 refused (connection-refused)"
    assert v.checks == ("smtp",)
    assert v.hints == (
        "Nothing accepted TCP 25 on 10.0.0.5 (refused): start the service there, or stop the"
        " firewall rejecting it from the sending SMTP host.",
    )


def test_any_alternative_carries_the_pass_via_995() -> None:
    v = one(POP3, res("pop3", 110, Status.CONNECTION_TIMEOUT), res("pop3s", 995))
    assert v.verdict == "pass"
    assert v.reason == "POP3 retrieve works via 995; 110 filtered (connection-timeout)"
    assert v.via == "pop3s"
    assert v.checks == ("pop3s",)
    assert v.hints == ()


def test_any_first_alternative_wins_when_both_work() -> None:
    v = one(POP3, res("pop3", 110), res("pop3s", 995))
    assert (v.verdict, v.reason, v.via, v.checks) == (
        "pass",
        "POP3 retrieve works via 110",
        "pop3",
        ("pop3",),
    )


def test_any_all_alternatives_fail_names_each_hop() -> None:
    v = one(
        IMAP,
        res("imap", 143, Status.CONNECTION_TIMEOUT),
        res("imaps", 993, Status.CONNECTION_REFUSED),
    )
    assert v.verdict == "fail"
    assert v.reason == (
        "IMAP4 retrieve fails: 143 filtered (connection-timeout) and 993 refused (connection-refused)"
    )
    assert v.checks == ("imap", "imaps")
    assert v.hints == (
        "Open TCP 143 from the client subnet to 10.0.0.5.",
        "Nothing accepted TCP 993 on 10.0.0.5 (refused): start the service there, or stop the"
        " firewall rejecting it from the client subnet.",
    )


def test_any_both_filtered_gives_one_open_hint_for_either_port() -> None:
    v = one(
        IMAP, res("imap", 143, Status.CONNECTION_TIMEOUT), res("imaps", 993, Status.UNREACHABLE)
    )
    assert v.reason == (
        "IMAP4 retrieve fails: 143 filtered (connection-timeout) and 993 filtered (unreachable)"
    )
    assert v.hints == ("Open TCP 143 or 993 from the client subnet to 10.0.0.5.",)


def test_all_and_any_together() -> None:
    s = Scenario("x", "Mixed", all=(R("smtp"),), any=((R("pop3"), R("pop3s")), (R("ldap"),)))
    ok = [res("smtp", 25), res("pop3", 110, Status.CONNECTION_TIMEOUT), res("pop3s", 995)]
    v = one(s, *ok, res("ldap", 389))
    assert v.verdict == "pass"
    assert v.reason == "Mixed works: 25 open, 389 open; via 995; 110 filtered (connection-timeout)"
    assert v.via == "pop3s"
    assert v.checks == ("smtp", "pop3s", "ldap")
    v = one(s, *ok, res("ldap", 389, Status.CONNECTION_REFUSED))
    assert v.verdict == "fail"
    assert v.reason == "Mixed fails: 389 refused (connection-refused)"
    assert v.checks == ("ldap",)


def test_several_any_groups_each_name_their_via() -> None:
    s = Scenario("x", "Two groups", any=((R("a"), R("b")), (R("c"), R("d"))))
    v = one(s, res("a", 1, Status.CONNECTION_TIMEOUT), res("b", 2), res("c", 3), res("d", 4))
    assert v.verdict == "pass"
    assert v.via == "b, c"
    assert v.reason == "Two groups works via 2, via 3; 1 filtered (connection-timeout)"


def test_missing_result_is_not_run() -> None:
    v = one(SMTP)
    assert (v.verdict, v.reason, v.checks) == (
        "fail",
        "Inbound SMTP fails: smtp not run",
        ("smtp",),
    )
    assert v.hints == ()


def test_results_of_another_address_do_not_count() -> None:
    t = TargetReport(
        "mail.example", addresses=[ADDR], results=[res("smtp", 25, address="10.0.0.9")]
    )
    evaluate(RunReport(started_at="x", targets=[t]), [SMTP])
    assert [v.reason for v in t.scenarios] == ["Inbound SMTP fails: smtp not run"]


def test_open_port_with_a_protocol_failure() -> None:
    r = res(
        "smtp",
        25,
        Status.APPLICATION_ERROR,
        failed_step="greeting",
        message="554  no\tservice\r\n here",
    )
    v = one(SMTP, r)
    assert (
        v.reason
        == "Inbound SMTP fails: 25 open, greeting failed (application-error: 554 no service here)"
    )
    assert v.hints == ()  # nothing for a firewall to open


def test_hop_text_cuts_long_messages() -> None:
    r = res("x", 25, Status.PROTOCOL_ERROR, failed_step="greeting", message="x" * 500)
    text = hop_text(r)
    assert text == "25 open, greeting failed (protocol-error: " + "x" * 79 + "…)"


@pytest.mark.parametrize(
    ("status", "state", "expected"),
    [
        (Status.SUCCESS, PortState.OPEN, "25 open"),
        (Status.CONNECTION_REFUSED, PortState.CLOSED, "25 refused (connection-refused)"),
        (Status.CONNECTION_TIMEOUT, PortState.FILTERED, "25 filtered (connection-timeout)"),
        (Status.UNREACHABLE, PortState.FILTERED, "25 filtered (unreachable)"),
        (Status.CONNECTION_CLOSED, PortState.UNKNOWN, "25 connection-closed: reset"),
        (Status.SKIPPED, PortState.UNKNOWN, "25 skipped"),
        (Status.DNS_ERROR, PortState.UNKNOWN, "name did not resolve (dns-error)"),
    ],
)
def test_hop_text_in_firewall_words(status: Status, state: PortState, expected: str) -> None:
    r = res("x", 25, status, message="reset")
    r = CheckResult(**{**{f: getattr(r, f) for f in r.__slots__}, "port_state": state})
    assert hop_text(r) == expected


# -- the endpoint mapper and its derived checks ---------------------------------------------


def test_epm_failed_is_the_breaking_hop_not_the_missing_derived_checks() -> None:
    v = one(MAPI, epm(status=Status.CONNECTION_TIMEOUT))
    assert v.verdict == "fail"
    assert v.reason == (
        "MAPI client fails: 135 filtered (connection-timeout): the endpoint mapper cannot be"
        " asked where the DS and IS listen"
    )
    assert v.checks == ("epm",)
    # the pinning hint is about DS/IS ports, which were never learnt: not shown
    assert v.hints == ("Open TCP 135 from the client subnet to 10.0.0.5.",)


def test_epm_failed_singular_component() -> None:
    s = Scenario("x", "Store only", all=(R("epm.is"),))
    v = one(s, epm(status=Status.CONNECTION_TIMEOUT))
    assert v.reason == (
        "Store only fails: 135 filtered (connection-timeout): the endpoint mapper cannot be"
        " asked where the IS listens"
    )


def test_epm_application_error_selects_its_hint() -> None:
    r = res("epm", 135, Status.APPLICATION_ERROR, failed_step="epm-bind", message="bind_nak")
    v = one(MAPI, r)
    assert v.reason == (
        "MAPI client fails: 135 open, epm-bind failed (application-error: bind_nak): the endpoint"
        " mapper cannot be asked where the DS and IS listen"
    )
    assert v.hints == ("The endpoint mapper misbehaves",)


def test_component_not_registered() -> None:
    v = one(MAPI, epm(registered=("ds", "mta")), derived("ds", 1025))
    assert v.verdict == "fail"
    assert v.reason == "MAPI client fails: 135 open, IS not registered on the endpoint mapper"
    assert v.checks == ("epm",)
    assert v.hints == ("Start the services",)


def test_derived_check_filtered_names_port_status_and_pinning_hint() -> None:
    results = (epm(), derived("ds", 1025), derived("is", 1026, Status.CONNECTION_TIMEOUT))
    v = one(MAPI, *results)
    assert v.verdict == "fail"
    assert v.reason == (
        "MAPI client fails: 135 open, IS registered on 10.0.0.5:1026, 1026 filtered"
        " (connection-timeout)"
    )
    assert v.checks == ("epm", "epm/is:1026")
    assert v.hints == (
        "Open TCP 1026 (IS) from the client subnet to 10.0.0.5.",
        "Pin the DS and IS ports (KB 155831)",
    )


def test_derived_checks_all_open_pass() -> None:
    v = one(MAPI, epm(), derived("ds", 1025), derived("is", 1026), derived("mta", 1027))
    assert v.verdict == "pass"
    assert v.reason == "MAPI client works: 135 open, DS on 1025 open, IS on 1026 open"
    assert v.checks == ("epm", "epm/ds:1025", "epm/is:1026")


def test_a_dropped_is_port_does_not_break_the_mta_scenario() -> None:
    results = (epm(), derived("is", 1026, Status.CONNECTION_TIMEOUT), derived("mta", 1027))
    v = one(SITE_RPC, *results)
    assert (v.verdict, v.reason) == ("pass", "Intersite RPC works: 135 open, MTA on 1027 open")


def test_component_on_several_ports_needs_every_one() -> None:
    results = (
        epm(ports={"ds": [1025], "is": [1026, 1030], "mta": [1027]}),
        derived("ds", 1025),
        derived("is", 1026),
        derived("is", 1030, Status.CONNECTION_REFUSED),
    )
    v = one(MAPI, *results)
    assert v.reason == (
        "MAPI client fails: 135 open, IS registered on 10.0.0.5:1026, 10.0.0.5:1030, 1030 refused"
        " (connection-refused)"
    )
    assert v.checks == ("epm", "epm/is:1030")


def test_plain_tcp_follow_up_is_recognised_by_its_id() -> None:
    results = (
        epm(),
        derived("ds", 1025, with_fact=False),
        derived("is", 1026, Status.CONNECTION_TIMEOUT, with_fact=False),
    )
    v = one(MAPI, *results)
    assert v.reason.endswith("IS registered on 10.0.0.5:1026, 1026 filtered (connection-timeout)")


def test_registered_but_follow_up_missing_is_not_run() -> None:
    v = one(MAPI, epm(), derived("ds", 1025))
    assert v.reason == "MAPI client fails: 135 open, IS registered on 1026, not checked"
    assert v.hints == ()


def test_registered_without_a_tcp_endpoint() -> None:
    v = one(MAPI, epm(ports={"ds": [1025], "is": []}), derived("ds", 1025))
    assert v.reason == "MAPI client fails: 135 open, IS registered but not on a TCP port"
    assert v.hints == ("Start the services",)  # kind "not-registered"


def test_epm_without_component_facts_counts_as_not_registered() -> None:
    v = one(MAPI, res("epm", 135))
    assert v.reason == (
        "MAPI client fails: 135 open, DS not registered on the endpoint mapper;"
        " 135 open, IS not registered on the endpoint mapper"
    )


# -- hints and warnings ---------------------------------------------------------------------


def test_hints_only_for_this_failure() -> None:
    any_failure = Hint("always when failing")
    blocked_smtp = Hint("smtp blocked", ("1",), ("smtp",), ("blocked",))
    proto_smtp = Hint("smtp garbled", (), ("smtp",), ("protocol-error",))
    refused_only = Hint("refused only", (), (), ("connection-refused",))
    s = Scenario(
        "s", "Send", all=(R("smtp"),), hints=(any_failure, blocked_smtp, proto_smtp, refused_only)
    )
    v = one(s, res("smtp", 25, Status.CONNECTION_TIMEOUT))
    assert v.hints == (
        "Open TCP 25 from here to 10.0.0.5.",
        "always when failing",
        "smtp blocked (KB 1)",
    )
    v = one(s, res("smtp", 25, Status.PROTOCOL_ERROR, failed_step="greeting"))
    assert v.hints == ("always when failing", "smtp garbled")
    v = one(s, res("smtp", 25, Status.CONNECTION_REFUSED))
    assert v.hints[1:] == ("always when failing", "smtp blocked (KB 1)", "refused only")
    assert one(s, res("smtp", 25)).hints == ()


def test_hints_of_a_passing_alternative_are_not_shown() -> None:
    s = Scenario(
        "p", "POP3", any=((R("pop3"), R("pop3s")),), hints=(Hint("110 down", (), ("pop3",)),)
    )
    v = one(s, res("pop3", 110, Status.CONNECTION_TIMEOUT), res("pop3s", 995))
    assert v.verdict == "pass"
    assert v.hints == ()


def test_warnings_are_gathered_with_their_port() -> None:
    v = one(
        POP3,
        res("pop3", 110, warnings=("banner masked",)),
        res("pop3s", 995, warnings=("certificate expires in 3 days", "banner masked")),
    )
    assert v.verdict == "pass"
    assert v.warnings == (
        "110: banner masked",
        "995: certificate expires in 3 days",
        "995: banner masked",
    )


def test_warnings_of_derived_checks() -> None:
    e = epm()
    e = CheckResult(
        **{
            **{f: getattr(e, f) for f in e.__slots__},
            "warnings": ("IS: registered on 1026, expected 1601",),
        }
    )
    v = one(MAPI, e, derived("ds", 1025), derived("is", 1026, warnings=("slow",)))
    assert v.warnings == ("135: IS: registered on 1026, expected 1601", "1026: slow")


# -- targets: unresolved names, several addresses ------------------------------------------


def test_unresolved_target_fails_with_the_dns_reason() -> None:
    t = TargetReport("nowhere.invalid", error="dns-error: Name or service not known")
    t.results = [res("smtp", 25, Status.DNS_ERROR, address=None)]
    report = RunReport(started_at="x", targets=[t])
    evaluate(report, [SMTP, POP3])
    assert [(v.id, v.address, v.verdict) for v in t.scenarios] == [
        ("smtp-inbound", None, "fail"),
        ("pop3-retrieve", None, "fail"),
    ]
    assert t.scenarios[0].reason == (
        "Inbound SMTP fails: nowhere.invalid did not resolve (dns-error: Name or service not known)"
    )
    assert t.scenarios[1].checks == ("pop3", "pop3s")
    assert t.scenarios[1].hints == ("Check that nowhere.invalid resolves from the client subnet.",)


def test_a_verdict_per_address_and_the_rollup() -> None:
    a, b = "10.0.0.5", "10.0.0.6"
    t = TargetReport("mail.example", addresses=[a, b])
    t.results = [
        res("smtp", 25, address=a),
        res("smtp", 25, Status.CONNECTION_TIMEOUT, address=b),
        res("pop3", 110, address=a),
        res("pop3s", 995, address=a),
        res("pop3", 110, address=b),
        res("pop3s", 995, Status.CONNECTION_REFUSED, address=b),
    ]
    report = RunReport(started_at="x", targets=[t])
    evaluate(report, [SMTP, POP3])
    assert [(v.id, v.address, v.verdict) for v in t.scenarios] == [
        ("smtp-inbound", a, "pass"),
        ("smtp-inbound", b, "fail"),
        ("pop3-retrieve", a, "pass"),
        ("pop3-retrieve", b, "pass"),
    ]
    assert t.scenarios[1].reason == "Inbound SMTP fails: 25 filtered (connection-timeout)"
    assert t.scenarios[1].hints == ("Open TCP 25 from the sending SMTP host to 10.0.0.6.",)
    assert scenario_rollup(t.scenarios) == {"smtp-inbound": "some", "pop3-retrieve": "all"}
    d = report.to_dict()
    assert d["targets"][0]["scenario_summary"] == {"smtp-inbound": "some", "pop3-retrieve": "all"}
    assert d["summary"]["scenarios"] == {"pass": 3, "fail": 1}


# -- the table ------------------------------------------------------------------------------


def test_table_shows_a_rollup_line_per_scenario_for_several_addresses() -> None:
    from exprobe.report.plain import render

    a, b = "10.0.0.5", "10.0.0.6"
    t = TargetReport("mail.example", addresses=[a, b])
    t.results = [
        res("smtp", 25, address=a),
        res("smtp", 25, Status.CONNECTION_TIMEOUT, address=b),
        res("pop3", 110, address=a, message="+OK \x1b[31mred\x1b[0m"),
        res("pop3s", 995, address=a),
        res("pop3", 110, address=b),
        res("pop3s", 995, address=b),
    ]
    report = RunReport(started_at="x", targets=[t])
    evaluate(report, [SMTP, POP3])
    text = render(report, verbose=True)
    rows = [[c.strip() for c in line.split("│")] for line in text.splitlines() if "│" in line]
    assert rows[:6] == [
        ["mail.example", a, "Inbound SMTP", "PASS", "Inbound SMTP works: 25 open"],
        [
            "mail.example",
            b,
            "Inbound SMTP",
            "FAIL",
            "Inbound SMTP fails: 25 filtered (connection-timeout)",
        ],
        ["mail.example", "2 addresses", "Inbound SMTP", "SOME", "passes on 1 of 2 addresses"],
        ["mail.example", a, "POP3 retrieve", "PASS", "POP3 retrieve works via 110"],
        ["mail.example", b, "POP3 retrieve", "PASS", "POP3 retrieve works via 110"],
        ["mail.example", "2 addresses", "POP3 retrieve", "ALL", "passes on 2 of 2 addresses"],
    ]
    # -v: a tree per verdict, with the deciding checks and the hints
    assert "FAIL Inbound SMTP  10.0.0.6" in text
    assert "smtp  tcp 25  filtered connection-timeout  at connect" in text
    assert "hint: Open TCP 25 from the sending SMTP host to 10.0.0.6." in text
    assert "PASS POP3 retrieve  10.0.0.5  via pop3" in text
    assert "\x1b" not in text
    assert "+OK \\x1b[31mred\\x1b[0m" in text


def test_table_single_address_has_no_rollup_line() -> None:
    from exprobe.report.plain import render

    t = TargetReport("mail.example", addresses=[ADDR], results=[res("smtp", 25)])
    report = RunReport(started_at="x", targets=[t])
    evaluate(report, [SMTP])
    text = render(report)
    assert "addresses │" not in text
    assert "SOME" not in text
    assert "ALL" not in text


def test_a_result_of_no_address_counts_for_every_address() -> None:
    # mx and autodiscover open no connection of their own: one result for the whole target
    # (address None) that every address's scenarios must see, not "mx not run".
    t = TargetReport(
        "mail.example", addresses=[ADDR, "fd00::5"], results=[res("smtp", 25, address=None)]
    )
    evaluate(RunReport(started_at="x", targets=[t]), [SMTP])
    assert [(v.address, v.verdict) for v in t.scenarios] == [(ADDR, "pass"), ("fd00::5", "pass")]
