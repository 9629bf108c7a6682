"""The `exprobe` command.  Thin: parse, load, run, render, exit code."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from exprobe import __version__
from exprobe.errors import InputError

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")

app = typer.Typer(
    name="exprobe",
    help="Will each Exchange scenario work through this network path, and which hop breaks it?",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)

FORMATS = ("table", "json", "jsonl", "nagios", "prometheus", "junit")
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


# Messages given to `fail_input`: `--format nagios` turns them into UNKNOWN (exit 3).
INPUT_FAILURES: list[str] = []


def fail_input(message: str) -> NoReturn:
    """One line on stderr naming the problem; exit 2."""
    INPUT_FAILURES.append(message)
    sys.stderr.write(f"exprobe: error: {message}\n")
    raise typer.Exit(EXIT_USAGE)


def use_color(no_color: bool, stream: Any) -> bool:
    return not no_color and "NO_COLOR" not in os.environ and stream.isatty()


def make_console(no_color: bool, *, stderr: bool = False) -> Console:
    # Imported here: a run that prints JSON or JSON Lines never loads rich.
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    color = use_color(no_color, stream)
    return Console(
        file=stream,
        no_color=not color,
        color_system="auto" if color else None,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=False,
        width=None if stream.isatty() else 160,
    )


def raise_nofile_limit() -> int:
    """Raise the open-file soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when installed (EXPROBE_LOOP=asyncio forces the stdlib loop)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if os.environ.get("EXPROBE_LOOP", "auto") != "asyncio":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
    box: list[T] = []

    async def main() -> None:
        box.append(await coro)

    # The main task returns nothing: Python 3.11's Runner.run() formats repr() of its
    # task, result included, when it restores the SIGINT handler, and the repr of a
    # 100,000-check report is seconds and hundreds of MB.
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
    return box[0]


def version_callback(value: bool) -> None:
    if value:
        print(f"exprobe {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """exprobe: active prober for Microsoft Exchange network paths."""


def install_interrupts(task: asyncio.Task[Any]) -> dict[str, int]:
    """Ctrl-C and SIGTERM cancel the run; the caller reports what finished."""
    got: dict[str, int] = {}
    loop = asyncio.get_running_loop()

    def handler(signum: int) -> None:
        got.setdefault("signal", signum)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler, sig)
    return got


def family_of(ipv4: bool, ipv6: bool) -> int:
    if ipv4 and ipv6:
        fail_input("-4 and -6 exclude each other")
    return socket.AF_INET if ipv4 else socket.AF_INET6 if ipv6 else socket.AF_UNSPEC


def wants_nagios(argv: list[str]) -> bool:
    """`--format nagios` (or `-f nagios`, `--format=nagios`) anywhere on the command line."""
    for i, arg in enumerate(argv):
        if arg in ("--format=nagios", "-fnagios"):
            return True
        if arg in ("--format", "-f") and i + 1 < len(argv) and argv[i + 1] == "nagios":
            return True
    return False


def main_nagios() -> int:
    """Run the app for a monitoring system: every input or internal problem is UNKNOWN (3),
    with an `EXPROBE UNKNOWN - ...` status line on stdout, where Nagios reads it."""
    from exprobe.report.nagios import UNKNOWN, unknown_line

    def unknown(message: str) -> int:
        sys.stdout.write(unknown_line(message))
        sys.stdout.flush()
        return UNKNOWN

    try:
        code = app(standalone_mode=False)
    except InputError as exc:
        sys.stderr.write(f"exprobe: error: {exc}\n")
        return unknown(str(exc))
    except (typer.Abort, KeyboardInterrupt):
        return unknown("interrupted")
    except Exception as exc:
        # Usage errors (click's, or the copy typer vendors) carry format_message().
        message = getattr(exc, "format_message", None)
        if callable(message):
            sys.stderr.write(f"exprobe: error: {message()}\n")
            return unknown(f"invalid command line: {message()}")
        import traceback

        traceback.print_exc()
        return unknown(f"internal error in exprobe: {type(exc).__name__}: {exc}")
    if INPUT_FAILURES:
        return unknown(INPUT_FAILURES[-1])
    if not isinstance(code, int):
        return 0
    # Interrupted (128 + signal): the report, if any, already said UNKNOWN.
    return code if 0 <= code <= UNKNOWN else UNKNOWN


def _registered(name: str) -> bool:
    names = [c.name or getattr(c.callback, "__name__", "") for c in app.registered_commands]
    names += [g.name or "" for g in app.registered_groups]
    return any(n.replace("_", "-") == name for n in names if n)


def register_commands(argv: list[str]) -> None:
    """Import the sub-command named on the command line, and only it when it is a module
    of its own: `exprobe run ...`, spawned every minute by a monitoring system, need not
    import `listen`, `serve` and the EPM codec.  Anything else (help, no command, a
    name that is not a module) imports them all, as `import exprobe.commands` does."""
    name = next((a for a in argv if not a.startswith("-")), None)
    here = os.path.join(os.path.dirname(__file__), "commands")
    if (
        name is None
        or "exprobe.commands" in sys.modules
        or not name.isidentifier()
        or name.startswith("_")
        or not os.path.isfile(os.path.join(here, f"{name}.py"))
    ):
        import exprobe.commands  # registers every sub-command

        return
    import importlib
    import importlib.machinery
    import importlib.util

    import exprobe

    # A stand-in for the package while the one module loads; the real package (which
    # imports every command) replaces it as soon as anything imports it.
    spec = importlib.machinery.ModuleSpec("exprobe.commands", None, is_package=True)
    spec.submodule_search_locations = [here]
    stub = importlib.util.module_from_spec(spec)
    sys.modules["exprobe.commands"] = stub
    try:
        importlib.import_module(f"exprobe.commands.{name}")
    finally:
        if sys.modules.get("exprobe.commands") is stub:
            del sys.modules["exprobe.commands"]
        if getattr(exprobe, "commands", None) is stub:
            del exprobe.commands
    if not _registered(name):
        import exprobe.commands  # the module registered another name: all of them


# Options whose value may be left out: `--trace` means `--trace failing`.  (Click's
# optional-value options do not survive typer; so the argv is completed before parsing.)
OPTIONAL_VALUES = {"--trace": (("failing", "all"), "failing")}


def complete_optional_values(argv: list[str]) -> list[str]:
    """`--trace` not followed by one of its values becomes `--trace=failing`."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        spec = OPTIONAL_VALUES.get(arg)
        if spec is not None and (i + 1 >= len(argv) or argv[i + 1] not in spec[0]):
            out.append(f"{arg}={spec[1]}")
        else:
            out.append(arg)
    return out


def main() -> None:
    """Console-script entry point."""
    sys.argv[1:] = complete_optional_values(sys.argv[1:])
    register_commands(sys.argv[1:])

    if wants_nagios(sys.argv[1:]):
        sys.exit(main_nagios())
    try:
        app()
    except InputError as exc:
        sys.stderr.write(f"exprobe: error: {exc}\n")
        sys.exit(EXIT_USAGE)
