"""`exprobe serve`: a Prometheus exporter in the manner of blackbox_exporter.

    GET /probe?target=HOST&profile=NAME[&scenario=ID]...   a profile's scenarios
    GET /probe?target=HOST&check=smtp:25:starttls[&port=N]...   ad hoc checks
    GET /metrics                                           the exporter's own metrics

A probe runs when Prometheus scrapes it, within the scrape timeout Prometheus sends in
`X-Prometheus-Scrape-Timeout-Seconds` (minus `--timeout-offset`), and answers with the
report's metrics (see `exprobe.report.prometheus`) plus `exprobe_probe_success`.  A bad
query is a 400 with a one-line message.  One exporter per vantage point (client subnet,
site, DMZ), one Prometheus scraping them all: docs/monitoring.md.

The HTTP server is a small HTTP/1.1 handler on `asyncio.start_server`, not `http.server`
in a thread: probes are coroutines and belong on the event loop that serves the request,
so a scrape that times out cancels its probe at once.  It is deliberately narrow and
strictly bounded: GET and HEAD only, no request bodies, request line and each header line
at most 8 KiB, at most 64 headers, 10 s to send them, one request per connection
(`Connection: close`), at most 256 connections and `--max-probes` probes at a time (more
get 503 at once rather than queueing past their scrape timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import typer

from exprobe import __version__
from exprobe.cli import app, raise_nofile_limit, run_async
from exprobe.commands.common import EngineArgs, adhoc_defs
from exprobe.commands.run import (
    CaFileOpt,
    CertWarnDaysOpt,
    ConnectTimeoutOpt,
    PerHostOpt,
    RetriesOpt,
    SourceOpt,
    TlsVerifyOpt,
)
from exprobe.engine.runner import RunOptions
from exprobe.engine.scheduler import Limits
from exprobe.engine.session import Session
from exprobe.errors import InputError
from exprobe.report.safe import printable
from exprobe.result import RunReport, now_iso

MAX_LINE = 8192
MAX_HEADERS = 64
HEADER_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 256
MAX_QUERY_FIELDS = 32
MAX_BUDGET = 300.0
MIN_BUDGET = 0.2
PROBE_PARAMS = {"target", "profile", "scenario", "check", "port", "vantage"}
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"


class BadRequest(Exception):
    """A query the exporter cannot run: 400 with this one-line message."""


def parse_listen(text: str, allow_wildcard: bool) -> tuple[str, int]:
    """`HOST:PORT` or `[v6]:PORT`; a wildcard host needs `--allow-wildcard`."""
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)", text) or re.fullmatch(r"([^:\[\]]*):(\d+)", text)
    if not m:
        raise InputError(f"--listen {text!r}: expected HOST:PORT or [IPv6]:PORT")
    host, port = m.group(1), int(m.group(2))
    if not 0 < port < 65536:
        raise InputError(f"--listen {text!r}: port {port} is not in 1-65535")
    try:
        wildcard = host in ("", "*") or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard and not allow_wildcard:
        raise InputError(
            f"--listen {text!r}: refusing to listen on every interface (a probing service "
            "open to the network); bind an address, or pass --allow-wildcard"
        )
    return (host if host not in ("", "*") else "0.0.0.0"), port


@dataclass(slots=True)
class ExporterMetrics:
    """The exporter's own metrics (`/metrics`)."""

    registry: Any
    requests: Any
    probe_seconds: Any
    in_flight: Any
    rejected: Any

    @classmethod
    def create(cls) -> ExporterMetrics:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            Info,
        )
        from prometheus_client.gc_collector import GCCollector
        from prometheus_client.platform_collector import PlatformCollector
        from prometheus_client.process_collector import ProcessCollector

        reg = CollectorRegistry()
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        Info("exprobe_exporter_build", "exprobe version.", registry=reg).info(
            {"version": __version__}
        )
        return cls(
            registry=reg,
            requests=Counter(
                "exprobe_exporter_requests",
                "HTTP requests answered, by path and status code.",
                ["path", "code"],
                registry=reg,
            ),
            probe_seconds=Histogram(
                "exprobe_exporter_probe_duration_seconds",
                "Time to run one /probe request.",
                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                registry=reg,
            ),
            in_flight=Gauge(
                "exprobe_exporter_probes_in_flight", "Probes running now.", registry=reg
            ),
            rejected=Counter(
                "exprobe_exporter_probes_rejected",
                "Probes refused with 503 because --max-probes were running.",
                registry=reg,
            ),
        )


@dataclass(slots=True)
class Exporter:
    """Answers HTTP requests; runs probes on the serving event loop."""

    base: RunOptions
    limits: Limits
    family: int
    profile_dirs: list[Path]
    default_budget: float
    timeout_offset: float
    max_probes: int
    verbose: bool = False
    metrics: ExporterMetrics = field(default_factory=ExporterMetrics.create)
    probes: int = 0
    connections: int = 0
    _profiles: dict[str, tuple[float, Any]] = field(default_factory=dict)

    # -- HTTP --------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.connections > MAX_CONNECTIONS:
                return
            await self._handle(reader, writer)
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            self.connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(HEADER_TIMEOUT):
                method, target, headers = await read_request(reader)
        except BadRequest as exc:
            await self._send(writer, "GET", "?", 400, str(exc).encode() + b"\n", t0)
            return
        except (asyncio.IncompleteReadError, TimeoutError):
            return  # nothing worth answering
        path, _, query = target.partition("?")
        if method not in ("GET", "HEAD"):
            await self._send(writer, method, path, 405, b"only GET and HEAD\n", t0,
                             extra={"Allow": "GET, HEAD"})
            return
        if path == "/probe":
            code, body, ctype = await self.probe(query, headers)
        elif path == "/metrics":
            from prometheus_client import generate_latest

            code, body, ctype = 200, generate_latest(self.metrics.registry), CONTENT_TYPE_METRICS
        elif path == "/":
            code, body, ctype = 200, INDEX, "text/html; charset=utf-8"
        else:
            code, body, ctype = 404, b"not found: try /probe or /metrics\n", "text/plain"
        await self._send(writer, method, path, code, body, t0, ctype=ctype, query=query)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        code: int,
        body: bytes,
        t0: float,
        *,
        ctype: str = "text/plain; charset=utf-8",
        extra: dict[str, str] | None = None,
        query: str = "",
    ) -> None:
        known = path if path in ("/probe", "/metrics", "/") else "other"
        self.metrics.requests.labels(known, str(code)).inc()
        head = [
            f"HTTP/1.1 {code} {HTTPStatus(code).phrase}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in (extra or {}).items()),
        ]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("ascii")
        if method != "HEAD":
            data += body
        async with asyncio.timeout(WRITE_TIMEOUT):
            writer.write(data)
            await writer.drain()
        if self.verbose:
            shown = printable(path + ("?" + query if query else ""), 300)
            sys.stderr.write(f"{method} {shown} {code} {time.monotonic() - t0:.3f}s\n")

    # -- /probe ------------------------------------------------------------------------

    async def probe(self, query: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
        try:
            job = self.prepare(query, headers)
        except (BadRequest, InputError) as exc:
            return 400, (printable(str(exc), 500) + "\n").encode("utf-8"), "text/plain"
        if self.probes >= self.max_probes:
            self.metrics.rejected.inc()
            return 503, f"{self.probes} probes running (--max-probes)\n".encode(), "text/plain"
        self.probes += 1
        self.metrics.in_flight.inc()
        t0 = time.monotonic()
        try:
            report = await self.run(job)
        finally:
            self.probes -= 1
            self.metrics.in_flight.dec()
            self.metrics.probe_seconds.observe(time.monotonic() - t0)
        from exprobe.report.prometheus import render_bytes

        return 200, render_bytes(report, probe=True), CONTENT_TYPE_METRICS

    def prepare(self, query: str, headers: dict[str, str]) -> ProbeJob:
        """Validate the query into a job; every problem is a `BadRequest`."""
        from exprobe.targets import parse_target

        try:
            params = parse_qs(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError as exc:
            raise BadRequest(f"bad query string ({exc})") from None
        for key in params:
            if key not in PROBE_PARAMS:
                raise BadRequest(
                    f"unknown parameter {key!r} (known: {', '.join(sorted(PROBE_PARAMS))})"
                )
        for key in ("target", "profile", "vantage"):
            if len(params.get(key, [])) > 1:
                raise BadRequest(f"{key} given {len(params[key])} times")
        target_text = (params.get("target") or [""])[0]
        if not target_text:
            raise BadRequest("target is missing (e.g. /probe?target=mail.example.com&profile=exchange55)")
        target = parse_target(target_text, where="target")
        if target.size() != 1:
            raise BadRequest(f"target {target_text!r}: one host or address per probe, not a range")
        profile = (params.get("profile") or [""])[0]
        checks, ports, scenario_ids = (
            params.get("check", []), params.get("port", []), params.get("scenario", [])
        )
        if profile and (checks or ports):
            raise BadRequest("profile and check/port exclude each other")
        vantage = (params.get("vantage") or [""])[0] or None
        if (scenario_ids or vantage) and not profile:
            raise BadRequest("scenario and vantage need profile")
        scenarios: list[Any] = []
        judging: Any = None
        primary_role: str | None = None
        if profile:
            prof = self.load_profile(profile)
            defs, scenarios = prof.select(scenario_ids, vantage)
            info = prof.info()
            # The one target plays the primary role; scenarios that need another role's
            # host (a domain controller) come back skipped.
            judging = prof.judging(vantage)
            primary_role = prof.primary_role if prof.roles else None
        else:
            port_numbers = []
            for p in ports:
                if not p.isdigit():
                    raise BadRequest(f"port {p!r} is not a number")
                port_numbers.append(int(p))
            defs = adhoc_defs(port_numbers, checks)
            info = None
            if not defs and target.port is None:
                raise BadRequest("nothing to probe: give profile=NAME, check=PROBE[:PORT[:TLS]] "
                                 "or port=N")
        budget = self.budget(headers)
        # Checks end a little before the budget, so their results make it into the answer.
        check_timeout = min(self.base.timeout, max(MIN_BUDGET / 2, budget * 0.95 - 0.05))
        opts = RunOptions(
            connect_timeout=min(self.base.connect_timeout, check_timeout),
            timeout=check_timeout,
            retries=self.base.retries,
            source=self.base.source,
            tls=self.base.tls,
        )
        return ProbeJob(target, defs, scenarios, opts, budget, info, judging, primary_role)

    def budget(self, headers: dict[str, str]) -> float:
        """Seconds this probe may take: the scrape timeout minus the offset."""
        raw = headers.get("x-prometheus-scrape-timeout-seconds")
        seconds = self.default_budget
        if raw is not None:
            try:
                seconds = float(raw)
            except ValueError:
                raise BadRequest(
                    f"X-Prometheus-Scrape-Timeout-Seconds {printable(raw, 40)!r} is not a number"
                ) from None
            if not seconds > 0:
                raise BadRequest("X-Prometheus-Scrape-Timeout-Seconds must be positive")
        return max(MIN_BUDGET, min(MAX_BUDGET, seconds - self.timeout_offset))

    def load_profile(self, name: str) -> Any:
        """A profile by name: `--profile-dir` first, then the shipped ones; cached by mtime.

        Only names, never paths, come from the query string.
        """
        if not _PROFILE_NAME.match(name) or ".." in name:
            raise BadRequest(f"profile {printable(name, 80)!r}: not a profile name")
        from exprobe.profile import load_profile, shipped_dir

        path = next(
            (d / f"{name}.toml" for d in self.profile_dirs if (d / f"{name}.toml").is_file()),
            shipped_dir() / f"{name}.toml",
        )
        try:
            mtime = path.stat().st_mtime
        except OSError:
            raise BadRequest(f"unknown profile {name!r}") from None
        cached = self._profiles.get(name)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        prof = load_profile(str(path))
        if len(self._profiles) >= 64:
            self._profiles.pop(next(iter(self._profiles)))
        self._profiles[name] = (mtime, prof)
        return prof

    async def run(self, job: ProbeJob) -> RunReport:
        """Run the job's checks within its budget; a late probe is cut off and reported
        as interrupted (so `exprobe_probe_success` is 0)."""
        session = Session(
            [job.target],
            job.defs,
            job.opts,
            self.limits,
            self.family,
            primary_role=job.primary_role,
        )
        session.report.profile = job.profile_info
        task = asyncio.create_task(session.run())
        done, _ = await asyncio.wait({task}, timeout=job.budget)
        if not done:
            task.cancel()
        try:
            report = await task
        except asyncio.CancelledError:
            report = session.report
            report.interrupted = True
            report.finished_at = report.finished_at or now_iso()
        if job.scenarios:
            from exprobe.engine.evaluate import evaluate

            evaluate(report, job.scenarios, job.judging)
        return report


@dataclass(frozen=True, slots=True)
class ProbeJob:
    target: Any
    defs: list[Any]
    scenarios: list[Any]
    opts: RunOptions
    budget: float
    profile_info: dict[str, Any] | None
    judging: Any = None  # exprobe.profile.model.Judging, with a profile
    primary_role: str | None = None


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    """The request line and headers, bounded; no body is accepted."""
    line = await _line(reader)
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("malformed request line")
    method, target, _ = parts
    if not target.startswith("/"):
        raise BadRequest("request target must be a path")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        h = await _line(reader)
        if not h:
            break
        name, sep, value = h.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest("malformed header line")
        headers[name.lower()] = value.strip()
    else:
        raise BadRequest(f"more than {MAX_HEADERS} headers")
    if headers.get("transfer-encoding") or headers.get("content-length", "0") not in ("", "0"):
        raise BadRequest("request bodies are not accepted")
    return method, target, headers


async def _line(reader: asyncio.StreamReader) -> str:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise BadRequest(f"line longer than {MAX_LINE} bytes") from None
    try:
        return raw.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        raise BadRequest("non-ASCII bytes in the request head") from None


INDEX = b"""<!doctype html>
<html><head><title>exprobe exporter</title></head><body>
<h1>exprobe exporter</h1>
<p><a href="/metrics">/metrics</a>: the exporter's own metrics.</p>
<p>/probe?target=HOST&amp;profile=NAME[&amp;scenario=ID]: a profile's scenarios;
/probe?target=HOST&amp;check=smtp:25:starttls[&amp;port=N]: ad hoc checks.</p>
</body></html>
"""


async def _serve(exporter: Exporter, host: str, port: int) -> None:
    try:
        server = await asyncio.start_server(exporter.handle, host, port, limit=MAX_LINE,
                                            reuse_address=True)
    except OSError as exc:
        # asyncio rewrites the message; the errno still names the problem.
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise InputError(f"--listen {host}:{port}: cannot listen ({why})") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    shown = ", ".join(
        f"http://[{s.getsockname()[0]}]:{s.getsockname()[1]}" if ":" in s.getsockname()[0]
        else f"http://{s.getsockname()[0]}:{s.getsockname()[1]}"
        for s in server.sockets
    )
    sys.stderr.write(f"exprobe serve: listening on {shown}\n")
    sys.stderr.flush()
    async with server:
        await stop.wait()
        server.close()
    sys.stderr.write("exprobe serve: stopped\n")


@app.command("serve")
def serve_command(
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT to serve on (loopback by default).")
    ] = "127.0.0.1:9917",
    allow_wildcard: Annotated[
        bool,
        typer.Option("--allow-wildcard", help="Allow listening on every interface (0.0.0.0, ::)."),
    ] = False,
    profile_dir: Annotated[
        list[str] | None,
        typer.Option("--profile-dir", help="Look up profile=NAME as DIR/NAME.toml first (repeatable).",
                     show_default=False),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Whole-check deadline cap, seconds (the scrape timeout cuts it further).")
    ] = 10.0,
    default_scrape_timeout: Annotated[
        float, typer.Option("--default-scrape-timeout",
                            help="Probe budget when the request has no X-Prometheus-Scrape-Timeout-Seconds.")
    ] = 10.0,
    timeout_offset: Annotated[
        float, typer.Option("--timeout-offset", help="Seconds kept back from the scrape timeout.")
    ] = 0.5,
    max_probes: Annotated[
        int, typer.Option("--max-probes", help="Probes running at once; more get 503.")
    ] = 16,
    connect_timeout: ConnectTimeoutOpt = 3.0,
    retries: RetriesOpt = 0,
    per_host: PerHostOpt = 4,
    source: SourceOpt = None,
    tls_verify: TlsVerifyOpt = False,
    ca_file: CaFileOpt = None,
    cert_warn_days: CertWarnDaysOpt = 14,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log each request on stderr.")] = False,
) -> None:
    """Serve Prometheus metrics: /probe runs a probe per scrape, /metrics the exporter's own."""
    host, port = parse_listen(listen, allow_wildcard)
    if max_probes < 1:
        raise InputError("--max-probes must be at least 1")
    if timeout_offset < 0 or default_scrape_timeout <= 0:
        raise InputError("--timeout-offset must be >= 0 and --default-scrape-timeout positive")
    dirs = [Path(d) for d in profile_dir or []]
    for d in dirs:
        if not d.is_dir():
            raise InputError(f"--profile-dir {d}: not a directory")
    engine = EngineArgs(
        timeout=timeout,
        connect_timeout=connect_timeout,
        retries=retries,
        per_host=per_host,
        source=source,
        tls_verify=tls_verify,
        ca_file=ca_file,
        cert_warn_days=cert_warn_days,
    )
    opts, limits = engine.build(raise_nofile_limit())
    import socket

    exporter = Exporter(
        base=opts,
        limits=limits,
        family=socket.AF_UNSPEC,
        profile_dirs=dirs,
        default_budget=default_scrape_timeout,
        timeout_offset=timeout_offset,
        max_probes=max_probes,
        verbose=verbose,
    )
    run_async(_serve(exporter, host, port))
