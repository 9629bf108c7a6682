"""Helpers shared by the tests: run the CLI, validate reports against the JSON Schema."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "docs" / "report.schema.json"


def exprobe(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m exprobe ARGS` in a subprocess (as a user would), no colour."""
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "exprobe", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        input=input,
        cwd=ROOT,
        check=False,
    )


def readme_commands() -> list[str]:
    """README.md's two set-up commands (demo, tests), parsed by .ci/readme_commands.py."""
    import runpy

    module = runpy.run_path(str(ROOT / ".ci" / "readme_commands.py"))
    commands: list[str] = module["readme_commands"]((ROOT / "README.md").read_text())
    return commands


@functools.cache
def _validator() -> Any:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_report(report: dict[str, Any]) -> dict[str, Any]:
    """Raise if `report` does not follow docs/report.schema.json; return it."""
    _validator().validate(report)
    return report


def validate_check_record(record: dict[str, Any]) -> None:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    sub = {"$defs": schema["$defs"], **schema["$defs"]["check"]}
    jsonschema.Draft202012Validator(sub).validate(record)


def results_by_port(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {r["port"]: r for t in report["targets"] for r in t["results"]}


class LoopbackServer:
    """A threaded TCP server on 127.0.0.1 that runs `handler(conn)` per connection and
    counts what it accepted.  For CLI tests that run exprobe in a subprocess."""

    def __init__(self, handler: Any = None, host: str = "127.0.0.1") -> None:
        import socket
        import threading

        self.accepted = 0
        self._handler = handler
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(512)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: list[Any] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import threading

        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            if self._handler is not None:
                threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: Any) -> None:
        with contextlib.suppress(OSError):
            self._handler(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port with nothing listening on it right now (bound then released), for a server
    about to bind it."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_HELD: list[Any] = []  # sockets holding closed ports until the test session ends


def closed_port(host: str = "127.0.0.1") -> int:
    """A port that stays closed: bound and never listening, held for the rest of the
    session, so connections to it are refused and no later bind to port 0 (a test's
    server) can be handed it.  A released port can be, moments later."""
    import socket

    s = socket.socket()
    s.bind((host, 0))
    _HELD.append(s)
    return int(s.getsockname()[1])


def iana_names() -> dict[str, str]:
    """OpenSSL's cipher-suite names to the IANA names nmap prints (`openssl ciphers -stdname`)."""
    out = subprocess.run(["openssl", "ciphers", "-stdname", "ALL:@SECLEVEL=0"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    pairs = (line.split(" - ", 1) for line in out.splitlines() if " - " in line)
    return {rest.split()[0]: std.strip() for std, rest in pairs}


def nmap_suites(text: str) -> dict[str, list[str]]:
    """ssl-enum-ciphers' suites (IANA names) per TLS version, from nmap's normal output."""
    out: dict[str, list[str]] = {}
    version = None
    for line in text.splitlines():
        m = re.match(r"\|\s+TLSv(1\.[0-3]):", line)
        if m:
            version = m.group(1)
            out[version] = []
        elif version and (m := re.match(r"\|\s+(TLS_[A-Z0-9_]+)", line)):
            out[version].append(m.group(1))
    return {v: sorted(s) for v, s in out.items()}
