"""The DNS lab for Autodiscover: two real DNS servers (dnsmasq) with a split-brain view,
and HTTPS hosts (nginx, each with its own certificate) in front of a scripted Exchange
backend (tests/peers/exchange_http.py: Exchange's own Autodiscover answers).

Namespaces `xpdns-cli` (10.254.0.1) and `xpdns-srv`; nothing routes out.

    10.254.0.2   dnsmasq, the internal view     10.254.0.3   dnsmasq, the external view
    10.254.0.11  nginx 443, cert one.lab        10.254.0.12  nginx 443, cert autodiscover.{one,two}.lab
    10.254.0.13  nginx 80 only: 302 to https    10.254.0.14  nginx 443, cert mail.four.lab
    10.254.0.16  nothing listens (RST)

Internal view (the zone `lab`, authoritative; other names REFUSED: no upstream):

| domain | records | Outlook ends on |
|---|---|---|
| one.lab | one.lab A .11; autodiscover.one.lab A .12 | method 1 |
| two.lab | two.lab TXT only (NODATA for A); autodiscover.two.lab A .12 | method 2, after 1 |
| three.lab | autodiscover.three.lab A .13 (80 only) | method 3, after 1 (NXDOMAIN) and 2 (refused) |
| four.lab | _autodiscover._tcp.four.lab SRV 0 0 443 mail.four.lab; mail.four.lab A .14 | method 4 |
| five.lab | autodiscover.five.lab A .14 (certificate for mail.four.lab only) | none |

The external view gives autodiscover.two.lab A .16 (nothing there): split-brain DNS.
"""

from __future__ import annotations

import ipaddress
import shutil
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
    from cryptography import x509

NS = {"cli": "xpdns-cli", "srv": "xpdns-srv"}
CLIENT = "10.254.0.1"
DNS = {"internal": "10.254.0.2", "external": "10.254.0.3"}
HOSTS = {"one": "10.254.0.11", "auto": "10.254.0.12", "redirect": "10.254.0.13",
         "mail4": "10.254.0.14", "nothing": "10.254.0.16"}  # fmt: skip
BACKEND = 8091
ROOT = Path(__file__).resolve().parents[2]
PATH = "/autodiscover/autodiscover.xml"

COMMON = [
    "--no-resolv", "--no-hosts", "--keep-in-foreground", "--bind-interfaces", "--user=root",
    "--local=/lab/", "--log-facility=-", "--conf-file=/dev/null",
]  # fmt: skip
INTERNAL = [
    f"--host-record=one.lab,{HOSTS['one']}",
    f"--host-record=autodiscover.one.lab,{HOSTS['auto']}",
    "--txt-record=two.lab,mail domain",
    f"--host-record=autodiscover.two.lab,{HOSTS['auto']}",
    f"--host-record=autodiscover.three.lab,{HOSTS['redirect']}",
    "--srv-host=_autodiscover._tcp.four.lab,mail.four.lab,443,0,0",
    f"--host-record=mail.four.lab,{HOSTS['mail4']}",
    f"--host-record=autodiscover.five.lab,{HOSTS['mail4']}",
]
EXTERNAL = [
    "--txt-record=two.lab,mail domain",
    f"--host-record=autodiscover.two.lab,{HOSTS['nothing']}",
]


class DnsLabError(RuntimeError):
    """The DNS lab could not be set up."""


def _run(argv: Sequence[str], *, check: bool = True, input: str | None = None) -> str:
    return command(argv, check=check, input=input, error=DnsLabError)


def ns_argv(node: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", NS[node], *argv]


def _nginx_conf(d: Path) -> str:
    proxy = (f"location /autodiscover/ {{ proxy_http_version 1.1; proxy_set_header Connection"
             f" \"\"; proxy_set_header Host $host; proxy_pass http://127.0.0.1:{BACKEND}; }}")  # fmt: skip

    def tls(addr: str, stem: str) -> str:
        return (f"server {{ listen {addr}:443 ssl; ssl_certificate {d}/{stem}.pem;"
                f" ssl_certificate_key {d}/{stem}-key.pem; {proxy} }}\n")  # fmt: skip

    return (
        f"worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn; daemon off;\n"
        "user root root;\nevents { worker_connections 256; }\nhttp {\n"
        f"access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n"
        f"fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n"
        + tls(HOSTS["one"], "one")
        + tls(HOSTS["auto"], "auto")
        + tls(HOSTS["mail4"], "mail4")
        + f"server {{ listen {HOSTS['redirect']}:80; location / {{ return 302"
          f" https://autodiscover.three.lab{PATH}; }} }}\n"
        + "}\n"
    )


def _san(name: str) -> x509.GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_certs(d: Path, ca_path: Path, leaves: dict[str, list[str]]) -> None:
    """A CA (`ca_path`) and one leaf per entry (`STEM.pem`, `STEM-key.pem`) naming its DNS
    names and addresses (the first one a name), with the extensions a public CA gives (trustme marks the SAN critical, which
    a strict verifier refuses when the subject is not empty)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "exprobe dns lab CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for stem, sans in leaves.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in sans]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )  # fmt: skip
        (d / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{stem}-key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))  # fmt: skip


LOCK = "/tmp/exprobe-dnslab.lock"  # one such lab per machine: the names are fixed


@dataclass
class DnsLab:
    """`up()` builds the lab, `down()` removes every trace of it."""

    dir: Path | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    lock: LabLock = field(default_factory=lambda: LabLock(LOCK))
    ca_pem: Path | None = None

    def up(self) -> None:
        self.lock.acquire()  # held until down()
        self.down(release=False)
        try:
            self._net()
            self._certs()
            self._start([sys.executable, "-m", "tests.peers.exchange_http", "--listen",
                         "127.0.0.1", "--port", str(BACKEND), "--name", "EX1", "--domain",
                         "one.lab"], ready=True)  # fmt: skip
            self._nginx()
            for view, extra in (("internal", INTERNAL), ("external", EXTERNAL)):
                self._start(["dnsmasq", *COMMON, f"--listen-address={DNS[view]}",
                             f"--pid-file={self.dir}/dnsmasq-{view}.pid", *extra], ready=False)  # fmt: skip
            self._wait_dns()
        except BaseException:
            self.down()
            raise

    def _net(self) -> None:
        for ns in NS.values():
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "link", "add", "xpdns0", "netns", NS["cli"], "type", "veth",
              "peer", "name", "xpdns1", "netns", NS["srv"]])  # fmt: skip
        _run(["ip", "-n", NS["cli"], "addr", "add", f"{CLIENT}/24", "dev", "xpdns0"])
        for addr in (*DNS.values(), *HOSTS.values()):
            _run(["ip", "-n", NS["srv"], "addr", "add", f"{addr}/24", "dev", "xpdns1"])
        for node, dev in (("cli", "xpdns0"), ("srv", "xpdns1")):
            _run(["ip", "-n", NS[node], "link", "set", dev, "up"])

    def _certs(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="xpdns-"))
        self.dir.chmod(0o755)
        names = {"one": ["one.lab"], "auto": ["autodiscover.one.lab", "autodiscover.two.lab"],
                 "mail4": ["mail.four.lab"]}  # fmt: skip
        self.ca_pem = self.dir / "ca.pem"
        make_certs(self.dir, self.ca_pem, names)

    def _nginx(self) -> None:
        assert self.dir is not None
        for sub in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
            (self.dir / sub).mkdir(exist_ok=True)
        conf = self.dir / "nginx.conf"
        conf.write_text(_nginx_conf(self.dir))
        self._start(["nginx", "-c", str(conf), "-p", str(self.dir)], ready=False)
        deadline = time.monotonic() + 10
        while not (self.dir / "nginx.pid").exists():
            if time.monotonic() > deadline or self.procs[-1].poll() is not None:
                log = (self.dir / "error.log").read_text() if (self.dir / "error.log").exists() else ""
                raise DnsLabError(f"nginx did not start: {log.strip()[-500:]}")
            time.sleep(0.05)

    def _wait_dns(self) -> None:
        deadline = time.monotonic() + 10
        for server in DNS.values():
            while True:
                out = subprocess.run(
                    ns_argv("cli", [sys.executable, "-c",
                                    "import dns.resolver as r,sys; x=r.Resolver(configure=False);"
                                    f"x.nameservers=['{server}']; x.lifetime=1;"
                                    "x.resolve('two.lab','TXT')"]),
                    capture_output=True, timeout=15, check=False)  # fmt: skip
                if out.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise DnsLabError(f"dnsmasq on {server} does not answer")
                time.sleep(0.1)

    def _start(self, argv: list[str], *, ready: bool) -> None:
        self.procs.append(start_in(NS["srv"], argv, ready=ready))

    def cli(self, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the client namespace."""
        return run_in(NS["cli"], argv, timeout)

    def down(self, release: bool = True) -> None:
        stop(self.procs)
        delete_namespaces(NS.values())
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if release:
            self.lock.release()
