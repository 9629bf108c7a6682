"""`--format nagios`: status line, perfdata syntax (plugin guidelines), long output, exit codes."""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
from pathlib import Path

import pytest

from exprobe.report import nagios
from exprobe.status import PortState, Status
from tests.helpers import LoopbackServer, closed_port, exprobe
from tests.reports import report, result, target, verdict

# The first line: `EXPROBE STATE - text` then optionally ` | perfdata`.
STATUS_LINE = re.compile(r"^EXPROBE (OK|WARNING|CRITICAL|UNKNOWN) - ([^|\n]+?)(?: \| (.+))?$")
# One perfdata item per the guidelines: 'label'=value[UOM];[warn];[crit];[min];[max]
# (label quoted, '' for a quote, no '='; trailing empty fields may be dropped).
PERF_ITEM = re.compile(
    r"^'(?:[^'=]|'')+'=-?\d+(?:\.\d+)?(?:s|ms|us|%|B|KB|MB|TB|c)?"
    r"(?:;[-+~@:.\d]*){0,4}$"
)


# Items are separated by spaces; a quoted label may contain spaces.
PERF_SPLIT = re.compile(r"'(?:[^']|'')*'=\S*|[^'\s]\S*")


def parse(text: str) -> tuple[str, str, list[str], list[str]]:
    first, *rest = text.rstrip("\n").split("\n")
    m = STATUS_LINE.match(first)
    assert m, first
    perf = PERF_SPLIT.findall(m.group(3)) if m.group(3) else []
    assert " ".join(perf) == (m.group(3) or "")
    for item in perf:
        assert PERF_ITEM.match(item), item
    for line in rest:
        assert "|" not in line, line  # a "|" in long output would start perfdata
    return m.group(1), m.group(2), perf, rest


def test_ok_with_perfdata() -> None:
    rep = report(target("10.0.0.5", [result("tcp:25", 25, elapsed_ms=12.5),
                                     result("tcp:110", 110, elapsed_ms=3.25)]))
    state, text, perf, lines = parse(nagios.render(rep))
    assert (state, nagios.exit_code(rep)) == ("OK", 0)
    assert text == "2 checks succeed on 1 address"
    assert perf == ["'10.0.0.5 tcp:25'=0.0125s;;;0", "'10.0.0.5 tcp:110'=0.00325s;;;0",
                    "'run_time'=1.5s;;;0"]
    assert lines == []


def test_critical_failed_scenario_long_output() -> None:
    rep = report(target("10.0.0.5", [result("epm", 135), result("pop3", 110)], [
        verdict("mapi-client", False, title="MAPI client",
                reason="MAPI client fails: IS port 1026 filtered (connection-timeout)"),
        verdict("pop3-retrieve", True, title="POP3 retrieve", via="110"),
    ]))
    state, text, perf, lines = parse(nagios.render(rep))
    assert (state, nagios.exit_code(rep)) == ("CRITICAL", 2)
    assert text == ("1 of 2 scenarios fail: MAPI client at 10.0.0.5: MAPI client fails: "
                    "IS port 1026 filtered (connection-timeout)")
    assert lines == ["FAIL MAPI client [mapi-client] at 10.0.0.5: MAPI client fails: IS port "
                     "1026 filtered (connection-timeout)"]
    assert "'scenarios_pass'=1;;;0;2" in perf
    assert "'scenarios_fail'=1;;;0;2" in perf
    state, _, _, lines = parse(nagios.render(rep, verbose=True))
    assert "PASS POP3 retrieve [pop3-retrieve] at 10.0.0.5 via 110" in lines


def test_critical_failed_check_without_profile() -> None:
    rep = report(target("10.0.0.5", [
        result("tcp:25", 25), result("tcp:135", 135, Status.CONNECTION_TIMEOUT,
                                     message="no answer to SYN")]))
    state, text, _, lines = parse(nagios.render(rep))
    assert (state, nagios.exit_code(rep)) == ("CRITICAL", 2)
    assert text == "1 of 2 checks fail: tcp:135 at 10.0.0.5: connection-timeout (no answer to SYN)"
    assert lines == ["FAIL tcp:135 10.0.0.5:135 connection-timeout/filtered at step connect: "
                     "no answer to SYN"]


def test_warning_certificate_days_perfdata() -> None:
    rep = report(target("10.0.0.5", [result(
        "imaps", 993, probe="imap", facts={"cert_days_left": 5},
        warnings=("TLS: certificate expires in 5 days (2026-01-06)",))]))
    state, text, perf, lines = parse(nagios.render(rep))
    assert (state, nagios.exit_code(rep)) == ("WARNING", 1)
    assert text == ("1 check succeed on 1 address, 1 warning: 10.0.0.5:993 imaps: TLS: "
                    "certificate expires in 5 days (2026-01-06)")
    assert "'10.0.0.5:993 cert_days'=5" in perf
    assert lines == ["WARN 10.0.0.5:993 imaps: TLS: certificate expires in 5 days (2026-01-06)"]
    # A scenario repeating its check's warning (with or without a prefix) is not counted twice;
    # its own warnings are.
    rep.targets[0].scenarios = [verdict("imap-retrieve", True, warnings=(
        "993: TLS: certificate expires in 5 days (2026-01-06)", "STARTTLS not offered on 143"))]
    _, text, _, lines = parse(nagios.render(rep))
    assert lines == ["WARN 10.0.0.5:993 imaps: TLS: certificate expires in 5 days (2026-01-06)",
                     "WARN 10.0.0.5 imap-retrieve: STARTTLS not offered on 143"]
    assert "2 warnings" in text


def test_unknown_interrupted_and_internal_error() -> None:
    rep = report(target("10.0.0.5", [result("tcp:25", 25)]), interrupted=True)
    state, text, _, lines = parse(nagios.render(rep))
    assert (state, nagios.exit_code(rep)) == ("UNKNOWN", 3)
    assert text == "1 check succeed on 1 address: run interrupted"
    assert lines[0] == "UNKNOWN the run was interrupted; results are partial"
    rep = report(target("10.0.0.5", [result("smtp", 25, Status.INTERNAL_ERROR,
                                            state=PortState.OPEN, message="bug in exprobe: X")]))
    state, _, _, lines = parse(nagios.render(rep))
    assert (state, nagios.exit_code(rep)) == ("UNKNOWN", 3)
    assert lines[-1] == "UNKNOWN 1 check(s) failed inside exprobe (a bug): bug in exprobe: X"


def test_critical_beats_unknown_and_warning() -> None:
    rep = report(target("10.0.0.5", [
        result("a", 1, Status.INTERNAL_ERROR, state=PortState.OPEN),
        result("b", 2, Status.CONNECTION_REFUSED),
        result("c", 3, warnings=("TLS: untrusted",))]))
    assert nagios.exit_code(rep) == 2


def test_expectations_decide_the_state() -> None:
    rep = report(target("10.0.0.5", [result("epm", 135, Status.CONNECTION_REFUSED)],
                        [verdict("mapi-client", False)]))
    rep.expectations = [{"expectation": "dmz", "kind": "fail", "target": "10.0.0.5",
                         "address": "10.0.0.5", "scenario": "mapi-client", "expected": "fail",
                         "observed": "fail", "met": True, "evidence": "fail: ..."}]
    state, text, _, _ = parse(nagios.render(rep))
    assert (state, text) == ("OK", "1 expectation met")  # the scenario fails by design
    rep.expectations.append({"expectation": "shut", "kind": "closed", "target": "10.0.0.5",
                             "address": "10.0.0.5", "port": 25, "expected": "closed",
                             "observed": "open", "met": False,
                             "evidence": "10.0.0.5:25 open: tcp:25 success/open"})
    state, text, _, lines = parse(nagios.render(rep))
    assert (state, nagios.exit_code(rep)) == ("CRITICAL", 2)
    assert text == ("1 of 2 expectations violated: shut at 10.0.0.5: expected 25 closed, "
                    "observed open")
    assert lines == ["VIOLATED shut at 10.0.0.5: expected 25 closed, observed open: "
                     "10.0.0.5:25 open: tcp:25 success/open"]


def test_hostile_text_cannot_break_the_format() -> None:
    rep = report(target("10.0.0.5", [result(
        "smtp", 25, Status.PROTOCOL_ERROR, state=PortState.OPEN,
        message="banner 220 a|b='c'\nEXPROBE OK - fake\x1b[2J")]))
    text = nagios.render(rep)
    state, _summary, _, lines = parse(text)
    assert state == "CRITICAL"
    assert len(text.rstrip("\n").split("\n")) == 2
    assert "\x1b" not in text
    assert "a/b='c'\\x0aEXPROBE OK - fake\\x1b[2J" in lines[0]
    assert nagios.perf_label("x'y=z") == "'x''y_z'"


# -- the CLI, exit codes for each state ------------------------------------------------------


def test_cli_ok_and_critical() -> None:
    closed = closed_port()
    with LoopbackServer() as srv:
        ok = exprobe("run", "127.0.0.1", "--port", str(srv.port), "--format", "nagios")
        crit = exprobe("run", "127.0.0.1", "--port", str(srv.port), "--port", str(closed),
                       "-f", "nagios")
    assert ok.returncode == 0
    assert parse(ok.stdout)[0] == "OK"
    assert crit.returncode == 2
    assert parse(crit.stdout)[0] == "CRITICAL"
    assert f"FAIL tcp:{closed} 127.0.0.1:{closed} connection-refused/closed" in crit.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["127.0.0.1"], "nothing to check: give --port, --check, -p PROFILE, or host:port targets"),
        (["127.0.0.1", "--port", "99999"], "--port 99999: outside 1-65535"),
        (["-4", "-6", "127.0.0.1", "--port", "1"], "-4 and -6 exclude each other"),
        (["127.0.0.1", "--port", "1", "--bogus"], "invalid command line: No such option: --bogus"),
        (["127.0.0.1", "--port", "x"], "invalid command line: Invalid value for '--port'"),
        (["999.1.1.1", "--port", "1"], "command line: '999.1.1.1' is not a valid IPv4 address"),
        (["127.0.0.1", "-p", "no-such-profile"], "unknown profile 'no-such-profile'"),
    ],
)
def test_cli_bad_input_is_unknown_exit_3(args: list[str], message: str) -> None:
    spellings = (["--format", "nagios"], ["-f", "nagios"], ["--format=nagios"])
    fmt = spellings[len(message) % 3]
    out = exprobe("run", *args, *fmt)
    assert out.returncode == 3, (fmt, out.stdout, out.stderr)
    assert out.stdout.startswith("EXPROBE UNKNOWN - "), out.stdout
    assert message in out.stdout.split("\n")[0]
    assert out.stdout.count("\n") == 1
    # Without --format nagios the same input is the usual exit 2.
    assert exprobe("run", *args).returncode == 2


def test_cli_output_file(tmp_path: Path) -> None:
    with LoopbackServer() as srv:
        out = exprobe("run", "127.0.0.1", "--port", str(srv.port), "-f", "nagios",
                      "-o", str(tmp_path / "n.txt"))
    assert out.returncode == 0
    assert out.stdout == ""
    assert (tmp_path / "n.txt").read_text().startswith("EXPROBE OK - ")
    assert [p.name for p in tmp_path.iterdir()] == ["n.txt"]


def _tls_banner_server(certfile: str, keyfile: str) -> tuple[socket.socket, int]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)

    def serve() -> None:
        sock.settimeout(10)
        try:
            conn, _ = sock.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"220 tls banner\r\n")
                tls.settimeout(2)
                with contextlib.suppress(OSError):
                    tls.recv(100)
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    return sock, sock.getsockname()[1]


def test_cli_warning_exit_1_for_an_untrusted_certificate(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    sock, port = _tls_banner_server(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    try:
        out = exprobe("run", "127.0.0.1", "--check", f"banner:{port}:implicit", "-f", "nagios")
    finally:
        sock.close()
    state, _, perf, lines = parse(out.stdout)
    assert (state, out.returncode) == ("WARNING", 1), out.stdout
    assert any(line.startswith(f"WARN 127.0.0.1:{port} banner:{port}:implicit: TLS: ")
               for line in lines)
    assert any(p.startswith(f"'127.0.0.1:{port} cert_days'=") for p in perf)


def test_cli_sigterm_mid_run_is_unknown_exit_3() -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import ROOT

    with LoopbackServer() as tarpit:  # accepts and never speaks
        proc = subprocess.Popen(
            [sys.executable, "-m", "exprobe", "run", "127.0.0.1", "--check",
             f"banner:{tarpit.port}", "--timeout", "30", "--format", "nagios"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
        deadline = time.monotonic() + 20
        while tarpit.accepted == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert tarpit.accepted == 1
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 3, out
    assert out.startswith("EXPROBE UNKNOWN - nothing was checked: run interrupted | ")
    assert "UNKNOWN the run was interrupted; results are partial" in out
