"""`exprobe listen`: answer every port a profile's scenarios need, and log who arrives."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from exprobe import __version__
from exprobe.cli import app, make_console, run_async
from exprobe.commands.run import SetOpt
from exprobe.errors import InputError
from exprobe.report.safe import printable

_NAME_RE = re.compile(r"^(?=.{1,64}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$")  # fmt: skip
GOOD_OUTCOMES = ("said goodbye", "answered", "peer closed")


@dataclass(slots=True)
class ListenDefs:
    """The checks to serve, the profile's report object, the role this host plays (None:
    the profile binds no check to a role) and the checks left out, with why."""

    defs: list[Any]
    info: dict[str, Any] | None = None
    primary_role: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)


def listener_defs(
    profile: str | None,
    scenario: list[str],
    port: list[int],
    check: list[str],
    sets: list[str] | None = None,
) -> ListenDefs:
    """The checks to serve: a profile's (its selected scenarios'), or ad hoc ones.

    A check of a service the product ships switched off (`enabled = false`: POP3 and IMAP4
    on Exchange 2013 and later) is left out, as the real server leaves it closed, unless
    `--set CHECK.enabled=true` says it will be on."""
    from exprobe.commands.common import adhoc_defs

    if profile and (port or check):
        raise InputError("-p/--profile and --port/--check exclude each other")
    if (scenario or sets) and not profile:
        raise InputError("--scenario and --set need -p/--profile")
    if profile:
        from exprobe.commands.common import profile_plan

        pplan = profile_plan(profile, sets=sets, scenarios=scenario)
        skipped = {
            d.id: (
                f"check {d.id} ({d.probe}): the product ships this service switched off "
                f"(enabled = false): not opened, as on the real server (--set {d.id}.enabled=true "
                "here and in `exprobe run` to rehearse it on)"
            )
            for d in pplan.defs
            if d.id in pplan.judging.disabled
        }
        return ListenDefs(list(pplan.defs), pplan.info, pplan.primary_role, skipped)
    defs = adhoc_defs(port, check)
    if not defs:
        raise InputError("nothing to listen for: give -p PROFILE, --port N or --check PROBE[:PORT]")
    return ListenDefs(defs)


def http_site(build: str | None, domain: str | None, profile: str | None) -> Any:
    """How the HTTP listeners answer, from `--exchange-build` and `--domain`."""
    from exprobe.listen.exchange import default_build
    from exprobe.listen.plan import HttpSite
    from exprobe.wire.exchange import name_build

    if build is not None and name_build(build) is None:
        raise InputError(f"--exchange-build {build!r}: not a build number (15.2.1748.10)")
    if domain is not None and domain and not _NAME_RE.match(domain):
        raise InputError(f"--domain {domain!r}: not a DNS domain name")
    return HttpSite(build or default_build(profile), domain)


def write_ca(path: str, pem: bytes) -> None:
    """`--ca-out`: the rehearsal CA's certificate (a few hundred bytes, written once)."""
    try:
        Path(path).write_bytes(pem)
    except OSError as exc:
        raise InputError(f"--ca-out {path}: cannot write ({exc.strerror})") from None


def _local_time(iso: str) -> str:
    try:
        t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    except ValueError:
        return iso
    return t.strftime("%H:%M:%S.%f")[:-3]


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def record_line(rec: Any) -> Text:
    """One connection as a terminal line; everything from the network escaped."""
    actions = " · ".join(printable(a, 80) for a in rec.actions) or "(nothing)"
    if rec.dropped_actions:
        actions += f" · (+{rec.dropped_actions})"
    ok = rec.outcome in GOOD_OUTCOMES
    return Text.assemble(
        (_local_time(rec.time), "dim"),
        "  ",
        (_endpoint(rec.peer, rec.peer_port), "bold"),
        " → ",
        (f"{rec.port}/{rec.protocol}", "cyan"),
        "  ",
        printable(actions, 400),
        "  ",
        (f"[{printable(rec.outcome, 160)}]", "green" if ok else "yellow"),
        (f" {rec.duration_ms:.0f}ms", "dim"),
    )


def listeners_table(server: Any, plan: Any) -> Table:
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    for col in ("port", "protocol", "tls", "for checks", "answers"):
        table.add_column(col, overflow="fold", no_wrap=col in ("port", "protocol", "tls"))
    for lst in server.listeners:
        tls = "implicit" if lst.implicit_tls else ("STARTTLS" if _offers_starttls(lst) else "-")
        table.add_row(
            str(lst.port),
            lst.protocol,
            tls,
            Text(", ".join(lst.checks)),
            Text(lst.note or answers(lst.protocol, lst.implicit_tls)),
        )
    for lst in plan.withheld:
        table.add_row(
            str(lst.port),
            lst.protocol,
            "-",
            Text(", ".join(lst.checks)),
            Text("withheld: not started", style="yellow"),
        )
    return table


_ANSWERS = {
    "smtp": "220 banner, EHLO/HELO, STARTTLS, QUIT",
    "pop3": "+OK greeting, CAPA, STLS, QUIT",
    "imap": "* OK [CAPABILITY], CAPABILITY, STARTTLS, LOGOUT",
    "nntp": "200 greeting, CAPABILITIES, STARTTLS (382), QUIT (205)",
    "ldap": "anonymous bind, rootDSE, StartTLS, unbind",
    "rfc1006": "COTP CR → CC (TSAPs echoed), DR",
    "tcp": "TCP accept only",
}
_IMPLICIT = {"smtps": "smtp", "pop3s": "pop3", "imaps": "imap", "nntps": "nntp", "ldaps": "ldap"}


def answers(protocol: str, implicit: bool) -> str:
    """What a listener answers, in a few words (STARTTLS only where it is offered)."""
    if not implicit:
        return _ANSWERS.get(protocol, "")
    plain = _ANSWERS.get(_IMPLICIT.get(protocol, protocol), "")
    kept = [p for p in plain.split(", ") if not p.startswith(("STARTTLS", "STLS"))]
    return "TLS, then " + ", ".join(kept)


def _offers_starttls(lst: Any) -> bool:
    return lst.protocol in ("smtp", "pop3", "imap", "nntp", "ldap")


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(show_edge=False, header_style="bold", pad_edge=False, title_justify="left")
    for col in ("port", "protocol", "connections", "reached by"):
        table.add_column(col, overflow="fold", no_wrap=col != "reached by")
    for p in summary["ports"]:
        peers = ", ".join(f"{printable(a, 60)} ×{n}" for a, n in list(p["peers"].items())[:12])
        if len(p["peers"]) > 12:
            peers += f", … ({len(p['peers'])} peers)"
        table.add_row(
            str(p["port"]),
            p["protocol"],
            str(p["connections"]),
            Text(peers) if p["connections"] else Text("never reached", style="bold yellow"),
        )
    return table


class JsonLog:
    """JSON Lines to a file, flushed per line; a write error disables it with one warning."""

    def __init__(self, path: str) -> None:
        try:
            self._f: IO[str] | None = Path(path).open("a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise InputError(f"--log-json {path}: cannot open ({exc.strerror})") from None
        self.path = path

    def write(self, obj: dict[str, Any]) -> None:
        if self._f is None:
            return
        try:
            self._f.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
            self._f.flush()
        except OSError as exc:
            sys.stderr.write(f"exprobe: warning: --log-json {self.path}: {exc}; JSON log off\n")
            self.close()

    def close(self) -> None:
        if self._f is not None:
            with contextlib.suppress(OSError):
                self._f.close()
            self._f = None


@app.command()
def listen(
    profile: Annotated[
        str | None,
        typer.Option(
            "-p", "--profile", help="Profile whose scenarios' ports to open.", show_default=False
        ),
    ] = None,
    bind: Annotated[
        list[str] | None,
        typer.Option(
            "--bind",
            help="Address to listen on: the future server's (repeatable, IPv4 and/or IPv6).",
            show_default=False,
        ),
    ] = None,
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            "--scenario", help="Only the ports of this scenario (repeatable).", show_default=False
        ),
    ] = None,
    port: Annotated[
        list[int] | None,
        typer.Option(
            "--port", help="Ad hoc: accept TCP on this port (repeatable).", show_default=False
        ),
    ] = None,
    check: Annotated[
        list[str] | None,
        typer.Option(
            "--check",
            help="Ad hoc: answer PROBE[:PORT[:TLS]] (repeatable), as `run --check`.",
            show_default=False,
        ),
    ] = None,
    port_offset: Annotated[
        int,
        typer.Option(
            "--port-offset",
            help="Add N to every port (25 → 10025): rehearse without privileges; `exprobe run --port-offset N` mirrors it.",
        ),
    ] = 0,
    allow_wildcard: Annotated[
        bool, typer.Option("--allow-wildcard", help="Allow --bind 0.0.0.0 / :: (every interface).")
    ] = False,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Server name in banners and the certificate (default: this host's name).",
            show_default=False,
        ),
    ] = None,
    ca_out: Annotated[
        str | None,
        typer.Option(
            "--ca-out",
            help="Write the rehearsal CA certificate (PEM) to FILE, for `exprobe run --ca-file FILE`.",
            show_default=False,
        ),
    ] = None,
    log_json: Annotated[
        str | None,
        typer.Option(
            "--log-json",
            help="Also append one JSON object per connection to FILE.",
            show_default=False,
        ),
    ] = None,
    max_connections: Annotated[
        int,
        typer.Option(
            "--max-connections",
            help="Connections open at once (all ports); more are closed at once.",
        ),
    ] = 256,
    conn_timeout: Annotated[
        float, typer.Option("--conn-timeout", help="Longest a connection may last, seconds.")
    ] = 30.0,
    idle_timeout: Annotated[
        float, typer.Option("--idle-timeout", help="Longest silence within a connection, seconds.")
    ] = 10.0,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            help="Stop after S seconds (default: until Ctrl-C or SIGTERM).",
            show_default=False,
        ),
    ] = None,
    set_: SetOpt = None,
    exchange_build: Annotated[
        str | None,
        typer.Option(
            "--exchange-build",
            help="X-OWA-Version of the HTTP listeners (default: the newest build of the "
            "profile's Exchange version).",
            show_default=False,
        ),
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option(
            "--domain",
            help="DNS domain the NTLM challenge names (default: --name after its first dot).",
            show_default=False,
        ),
    ] = None,
    no_color: Annotated[
        bool, typer.Option("--no-color", help="No colour (NO_COLOR is honoured too).")
    ] = False,
) -> None:
    """Listen on the future server's address(es) and answer every port a profile needs."""
    from exprobe.listen.core import BindError
    from exprobe.listen.plan import build_plan
    from exprobe.listen.service import (
        ServiceOptions,
        bind_error_text,
        build_server,
        default_name,
        parse_bind_addresses,
    )

    addresses = parse_bind_addresses(bind or [], allow_wildcard=allow_wildcard)
    if not 0 <= port_offset < 65535:
        raise InputError("--port-offset must be between 0 and 65534")
    if duration is not None and duration <= 0:
        raise InputError("--duration must be positive")
    server_name = name or default_name()
    if not _NAME_RE.match(server_name):
        raise InputError(f"--name {server_name!r}: not a host name (letters, digits, '-', '.')")
    chosen = listener_defs(profile, scenario or [], port or [], check or [], set_)
    info = chosen.info
    plan = build_plan(
        chosen.defs,
        port_offset=port_offset,
        http_site=http_site(exchange_build, domain, (info or {}).get("name")),
        primary_role=chosen.primary_role,
        skipped=chosen.skipped,
    )
    jlog = JsonLog(log_json) if log_json else None
    out = make_console(no_color)
    err = make_console(no_color, stderr=True)

    def on_record(rec: Any) -> None:
        out.print(record_line(rec), soft_wrap=True)  # one connection, one line (grep)
        if jlog is not None:
            jlog.write(rec.to_dict())

    from exprobe.listen.tlscert import make_certificate, server_context

    material = make_certificate(server_name, addresses)
    server = build_server(
        plan,
        addresses,
        ServiceOptions(server_name, max_connections, conn_timeout, idle_timeout),
        on_record,
        tls_context=server_context(material),
    )
    started: dict[str, bool] = {}

    async def main() -> int:
        stop = asyncio.Event()
        got: dict[str, int] = {}
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            got.setdefault("signal", signum)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal, sig)
        try:
            await server.start()
        except BindError as exc:
            raise InputError(bind_error_text(exc, port_offset)) from None
        started["yes"] = True
        try:
            if ca_out:  # only once the ports are ours: a failed start keeps the old CA file
                write_ca(ca_out, material.ca_pem)
            _announce(
                out, server, plan, addresses, info, port_offset, duration, ca_out, scenario or []
            )
            if jlog is not None:
                jlog.write(_listening_record(server, plan, addresses, info, port_offset))
            if duration is None:
                await stop.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), duration)
        finally:
            await server.close()
        return got.get("signal", 0)

    try:
        signum = run_async(main())
    finally:
        if jlog is not None:
            if started:
                jlog.write(server.summary())
            jlog.close()
    summary = server.summary()
    _farewell(out, summary, signum)
    if server.sink_errors:
        err.print(Text(f"{server.sink_errors} log lines could not be written", style="yellow"))
    raise typer.Exit(0)


def _listening_record(
    server: Any, plan: Any, addresses: list[str], info: dict[str, Any] | None, offset: int
) -> dict[str, Any]:
    return {
        "type": "listening",
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "version": __version__,
        "addresses": addresses,
        "port_offset": offset,
        "profile": (info or {}).get("name") if info else None,
        "listeners": [
            {
                "port": x.port,
                "protocol": x.protocol,
                "implicit_tls": x.implicit_tls,
                "checks": list(x.checks),
                "note": x.note,
            }
            for x in server.listeners
        ],
        "static_ports": plan.static_ports,
        "notes": plan.notes,
    }


def _announce(
    out: Console,
    server: Any,
    plan: Any,
    addresses: list[str],
    info: dict[str, Any] | None,
    offset: int,
    duration: float | None,
    ca_out: str | None,
    scenarios: list[str],
) -> None:
    what = f"profile {info.get('name')}" if info else "ad hoc checks"
    head = (
        f"exprobe listen {__version__}: {len(server.listeners)} ports on "
        f"{', '.join(addresses)} for {what}"
        + (f", port offset +{offset}" if offset else "")
        + " (rehearsal: every answer names exprobe)"
    )
    out.print(Text(head, style="bold"))
    out.print(listeners_table(server, plan))
    for n in plan.notes:
        out.print(Text("note: " + n, style="cyan"))
    until = f"for {duration:g}s" if duration else "until Ctrl-C"
    run_hint = f" --port-offset {offset}" if offset else ""
    target = addresses[0]
    prof = f" -p {info.get('name')}" if info else ""
    prof += "".join(f" --scenario {sid}" for sid in scenarios)
    out.print(
        Text(
            f"listening {until}; from the client side: exprobe run {target}{prof}{run_hint}"
            + (f" --ca-file {ca_out}" if ca_out else ""),
            style="dim",
        ),
        soft_wrap=True,
    )


def _farewell(out: Console, summary: dict[str, Any], signum: int) -> None:
    why = {int(signal.SIGINT): "interrupted", int(signal.SIGTERM): "terminated"}.get(
        signum, "stopped"
    )
    out.print(
        Text(
            f"{why}: {summary['connections']} connections"
            + (f" ({summary['over_limit']} over the limit)" if summary["over_limit"] else ""),
            style="bold",
        )
    )
    out.print(summary_table(summary))
    never = summary["never_reached"]
    if never:
        out.print(
            Text(
                "never reached: "
                + ", ".join(str(p) for p in never)
                + " (a firewall in between, or no client tried)",
                style="bold yellow",
            )
        )
    else:
        out.print(Text("every port was reached at least once", style="green"))
