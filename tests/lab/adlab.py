"""The AD lab: a real Samba Active Directory domain controller in a namespace.

Two network namespaces joined by one veth link, IPv4 and IPv6:

    xpad-cli 10.253.0.1 / fd00:e8::1  ──  xpad-dc 10.253.0.2 / fd00:e8::2

The DC is `samba` (Samba's AD DC, which starts its own KDC, LDAP and Global Catalog,
smbd, the RPC servers and the DNS server) for the domain AD.LAB.TEST, NetBIOS domain
ADLAB, host DC1.  It answers Kerberos on 88, LDAP on 389/636, the Global Catalog on
3268/3269, SMB on 445 and the endpoint mapper on 135.

Every directory the DC uses is under BASE (/var/lib/exprobe-adlab): nothing in
/etc/samba or /var/lib/samba is read or written.  `samba-tool domain provision` runs once
into BASE/pristine (about 5 s); each `up()` copies that tree to BASE/run, writes its own
smb.conf there and starts `samba -F` in the DC namespace.  `down()` stops it by the PID
it started and deletes both namespaces.

The DC namespace has an nftables input chain for the firewall cases of a test
(`set_rule`).

Command line (root):  python -m tests.lab.adlab up|down
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tests.lab.common import LabLock, command

NS = {"cli": "xpad-cli", "dc": "xpad-dc"}
DC = {4: "10.253.0.2", 6: "fd00:e8::2"}
CLIENT = {4: "10.253.0.1", 6: "fd00:e8::1"}
REALM = "AD.LAB.TEST"
DNS_DOMAIN = "ad.lab.test"
NETBIOS_DOMAIN = "ADLAB"
HOST = "DC1"
DNS_HOST = "dc1.ad.lab.test"
BASE_DN = "DC=ad,DC=lab,DC=test"
ADMIN_PASSWORD = "Lab-Admin-Pass1!"  # a throw-away domain in a namespace; never a secret
BASE = "/var/lib/exprobe-adlab"
PRISTINE = f"{BASE}/pristine"
RUN = f"{BASE}/run"
CONF = f"{RUN}/smb.conf"
# The ports `up()` waits for: Kerberos, LDAP, GC, GC over TLS, SMB.
READY_PORTS = (88, 389, 445, 3268, 3269)
ACTIONS = {
    "drop": "drop",
    "reset": "reject with tcp reset",
    "icmp": "reject with icmpx type admin-prohibited",
}
LOCK = "/tmp/exprobe-adlab.lock"  # one AD lab per machine: the names are fixed


class AdLabError(RuntimeError):
    """The AD lab could not be set up."""


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 120) -> str:
    return command(argv, check=check, timeout=timeout, error=AdLabError)


def ns_argv(node: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", NS[node], *argv]


def _ns(node: str, *argv: str, check: bool = True) -> str:
    return _run(ns_argv(node, argv), check=check)


def _samba_version() -> str:
    return _run(["samba", "--version"]).strip()


def provision(force: bool = False, *, pristine: str = PRISTINE,
              dc: Mapping[int, str] = DC) -> float:
    """Provision the domain into `pristine` (DC addresses `dc`) unless a tree of this
    Samba version is there; the seconds it took (0.0 when the cached tree was kept)."""
    marker = f"{pristine}/.exprobe-provisioned"
    version = _samba_version()
    if not force and os.path.exists(marker):
        with open(marker, encoding="utf-8") as fh:
            if fh.read().strip() == version:
                return 0.0
    shutil.rmtree(pristine, ignore_errors=True)
    os.makedirs(pristine, mode=0o755)
    start = time.monotonic()
    _run([
        "samba-tool", "domain", "provision", "--server-role=dc",
        "--dns-backend=SAMBA_INTERNAL", f"--realm={REALM}", f"--domain={NETBIOS_DOMAIN}",
        f"--host-name={HOST.lower()}", f"--host-ip={dc[4]}", f"--host-ip6={dc[6]}",
        f"--adminpass={ADMIN_PASSWORD}", f"--targetdir={pristine}",
        # Provisioning reads /etc/resolv.conf for a forwarder: the lab has no way out.
        "--option=dns forwarder = 127.0.0.1",
        f"--option=interfaces = {dc[4]}",
    ], timeout=300)  # fmt: skip
    took = time.monotonic() - start
    with open(marker, "w", encoding="utf-8") as fh:
        fh.write(version + "\n")
    return took


def smb_conf(run: str = RUN, dc: Mapping[int, str] = DC) -> str:
    """The DC's configuration: every directory under `run`, listening on `dc`'s addresses."""
    return f"""[global]
    netbios name = {HOST}
    realm = {REALM}
    workgroup = {NETBIOS_DOMAIN}
    server role = active directory domain controller
    interfaces = lo {dc[4]} {dc[6]}
    bind interfaces only = yes
    private dir = {run}/private
    lock directory = {run}
    state directory = {run}/state
    cache directory = {run}/cache
    pid directory = {run}/pid
    binddns dir = {run}/bind-dns
    ncalrpc dir = {run}/ncalrpc
    log file = {run}/log/%m.log
    logging = file
    log level = 1
    dns forwarder =
    tls enabled = yes
    tls keyfile = tls/key.pem
    tls certfile = tls/cert.pem
    tls cafile = tls/ca.pem
    printcap name = /dev/null
    load printers = no
    disable spoolss = yes

[sysvol]
    path = {run}/state/sysvol
    read only = no

[netlogon]
    path = {run}/state/sysvol/{DNS_DOMAIN}/scripts
    read only = no
"""


def listening(ns: str) -> set[int]:
    """The TCP ports something listens on in namespace `ns`."""
    out = _run(["ip", "netns", "exec", ns, "ss", "-Hltn"], check=False)
    ports: set[int] = set()
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4:
            with contextlib.suppress(ValueError):
                ports.add(int(cols[3].rsplit(":", 1)[1]))
    return ports


def spawn_samba(ns: str, pristine: str, run: str, dc: Mapping[int, str]) -> subprocess.Popen[bytes]:
    """Copy the provisioned `pristine` tree to `run` and start `samba -F` in namespace `ns`
    (a session of its own), listening on `dc`'s addresses; `wait_samba` waits for it."""
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(pristine, run, symlinks=True)
    for sub in ("cache", "pid", "log", "ncalrpc"):
        os.makedirs(f"{run}/{sub}", exist_ok=True)
    conf = f"{run}/smb.conf"
    with open(conf, "w", encoding="utf-8") as fh:
        fh.write(smb_conf(run, dc))
    log = open(f"{run}/log/samba.out", "wb")  # noqa: SIM115 - closed below
    try:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, "samba", "-s", conf, "-F", "--no-process-group",
             "--debug-stdout"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    finally:
        log.close()


def start_samba(
    ns: str, pristine: str, run: str, dc: Mapping[int, str]
) -> tuple[subprocess.Popen[bytes], float]:
    """`spawn_samba` and `wait_samba` (60 s at most): the process and its seconds to ready."""
    start = time.monotonic()
    proc = spawn_samba(ns, pristine, run, dc)
    try:
        wait_samba(proc, ns, run, start + 60)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        raise
    return proc, time.monotonic() - start


def wait_samba(proc: subprocess.Popen[bytes], ns: str, run: str, deadline: float) -> None:
    """Until READY_PORTS listen in `ns` (AdLabError if `proc` exits or `deadline` passes)."""
    while True:
        if proc.poll() is not None:
            raise AdLabError(f"samba exited with {proc.returncode}; see {run}/log")
        if set(READY_PORTS) <= listening(ns):
            return
        if time.monotonic() > deadline:
            raise AdLabError(f"samba not listening on {READY_PORTS} by the deadline")
        time.sleep(0.2)


@dataclass
class AdLab:
    """The AD lab; `up()` builds it, `down()` removes every trace of it but the cached
    provisioned tree.  Between the two it holds LOCK."""

    proc: subprocess.Popen[bytes] | None = None
    lock: LabLock = field(default_factory=lambda: LabLock(LOCK))
    timings: dict[str, float] = field(default_factory=dict)

    def up(self, wait: float = 900) -> None:
        self.lock.acquire(wait)
        self.down(release=False)
        try:
            self.timings["provision_s"] = provision()
            self._links()
            self.set_rule()
            self._start()
        except BaseException:
            self.down()
            raise

    def _links(self) -> None:
        for node in ("cli", "dc"):
            _run(["ip", "netns", "add", NS[node]])
            _ns(node, "ip", "link", "set", "lo", "up")
        _run(["ip", "link", "add", "xpad0a", "netns", NS["cli"], "type", "veth",
              "peer", "name", "xpad0b", "netns", NS["dc"]])  # fmt: skip
        for node, dev, addrs in (("cli", "xpad0a", CLIENT), ("dc", "xpad0b", DC)):
            _ns(node, "ip", "addr", "add", f"{addrs[4]}/24", "dev", dev)
            _ns(node, "ip", "-6", "addr", "add", f"{addrs[6]}/64", "dev", dev, "nodad")
            _ns(node, "ip", "link", "set", dev, "up")

    def _start(self) -> None:
        self.proc, self.timings["samba_ready_s"] = start_samba(NS["dc"], PRISTINE, RUN, DC)

    def set_rule(self, action: str | None = None, port: int | None = None) -> None:
        """The DC's input chain: accept all, or `action` (drop, reset, icmp) for TCP to
        `port`."""
        rule = f"tcp dport {port} {ACTIONS[action]}" if action and port else ""
        ruleset = (
            f"flush ruleset\ntable inet xpad {{\n  chain xpin {{\n"
            f"    type filter hook input priority 0; policy accept;\n    {rule}\n  }}\n}}\n"
        )
        subprocess.run(ns_argv("dc", ["nft", "-f", "-"]), input=ruleset, text=True,
                       check=True, capture_output=True, timeout=30)  # fmt: skip

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: only what we started
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def down(self, release: bool = True) -> None:
        self._stop()
        present = set(_run(["ip", "netns", "list"], check=False).split())
        for node in NS:
            if NS[node] in present:
                _run(["ip", "netns", "del", NS[node]], check=False)
        for _ in range(50):
            listed = _run(["ip", "netns", "list"], check=False)
            if not any(name in listed for name in NS.values()):
                break
            time.sleep(0.1)
        if release:
            self.lock.release()

    def cli(self, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the client namespace."""
        return subprocess.run(ns_argv("cli", argv), capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    lab = AdLab()
    if args == ["up"]:
        lab.up()
        print(f"AD lab up ({lab.timings}); Ctrl-C tears it down", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        lab.down()
        return 0
    if args == ["down"]:
        lab.down()
        return 0
    print("usage: python -m tests.lab.adlab up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
