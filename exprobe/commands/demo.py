"""`exprobe demo`: the product in one command, with nothing installed beyond pip.

It starts `exprobe listen` in-process on 127.0.0.1 (an unprivileged port offset, the
first whose ports are all free), deliberately leaves the Information Store's port
closed, runs every scenario of the `exchange55` profile against it, and prints the
scenario table and the JSON report.  The endpoint mapper on 135 still hands that port
out, exactly like a firewall that opens 135 but not the store's port: "MAPI client"
fails, naming the IS port and its status, while every other scenario passes.

`exprobe demo --profile exchange2019` (any profile with `exchange-http` checks) is the
modern variant: HTTPS, HTTP and SMTP listeners answer like an Exchange 2019 server, and a
reverse proxy in front of the HTTPS listener refuses `/mapi/` with 403, as a proxy rule
that publishes OWA and EWS but forgot MAPI over HTTP would: the scenarios that need MAPI
over HTTP fail (the `exchange-http` check says `intercepted`), every other one passes or
is skipped for a role nobody plays here (the domain controller, ...).

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
MODERN_NAME = "ex1.exprobe-demo.invalid"  # NetBIOS EX1 in the NTLM challenge and X-FEServer
# Below the kernel's ephemeral port range (32768+), where client sockets come and go.
OFFSETS = (20000, 30000, 10000, 21000, 22000, 23000, 24000, 25000, 26000, 27000, 28000)
WITHHELD_COMPONENT = "is"  # the Information Store: the seed's classic failure
FALLBACK_PROBE = "imap"  # if a profile has no endpoint mapper: hold back IMAP instead


MODERN_REFUSED = ("/mapi/",)  # what the demo's reverse proxy refuses
MODERN_VDIRS = ("mapi", "nspi")  # the exchange-http vdirs behind /mapi/
OTHER_VERDICTS = frozenset({"pass", "skipped", "not-enabled"})  # fine beside the failure


@dataclass(slots=True)
class DemoSetup:
    """What the demo started, what it held back, and which scenarios must fail."""

    offset: int
    withheld_ports: list[int]
    withheld_what: str
    expect_fail: list[str]
    header: str
    listener_ports: list[int] = field(default_factory=list)
    refused: tuple[str, ...] = ()  # path prefixes the demo's reverse proxy refuses


def is_modern(defs: list[Any]) -> bool:
    """A profile of Exchange 2013 or later: it asks for a MAPI over HTTP vdir."""
    return any(
        d.probe == "exchange-http" and getattr(d.params, "vdir", None) in MODERN_VDIRS for d in defs
    )


def rehearsable(pplan: Any) -> tuple[list[str], list[Any]]:
    """The ids of the scenarios listeners can stand in for, and the scenarios left out:
    those a lookup probe decides (it asks DNS, not the server)."""
    from exprobe.probes import get as get_probe

    lookups = {d.id for d in pplan.defs if not get_probe(d.probe).connects}
    keep: list[Any] = []
    out: list[Any] = []
    for sc in pplan.scenarios:
        decided_by_lookup = any(r.check in lookups for r in sc.all) or any(
            group and all(r.check in lookups for r in group) for group in sc.any
        )
        (out if decided_by_lookup else keep).append(sc)
    return [sc.id for sc in keep], out


def _fails_without(scenario: Any, broken: set[str]) -> bool:
    """Whether `scenario` fails when the checks `broken` fail: one of its `all`
    requirements is broken, or every alternative of one of its `any` groups is."""
    if any(r.check in broken for r in scenario.all):
        return True
    return any(group and all(r.check in broken for r in group) for group in scenario.any)


def _through_mapi(d: Any) -> bool:
    """A check that asks /mapi/: an exchange-http check of a MAPI vdir, or a pool check
    (`lb-pool`) whose vdirs include one."""
    if d.probe == "exchange-http":
        return getattr(d.params, "vdir", None) in MODERN_VDIRS
    return d.probe == "lb-pool" and bool(set(getattr(d.params, "vdirs", ())) & set(MODERN_VDIRS))


def with_members(defs: list[Any], offset: int) -> list[Any]:
    """The pool checks (`lb-pool`) with the listener as their one member, asked directly
    (on loopback its FQDN resolves nowhere)."""
    import dataclasses

    member = (f"{DEMO_ADDRESS}:{443 + offset}",)
    return [
        dataclasses.replace(d, params=dataclasses.replace(d.params, members=member))
        if d.probe == "lb-pool" and not getattr(d.params, "members", ())
        else d
        for d in defs
    ]


def _modern_setup(defs: list[Any], scenarios: list[Any], offset: int) -> DemoSetup:
    """The modern demo's breakage: a reverse proxy refusing /mapi/ on the HTTPS port."""
    broken = {d.id for d in defs if _through_mapi(d)}
    https = sorted({
        d.port + offset for d in defs
        if d.probe == "exchange-http" and d.id in broken and d.port is not None
    })  # fmt: skip
    fails = [s.id for s in scenarios if _fails_without(s, broken)]
    titles = ", ".join(s.title for s in scenarios if s.id in fails) or "(none)"
    where = ", ".join(map(str, https)) or "the HTTPS port"
    return DemoSetup(
        offset,
        [],
        f"/mapi/ on {where}",
        fails,
        (
            f"a reverse proxy in front of the HTTPS listener on {where} refuses /mapi/ with "
            "403 (like a publishing rule that forgot MAPI over HTTP): expect "
            f"{titles} to fail, the check saying intercepted; every other scenario passes "
            "or is skipped for a role nobody plays here"
        ),
        refused=MODERN_REFUSED,
    )


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
    profile: Annotated[
        str | None,
        typer.Option(
            "-p",
            "--profile",
            help="Rehearse this profile instead (exchange2019: a proxy refuses /mapi/).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Rehearse exchange55 against in-process listeners on loopback, one port held back."""
    if fmt not in ("table", "json", "both"):
        raise InputError(f"--format {fmt!r}: expected table, json or both")
    from exprobe.commands.common import profile_plan
    from exprobe.engine.evaluate import evaluate
    from exprobe.engine.runner import RunOptions
    from exprobe.engine.scheduler import Limits
    from exprobe.engine.session import Session
    from exprobe.listen.core import BindError, ListenServer
    from exprobe.listen.exchange import default_build
    from exprobe.listen.plan import HttpSite, build_plan
    from exprobe.listen.service import ServiceOptions, build_server
    from exprobe.listen.tlscert import make_certificate, server_context
    from exprobe.net.tls import TlsOptions
    from exprobe.profile import load_profile
    from exprobe.report.jsonfmt import render_json
    from exprobe.report.output import write_stdout
    from exprobe.report.table import render_table
    from exprobe.result import RunReport
    from exprobe.targets import parse_target

    prof = load_profile(profile or DEMO_PROFILE)
    # The modern profiles judge from a vantage: the demo stands on the client subnet.
    vantage = "client" if "client" in prof.vantages else None
    pplan = profile_plan(profile or DEMO_PROFILE, vantage=vantage)
    modern = is_modern(pplan.defs)
    left_out: list[Any] = []
    if modern:
        # Scenarios decided by a lookup (Autodiscover's DNS methods, MX records) need the
        # mail domain's DNS, which nothing on loopback stands in for: left out, and said.
        keep, left_out = rehearsable(pplan)
        pplan = profile_plan(profile or DEMO_PROFILE, scenarios=keep, vantage=vantage)
    defs, scenarios = pplan.defs, pplan.scenarios
    if not modern and not _withhold(defs, scenarios, build_plan, OFFSETS[0]).expect_fail:
        raise InputError(
            f"--profile {profile}: the demo has no broken path to show for this profile "
            "(it breaks the Information Store's port, IMAP4, or MAPI over HTTP); try "
            "exchange55 or exchange2019"
        )
    name = MODERN_NAME if modern else DEMO_NAME
    primary_role = pplan.primary_role
    disabled = {d.id: "shipped switched off" for d in defs if d.id in pplan.judging.disabled}
    out = make_console(no_color)
    err = make_console(no_color, stderr=True)

    async def main() -> tuple[RunReport, DemoSetup, ListenServer]:
        last: Exception | None = None
        material = make_certificate(name, [DEMO_ADDRESS])
        tls = server_context(material)
        for offset in OFFSETS:
            if modern:
                setup = _modern_setup(defs, scenarios, offset)
                site = HttpSite(default_build(prof.name), refused=setup.refused)
                plan = build_plan(
                    defs, port_offset=offset, http_site=site, primary_role=primary_role,
                    skipped=disabled,
                )  # fmt: skip
            else:
                setup = _withhold(defs, scenarios, build_plan, offset)
                plan = build_plan(defs, port_offset=offset, withhold=setup.withheld_ports)
            if not all(_port_free(p) for p in setup.withheld_ports):
                continue  # something else answers there: the failure would not be ours
            server = build_server(
                plan,
                [DEMO_ADDRESS],
                ServiceOptions(name, max_connections=256),
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
                        with_members(defs, offset) if modern else defs,
                        RunOptions(
                            port_offset=offset,
                            connect_timeout=2.0,
                            timeout=5.0,
                            tls=TlsOptions(ca_file=ca.name),
                        ),
                        Limits(concurrency=64, per_host=16),
                        primary_role=primary_role,
                    )
                    session.report.profile = pplan.info
                    report = await session.run()
            finally:
                await server.close()
            return report, setup, server
        raise InputError(
            f"no free port range on {DEMO_ADDRESS} for the demo (tried offsets "
            f"{', '.join(map(str, OFFSETS))}; last: {last})"
        )

    report, setup, server = run_async(main())
    evaluate(report, scenarios, pplan.judging)
    verdicts = report.all_verdicts()
    failed = sorted(v.id for v in verdicts if v.failed)
    others = all(v.verdict in OTHER_VERDICTS for v in verdicts if not v.failed)
    as_designed = failed == sorted(setup.expect_fail) and bool(failed) and others
    report.extra["demo"] = {
        "address": DEMO_ADDRESS,
        "port_offset": setup.offset,
        "withheld_ports": setup.withheld_ports,
        "expected_failures": setup.expect_fail,
        "as_designed": as_designed,
        "listener_connections": server.total,
    }
    if setup.refused:
        report.extra["demo"]["refused_paths"] = list(setup.refused)
        report.extra["demo"]["left_out"] = [sc.id for sc in left_out]

    head = (
        f"exprobe demo: listeners for profile {prof.name} on {DEMO_ADDRESS} "
        f"(every port +{setup.offset}); {setup.header}."
    )
    if left_out:
        head += (
            f" Left out: {', '.join(sc.title for sc in left_out)} (decided by DNS lookups of "
            "the mail domain, which nothing on loopback stands in for)."
        )
    if fmt in ("table", "both"):
        out.print(Text(head, style="bold"))
        render_table(report, out)
        out.print(
            Text(
                f"the listener logged {server.total} connections on "
                f"{len(setup.listener_ports)} ports; {setup.withheld_what} "
                + ("was refused by the proxy" if setup.refused else "was never opened"),
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
