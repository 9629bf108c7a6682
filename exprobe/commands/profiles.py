"""`exprobe profiles list|show|check`: the shipped profiles, one profile in detail, validation."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from exprobe.cli import app, fail_input, make_console
from exprobe.errors import InputError

if TYPE_CHECKING:  # the profile code is imported only when a profile command runs
    from exprobe.profile import CheckDecl, Profile, Requirement

profiles_app = typer.Typer(
    name="profiles",
    help="The shipped profiles: list them, show one, or validate a TOML file.",
    no_args_is_help=True,
)
app.add_typer(profiles_app, name="profiles")


def _load(ref: str) -> Profile:
    from exprobe.profile import load_profile

    try:
        return load_profile(ref)
    except InputError as exc:
        fail_input(str(exc))


@profiles_app.command("list")
def list_cmd(
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    no_color: Annotated[bool, typer.Option("--no-color", help="No colour.")] = False,
) -> None:
    """The shipped profiles: name, title, number of scenarios."""
    from exprobe.profile import list_profiles

    if fmt not in ("table", "json"):
        fail_input(f"--format {fmt!r}: expected table or json")
    try:
        profiles = list_profiles()
    except InputError as exc:
        fail_input(str(exc))
    if fmt == "json":
        rows = [
            {**p.info(), "scenarios": len(p.scenarios), "checks": len(p.checks)} for p in profiles
        ]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    for col in ("name", "title", "scenarios", "extends"):
        table.add_column(col)
    for p in profiles:
        table.add_row(
            Text(p.name), Text(p.title), str(len(p.scenarios)), Text(" → ".join(p.extends))
        )
    make_console(no_color).print(table)


def _params_text(decl: CheckDecl) -> str:
    """The parameters that differ from the probe's defaults, as `key=value`."""
    defaults = type(decl.params)()
    parts = []
    for key, value in decl.param_values().items():
        default = getattr(defaults, key)
        if (list(default) if isinstance(default, tuple) else default) != value:
            shown = ",".join(map(str, value)) if isinstance(value, list) else value
            parts.append(f"{key}={shown}")
    return " ".join(parts)


def _check_label(p: Profile, req: Requirement) -> Text:
    from exprobe.profile.model import COMPONENT_NAMES

    decl = p.checks[req.check]
    if req.component:
        name = COMPONENT_NAMES.get(req.component, req.component)
        return Text.assemble(
            (str(req), "bold"),
            f"  the {name} ports handed out by {req.check!r} (msrpc-epm on {decl.port})",
        )
    params = _params_text(decl)
    return Text.assemble(
        (req.check, "bold"),
        f"  {decl.probe} {decl.port}",
        (f"  on the {decl.role}" if decl.role else "", "magenta"),
        ("  off by default" if not decl.enabled else "", "yellow"),
        (f"  {params}" if params else "", "cyan"),
        (f"  {decl.title}" if decl.title else "", "dim"),
    )


def profile_tree(p: Profile) -> Tree:
    head = Text.assemble((p.name, "bold"), f"  {p.title}", (f"  ({p.path})", "dim"))
    if p.extends:
        head.append(f"  extends {' → '.join(p.extends)}", style="dim")
    tree = Tree(head)
    if p.vantages:
        vantages = tree.add(Text("vantages (--vantage):", style="bold"))
        for name, text in p.vantages.items():
            vantages.add(Text.assemble((name, "bold"), f"  {text}"))
    if p.roles:
        roles = tree.add(Text("roles (--role NAME=HOST):", style="bold"))
        roles.add(Text.assemble((p.primary_role, "bold"), "  the target(s) given"))
        for name, text in p.roles.items():
            roles.add(Text.assemble((name, "bold"), f"  {text}"))
    for s in p.scenarios.values():
        where = ", ".join(s.vantages) if s.vantages else s.vantage
        node = tree.add(
            Text.assemble(
                (s.id, "bold green"),
                f"  {s.title}",
                (f"  from {where}" if where else "", "dim"),
                ("  must not be filtered" if s.filtering == "unsupported" else "", "yellow"),
            )
        )
        if s.description:
            node.add(Text(" ".join(s.description.split()), style="italic"))
        if s.all:
            group = node.add(Text("all of:"))
            for r in s.all:
                group.add(_check_label(p, r))
        for g in s.any:
            group = node.add(Text("any of:"))
            for r in g:
                group.add(_check_label(p, r))
        if s.observe:
            group = node.add(Text("also reported (never deciding):"))
            for r in s.observe:
                group.add(_check_label(p, r))
        if s.docs:
            node.add(Text.assemble(("read", "cyan"), ": ", "; ".join(s.docs)))
        for h in s.hints:
            cond = []
            if h.when:
                cond.append("when " + ", ".join(h.when))
            if h.on:
                cond.append("on " + ", ".join(h.on))
            node.add(
                Text.assemble(
                    ("hint", "cyan"),
                    f" ({'; '.join(cond)})" if cond else "",
                    ": ",
                    " ".join(h.render().split()),
                )
            )
    return tree


@profiles_app.command("show")
def show_cmd(
    name: Annotated[str, typer.Argument(help="Profile name or TOML file.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="tree or json.")] = "tree",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Apply CHECK.PARAM=VALUE first.", show_default=False),
    ] = None,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colour.")] = False,
) -> None:
    """The scenarios of a profile with their checks: ids, probes, ports, parameters, hints."""
    if fmt not in ("tree", "table", "json"):
        fail_input(f"--format {fmt!r}: expected tree or json")
    p = _load(name)
    if set_:
        try:
            p = p.with_overrides(set_)
        except InputError as exc:
            fail_input(str(exc))
    if fmt == "json":
        print(json.dumps(p.to_dict(), indent=2, ensure_ascii=False))
        return
    make_console(no_color).print(profile_tree(p))


@profiles_app.command("check")
def check_cmd(
    file: Annotated[str, typer.Argument(help="Profile TOML file (or a shipped name).")],
) -> None:
    """Validate a profile completely: `ok` and exit 0, or the one-line problem and exit 2."""
    p = _load(file)
    summary: dict[str, Any] = {"checks": len(p.checks), "scenarios": len(p.scenarios)}
    print(f"ok: {p.path}: {summary['checks']} checks, {summary['scenarios']} scenarios")
