"""Hop location, without a network: the ICMP error codec, the break analysis, and how
reports carry a break (JSON schema, table, diff, Nagios, Prometheus, CLI errors)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exprobe.cli import complete_optional_values
from exprobe.diff import diff_reports
from exprobe.engine import tracing
from exprobe.engine.evaluate import hop_text
from exprobe.engine.scheduler import Limits
from exprobe.hops import Break, locate
from exprobe.net.trace import Reply
from exprobe.report import nagios, prometheus
from exprobe.report.table import hop_line
from exprobe.status import Status, classify_connect_error
from exprobe.wire import icmperr
from exprobe.wire.icmperr import IcmpError
from tests.helpers import exprobe, validate_report
from tests.reports import report, result, target

SERVER = "10.9.4.2"
R = ["10.9.1.2", "10.9.2.2", "10.9.3.2"]


# -- the codec ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "name", "text"),
    [
        (IcmpError(4, 3, 13, "10.1.0.1", 113), "admin-prohibited",
         "admin-prohibited (ICMP 3/13) from 10.1.0.1"),
        (IcmpError(4, 11, 0, "10.1.0.1", 113), "time-exceeded",
         "time-exceeded (ICMP 11/0) from 10.1.0.1"),
        (IcmpError(4, 3, 3, "192.0.2.7", 111), "port-unreachable",
         "port-unreachable (ICMP 3/3) from 192.0.2.7"),
        (IcmpError(6, 1, 1, "fd00::1", 13), "admin-prohibited",
         "admin-prohibited (ICMPv6 1/1) from fd00::1"),
        (IcmpError(6, 3, 0, "fd00::1", 113), "time-exceeded",
         "time-exceeded (ICMPv6 3/0) from fd00::1"),
        (IcmpError(4, 5, 1, None, 113), "type 5 code 1", "type 5 code 1 (ICMP 5/1)"),
    ],
)  # fmt: skip
def test_codec_round_trip_and_names(err: IcmpError, name: str, text: str) -> None:
    level, kind = ((socket.IPPROTO_IP, icmperr.IP_RECVERR) if err.family == 4
                   else (socket.IPPROTO_IPV6, icmperr.IPV6_RECVERR))  # fmt: skip
    assert icmperr.decode(level, kind, icmperr.encode(err)) == err
    assert err.name == name
    assert err.describe() == text


def test_codec_ignores_what_is_not_an_icmp_error() -> None:
    data = icmperr.encode(IcmpError(4, 3, 13, "10.1.0.1", 113))
    assert icmperr.decode(socket.IPPROTO_IP, 99, data) is None  # another option
    local = bytearray(data)
    local[4] = icmperr.ORIGIN_LOCAL  # e.g. EMSGSIZE from this host's own stack
    assert icmperr.decode(socket.IPPROTO_IP, icmperr.IP_RECVERR, bytes(local)) is None
    assert icmperr.decode(socket.IPPROTO_IP, icmperr.IP_RECVERR, data[:15]) is None
    assert icmperr.decode(socket.IPPROTO_IP, icmperr.IP_RECVERR, data + bytes(300)) is None


@given(st.binary(max_size=400), st.sampled_from([(0, 11), (41, 25), (0, 1)]))
def test_codec_never_raises(data: bytes, where: tuple[int, int]) -> None:
    err = icmperr.decode(where[0], where[1], data)
    assert err is None or isinstance(err.describe(), str)


def test_classification_names_the_sender() -> None:
    exc = OSError(113, "No route to host")
    exc.icmp = IcmpError(4, 3, 13, "10.1.0.1", 113)  # type: ignore[attr-defined]
    c = classify_connect_error(exc)
    assert (c.status, c.port_state.value, c.reason) == (
        Status.UNREACHABLE, "filtered",
        "unreachable (admin-prohibited (ICMP 3/13) from 10.1.0.1, EHOSTUNREACH)")  # fmt: skip
    assert c.icmp == {"type": 3, "code": 13, "name": "admin-prohibited", "family": 4,
                      "from": "10.1.0.1", "errno": "EHOSTUNREACH"}  # fmt: skip
    refused = ConnectionRefusedError(111, "Connection refused")
    refused.icmp = IcmpError(4, 3, 3, "10.1.0.1", 111)  # type: ignore[attr-defined]
    c = classify_connect_error(refused)
    # ICMP port-unreachable, not a RST: the status stays, the port is filtered (nmap's word).
    assert (c.status, c.port_state.value, c.reason) == (
        Status.CONNECTION_REFUSED, "filtered", "refused (port-unreachable (ICMP 3/3) from 10.1.0.1)")
    plain = classify_connect_error(ConnectionRefusedError(111, "Connection refused"))
    assert (plain.reason, plain.icmp) == ("refused (RST)", None)


# -- the analysis -------------------------------------------------------------------------


def hops(*kinds: str, end_addr: str = SERVER, icmp: IcmpError | None = None) -> list[Reply]:
    """Replies by TTL: 'h' time exceeded from router n, 'o' SYN-ACK, 'r' RST, 'i' ICMP, '.' silent."""
    out = []
    for ttl, k in enumerate(kinds, 1):
        if k == "h":
            out.append(Reply(ttl, "hop", R[ttl - 1], 1.0,
                             IcmpError(4, 11, 0, R[ttl - 1], 113)))  # fmt: skip
        elif k == "o":
            out.append(Reply(ttl, "open", end_addr, 1.0))
        elif k == "r":
            out.append(Reply(ttl, "reset", end_addr, 1.0))
        elif k == "i":
            assert icmp is not None
            out.append(Reply(ttl, "icmp", icmp.offender, 1.0, icmp))
        else:
            out.append(Reply(ttl, "silent"))
    return out


REF = hops("h", "h", "h", "o", "o", "o")  # the server is 4 hops away


def brief(b: Break | None) -> tuple[Any, ...] | None:
    return None if b is None else (b.kind, b.hop, b.address, b.exact, b.summary)


@pytest.mark.parametrize(
    ("failing", "expected"),
    [
        (hops("h", ".", ".", ".", ".", "."),
         ("drop", 1, R[0], True, f"dropped by hop 1 ({R[0]}), the last hop that forwards it; 25 passes there")),
        (hops("h", "h", ".", ".", ".", "."),
         ("drop", 2, R[1], True, f"dropped by hop 2 ({R[1]}), the last hop that forwards it; 25 passes there")),
        (hops("h", "h", "h", ".", ".", "."),
         ("drop", 3, R[2], False, f"dropped by hop 3 ({R[2]}) or by the server; 25 passes there")),
        (hops(".", ".", ".", ".", ".", "."),
         ("drop", None, None, False, f"dropped before hop 1 ({R[0]}) answers; 25 passes there")),
        (hops("h", "r", "r", "r", "r", "r"),
         ("reset", 1, R[0], True, f"reset by hop 1 ({R[0]}), not by the server")),
        (hops("h", "h", "h", "r", "r", "r"),
         ("reset", 3, R[2], False, f"reset by the server or by hop 3 ({R[2]}) in front of it")),
        (hops("h", "o", "o", "o", "o", "o"),
         ("intercepted", 2, R[1], True, f"answered at hop 2 ({R[1]}), before the server (4 hops"
          " away): a transparent proxy or inspection device sits there")),
        (hops("h", "i", "i", "i", "i", "i", icmp=IcmpError(4, 3, 13, R[0], 113)),
         ("icmp", 1, R[0], True, f"admin-prohibited from hop 1 ({R[0]})")),
        (hops("h", "h", "h", "i", "i", "i", icmp=IcmpError(4, 3, 3, SERVER, 111)),
         ("icmp", 4, SERVER, True, f"port-unreachable from the server {SERVER}")),
        (hops("h", "h", "h", "o", "o", "o"), None),
    ],
)  # fmt: skip
def test_locate_with_a_reference(failing: list[Reply], expected: tuple[Any, ...] | None) -> None:
    assert brief(locate(failing, SERVER, 1026, REF, 25)) == expected


def test_locate_without_a_reference_never_claims_a_hop_as_exact() -> None:
    b = locate(hops("h", "h", ".", "."), SERVER, 1026)
    assert brief(b) == ("drop", 2, R[1], False, f"dropped after hop 2 ({R[1]}), the last hop that answers")
    assert b is not None
    assert "server's distance is unknown" in b.evidence
    b = locate(hops(".", ".", "."), SERVER, 1026)
    assert brief(b) == ("drop", None, None, False, "dropped; no hop answers for 1026")
    b = locate(hops("h", "r", "r"), SERVER, 1026)
    assert brief(b) == ("reset", 1, R[0], False, "reset at TTL 2")
    assert locate(hops("h", "o", "o"), SERVER, 1026) is None  # nothing to compare with


def test_server_on_the_same_link() -> None:
    ref = hops("o", "o")
    assert brief(locate(hops(".", "."), SERVER, 1026, ref, 25)) == (
        "drop", 1, SERVER, True, f"dropped by the server {SERVER} itself; 25 passes there")
    assert brief(locate(hops("r", "r"), SERVER, 1026, ref, 25)) == (
        "reset", 1, SERVER, True, f"reset by the server {SERVER}")


def test_trimmed_and_reference_choice() -> None:
    assert [h.ttl for h in tracing.trimmed(hops("h", "h", ".", ".", "."))] == [1, 2, 3]
    assert [h.ttl for h in tracing.trimmed(hops("h", "o", "o", "o"))] == [1, 2]
    # The farthest answering port is the reference: a nearer one is a middlebox's.
    traces = {(SERVER, 25): hops("h", "o", "o", "o"), (SERVER, 80): REF,
              (SERVER, 1026): hops("h", ".", ".", ".")}  # fmt: skip
    connected = {(SERVER, 25), (SERVER, 80)}
    assert tracing.farthest(traces, connected, SERVER, 1026) == 80
    assert tracing.farthest(traces, connected, SERVER, 80) == 25
    assert tracing.farthest(traces, set(), SERVER, 1026) is None


# -- reports --------------------------------------------------------------------------------


def traced_report(brk: Break | None) -> Any:
    r = result("epm/is:1026", 1026, Status.CONNECTION_TIMEOUT, address=SERVER)
    trace = tracing.trace_dict(1026, tracing.TraceOptions(), hops("h", "h", ".", "."), 25, REF, brk)
    ok = result("smtp", 25, address=SERVER, probe="smtp")
    return report(target(SERVER, [ok, dataclasses.replace(r, trace=trace)]))


BROKEN = locate(hops("h", "h", ".", "."), SERVER, 1026, REF, 25)


def test_report_carries_the_trace_and_validates() -> None:
    d = validate_report(traced_report(BROKEN).to_dict())
    tr = d["targets"][0]["results"][1]["trace"]
    assert tr["break"] == {
        "kind": "drop", "hop": 2, "address": R[1], "exact": True,
        "summary": f"dropped by hop 2 ({R[1]}), the last hop that forwards it; 25 passes there",
        "evidence": f"hop 2 ({R[1]}) answers 'time exceeded' for 1026; hop 3 ({R[2]}) answers"
                    " for 25 but never for 1026; the server is 4 hops away",
    }  # fmt: skip
    assert [h["reply"] for h in tr["hops"]] == ["hop", "hop", "silent"]
    assert tr["reference"]["server_hops"] == 4
    assert hop_text(traced_report(BROKEN).targets[0].results[1]) == (
        f"1026 filtered (connection-timeout), dropped by hop 2 ({R[1]}), the last hop that"
        " forwards it; 25 passes there")


def test_diff_reports_a_break_that_moved() -> None:
    before = traced_report(BROKEN).to_dict()
    moved = locate(hops("h", ".", ".", "."), SERVER, 1026, REF, 25)
    after = traced_report(moved).to_dict()
    changes = diff_reports(before, after)
    hop = [c for c in changes.changes if c.what == "hop"]
    assert [(c.direction, c.item, c.before, c.after) for c in hop] == [
        ("moved", "epm/is:1026", f"drop at hop 2 ({R[1]})", f"drop at hop 1 ({R[0]})")]
    assert not changes.regressions
    assert diff_reports(before, before).changes == []


def test_nagios_and_prometheus_carry_the_break() -> None:
    rep = traced_report(BROKEN)
    text = nagios.render(rep)
    assert f"HOP epm/is:1026 {SERVER}:1026 drop at hop 2 ({R[1]}), exact: dropped by hop 2" in text
    metrics = prometheus.render(rep)
    line = next(ln for ln in metrics.splitlines() if ln.startswith("exprobe_breaks_at_hop{"))
    assert line == (
        f'exprobe_breaks_at_hop{{address="{SERVER}",check="epm/is:1026",exact="true",'
        f'hop_address="{R[1]}",kind="drop",port="1026",probe="tcp",target="{SERVER}"}} 2.0')
    from tests.test_prometheus_format import lint

    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool: Debian package prometheus (.ci/lab-packages.sh)"
    lint(promtool, metrics)


def test_table_line_is_sanitised() -> None:
    line = hop_line({"ttl": 2, "reply": "hop", "address": R[1], "rtt_ms": 0.4,
                     "name": "r2\x1b[31m.evil[bold]"})  # fmt: skip
    assert line == f"  2  {R[1]} (r2\x1b[31m.evil[bold])  0.4ms  time exceeded"
    # traces_group prints it through printable(): no escape reaches the terminal.
    from exprobe.report.safe import printable

    assert "\x1b" not in printable(line)


async def test_unsupported_platform_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "HOPS_SUPPORTED", False)
    rep = report(target(SERVER, [result("tcp:1026", 1026, Status.CONNECTION_TIMEOUT,
                                        address=SERVER)]))  # fmt: skip
    notes = await tracing.trace_report(rep, tracing.TraceOptions(), Limits())
    assert notes == ["hop location needs Linux (IP_RECVERR); no hop is named"]
    assert rep.targets[0].results[0].trace == {"error": notes[0]}


def test_optional_trace_value() -> None:
    assert complete_optional_values(["run", "h", "--trace"]) == ["run", "h", "--trace=failing"]
    assert complete_optional_values(["run", "h", "--trace", "all"]) == ["run", "h", "--trace", "all"]
    assert complete_optional_values(["run", "--trace", "-p", "x"]) == ["run", "--trace=failing", "-p", "x"]
    assert complete_optional_values(["run", "--", "--trace"]) == ["run", "--", "--trace"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "127.0.0.1", "--port", "1", "--trace", "--max-hops", "0"],
         "--max-hops 0: outside 1-64"),
        (["run", "127.0.0.1", "--port", "1", "--resolve-hops"], "--resolve-hops needs --trace"),
        (["trace", "127.0.0.1"], "trace: give at least one --port"),
        (["trace", "10.0.0.0/24", "--port", "25"], "trace: '10.0.0.0/24' is a range; trace one host at a time"),
        (["trace", "127.0.0.1:25", "--port", "25"], "trace: give the port with --port, not in '127.0.0.1:25'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = exprobe(*args)
    assert proc.returncode == 2
    assert proc.stderr == f"exprobe: error: {message}\n"
    assert proc.stdout == ""


def test_jsonl_carries_trace_records() -> None:
    proc = exprobe("run", "127.0.0.1", "--port", "1", "--trace", "-f", "jsonl", "--max-hops", "2")
    records = [json.loads(ln) for ln in proc.stdout.splitlines()]
    traces = [r for r in records if r["type"] == "trace"]
    assert [(t["id"], t["port"], t["break"]["kind"]) for t in traces] == [("tcp:1", 1, "reset")]
