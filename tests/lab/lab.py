"""The exprobe test lab: real servers in a network namespace, nftables as the firewall.

Two network namespaces joined by a veth pair::

    exprobe-cli  xp-cli0 10.250.0.1/24 fd00:e5::1/64
        <-- veth -->
    exprobe-srv  xp-srv0 10.250.0.2/24 (main), .3 (samba), .4 (expired cert),
                         .5 (wrong-name cert), .6 (spare), fd00:e5::2/64

Real daemons run in the foreground inside ``exprobe-srv`` (postfix, dovecot, slapd,
innd/nnrpd, samba-dcerpcd, a python-snap7 RFC 1006 server and ``openssl s_server``
for the broken certificates). Their PIDs are recorded and they are stopped by PID.
One nftables table in exprobe-srv's input hook, matching only ``iifname "xp-srv0"``,
plays the firewall, so checks run inside exprobe-srv bypass it (lab-notes pitfall 14).

Command line (from the repository root, as root)::

    python -m tests.lab.lab up | down | status | fw [--drop SPEC] [--reset SPEC] [--icmp SPEC]

The facts behind the choices below are in the shared lab notes ("pitfall N").
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import ipaddress
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

log = logging.getLogger("exprobe.lab")

# --- topology (a contract: other tests code against these names) ------------------

CLI_NS = "exprobe-cli"
SRV_NS = "exprobe-srv"
CLI_IF = "xp-cli0"
SRV_IF = "xp-srv0"
CLI_ADDR = "10.250.0.1"
SRV_ADDR = "10.250.0.2"
SAMBA_ADDR = "10.250.0.3"
EXPIRED_ADDR = "10.250.0.4"
WRONGNAME_ADDR = "10.250.0.5"
SPARE_ADDR = "10.250.0.6"
CLI_ADDR6 = "fd00:e5::1"
SRV_ADDR6 = "fd00:e5::2"
SRV_ADDRS = (SRV_ADDR, SAMBA_ADDR, EXPIRED_ADDR, WRONGNAME_ADDR, SPARE_ADDR)
# The main daemons listen here, not on the wildcard: 993/465 on EXPIRED_ADDR and
# WRONGNAME_ADDR belong to openssl s_server, and nothing may answer on SPARE_ADDR.
LISTEN_ADDRS = ("127.0.0.1", "::1", SRV_ADDR, SRV_ADDR6)

SMTP_BANNER = "220 mail.lab.test ESMTP Postfix (exprobe lab)"
SERVER_NAMES = ("mail.lab.test", "news.lab.test", "ldap.lab.test", "lab.test")
LAB_USER = "labuser"
LAB_PASSWORD = "labpass"
LDAP_BASE = "dc=lab,dc=test"
LDAP_ADMIN_DN = "cn=admin,dc=lab,dc=test"
LDAP_ADMIN_PASSWORD = "labadmin"
LDAP_USER_DN = "uid=labuser,ou=people,dc=lab,dc=test"
NEWS_GROUP = "lab.test"

# Ports on SRV_ADDR (and SRV_ADDR6, except 102) -> the daemon that serves them.
SRV_PORTS: dict[int, str] = {
    25: "postfix",
    465: "postfix",
    587: "postfix",
    110: "dovecot",
    143: "dovecot",
    993: "dovecot",
    995: "dovecot",
    389: "slapd",
    636: "slapd",
    119: "innd",
    563: "nnrpd",
    102: "snap7",
}
SAMBA_PORTS = (135,)  # plus dynamic ncacn_ip_tcp ports from 49152 (they change per start)
BAD_CERT_PORTS = (993, 465)  # served on EXPIRED_ADDR and WRONGNAME_ADDR by openssl s_server

# --- state -------------------------------------------------------------------------

RUN_DIR = Path("/run/exprobe-lab")
ETC_DIR = Path("/etc/exprobe-lab")
VAR_DIR = Path("/var/lib/exprobe-lab")
LOG_DIR = Path("/var/log/exprobe-lab")
PID_DIR = RUN_DIR / "pids"
TLS_DIR = ETC_DIR / "tls"
FIREWALL_FILE = RUN_DIR / "firewall.nft"
FIREWALL_STATE = RUN_DIR / "firewall.json"
TEMPLATES = Path(__file__).resolve().parent / "configs"
S7SERVER = Path(__file__).resolve().parent / "s7server.py"
NETEM = Path(__file__).resolve().parent / "netem.py"
NETEM_QUEUE = 0
NETEM_IPTABLES = ("iptables-legacy", "ip6tables-legacy")
NETEM_RULE = [
    "OUTPUT",
    "-o",
    CLI_IF,
    "-j",
    "NFQUEUE",
    "--queue-num",
    str(NETEM_QUEUE),
    "--queue-bypass",
]
REPO_ROOT = Path(__file__).resolve().parents[2]

NFT_TABLE = "exprobe_lab"
POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"
SAMBA_DCERPCD = "/usr/libexec/samba/samba-dcerpcd"
INN_BIN = Path("/usr/lib/news/bin")
INNCONF = ETC_DIR / "news" / "inn.conf"

# Everything `up` needs, and the package that brings it (for the error message).
REQUIRED_TOOLS: dict[str, str] = {
    "ip": "iproute2",
    "nft": "nftables",
    "openssl": "openssl",
    "dovecot": "dovecot-core",
    "slapd": "slapd",
    "slapadd": "slapd",
    "ldapsearch": "ldap-utils",
    "postfix": "postfix",
    POSTFIX_MASTER: "postfix",
    str(INN_BIN / "innd"): "inn2",
    str(INN_BIN / "nnrpd"): "inn2",
    str(INN_BIN / "ctlinnd"): "inn2",
    str(INN_BIN / "makedbz"): "inn2",
    SAMBA_DCERPCD: "samba",
    "setpriv": "util-linux",
    "nmap": "nmap",
}

PortSpec: TypeAlias = int | str | tuple[str, int | str]


class LabError(RuntimeError):
    """The lab could not be started, or a lab operation failed."""


# --- small helpers -----------------------------------------------------------------


def ns_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs ``argv`` inside network namespace ``ns`` (``ip netns exec`` execs it)."""
    return ["ip", "netns", "exec", ns, *argv]


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env=dict(env) if env is not None else None,
        check=False,
    )
    if check and proc.returncode != 0:
        output = (proc.stdout + proc.stderr).rstrip()
        raise LabError(f"command failed ({proc.returncode}): {' '.join(argv)}\n{output}")
    return proc


def _render(template: str, values: Mapping[str, str]) -> str:
    """Fill ``{{NAME}}`` markers of a file in ``configs/``; an unknown marker is an error."""
    text = (TEMPLATES / template).read_text()

    def sub(m: re.Match[str]) -> str:
        try:
            return values[m.group(1)]
        except KeyError:
            raise LabError(f"{template}: no value for {{{{{m.group(1)}}}}}") from None

    return re.sub(r"\{\{([A-Z0-9_]+)\}\}", sub, text)


def _write(path: Path, text: str, mode: int = 0o644, owner: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    if owner is not None:
        pw = pwd.getpwnam(owner)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
    tmp.replace(path)


def _chown_tree(path: Path, owner: str, group: str | None = None) -> None:
    pw = pwd.getpwnam(owner)
    gid = pw.pw_gid if group is None else _gid(group)
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), pw.pw_uid, gid)


def _gid(group: str) -> int:
    import grp

    return grp.getgrnam(group).gr_gid


def _mkdir(path: Path, owner: str | None = None, mode: int = 0o755) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if owner is not None:
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, or None if there is none."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def preflight() -> str | None:
    """Why the lab cannot run on this machine, or None if it can (root, netns, tools)."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, nftables, daemons on ports < 1024)"
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)})
    if missing:
        return (
            f"missing packages: {', '.join(missing)}; install them with `bash .ci/lab-packages.sh`"
        )
    try:
        import snap7.server  # noqa: F401
    except ImportError:
        return f"python-snap7 is not importable by {sys.executable}; run `bash .ci/lab-packages.sh`"
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"`ip netns` does not work here: {proc.stderr.strip()}"
    return None


# --- network namespaces from inside this process -----------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Move the *calling thread* into network namespace ``ns`` for the ``with`` block.

    Sockets created inside the block belong to ``ns`` for their whole life, even when
    used afterwards. Other threads (asyncio's getaddrinfo executor, for one) stay where
    they were, so pass numeric addresses.
    """
    with open("/proc/thread-self/ns/net", "rb") as home, open(f"/run/netns/{ns}", "rb") as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


def netns_socket(
    ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new socket that lives in network namespace ``ns``."""
    with in_netns(ns):
        return socket.socket(family, type)


def _family(addr: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def probe_port(addr: str, port: int, ns: str = SRV_NS, timeout: float = 0.5) -> bool:
    """True if a TCP connect from namespace ``ns`` to addr:port succeeds."""
    with netns_socket(ns, _family(addr)) as s:
        s.settimeout(timeout)
        return s.connect_ex((addr, port)) == 0


# --- firewall ----------------------------------------------------------------------

_VERDICTS = (
    ("drop", "drop"),
    ("reset", "reject with tcp reset"),
    ("icmp", "reject with icmpx type admin-prohibited"),
)


def _port_text(port: int | str) -> str:
    if isinstance(port, bool):
        raise ValueError(f"bad port: {port!r}")
    if isinstance(port, int):
        lo = hi = port
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", port)
        if not m:
            raise ValueError(f"bad port or range: {port!r}")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
    if not (1 <= lo <= hi <= 65535):
        raise ValueError(f"bad port or range: {port!r}")
    return str(lo) if lo == hi else f"{lo}-{hi}"


def parse_port_spec(text: str) -> PortSpec:
    """``"25"``, ``"49152-65535"``, ``"10.250.0.2:49152-65535"`` or ``"[fd00:e5::2]:143"``."""
    text = text.strip()
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(.+)", text) or re.fullmatch(r"([0-9.]+):(.+)", text)
    if m:
        ipaddress.ip_address(m.group(1))
        return (m.group(1), _port_text(m.group(2)))
    return _port_text(text)


def build_ruleset(
    drop: Iterable[PortSpec] = (),
    reset: Iterable[PortSpec] = (),
    icmp: Iterable[PortSpec] = (),
    addresses: Iterable[str] | None = None,
) -> str:
    """The nft script for one atomic firewall change (a pure function).

    Each port spec is a port (``25``), a range (``"49152-65535"``) or an
    ``(address, port-or-range)`` pair that applies to that destination address only.
    ``addresses``, when given, scopes the bare ports to those destination addresses.
    Rules only match packets that arrive on the client-facing interface (pitfall 6),
    and established/related traffic is always accepted first. A port listed under
    several verdicts gets the first: drop, then reset, then icmp.
    """
    default_addrs: list[str | None] = [None]
    if addresses is not None:
        default_addrs = [str(ipaddress.ip_address(a)) for a in addresses]
        if not default_addrs:
            raise ValueError("addresses must not be empty (use None for all addresses)")
    lines = [
        f"table inet {NFT_TABLE}",
        f"delete table inet {NFT_TABLE}",
        f"table inet {NFT_TABLE} {{",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        f'    iifname "{SRV_IF}" ct state established,related accept',
    ]
    for key, verdict in _VERDICTS:
        specs = {"drop": drop, "reset": reset, "icmp": icmp}[key]
        by_addr: dict[str | None, list[str]] = {}
        for spec in specs:
            if isinstance(spec, tuple):
                addr, port = spec
                targets: list[str | None] = [str(ipaddress.ip_address(addr))]
            else:
                port = spec
                targets = default_addrs
            for target in targets:
                ports = by_addr.setdefault(target, [])
                text = _port_text(port)
                if text not in ports:
                    ports.append(text)
        for target, ports in by_addr.items():
            match = f'iifname "{SRV_IF}" '
            if target is not None:
                match += "ip6 " if ":" in target else "ip "
                match += f"daddr {target} "
            lines.append(f"    {match}tcp dport {{ {', '.join(ports)} }} {verdict}")
    lines += ["  }", "}", ""]
    return "\n".join(lines)


# --- TLS ---------------------------------------------------------------------------


def make_tls(directory: Path) -> None:
    """A lab CA, a server certificate, an expired one and a wrong-name one (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    day = dt.timedelta(days=1)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "exprobe lab"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )

    def pem_key(k: rsa.RSAPrivateKey) -> str:
        return k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()

    ca_key = key()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("exprobe lab CA"))
        .issuer_name(name("exprobe lab CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - day)
        .not_valid_after(now + 3650 * day)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        cn: str, sans: Sequence[x509.GeneralName], not_before: dt.datetime, not_after: dt.datetime
    ) -> tuple[str, str]:
        k = key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode(), pem_key(k)

    server_sans: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
    server_sans += [
        x509.IPAddress(ipaddress.ip_address(SRV_ADDR)),
        x509.IPAddress(ipaddress.ip_address(SRV_ADDR6)),
    ]
    server = leaf("mail.lab.test", server_sans, now - day, now + 825 * day)
    expired = leaf("mail.lab.test", [x509.DNSName("mail.lab.test")], now - 60 * day, now - 30 * day)
    wrong = leaf("wrong.example", [x509.DNSName("wrong.example")], now - day, now + 825 * day)

    _mkdir(directory)
    _write(directory / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    _write(directory / "ca.key", pem_key(ca_key), 0o600)
    for stem, (cert_pem, key_pem) in (
        ("server", server),
        ("expired", expired),
        ("wrongname", wrong),
    ):
        _write(directory / f"{stem}.crt", cert_pem)
        _write(directory / f"{stem}.key", key_pem, 0o600)
    # Copies of the server key for daemons that read it after dropping root (pitfall 8).
    for stem, owner in (("ldap", "openldap"), ("news", "news")):
        _write(directory / f"{stem}.crt", server[0])
        _write(directory / f"{stem}.key", server[1], 0o600, owner=owner)


# --- processes ---------------------------------------------------------------------


@dataclass
class ProcRecord:
    """A process the lab started: enough to find it again, even from another process."""

    name: str
    pid: int
    start: int  # /proc/PID/stat starttime: tells our process from a later one with its PID
    ns: str
    argv: list[str]
    log: str | None = None
    popen: subprocess.Popen[Any] | None = field(default=None, repr=False, compare=False)

    def state(self) -> str:
        """``running``, ``zombie`` or ``gone`` (a zombie counts as stopped: pitfall 5)."""
        st = _proc_stat(self.pid)
        if st is None or st[1] != self.start:
            return "gone"
        return "zombie" if st[0] in ("Z", "X") else "running"

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return self.state() == "running"

    def save(self) -> None:
        data = {
            "name": self.name,
            "pid": self.pid,
            "start": self.start,
            "ns": self.ns,
            "argv": self.argv,
            "log": self.log,
        }
        _write(PID_DIR / f"{self.name}.json", json.dumps(data))

    @classmethod
    def load(cls, path: Path) -> ProcRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(
                name=str(data["name"]),
                pid=int(data["pid"]),
                start=int(data["start"]),
                ns=str(data["ns"]),
                argv=[str(a) for a in data["argv"]],
                log=data.get("log"),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _signal(rec: ProcRecord, sig: int) -> None:
    """Send ``sig`` to a recorded process (only if it is still the same process)."""
    if rec.state() != "running":
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec.pid, sig)


def _signal_group(rec: ProcRecord, sig: int) -> None:
    """Signal what is left of the process group the lab created for ``rec`` (setsid).

    A process group ID is not reused while any member lives, so this reaches only
    children of our daemon (rpcd_* helpers, smtpd, ...), never unrelated processes.
    """
    if rec.state() != "gone" or _proc_stat(rec.pid) is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rec.pid, sig)


# --- the lab -----------------------------------------------------------------------


class Lab:
    """Start, stop and steer the lab. All methods need root.

    ``up()`` tears down any earlier instance first, so it is idempotent; ``down()``
    stops every recorded process (by PID), removes the namespaces and never raises for
    things that are already gone.
    """

    def __init__(self) -> None:
        self.procs: dict[str, ProcRecord] = {}
        self.timings: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- paths ---------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        """The lab CA certificate (PEM) that signed every lab certificate."""
        return TLS_DIR / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return TLS_DIR / "server.crt"

    @property
    def expired_cert(self) -> Path:
        return TLS_DIR / "expired.crt"

    @property
    def wrongname_cert(self) -> Path:
        return TLS_DIR / "wrongname.crt"

    # -- lifecycle -----------------------------------------------------------------

    def up(self) -> None:
        """Bring the whole lab up (tearing down a previous instance first)."""
        problem = preflight()
        if problem:
            raise LabError(problem)
        t0 = time.monotonic()
        self.down()
        self.timings = {"teardown": time.monotonic() - t0}
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        self.timings["total"] = time.monotonic() - t0

    def _up(self) -> None:
        t = time.monotonic()
        for d in (RUN_DIR, PID_DIR, ETC_DIR, VAR_DIR, LOG_DIR):
            _mkdir(d)
        make_tls(TLS_DIR)
        self.timings["tls"] = time.monotonic() - t

        t = time.monotonic()
        # Independent preparation steps run side by side: they are mostly subprocesses.
        errors: list[BaseException] = []

        def guarded(fn: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    fn()
                except BaseException as e:
                    errors.append(e)

            return run

        self._setup_network()  # first: `postfix check` wants its listen addresses to exist
        steps = [
            self._prepare_postfix,
            self._prepare_dovecot,
            self._prepare_slapd,
            self._prepare_inn,
            self._prepare_samba,
        ]
        threads = [threading.Thread(target=guarded(s), name=s.__name__) for s in steps]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        self.set_firewall()
        self.timings["prepare"] = time.monotonic() - t

        t = time.monotonic()
        self._start_daemons()
        self.timings["start"] = time.monotonic() - t
        t = time.monotonic()
        self._wait_ready()
        self.timings["ready"] = time.monotonic() - t

    def down(self) -> None:
        """Stop every lab process by PID, delete the namespaces; safe to call any time."""
        with self._lock:
            records = dict(self._load_records())
            records.update(self.procs)
            self._stop(list(records.values()))
            self.procs.clear()
            for ns in (CLI_NS, SRV_NS):
                self._sweep_namespace(ns)
                if Path(f"/run/netns/{ns}").exists():
                    _run(["ip", "netns", "del", ns], check=False)
            if PID_DIR.exists():
                for p in PID_DIR.glob("*.json"):
                    p.unlink(missing_ok=True)
            FIREWALL_STATE.unlink(missing_ok=True)

    def _load_records(self) -> Iterator[tuple[str, ProcRecord]]:
        if not PID_DIR.is_dir():
            return
        for path in sorted(PID_DIR.glob("*.json")):
            rec = ProcRecord.load(path)
            if rec is not None:
                yield rec.name, rec

    def _stop(self, records: list[ProcRecord], grace: float = 5.0) -> None:
        innd = [r for r in records if r.name == "innd" and r.alive()]
        for rec in records:
            if rec.name != "innd":
                _signal(rec, signal.SIGTERM)
        if innd:
            # innd ignores SIGTERM (pitfall 2): ask it over its control socket.
            self._ctlinnd("shutdown", "exprobe lab down", check=False)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self._reap(records)
            if not any(r.alive() for r in records):
                break
            time.sleep(0.02)
        for rec in records:
            if rec.alive():
                log.warning("%s (pid %d) ignored SIGTERM; killing it", rec.name, rec.pid)
                _signal(rec, signal.SIGKILL)
        for rec in records:
            _signal_group(rec, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while any(r.alive() for r in records) and time.monotonic() < deadline:
            self._reap(records)
            time.sleep(0.02)
        self._reap(records)

    @staticmethod
    def _reap(records: Iterable[ProcRecord]) -> None:
        for rec in records:
            if rec.popen is not None:
                rec.popen.poll()

    def _sweep_namespace(self, ns: str) -> None:
        """Kill what is still running in one of *our* namespaces (leftovers of a crash)."""
        if not Path(f"/run/netns/{ns}").exists():
            return
        deadline = time.monotonic() + 3.0
        sig = signal.SIGTERM
        while time.monotonic() < deadline:
            out = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
            pids = [int(p) for p in out if p.isdigit() and int(p) != os.getpid()]
            pids = [p for p in pids if (st := _proc_stat(p)) is not None and st[0] not in "ZX"]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(0.1)
            sig = signal.SIGKILL

    # -- network -------------------------------------------------------------------

    def _setup_network(self) -> None:
        _run(["ip", "netns", "add", CLI_NS])
        _run(["ip", "netns", "add", SRV_NS])
        _run(
            ["ip", "link", "add", CLI_IF, "netns", CLI_NS, "type", "veth",
             "peer", "name", SRV_IF, "netns", SRV_NS]
        )  # fmt: skip
        cli = [
            "link set lo up",
            f"addr add {CLI_ADDR}/24 dev {CLI_IF}",
            f"addr add {CLI_ADDR6}/64 dev {CLI_IF} nodad",
            f"link set {CLI_IF} up",
        ]
        srv = ["link set lo up"]
        srv += [f"addr add {a}/24 dev {SRV_IF}" for a in SRV_ADDRS]
        srv += [f"addr add {SRV_ADDR6}/64 dev {SRV_IF} nodad", f"link set {SRV_IF} up"]
        _run(["ip", "-n", CLI_NS, "-batch", "-"], input="\n".join(cli) + "\n")
        _run(["ip", "-n", SRV_NS, "-batch", "-"], input="\n".join(srv) + "\n")

    def set_firewall(
        self,
        drop: Iterable[PortSpec] = (),
        reset: Iterable[PortSpec] = (),
        icmp: Iterable[PortSpec] = (),
        addresses: Iterable[str] | None = None,
    ) -> None:
        """Replace the firewall rules atomically (one ``nft -f``); no arguments = all open.

        ``drop`` -> the client's connect times out (nmap: filtered); ``reset`` -> TCP RST,
        ECONNREFUSED (closed); ``icmp`` -> ICMP admin-prohibited, EHOSTUNREACH (filtered).
        See :func:`build_ruleset` for the port specs.
        """
        drop, reset, icmp = list(drop), list(reset), list(icmp)
        addrs = None if addresses is None else list(addresses)
        script = build_ruleset(drop, reset, icmp, addrs)
        _write(FIREWALL_FILE, script)
        _run(ns_argv(SRV_NS, ["nft", "-f", str(FIREWALL_FILE)]))
        state = {"drop": drop, "reset": reset, "icmp": icmp, "addresses": addrs}
        _write(FIREWALL_STATE, json.dumps(state))

    def firewall_rules(self) -> str:
        """The rules as the kernel has them (``nft list table``)."""
        return _run(
            ns_argv(SRV_NS, ["nft", "list", "table", "inet", NFT_TABLE]), check=False
        ).stdout

    def set_netem(
        self, delay_ms: float = 0.0, loss_pct: float = 0.0, jitter_ms: float = 0.0
    ) -> str:
        """Delay and/or lose the packets the client sends on xp-cli0; returns the method.

        ``tc netem`` where the kernel has sch_netem (``"tc"``); otherwise the same through
        an NFQUEUE rule (iptables-legacy) and ``tests/lab/netem.py`` in exprobe-cli
        (``"nfqueue"``). Replaces any earlier setting; all zero = :meth:`clear_netem`.
        """
        if delay_ms < 0 or jitter_ms < 0 or not 0 <= loss_pct <= 100:
            raise ValueError("delay and jitter must be >= 0 and loss within 0..100")
        self.clear_netem()
        if not (delay_ms or loss_pct or jitter_ms):
            return "none"
        argv = ["tc", "qdisc", "replace", "dev", CLI_IF, "root", "netem"]
        if delay_ms or jitter_ms:
            argv += ["delay", f"{delay_ms}ms"] + ([f"{jitter_ms}ms"] if jitter_ms else [])
        if loss_pct:
            argv += ["loss", f"{loss_pct}%"]
        proc = _run(ns_argv(CLI_NS, argv), check=False)
        if proc.returncode == 0:
            return "tc"
        if "unknown" not in proc.stderr.lower():
            raise LabError(f"tc netem failed: {proc.stderr.strip()}")
        # This kernel has no sch_netem (the lab VM's has not): emulate it in userspace.
        for tool in NETEM_IPTABLES:
            if not shutil.which(tool):
                raise LabError(f"no sch_netem in this kernel and no {tool} (package iptables)")
        self._daemon(
            "netem",
            [
                sys.executable, str(NETEM), "--queue", str(NETEM_QUEUE),
                "--delay-ms", str(delay_ms), "--jitter-ms", str(jitter_ms),
                "--loss-pct", str(loss_pct),
            ],
            ns=CLI_NS,
        )  # fmt: skip
        deadline = time.monotonic() + 5.0
        logfile = LOG_DIR / "netem.log"
        while "bound" not in _tail(logfile, 1):
            if not self.procs["netem"].alive() or time.monotonic() > deadline:
                raise LabError(f"netem.py did not start:\n{_tail(logfile)}")
            time.sleep(0.02)
        for tool in NETEM_IPTABLES:
            _run(ns_argv(CLI_NS, [tool, "-w", "-A", *NETEM_RULE]))
        return "nfqueue"

    def clear_netem(self) -> None:
        """Undo :meth:`set_netem` (either method)."""
        _run(ns_argv(CLI_NS, ["tc", "qdisc", "del", "dev", CLI_IF, "root"]), check=False)
        if Path(f"/run/netns/{CLI_NS}").exists():
            for tool in NETEM_IPTABLES:
                if shutil.which(tool):
                    while (
                        _run(
                            ns_argv(CLI_NS, [tool, "-w", "-D", *NETEM_RULE]), check=False
                        ).returncode
                        == 0
                    ):
                        pass
        with contextlib.suppress(LabError):
            self.stop("netem")

    # -- running things in the namespaces ------------------------------------------

    def run_cli(
        self,
        argv: Sequence[str],
        timeout: float = 60.0,
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        *,
        check: bool = False,
        text: bool = True,
        cwd: str | Path | None = None,
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside exprobe-cli and capture its output.

        ``env`` adds variables to this process's environment. ``text=False`` gives bytes.
        """
        return self._run_ns(CLI_NS, argv, timeout, input, env, check, text, cwd)

    def run_srv(
        self,
        argv: Sequence[str],
        timeout: float = 60.0,
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        *,
        check: bool = False,
        text: bool = True,
        cwd: str | Path | None = None,
    ) -> subprocess.CompletedProcess[Any]:
        """Like :meth:`run_cli`, inside exprobe-srv."""
        return self._run_ns(SRV_NS, argv, timeout, input, env, check, text, cwd)

    def run_exprobe(
        self, *args: str, timeout: float = 120.0, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``python -m exprobe ARGS`` from this checkout inside exprobe-cli."""
        extra = {
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            )
        }
        extra.update(env or {})
        return self.run_cli([sys.executable, "-m", "exprobe", *args], timeout=timeout, env=extra)

    @staticmethod
    def _run_ns(
        ns: str,
        argv: Sequence[str],
        timeout: float,
        input: str | bytes | None,
        env: Mapping[str, str] | None,
        check: bool,
        text: bool,
        cwd: str | Path | None,
    ) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(
            ns_argv(ns, argv),
            capture_output=True,
            timeout=timeout,
            input=input,
            env={**os.environ, **env} if env else None,
            check=check,
            text=text,
            cwd=cwd,
        )

    def spawn_srv(
        self, argv: Sequence[str], *, name: str | None = None, **popen_kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside exprobe-srv (e.g. a scripted peer); stopped by ``down()``."""
        return self._spawn(SRV_NS, argv, name, **popen_kwargs)

    @contextlib.contextmanager
    def exchange55_epm(self, ports: Mapping[str, int], *, name: str) -> Iterator[None]:
        """The scripted Exchange 5.5 endpoint mapper (tests/peers/epm_peer.py) on
        SRV_ADDR:135 with DS, IS and MTA listening on ``ports``; entered once all of
        them accept, stopped on leaving."""
        proc = self.spawn_srv(
            [sys.executable, "-m", "tests.peers.epm_peer", "--bind", SRV_ADDR, "--port", "135",
             "--mode", "exchange55", "--ports", ",".join(f"{c}={p}" for c, p in ports.items()),
             "--listeners", "ds,is,mta"],
            name=name, cwd=str(REPO_ROOT),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for port in (135, *ports.values()):
                self.wait_port(SRV_ADDR, port)
            yield
        finally:
            self.stop(proc)

    def spawn_cli(
        self, argv: Sequence[str], *, name: str | None = None, **popen_kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside exprobe-cli; stopped by ``down()``."""
        return self._spawn(CLI_NS, argv, name, **popen_kwargs)

    def _spawn(
        self, ns: str, argv: Sequence[str], name: str | None, **popen_kwargs: Any
    ) -> subprocess.Popen[Any]:
        if name is not None:
            with self._lock:
                old = self.procs.get(name)
            if old is not None and old.alive():
                raise LabError(f"a lab process named {name!r} is already running (pid {old.pid})")
        popen_kwargs.setdefault("start_new_session", True)
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(ns_argv(ns, argv), **popen_kwargs)
        st = _proc_stat(proc.pid)
        rec = ProcRecord(
            name=name or f"spawn-{proc.pid}",
            pid=proc.pid,
            start=st[1] if st else -1,
            ns=ns,
            argv=list(argv),
            popen=proc,
        )
        with self._lock:
            self.procs[rec.name] = rec
        rec.save()
        return proc

    def running(self) -> bool:
        """True when a lab brought up earlier (by another process) is complete and alive."""
        if not all(Path(f"/run/netns/{ns}").exists() for ns in (CLI_NS, SRV_NS)):
            return False
        daemons = [r for name, r in self._load_records() if not name.startswith("spawn-")]
        return bool(daemons) and all(r.alive() for r in daemons)

    def stop_spawned(self) -> None:
        """Stop the processes this instance spawned (scripted peers), not the lab itself.

        Meant for an instance that did not call `up()`: its `procs` hold only its spawns.
        """
        with self._lock:
            records = list(self.procs.values())
            self.procs.clear()
        self._stop(records, grace=3.0)
        for r in records:
            (PID_DIR / f"{r.name}.json").unlink(missing_ok=True)

    def stop(self, proc: subprocess.Popen[Any] | str, timeout: float = 5.0) -> None:
        """Stop one process started by the lab (a Popen or its name), SIGKILL after ``timeout``."""
        with self._lock:
            if isinstance(proc, str):
                rec = self.procs.pop(proc, None)
                if rec is None:  # started by another process (the command line)?
                    rec = ProcRecord.load(PID_DIR / f"{proc}.json")
            else:
                key = next((k for k, r in self.procs.items() if r.popen is proc), None)
                rec = self.procs.pop(key, None) if key else None
        if rec is None:
            raise LabError(f"not a process of this lab: {proc!r}")
        self._stop([rec], grace=timeout)
        (PID_DIR / f"{rec.name}.json").unlink(missing_ok=True)

    def _daemon(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        ns: str = SRV_NS,
    ) -> None:
        logfile = LOG_DIR / f"{name}.log"
        with open(logfile, "ab") as out:
            out.write(f"--- {time.strftime('%F %T')} {' '.join(argv)}\n".encode())
            out.flush()
            proc = self._spawn(
                ns,
                argv,
                name,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env} if env else None,
            )
        self.procs[name].log = str(logfile)
        self.procs[name].save()
        log.debug("started %s pid %d", name, proc.pid)

    def wait_port(self, addr: str, port: int, timeout: float = 10.0, ns: str = SRV_NS) -> None:
        """Wait until addr:port accepts TCP connections, connecting from ``ns``.

        From exprobe-srv (the default) this bypasses the firewall (pitfall 14).
        """
        deadline = time.monotonic() + timeout
        while True:
            if probe_port(addr, port, ns, timeout=0.25):
                return
            if time.monotonic() >= deadline:
                raise LabError(f"{addr}:{port} did not accept connections within {timeout:g}s")
            time.sleep(0.02)

    # -- daemons -------------------------------------------------------------------

    def _values(self) -> dict[str, str]:
        mail = pwd.getpwnam("mail")
        return {
            "RUN": str(RUN_DIR),
            "ETC": str(ETC_DIR),
            "VAR": str(VAR_DIR),
            "LOG": str(LOG_DIR),
            "TLS": str(TLS_DIR),
            "SAMBA_ADDR": SAMBA_ADDR,
            "SRV_ADDR": SRV_ADDR,
            "SRV_ADDR6": SRV_ADDR6,
            "LISTEN_POSTFIX": ", ".join(f"[{a}]" if ":" in a else a for a in LISTEN_ADDRS),
            "LISTEN_DOVECOT": ", ".join(LISTEN_ADDRS),
            "MAIL_UID": str(mail.pw_uid),
            "MAIL_GID": str(mail.pw_gid),
        }

    def _prepare_postfix(self) -> None:
        conf = ETC_DIR / "postfix"
        _write(conf / "main.cf", _render("postfix-main.cf", self._values()))
        _write(conf / "master.cf", _render("postfix-master.cf", self._values()))
        # Cyrus SASL for the 2587 service: NTLM only. The CHALLENGE comes before any
        # user name, so an empty user database is all it needs.
        _write(conf / "sasl" / "smtpd-ntlm.conf",
               f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\n"
               f"sasldb_path: {VAR_DIR / 'postfix' / 'sasldb2'}\nmech_list: NTLM\n")  # fmt: skip
        queue = VAR_DIR / "postfix" / "queue"
        if not (queue / "pid").is_dir() or not (VAR_DIR / "postfix" / "data").is_dir():
            # Creates the queue directories with the right owners (slow: only once).
            _mkdir(VAR_DIR / "postfix" / "data", owner="postfix")
            _mkdir(queue)
            _run(ns_argv(SRV_NS, ["postfix", "-c", str(conf), "check"]), timeout=60)
        (queue / "pid" / "master.pid").unlink(missing_ok=True)

    def _prepare_dovecot(self) -> None:
        _write(ETC_DIR / "dovecot.conf", _render("dovecot.conf", self._values()))
        _write(ETC_DIR / "dovecot.passwd", f"{LAB_USER}:{{PLAIN}}{LAB_PASSWORD}::::::\n", 0o640)
        os.chown(ETC_DIR / "dovecot.passwd", 0, _gid("dovecot"))
        for d in ("dovecot", "mail"):
            shutil.rmtree(VAR_DIR / d, ignore_errors=True)
        shutil.rmtree(RUN_DIR / "dovecot", ignore_errors=True)  # its stale master.pid: pitfall 4
        _mkdir(VAR_DIR / "dovecot")
        _mkdir(VAR_DIR / "mail", owner="mail", mode=0o770)

    def _prepare_slapd(self) -> None:
        base = VAR_DIR / "slapd"
        shutil.rmtree(base, ignore_errors=True)
        _mkdir(base / "slapd.d")
        _mkdir(base / "data")
        _mkdir(RUN_DIR / "slapd", owner="openldap")
        values = self._values()
        cfg = ETC_DIR / "slapd-config.ldif"
        data = ETC_DIR / "slapd-data.ldif"
        _write(cfg, _render("slapd-config.ldif", values))
        _write(data, _render("slapd-data.ldif", values))
        _run(["slapadd", "-n0", "-F", str(base / "slapd.d"), "-l", str(cfg)])
        _run(["slapadd", "-n1", "-F", str(base / "slapd.d"), "-l", str(data)])
        _chown_tree(base, "openldap")

    def _prepare_inn(self) -> None:
        etc = ETC_DIR / "news"
        shutil.rmtree(etc, ignore_errors=True)
        # The package's files (incoming.conf, newsfeeds, storage.conf, ...) as a base.
        shutil.copytree("/etc/news", etc, symlinks=True)
        values = self._values()
        _write(etc / "inn.conf", _render("inn.conf", values))
        _write(etc / "readers.conf", _render("readers.conf", values))
        _chown_tree(etc, "root", "news")
        base = VAR_DIR / "news"
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(RUN_DIR / "news", ignore_errors=True)
        for d in (
            base / "db",
            base / "tmp",
            base / "http",
            *(
                base / "spool" / s
                for s in ("articles", "overview", "incoming", "outgoing", "archive")
            ),
            base / "spool" / "incoming" / "bad",
            RUN_DIR / "news",
            LOG_DIR / "news",
        ):
            _mkdir(d, owner="news", mode=0o775)
        db = base / "db"
        examples = Path("/usr/lib/news/examples")
        active = (examples / "active").read_text() + f"{NEWS_GROUP} 0000000000 0000000001 y\n"
        groups = (examples / "newsgroups").read_text() + f"{NEWS_GROUP}\tThe exprobe lab group.\n"
        _write(db / "active", active, owner="news")
        _write(db / "newsgroups", groups, owner="news")
        _write(db / "active.times", "", owner="news")
        _write(db / "history", "", 0o664, owner="news")
        self._as_news([str(INN_BIN / "makedbz"), "-i", "-o"], cwd=db)

    def _as_news(
        self,
        argv: Sequence[str],
        cwd: Path | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        full = ["setpriv", "--reuid=news", "--regid=news", "--init-groups", *argv]
        env = {**os.environ, "INNCONF": str(INNCONF)}
        proc = subprocess.run(
            full, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise LabError(f"{' '.join(argv)} failed: {proc.stdout}{proc.stderr}".rstrip())
        return proc

    def _ctlinnd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._as_news([str(INN_BIN / "ctlinnd"), "-t", "5", *args], check=check, timeout=15)

    def _prepare_samba(self) -> None:
        base = VAR_DIR / "samba"
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(RUN_DIR / "samba", ignore_errors=True)
        for d in ("private", "lock", "state", "cache", "bind-dns"):
            _mkdir(base / d, mode=0o700 if d == "private" else 0o755)
        _mkdir(RUN_DIR / "samba")
        _mkdir(RUN_DIR / "samba" / "ncalrpc")
        _write(ETC_DIR / "smb.conf", _render("smb.conf", self._values()))

    def _start_daemons(self) -> None:
        tls = TLS_DIR
        inn_env = {"INNCONF": str(INNCONF)}
        hosts = [f"[{a}]" if ":" in a else a for a in LISTEN_ADDRS]
        urls = [f"{scheme}://{h}/" for scheme in ("ldap", "ldaps") for h in hosts]
        urls.append("ldapi://" + str(RUN_DIR / "slapd" / "ldapi").replace("/", "%2F"))
        self._daemon("dovecot", ["dovecot", "-F", "-c", str(ETC_DIR / "dovecot.conf")])
        self._daemon("postfix", [POSTFIX_MASTER, "-c", str(ETC_DIR / "postfix"), "-d"])
        self._daemon(
            "slapd",
            [
                "slapd", "-d", "0",
                "-h", " ".join(urls),
                "-u", "openldap", "-g", "openldap",
                "-F", str(VAR_DIR / "slapd" / "slapd.d"),
            ],
        )  # fmt: skip
        self._daemon(
            "innd",
            [
                "setpriv",
                "--reuid=news",
                "--regid=news",
                "--init-groups",
                str(INN_BIN / "innd"),
                "-f",
            ],
            env=inn_env,
        )
        self._daemon(
            "nnrpd",
            [
                str(INN_BIN / "nnrpd"),
                "-D",
                "-f",
                "-S",
                "-n",
                "-p",
                "563",
                "-4",
                SRV_ADDR,
                "-6",
                SRV_ADDR6,
            ],
            env=inn_env,
        )
        self._daemon(
            "samba-dcerpcd",
            [
                SAMBA_DCERPCD,
                "-s",
                str(ETC_DIR / "smb.conf"),
                "--libexec-rpcds",
                "-F",
                "--no-process-group",
            ],
        )
        self._daemon("snap7", [sys.executable, str(S7SERVER), "--host", SRV_ADDR, "--port", "102"])
        for stem, addr in (("expired", EXPIRED_ADDR), ("wrongname", WRONGNAME_ADDR)):
            for port in BAD_CERT_PORTS:
                self._daemon(
                    f"tls-{stem}-{port}",
                    [
                        "openssl", "s_server", "-quiet", "-rev",
                        "-accept", f"{addr}:{port}",
                        "-cert", str(tls / f"{stem}.crt"), "-key", str(tls / f"{stem}.key"),
                    ],
                )  # fmt: skip

    def _wait_ready(self, timeout: float = 20.0) -> None:
        waits: list[tuple[str, str, int]] = [
            (svc, SRV_ADDR, port) for port, svc in SRV_PORTS.items()
        ]
        waits += [("samba-dcerpcd", SAMBA_ADDR, p) for p in SAMBA_PORTS]
        for stem, addr in (("expired", EXPIRED_ADDR), ("wrongname", WRONGNAME_ADDR)):
            waits += [(f"tls-{stem}-{p}", addr, p) for p in BAD_CERT_PORTS]
        deadline = time.monotonic() + timeout
        pending = list(waits)
        while pending:
            pending = [w for w in pending if not probe_port(w[1], w[2], SRV_NS, timeout=0.25)]
            for svc, addr, port in pending:
                rec = self.procs.get(svc)
                if rec is not None and not rec.alive():
                    raise LabError(
                        f"{svc} exited before {addr}:{port} came up; log {rec.log}:\n"
                        + _tail(Path(rec.log or "/dev/null"))
                    )
            if not pending:
                break
            if time.monotonic() >= deadline:
                what = ", ".join(f"{svc} {addr}:{port}" for svc, addr, port in pending)
                raise LabError(f"not listening after {timeout:g}s: {what}")
            time.sleep(0.02)

    # -- status --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What is running: namespaces, recorded processes, listening sockets, firewall."""
        records = dict(self._load_records())
        records.update(self.procs)
        namespaces = {ns: Path(f"/run/netns/{ns}").exists() for ns in (CLI_NS, SRV_NS)}
        listening: list[str] = []
        if namespaces[SRV_NS]:
            out = _run(ns_argv(SRV_NS, ["ss", "-Htln"]), check=False).stdout
            listening = sorted(
                {line.split()[3] for line in out.splitlines() if len(line.split()) > 3}
            )
        firewall: Any = None
        with contextlib.suppress(OSError, ValueError):
            firewall = json.loads(FIREWALL_STATE.read_text())
        return {
            "namespaces": namespaces,
            "processes": {
                name: {"pid": r.pid, "state": r.state(), "ns": r.ns, "log": r.log}
                for name, r in sorted(records.items())
            },
            "listening": listening,
            "firewall": firewall,
        }


# --- command line ------------------------------------------------------------------


def _specs(values: list[str] | None) -> list[PortSpec]:
    out: list[PortSpec] = []
    for value in values or []:
        out += [parse_port_spec(v) for v in value.split(",") if v.strip()]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.lab.lab up|down|status|fw|netem``."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab.lab", description=__doc__.split("\n")[0]
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="(re)start the lab")
    sub.add_parser("down", help="stop the lab")
    sub.add_parser("status", help="show what runs")
    fw = sub.add_parser("fw", help="set the firewall (no options: everything open)")
    spec_help = "PORT, LO-HI, ADDR:PORT or [ADDR6]:PORT; comma-separated or repeated"
    fw.add_argument("--drop", action="append", metavar="SPEC", help=spec_help)
    fw.add_argument("--reset", action="append", metavar="SPEC", help=spec_help)
    fw.add_argument("--icmp", action="append", metavar="SPEC", help=spec_help)
    fw.add_argument("--address", action="append", help="scope bare ports to this address")
    fw.add_argument("--show", action="store_true", help="print the resulting ruleset")
    netem = sub.add_parser("netem", help="delay/lose client packets (tc netem)")
    netem.add_argument("--delay-ms", type=float, default=0.0)
    netem.add_argument("--jitter-ms", type=float, default=0.0)
    netem.add_argument("--loss-pct", type=float, default=0.0)
    netem.add_argument("--off", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `... status | head` ends quietly
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="lab: %(message)s"
    )

    lab = Lab()
    try:
        if args.cmd == "up":
            lab.up()
            t = lab.timings
            print(
                f"lab up in {t['total']:.2f}s (teardown {t['teardown']:.2f}s, tls {t['tls']:.2f}s, "
                f"prepare {t['prepare']:.2f}s, start {t['start']:.2f}s, ready {t['ready']:.2f}s)"
            )
            print(f"client namespace: ip netns exec {CLI_NS} <command>; CA: {lab.ca_file}")
        elif args.cmd == "down":
            t0 = time.monotonic()
            lab.down()
            print(f"lab down in {time.monotonic() - t0:.2f}s")
        elif args.cmd == "status":
            st = lab.status()
            print(
                "namespaces: "
                + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in st["namespaces"].items())
            )
            for name, p in st["processes"].items():
                print(f"  {name:22} pid {p['pid']:>7}  {p['state']}")
            print("listening in exprobe-srv: " + " ".join(st["listening"]))
            print(f"firewall: {json.dumps(st['firewall'])}")
        elif args.cmd == "fw":
            lab.set_firewall(_specs(args.drop), _specs(args.reset), _specs(args.icmp), args.address)
            if args.show:
                print(lab.firewall_rules(), end="")
        elif args.cmd == "netem":
            if args.off:
                lab.clear_netem()
            else:
                method = lab.set_netem(args.delay_ms, args.loss_pct, args.jitter_ms)
                print(f"netem via {method}")
    except (LabError, ValueError) as e:
        print(f"lab: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
