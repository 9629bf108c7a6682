"""`exprobe demo`: the product in one command, with nothing installed beyond pip.

It starts `exprobe listen` in-process on 127.0.0.1 (an unprivileged port offset, the
first whose ports are all free), deliberately leaves the Information Store's port
closed, runs every scenario of the `exchange55` profile against it, and prints the
scenario table and the JSON report.  The endpoint mapper on 135 still hands that port
out, exactly like a firewall that opens 135 but not the store's port: "MAPI client"
fails, naming the IS port and its status, while every other scenario passes.

Exit code: 0 when the demo went as designed (that one scenario fails for that reason
and every other scenario passes), 1 when it did not (something else failed: a bug or a
busy machine), 2 for usage errors.  The verdicts themselves include one fail by design.
"""

from __future__ import annotations

import errno
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.text import Text

from exprobe.cli import app, make_console, run_async
from exprobe.errors import InputError

DEMO_PROFILE = "exchange55"
DEMO_ADDRESS = "127.0.0.1"
DEMO_NAME = "exprobe-demo.invalid"
# Below the kernel's ephemeral port range (32768+), where client sockets come and go.
OFFSETS = (20000, 30000, 10000, 21000, 22000, 23000, 24000, 25000, 26000, 27000, 28000)
WITHHELD_COMPONENT = "is"  # the Information Store: the seed's classic failure
FALLBACK_PROBE = "imap"  # if a profile has no endpoint mapper: hold back IMAP instead


@dataclass(slots=True)
class DemoSetup:
    """What the demo started, what it held back, and which scenarios must fail."""

    offset: int
    withheld_ports: list[int]
    withheld_what: str
    expect_fail: list[str]
    header: str
    listener_ports: list[int] = field(default_factory=list)


def _withhold(defs: list[Any], scenarios: list[Any], plan_fn: Any, offset: int) -> DemoSetup:
    """Decide which port(s) to leave closed, and so which scenario(s) must fail."""
    plan = plan_fn(defs, port_offset=offset)
    if WITHHELD_COMPONENT in plan.static_ports:
        port = plan.static_ports[WITHHELD_COMPONENT]
        comp = WITHHELD_COMPONENT
        fails = [s.id for s in scenarios if any(r.component == comp for r in s.requirements())]
        return DemoSetup(
            offset,
            [port],
            f"the Information Store port {port}",
            fails,
            (
                f"the endpoint mapper on {135 + offset} hands out the Information Store on "
                f"{port}, but that port is deliberately not listening (like a firewall that "
                "opens 135 and not the store's port): expect MAPI client to fail, naming "
                "the IS port; every other scenario passes"
            ),
        )
    ports = sorted(
        d.port + offset for d in defs if d.probe == FALLBACK_PROBE and d.port is not None
    )
    ids = {d.id for d in defs if d.probe == FALLBACK_PROBE}
    fails = [s.id for s in scenarios if set(s.check_ids()) and set(s.check_ids()) <= ids]
    return DemoSetup(
        offset,
        ports,
        f"the IMAP ports {', '.join(map(str, ports))}",
        fails,
        f"the IMAP listeners ({', '.join(map(str, ports))}) are deliberately not started: "
        "expect IMAP4 retrieve to fail (refused); every other scenario passes",
    )


def _port_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((DEMO_ADDRESS, port))
        except OSError:
            return False
    return True


@app.command()
def demo(
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="table, json, or both (default).")
    ] = "both",
    no_color: Annotated[
        bool, typer.Option("--no-color", help="No colour (NO_COLOR is honoured too).")
    ] = False,
) -> None:
    """Rehearse exchange55 against in-process listeners on loopback, one port held back."""
    if fmt not in ("table", "json", "both"):
        raise InputError(f"--format {fmt!r}: expected table, json or both")
    from exprobe.engine.evaluate import evaluate
    from exprobe.engine.runner import RunOptions
    from exprobe.engine.scheduler import Limits
    from exprobe.engine.session import Session
    from exprobe.listen.core import BindError, ListenServer
    from exprobe.listen.plan import build_plan
    from exprobe.listen.service import ServiceOptions, build_server
    from exprobe.listen.tlscert import make_certificate, server_context
    from exprobe.net.tls import TlsOptions
    from exprobe.profile import load_profile
    from exprobe.report.jsonfmt import render_json
    from exprobe.report.output import write_stdout
    from exprobe.report.table import render_table
    from exprobe.result import RunReport
    from exprobe.targets import parse_target

    prof = load_profile(DEMO_PROFILE)
    defs, scenarios = prof.select([])
    out = make_console(no_color)
    err = make_console(no_color, stderr=True)

    async def main() -> tuple[RunReport, DemoSetup, ListenServer]:
        last: Exception | None = None
        material = make_certificate(DEMO_NAME, [DEMO_ADDRESS])
        tls = server_context(material)
        for offset in OFFSETS:
            setup = _withhold(defs, scenarios, build_plan, offset)
            plan = build_plan(defs, port_offset=offset, withhold=setup.withheld_ports)
            if not all(_port_free(p) for p in setup.withheld_ports):
                continue  # something else answers there: the failure would not be ours
            server = build_server(
                plan,
                [DEMO_ADDRESS],
                ServiceOptions(DEMO_NAME, max_connections=256),
                tls_context=tls,
            )
            try:
                await server.start()
            except BindError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                last = exc
                continue
            setup.listener_ports = plan.ports()
            try:
                # Trust the rehearsal CA, as `exprobe run --ca-file` would with
                # `listen --ca-out`: the table then shows the one failure, not ten
                # "self-signed" warnings.
                with tempfile.NamedTemporaryFile(prefix="exprobe-demo-ca-", suffix=".pem") as ca:
                    ca.write(material.ca_pem)
                    ca.flush()
                    session = Session(
                        [parse_target(DEMO_ADDRESS)],
                        defs,
                        RunOptions(
                            port_offset=offset,
                            connect_timeout=2.0,
                            timeout=5.0,
                            tls=TlsOptions(ca_file=ca.name),
                        ),
                        Limits(concurrency=64, per_host=16),
                    )
                    session.report.profile = prof.info()
                    report = await session.run()
            finally:
                await server.close()
            return report, setup, server
        raise InputError(
            f"no free port range on {DEMO_ADDRESS} for the demo (tried offsets "
            f"{', '.join(map(str, OFFSETS))}; last: {last})"
        )

    report, setup, server = run_async(main())
    evaluate(report, scenarios)
    verdicts = report.all_verdicts()
    failed = sorted(v.id for v in verdicts if v.failed)
    as_designed = failed == sorted(setup.expect_fail) and bool(failed)
    report.extra["demo"] = {
        "address": DEMO_ADDRESS,
        "port_offset": setup.offset,
        "withheld_ports": setup.withheld_ports,
        "expected_failures": setup.expect_fail,
        "as_designed": as_designed,
        "listener_connections": server.total,
    }

    head = (
        f"exprobe demo: listeners for profile {DEMO_PROFILE} on {DEMO_ADDRESS} "
        f"(every port +{setup.offset}); {setup.header}."
    )
    if fmt in ("table", "both"):
        out.print(Text(head, style="bold"))
        render_table(report, out)
        out.print(
            Text(
                f"the listener logged {server.total} connections on "
                f"{len(setup.listener_ports)} ports; {setup.withheld_what} was never opened",
                style="dim",
            )
        )
    else:
        err.print(Text(head, style="bold"))
    if fmt in ("json", "both"):
        if fmt == "both":
            out.print(Text("JSON report (exprobe run ... --format json):", style="bold"))
        write_stdout(render_json(report, verbose=False))
        sys.stdout.flush()
    if not as_designed:
        err.print(
            Text(
                "the demo did not go as designed: expected exactly "
                f"{', '.join(setup.expect_fail) or '(none)'} to fail, got "
                f"{', '.join(failed) or 'none'}",
                style="bold red",
            )
        )
        raise typer.Exit(1)
    raise typer.Exit(0)
