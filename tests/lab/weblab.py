"""The web lab: nginx in front of two scripted Exchange backends, and the middleboxes.

Two network namespaces joined by one veth pair, IPv4 and IPv6:

    xpweb-cli 10.252.0.1 / fd00:e7::1  ──  xpweb-srv 10.252.0.2 / fd00:e7::2

In xpweb-srv, two scripted Exchange backends (tests/peers/exchange_http.py) listen on
127.0.0.1:8081 (EX1, ex1.corp.example) and 127.0.0.1:8082 (EX2, ex2.corp.example), and a
real nginx fronts them on the lab address (TLS with a trustme certificate for
mail.corp.example unless noted):

| port | what nginx is |
|---|---|
| 80   | plain HTTP proxy to EX1 |
| 443  | TLS proxy to EX1 (the healthy path) |
| 4432 | TLS proxy to EX2 |
| 4430 | TLS pool of EX1 and EX2, round robin (one upstream connection per request) |
| 4433 | TLS proxy to EX1 that refuses /mapi/ (403) and the RPC verbs (405) |
| 4434 | TLS "WAF": every path redirects to its own login page |
| 4435 | TLS proxy to EX1 that replaces WWW-Authenticate with its own Basic (auth offload) |
| 4436 | TLS proxy to EX1 with another certificate (an SSL-inspecting middlebox) |
| 4437 | TLS proxy to EX1, but nftables in xpweb-srv rejects it with a TCP reset |
| 4438 | TLS pool of the members EX1 and EX2, re-encrypted with the same certificate |
| 4439 | TLS pool of EX1 and EX2 with the load balancer's own certificate (SSL offloading) |
| 4440 | TLS pool of the members EX1 and EX3, re-encrypted; EX3's owa is offline (503) |
| 4441 | TLS pool of EX1 and EX4, whose FQDN (ex4.corp.example) is in no DNS |

The members, asked directly (nginx in front of each backend, the VIP's certificate on 443,
plain HTTP on 80), and DNS for their FQDNs (dnsmasq, zone corp.example, A and AAAA):

| member | addresses | backend |
|---|---|---|
| ex1.corp.example | 10.252.0.11, fd00:e7::11 | EX1 (127.0.0.1:8081) |
| ex2.corp.example | 10.252.0.12, fd00:e7::12 | EX2 (127.0.0.1:8082) |
| ex3.corp.example | 10.252.0.13, fd00:e7::13 | EX3 (127.0.0.1:8083; healthcheck of owa 503) |
| (DNS) | 10.252.0.53, fd00:e7::53 | dnsmasq |

EX4 (127.0.0.1:8084, ex4.corp.example) is reachable only through 4441.

Command line (root):  python -m tests.lab.weblab up|down
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.lab.common import LabLock, command, delete_namespaces, run_in, start_in, stop

if TYPE_CHECKING:
    import trustme

NS = {"cli": "xpweb-cli", "srv": "xpweb-srv"}
SERVER = {4: "10.252.0.2", 6: "fd00:e7::2"}
CLIENT = {4: "10.252.0.1", 6: "fd00:e7::1"}
NAME = "mail.corp.example"
BACKENDS = {"EX1": 8081, "EX2": 8082, "EX3": 8083, "EX4": 8084}
OFFLINE = {"EX3": "owa"}  # the vdirs whose healthcheck.htm answers 503
MEMBERS = {"EX1": {4: "10.252.0.11", 6: "fd00:e7::11"},
           "EX2": {4: "10.252.0.12", 6: "fd00:e7::12"},
           "EX3": {4: "10.252.0.13", 6: "fd00:e7::13"}}  # fmt: skip
DNS = {4: "10.252.0.53", 6: "fd00:e7::53"}
BUILD = "15.2.1544.4"
PORTS = {"plain": 80, "ex1": 443, "ex2": 4432, "pool": 4430, "refuse": 4433, "waf": 4434,
         "strip": 4435, "inspect": 4436, "reset": 4437, "reencrypt": 4438, "offload": 4439,
         "offline": 4440, "ghost": 4441}  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]

LOGIN_PAGE = (
    "<!DOCTYPE html><html><head><title>Sign in</title></head><body>"
    "<form method=post action=/login><input name=user>"
    "<input type=\\\"password\\\" name=pass></form></body></html>"
)


class WebLabError(RuntimeError):
    """The web lab could not be set up."""


def _run(argv: Sequence[str], *, check: bool = True, input: str | None = None) -> str:
    return command(argv, check=check, input=input, error=WebLabError)


def ns_argv(node: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", NS[node], *argv]


def _nginx_conf(d: Path) -> str:
    tls = f"ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;"
    other = f"ssl_certificate {d}/other.pem; ssl_certificate_key {d}/other-key.pem;"
    lb = f"ssl_certificate {d}/lb.pem; ssl_certificate_key {d}/lb-key.pem;"
    proxy = (
        "proxy_http_version 1.1; proxy_set_header Connection \"\"; "
        "proxy_set_header Host $host; proxy_pass http://{up};"
    )
    reencrypt = proxy.replace("http://", "https://")

    def member(name: str) -> str:
        a4, a6 = MEMBERS[name][4], MEMBERS[name][6]
        up = "location / { " + proxy.format(up=name.lower()) + " }"
        return (f"server {{ listen {a4}:443 ssl; listen [{a6}]:443 ssl; server_name {NAME};"
                f" {tls} {up} }}\n"
                f"server {{ listen {a4}:80; listen [{a6}]:80; {up} }}\n")  # fmt: skip

    def upstream(name: str, servers: list[str]) -> str:
        return f"upstream {name} {{ {' '.join(f'server {s};' for s in servers)} }}\n"

    def server(port: int, body: str, *, cert: str = tls, ssl_on: bool = True) -> str:
        listen = f"listen {SERVER[4]}:{port}{' ssl' if ssl_on else ''}; " \
                 f"listen [{SERVER[6]}]:{port}{' ssl' if ssl_on else ''};"
        return f"server {{ {listen} server_name {NAME}; {cert if ssl_on else ''} {body} }}\n"

    ex1 = "location / { " + proxy.format(up="ex1") + " }"
    return nginx_main(d, (
        f"upstream ex1 {{ server 127.0.0.1:{BACKENDS['EX1']}; }}\n"
        f"upstream ex2 {{ server 127.0.0.1:{BACKENDS['EX2']}; }}\n"
        f"upstream pool {{ server 127.0.0.1:{BACKENDS['EX1']}; server 127.0.0.1:{BACKENDS['EX2']}; }}\n"
        + upstream("ex3", [f"127.0.0.1:{BACKENDS['EX3']}"])
        + upstream("members", [f"{MEMBERS['EX1'][4]}:443", f"{MEMBERS['EX2'][4]}:443"])
        + upstream("offline", [f"{MEMBERS['EX1'][4]}:443", f"{MEMBERS['EX3'][4]}:443"])
        + upstream("ghost", [f"127.0.0.1:{BACKENDS['EX1']}", f"127.0.0.1:{BACKENDS['EX4']}"])
        + member("EX1") + member("EX2") + member("EX3")
        + server(PORTS["reencrypt"], "location / { " + reencrypt.format(up="members") + " }")
        + server(PORTS["offload"], "location / { " + proxy.format(up="pool") + " }", cert=lb)
        + server(PORTS["offline"], "location / { " + reencrypt.format(up="offline") + " }")
        + server(PORTS["ghost"], "location / { " + proxy.format(up="ghost") + " }")
        + server(PORTS["plain"], ex1, ssl_on=False)
        + server(PORTS["ex1"], ex1)
        + server(PORTS["ex2"], "location / { " + proxy.format(up="ex2") + " }")
        + server(PORTS["pool"], "location / { " + proxy.format(up="pool") + " }")
        + server(PORTS["refuse"],
                 "if ($request_method ~ ^RPC_) { return 405; } "
                 "location /mapi/ { return 403; } " + ex1)
        + server(PORTS["waf"],
                 f"location = /login {{ return 200 \"{LOGIN_PAGE}\"; }} "
                 "location / { return 302 /login; }")
        + server(PORTS["strip"],
                 "location / { proxy_hide_header WWW-Authenticate; "
                 "add_header WWW-Authenticate 'Basic realm=\"proxy\"' always; "
                 + proxy.format(up="ex1") + " }")
        + server(PORTS["inspect"], ex1, cert=other)
        + server(PORTS["reset"], ex1)
    ))


def nginx_main(d: Path, http: str, *, stream: str = "", modules: Sequence[str] = ()) -> str:
    """A foreground nginx's whole configuration: pid, logs and temporary files under `d`,
    then the `http` block's body (and a `stream` block's, loading `modules` first)."""
    return (
        "".join(f"load_module {m};\n" for m in modules)
        + f"worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn; daemon off;\n"
        "user root root;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n"
        f"fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n"
        "default_type text/html; keepalive_timeout 30s; server_tokens on;\n"
        + http
        + "}\n"
        + (f"stream {{\n{stream}}}\n" if stream else "")
    )


def start_nginx(ns: str, d: Path, conf: str) -> subprocess.Popen[bytes]:
    """nginx in namespace `ns` with configuration `conf` (see `nginx_main`), written to
    `d`/nginx.conf; returns once it wrote its pid file (WebLabError if it did not)."""
    for sub in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
        (d / sub).mkdir(exist_ok=True)
    (d / "nginx.conf").write_text(conf)
    (d / "nginx.pid").unlink(missing_ok=True)
    proc = start_in(ns, ["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)], ready=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (d / "nginx.pid").exists():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop([proc])
    log = (d / "error.log").read_text() if (d / "error.log").exists() else ""
    raise WebLabError(f"nginx did not start in {ns}: {log.strip()[-500:]}")


def issue_cert(ca: trustme.CA, d: Path, cert: str, key: str, names: Sequence[str]) -> str:
    """A leaf certificate of `ca` for `names`, written to `d`/`cert` (PEM; its key to
    `d`/`key`); its SHA-256 fingerprint (hex)."""
    leaf = ca.issue_cert(*names)
    leaf.private_key_pem.write_to_path(str(d / key))
    leaf.cert_chain_pems[0].write_to_path(str(d / cert))
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    return hashlib.sha256(der).hexdigest()


LOCK = "/tmp/exprobe-weblab.lock"  # one such lab per machine: the names are fixed


@dataclass
class WebLab:
    """`up()` builds the lab, `down()` removes every trace of it."""

    dir: Path | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    lock: LabLock = field(default_factory=lambda: LabLock(LOCK))
    ca_pem: Path | None = None
    cert_sha256: str = ""
    other_sha256: str = ""
    lb_sha256: str = ""

    def up(self) -> None:
        self.lock.acquire()  # held until down()
        self.down(release=False)
        try:
            self._net()
            self._certs()
            for name, port in BACKENDS.items():
                self._start([sys.executable, "-m", "tests.peers.exchange_http", "--listen",
                             "127.0.0.1", "--port", str(port), "--name", name,
                             "--domain", "corp.example", "--build", BUILD,
                             "--offline", OFFLINE.get(name, "")], ready=True)  # fmt: skip
            self._nginx()
            self._firewall()
            self._dns()
        except BaseException:
            self.down()
            raise

    def _net(self) -> None:
        for ns in NS.values():
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "link", "add", "xpweb0", "netns", NS["cli"], "type", "veth",
              "peer", "name", "xpweb1", "netns", NS["srv"]])  # fmt: skip
        for node, dev in (("cli", "xpweb0"), ("srv", "xpweb1")):
            addr4 = CLIENT[4] if node == "cli" else SERVER[4]
            addr6 = CLIENT[6] if node == "cli" else SERVER[6]
            _run(["ip", "-n", NS[node], "addr", "add", f"{addr4}/24", "dev", dev])
            _run(["ip", "-n", NS[node], "-6", "addr", "add", f"{addr6}/64", "dev", dev, "nodad"])
            _run(["ip", "-n", NS[node], "link", "set", dev, "up"])
        for addrs in (*MEMBERS.values(), DNS):
            _run(["ip", "-n", NS["srv"], "addr", "add", f"{addrs[4]}/24", "dev", "xpweb1"])
            _run(["ip", "-n", NS["srv"], "-6", "addr", "add", f"{addrs[6]}/64", "dev", "xpweb1",
                  "nodad"])  # fmt: skip

    def _dns(self) -> None:
        """dnsmasq, authoritative for corp.example: the members' A and AAAA records."""
        assert self.dir is not None
        records = [f"--host-record={name.lower()}.corp.example,{a[4]},{a[6]}"
                   for name, a in MEMBERS.items()]  # fmt: skip
        self._start(["dnsmasq", "--no-resolv", "--no-hosts", "--keep-in-foreground",
                     "--bind-interfaces", "--user=root", "--local=/corp.example/",
                     "--log-facility=-", "--conf-file=/dev/null", f"--listen-address={DNS[4]}",
                     f"--listen-address={DNS[6]}", f"--pid-file={self.dir}/dnsmasq.pid",
                     *records], ready=False)  # fmt: skip
        probe = ("import dns.resolver as r; x=r.Resolver(configure=False);"
                 f"x.nameservers=['{DNS[4]}']; x.lifetime=1; x.resolve('ex1.corp.example','A')")
        deadline = time.monotonic() + 10
        while run_in(NS["cli"], [sys.executable, "-c", probe], 15).returncode != 0:
            if time.monotonic() > deadline:
                raise WebLabError(f"dnsmasq on {DNS[4]} does not answer")
            time.sleep(0.1)

    def _certs(self) -> None:
        import trustme

        self.dir = Path(tempfile.mkdtemp(prefix="xpweb-"))
        self.dir.chmod(0o755)
        ca = trustme.CA()
        # cert: the VIP's and the members'; other: another CA's (an inspecting middlebox);
        # lb: the same CA, another key (a load balancer with a certificate of its own).
        web = [NAME, SERVER[4], SERVER[6]]
        self.cert_sha256 = issue_cert(ca, self.dir, "cert.pem", "key.pem", web)
        self.other_sha256 = issue_cert(trustme.CA(), self.dir, "other.pem", "other-key.pem", [NAME])
        self.lb_sha256 = issue_cert(ca, self.dir, "lb.pem", "lb-key.pem", web)
        self.ca_pem = self.dir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_pem))

    def _nginx(self) -> None:
        assert self.dir is not None
        self.procs.append(start_nginx(NS["srv"], self.dir, _nginx_conf(self.dir)))

    def _firewall(self) -> None:
        ruleset = (
            "table inet xpweb {\n  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            f"    tcp dport {PORTS['reset']} reject with tcp reset\n  }}\n}}\n"
        )
        _run(ns_argv("srv", ["nft", "-f", "-"]), input=ruleset)

    def _start(self, argv: list[str], *, ready: bool) -> None:
        self.procs.append(start_in(NS["srv"], argv, ready=ready))

    def cli(self, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the client namespace (with this worktree on PYTHONPATH)."""
        return run_in(NS["cli"], argv, timeout)

    def down(self, release: bool = True) -> None:
        stop(self.procs)
        delete_namespaces(NS.values())
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if release:
            self.lock.release()


def main() -> None:
    lab = WebLab()
    if sys.argv[1:] == ["up"]:
        lab.up()
        print(f"web lab up: {lab.dir}; Ctrl-C to tear down")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
        lab.down()
    else:
        lab.down()


if __name__ == "__main__":
    main()
