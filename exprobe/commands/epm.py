"""`exprobe epm HOST`: the endpoint map, grouped by Exchange component, with reachability.

Like impacket's rpcdump, but it sorts the endpoints into IS / DS / MTA / SA / other and
follows every TCP port of the requested components with a check of its own (an anonymous
DCE/RPC bind by default), so the dump says which advertised ports this vantage point can
actually reach.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from exprobe.cli import app, family_of, make_console, run_async
from exprobe.commands.common import EngineArgs
from exprobe.engine.plan import CheckDef
from exprobe.engine.session import Session
from exprobe.errors import InputError
from exprobe.probes import get as get_probe
from exprobe.probes.base import make_params
from exprobe.report.output import emit
from exprobe.report.safe import printable
from exprobe.report.table import state_text, status_text
from exprobe.result import CheckResult, RunReport
from exprobe.targets import parse_target
from exprobe.wire.dcerpc import warm_codec

ORDER = ("is", "ds", "mta", "sa", "other")
LABELS = {"is": "IS", "ds": "DS", "mta": "MTA", "sa": "SA", "other": "other"}


def _expectations(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        comp, sep, port = item.partition("=")
        comp = comp.strip().lower()
        if not sep or comp not in ("ds", "is", "mta", "sa") or not port.strip().isdigit():
            raise InputError(f"--expect {item!r}: expected COMPONENT=PORT (ds, is, mta, sa)")
        out[f"expect_{comp}"] = int(port)
    return out


@app.command()
def epm(
    host: Annotated[str, typer.Argument(help="Host name or address of the endpoint mapper.")],
    port: Annotated[int, typer.Option("--port", help="Endpoint-mapper port.")] = 135,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    components: Annotated[
        str, typer.Option("--components", help="Components to follow: ds,is,mta,sa.")
    ] = "ds,is,mta",
    interfaces: Annotated[
        list[str] | None,
        typer.Option(
            "--interface",
            help="Also resolve and follow UUID:MAJOR.MINOR (repeatable; component 'other').",
            show_default=False,
        ),
    ] = None,
    expect: Annotated[
        list[str] | None,
        typer.Option(
            "--expect",
            help="Pinned port a component should use, e.g. is=1601 (repeatable).",
            show_default=False,
        ),
    ] = None,
    follow: Annotated[
        str, typer.Option("--follow", help="bind (anonymous DCE/RPC bind), tcp or none.")
    ] = "bind",
    timeout: Annotated[
        float, typer.Option("--timeout", help="Per-check deadline, seconds.")
    ] = 10.0,
    connect_timeout: Annotated[
        float, typer.Option("--connect-timeout", help="TCP connect deadline, seconds.")
    ] = 3.0,
    source: Annotated[
        str | None,
        typer.Option("--source", help="Bind this local source address.", show_default=False),
    ] = None,
    ipv4: Annotated[bool, typer.Option("-4", help="IPv4 only.")] = False,
    ipv6: Annotated[bool, typer.Option("-6", help="IPv6 only.")] = False,
    no_color: Annotated[bool, typer.Option("--no-color")] = False,
) -> None:
    """Dump the MSRPC endpoint map grouped by Exchange component, and test each port."""
    if fmt not in ("table", "json"):
        raise InputError(f"--format {fmt!r}: `epm` prints table or json")
    if not 1 <= port <= 65535:
        raise InputError(f"--port {port}: outside 1-65535")
    spec = get_probe("msrpc-epm")
    values: dict[str, Any] = {
        "components": components,
        "follow": follow,
        "interfaces": list(interfaces or []),
        **_expectations(list(expect or [])),
    }
    params = make_params(spec.params_type, values, "epm")
    definition = CheckDef(f"msrpc-epm:{port}", "msrpc-epm", params, port)
    target = parse_target(host)
    opts, limits = EngineArgs(
        timeout=timeout, connect_timeout=connect_timeout, source=source, per_host=4
    ).build(1024)
    session = Session([target], [definition], opts, limits, family_of(ipv4, ipv6))
    warm_codec()  # impacket's import must not count against the check's deadline
    report = run_async(session.run())
    report.extra["epm"] = epm_view(report)
    results = report.all_results()
    if fmt == "json":
        emit(json.dumps(report.to_dict(verbose=True), indent=2, ensure_ascii=False, default=str),
             None)
    else:
        render(make_console(no_color), report)
    ok = bool(results) and all(r.ok for r in results)
    raise typer.Exit(0 if ok else 1)


def _derived(report: RunReport, parent: CheckResult) -> dict[tuple[str, int], CheckResult]:
    out: dict[tuple[str, int], CheckResult] = {}
    for r in report.all_results():
        if r.parent == parent.id and r.address == parent.address:
            out[(str(r.facts.get("component", "other")), r.port)] = r
    return out


def epm_view(report: RunReport) -> list[dict[str, Any]]:
    """Per queried address: each component's ports with the derived check's status."""
    view: list[dict[str, Any]] = []
    for r in report.all_results():
        if r.probe != "msrpc-epm":
            continue
        derived = _derived(report, r)
        comps: dict[str, Any] = {}
        for name, comp in (r.facts.get("components") or {}).items():
            ports = []
            for p in comp.get("ports", []):
                d = derived.get((name, p))
                ports.append(
                    {
                        "port": p,
                        "check": d.id if d else None,
                        "status": d.status.value if d else None,
                        "port_state": d.port_state.value if d else None,
                        "message": d.message if d else None,
                    }
                )
            comps[name] = {
                "registered": comp.get("registered", False),
                "pinning": comp.get("pinning"),
                "ports": ports,
            }
        view.append(
            {
                "address": r.address,
                "port": r.port,
                "check": r.id,
                "status": r.status.value,
                "summary": r.message,
                "components": comps,
            }
        )
    return view


def _reach(d: CheckResult | None) -> Text:
    if d is None:
        return Text("not tested", style="dim")
    return Text.assemble(state_text(d), " ", status_text(d))


def render(console: Console, report: RunReport) -> None:
    """The endpoint map for a terminal (network text always as `Text`)."""
    for t in report.targets:
        if t.error:
            console.print(Text(f"{printable(t.target)}: {printable(t.error)}", style="magenta"))
    for r in report.all_results():
        if r.probe != "msrpc-epm":
            continue
        _render_one(console, report, r)


def _render_one(console: Console, report: RunReport, r: CheckResult) -> None:
    console.print(
        Text.assemble(
            ("endpoint mapper ", "bold"),
            f"{r.endpoint} ",
            state_text(r),
            " ",
            status_text(r),
            f"  {r.elapsed_ms:.0f} ms",
        )
    )
    if not r.ok:
        step = f"{r.failed_step}: " if r.failed_step else ""
        console.print(Text(printable(step + r.message, 400), style="red"))
        for w in r.warnings:
            console.print(Text("warning: " + printable(w, 300), style="yellow"))
        return
    console.print(Text(printable(r.message, 400)))
    for w in r.warnings:
        console.print(Text("warning: " + printable(w, 300), style="yellow"))
    derived = _derived(report, r)
    comps: dict[str, Any] = r.facts.get("components") or {}

    table = Table(show_edge=False, header_style="bold", pad_edge=False, title_justify="left")
    for col in ("component", "port", "reachability", "detail", "pinning", "interfaces"):
        table.add_column(col, overflow="fold", no_wrap=col in ("component", "port"))
    for name in ORDER:
        comp = comps.get(name)
        if comp is None:
            continue
        label = LABELS[name]
        if not comp.get("registered"):
            table.add_row(label, "-", Text("not registered", style="dim"), "", "", "")
            continue
        ports = comp.get("ports") or []
        if not ports:
            protos = ", ".join(comp.get("protocols", []))
            table.add_row(label, "-", Text(f"no TCP endpoint ({protos})"), "", "", "")
        for p in ports:
            d = derived.get((name, p))
            ifaces = ", ".join(
                f"{i.get('name') or i['uuid']} v{i['version']}"
                for i in comp.get("interfaces", [])
                if i.get("port") == p
            )
            table.add_row(
                label,
                str(p),
                _reach(d),
                Text(printable(d.message, 120) if d else ""),
                Text(printable(comp.get("pinning", ""), 80)),
                Text(printable(ifaces, 200)),
            )
    console.print(table)

    endpoints: list[dict[str, Any]] = r.facts.get("endpoints") or []
    if not endpoints:
        return
    console.print(Text(f"endpoints ({len(endpoints)}):", style="bold"))
    etable = Table(show_edge=False, header_style="bold", pad_edge=False)
    for col in ("component", "interface", "name", "binding", "annotation", "reachability"):
        etable.add_column(col, overflow="fold", no_wrap=col in ("component",))

    def order(e: dict[str, Any]) -> tuple[int, str, int]:
        comp = e.get("component") or "other"
        return (ORDER.index(comp) if comp in ORDER else len(ORDER), e["uuid"], e.get("port") or 0)

    for e in sorted(endpoints, key=order):
        comp = e.get("component") or "other"
        host = r.address or ""
        where = e.get("pipe") if e.get("pipe") is not None else e.get("port")
        if e["protocol"] == "ncalrpc":
            binding = f"ncalrpc:[{e.get('pipe') or ''}]"
        else:
            shown = e.get("host") or host
            binding = f"{e['protocol']}:{shown}[{where if where is not None else ''}]"
        d = derived.get((comp, e["port"])) if e["protocol"] == "ncacn_ip_tcp" else None
        etable.add_row(
            LABELS.get(comp, comp),
            Text(f"{e['uuid']} v{e['version']}"),
            Text(printable(e.get("name") or "", 60)),
            Text(printable(binding, 80)),
            Text(printable(e.get("annotation") or "", 64)),
            _reach(d) if d is not None else Text("-", style="dim"),
        )
    console.print(etable)
