"""`exprobe serve`: the exporter over HTTP on loopback, and a real Prometheus scraping it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, LoopbackServer, closed_port, exprobe, free_port

PROFILE = """\
schema_version = 1
title = "loopback test profile"

[checks.web]
probe = "tcp"
port = {port}

[checks.banner]
probe = "banner"
port = {port}

[scenarios.reach]
title = "Reach the web port"
all = ["web"]
"""


class Exporter:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, str, dict[str, str]]:
        req = urllib.request.Request(self.base + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                return resp.status, resp.read().decode(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), dict(exc.headers)


def start_exporter(log: Path, *args: str) -> Exporter:
    """Start `exprobe serve` on a free loopback port; wait (bounded) until it listens."""
    port = free_port()
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exprobe", "serve", "--listen", f"127.0.0.1:{port}", *args],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
            env={**os.environ, "NO_COLOR": "1"},
        )
    deadline = time.monotonic() + 20
    while "listening on" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(f"exporter did not start: {log.read_text()!r}")
        time.sleep(0.05)
    return Exporter(proc, port)


def stop(proc: subprocess.Popen[Any]) -> int:
    """Stop one process we started, by its PID (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


@pytest.fixture
def listener() -> Iterator[LoopbackServer]:
    def banner(conn: socket.socket) -> None:
        conn.sendall(b"220 loopback ready\r\n")

    with LoopbackServer(banner) as srv:
        yield srv


@pytest.fixture
def exporter(tmp_path: Path, listener: LoopbackServer) -> Iterator[Exporter]:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "loop.toml").write_text(PROFILE.format(port=listener.port))
    exp = start_exporter(tmp_path / "serve.log", "--profile-dir", str(tmp_path / "profiles"), "-v")
    try:
        yield exp
    finally:
        assert stop(exp.proc) == 0


def metrics(text: str) -> dict[str, list[Any]]:
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def value(text: str, name: str, **labels: str) -> float:
    found = [s.value for s in metrics(text)[name]
             if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return float(found[0])


def test_probe_adhoc_checks(exporter: Exporter, listener: LoopbackServer) -> None:
    closed = closed_port()
    code, body, headers = exporter.get(
        f"/probe?target=127.0.0.1&port={listener.port}&check=banner:{closed}")
    assert code == 200, body
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert value(body, "exprobe_check_success", check=f"tcp:{listener.port}") == 1.0
    assert value(body, "exprobe_check_status", check=f"banner:{closed}",
                 status="connection-refused") == 1.0
    assert value(body, "exprobe_probe_success") == 0.0
    code, body, _ = exporter.get(f"/probe?target=127.0.0.1&port={listener.port}")
    assert value(body, "exprobe_probe_success") == 1.0


def test_probe_profile_scenario(exporter: Exporter, listener: LoopbackServer) -> None:
    code, body, _ = exporter.get("/probe?target=127.0.0.1&profile=loop&scenario=reach")
    assert code == 200, body
    assert value(body, "exprobe_scenario_pass", scenario="reach", address="127.0.0.1",
                 target="127.0.0.1") == 1.0
    assert value(body, "exprobe_probe_success") == 1.0
    assert value(body, "exprobe_check_success", check="web", probe="tcp") == 1.0
    # Only the checks the selected scenario needs ran.
    assert {s.labels["check"] for s in metrics(body)["exprobe_check_success"]} == {"web"}


ROLES_PROFILE = """\
schema_version = 1
title = "roles over the exporter"

[vantages]
client = "the client subnet"
mbx = "another Mailbox server"

[roles]
dc = "a domain controller"

[checks.web]
probe = "tcp"
port = {port}

[checks.gc]
probe = "tcp"
port = {port}
role = "dc"

[scenarios.reach]
title = "Reach"
vantages = ["client"]
all = ["web"]

[scenarios.directory]
title = "Directory"
vantages = ["mbx"]
all = ["gc"]
"""


def test_probe_vantage_and_roles(tmp_path: Path, listener: LoopbackServer) -> None:
    """`vantage=` selects the scenarios; the one target plays the primary role, so a
    scenario needing another role's host is skipped (said, not failed)."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "roles.toml").write_text(ROLES_PROFILE.format(port=listener.port))
    exp = start_exporter(tmp_path / "serve.log", "--profile-dir", str(tmp_path / "profiles"))
    try:
        code, body, _ = exp.get("/probe?target=127.0.0.1&profile=roles&vantage=mbx")
        assert code == 200, body
        labels = {"scenario": "directory", "address": "127.0.0.1", "target": "127.0.0.1"}
        assert value(body, "exprobe_scenario_verdict", verdict="skipped", **labels) == 1.0
        assert value(body, "exprobe_scenario_pass", **labels) == 0.0
        assert value(body, "exprobe_probe_success") == 1.0
        assert metrics(body)["exprobe_check_success"] == []  # the DC's check: no DC here
        code, body, _ = exp.get("/probe?target=127.0.0.1&profile=roles&vantage=client")
        assert value(body, "exprobe_scenario_verdict", verdict="pass", scenario="reach",
                     address="127.0.0.1", target="127.0.0.1") == 1.0  # fmt: skip
        code, body, _ = exp.get("/probe?target=127.0.0.1&profile=roles&vantage=dmz")
        assert code == 400
        assert "--vantage 'dmz': profile 'roles' has no such vantage (known: client, mbx)" in body
    finally:
        assert stop(exp.proc) == 0


def test_scrape_timeout_header_bounds_the_probe(exporter: Exporter) -> None:
    # A peer that accepts and never speaks: the banner check ends at the probe's budget.
    with LoopbackServer() as tarpit:
        code, body, _ = exporter.get(
            f"/probe?target=127.0.0.1&check=banner:{tarpit.port}",
            headers={"X-Prometheus-Scrape-Timeout-Seconds": "1.5"},
        )
    assert code == 200, body
    assert value(body, "exprobe_check_status", status="io-timeout") == 1.0
    # Bounded by the 1.5 s scrape timeout (minus the 0.5 s offset), not by --timeout (10 s).
    duration = value(body, "exprobe_check_duration_seconds")
    assert 0.5 <= duration < 1.5


@pytest.mark.parametrize(
    ("query", "headers", "code", "message"),
    [
        ("/probe", {}, 400, "target is missing"),
        ("/probe?target=127.0.0.1", {}, 400, "nothing to probe: give profile=NAME"),
        ("/probe?target=127.0.0.1&module=tcp", {}, 400,
         "unknown parameter 'module' (known: check, port, profile, scenario, target, vantage)"),
        ("/probe?target=10.0.0.0/8&port=1", {}, 400,
         "target '10.0.0.0/8': one host or address per probe, not a range"),
        ("/probe?target=127.0.0.1&target=::1&port=1", {}, 400, "target given 2 times"),
        ("/probe?target=bad_host!&port=1", {}, 400, "is not a valid host name or address"),
        ("/probe?target=127.0.0.1&port=1&profile=loop", {}, 400,
         "profile and check/port exclude each other"),
        ("/probe?target=127.0.0.1&scenario=reach&port=1", {}, 400, "scenario and vantage need profile"),
        ("/probe?target=127.0.0.1&profile=../etc/passwd", {}, 400, "not a profile name"),
        ("/probe?target=127.0.0.1&profile=nope", {}, 400, "unknown profile 'nope'"),
        ("/probe?target=127.0.0.1&profile=loop&scenario=zzz", {}, 400,
         "--scenario 'zzz': no such scenario in profile"),
        ("/probe?target=127.0.0.1&check=smtp:99999", {}, 400, "port '99999' is not in 1-65535"),
        ("/probe?target=127.0.0.1&port=x", {}, 400, "port 'x' is not a number"),
        ("/probe?target=127.0.0.1&port=1", {"X-Prometheus-Scrape-Timeout-Seconds": "soon"}, 400,
         "X-Prometheus-Scrape-Timeout-Seconds 'soon' is not a number"),
        ("/nope", {}, 404, "not found"),
    ],
)
def test_bad_requests(exporter: Exporter, query: str, headers: dict[str, str], code: int,
                      message: str) -> None:
    got, body, _ = exporter.get(query, headers)
    assert got == code, body
    assert message in body
    assert body.count("\n") == 1


def test_methods_bodies_and_oversized_heads(exporter: Exporter) -> None:
    code, body, headers = exporter.get("/metrics", method="POST")
    assert code == 405
    assert headers["Allow"] == "GET, HEAD"
    code, body, headers = exporter.get("/metrics", method="HEAD")
    assert code == 200
    assert body == ""
    assert int(headers["Content-Length"]) > 0

    def raw(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=10) as s:
            s.sendall(data)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    assert raw(b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n").startswith(
        b"HTTP/1.1 400 Bad Request")
    assert b"more than 64 headers" in raw(b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 70
                                          + b"\r\n")
    assert b"request bodies are not accepted" in raw(
        b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
    assert raw(b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400")


def test_exporter_own_metrics(exporter: Exporter, listener: LoopbackServer) -> None:
    exporter.get(f"/probe?target=127.0.0.1&port={listener.port}")
    exporter.get("/probe")
    code, body, _ = exporter.get("/metrics")
    assert code == 200
    m = metrics(body)
    assert value(body, "exprobe_exporter_requests", path="/probe", code="200") >= 1.0
    assert value(body, "exprobe_exporter_requests", path="/probe", code="400") >= 1.0
    assert "process_resident_memory_bytes" in m
    assert "python_info" in m
    assert value(body, "exprobe_exporter_probes_in_flight") == 0.0
    assert any(s.name == "exprobe_exporter_probe_duration_seconds_count" and s.value >= 1
               for s in m["exprobe_exporter_probe_duration_seconds"])
    promtool = shutil.which("promtool")
    if promtool:
        lint = subprocess.run([promtool, "check", "metrics"], input=body, text=True,
                              capture_output=True, timeout=30, check=False)
        assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("listen", ["0.0.0.0:9917", "[::]:9917", ":9917", "*:9917"])
def test_refuses_wildcard_without_allow_wildcard(listen: str) -> None:
    out = exprobe("serve", "--listen", listen, timeout=30)
    assert out.returncode == 2
    assert "refusing to listen on every interface" in out.stderr
    assert "--allow-wildcard" in out.stderr


def test_bad_listen_and_port_in_use() -> None:
    out = exprobe("serve", "--listen", "localhost", timeout=30)
    assert out.returncode == 2
    assert "expected HOST:PORT or [IPv6]:PORT" in out.stderr
    with LoopbackServer() as busy:
        out = exprobe("serve", "--listen", f"127.0.0.1:{busy.port}", timeout=30)
    assert out.returncode == 2
    assert "cannot listen (Address already in use)" in out.stderr


# -- a real Prometheus server scraping the exporter ----------------------------------------


PROM_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: exprobe
    metrics_path: /probe
    params:
      profile: [loop]
    static_configs:
      - targets: ['127.0.0.1']
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: '127.0.0.1:{exporter}'
  - job_name: exprobe_exporter
    static_configs:
      - targets: ['127.0.0.1:{exporter}']
"""


class Prometheus:
    def __init__(self, tmp: Path, exporter_port: int) -> None:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not Path(binary).exists():
            pytest.fail("the prometheus binary is missing: apt-get install prometheus "
                        "(.ci/lab-packages.sh installs it)")
        self.port = free_port()
        cfg = tmp / "prometheus.yml"
        cfg.write_text(PROM_CONFIG.format(exporter=exporter_port))
        self.log = tmp / "prometheus.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    def query(self, q: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                data = json.loads(resp.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return []
        assert data["status"] == "success", data
        return list(data["data"]["result"])

    def wait_for(self, q: str, expected: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll the HTTP API until every series of `q` has `expected` (bounded)."""
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            last = self.query(q)
            if last and all(r["value"][1] == expected for r in last):
                return last
            time.sleep(0.5)
        raise AssertionError(f"{q} never became {expected} in {timeout}s: {last}\n"
                             + self.log.read_text()[-2000:])


def test_prometheus_scrapes_the_exporter(tmp_path: Path) -> None:
    srv = LoopbackServer()
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "loop.toml").write_text(PROFILE.format(port=srv.port))
    exp = start_exporter(tmp_path / "serve.log", "--profile-dir", str(tmp_path / "profiles"))
    prom = Prometheus(tmp_path, exp.port)
    try:
        got = prom.wait_for('exprobe_probe_success{job="exprobe"}', "1")
        assert got[0]["metric"]["instance"] == "127.0.0.1"
        got = prom.wait_for('exprobe_scenario_pass{scenario="reach"}', "1")
        assert got[0]["metric"]["address"] == "127.0.0.1"
        prom.wait_for('up{job="exprobe_exporter"}', "1")
        prom.wait_for('exprobe_exporter_requests_total{path="/probe",code="200"} > bool 0', "1")
        srv.close()  # the path breaks: the next scrapes see the port refused
        prom.wait_for('exprobe_probe_success{job="exprobe"}', "0")
        prom.wait_for('exprobe_scenario_pass{scenario="reach"}', "0")
        prom.wait_for('exprobe_check_status{check="web",status="connection-refused"}', "1")
    finally:
        srv.close()
        stop(prom.proc)
        stop(exp.proc)
