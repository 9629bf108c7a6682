"""The routed lab for hop location: client → router 1 → router 2 → router 3 → server.

Five network namespaces (``xphop-cli``, ``xphop-r1``, ``xphop-r2``, ``xphop-r3``,
``xphop-srv``) joined by four veth links, IPv4 and IPv6, forwarding on in the routers,
routes only for the lab's own prefixes (no way out).  Link n is 10.251.n.0/24 and
fd00:e6:n::/64; its left end is .1/::1, its right end .2/::2:

    cli 10.251.1.1 ─ .2 r1 10.251.2.1 ─ .2 r2 10.251.3.1 ─ .2 r3 10.251.4.1 ─ .2 srv

So, seen from the client, hop 1 is 10.251.1.2, hop 2 10.251.2.2, hop 3 10.251.3.2 and
the server 10.251.4.2 is 4 hops away.  The routers answer "time exceeded" without rate
limit (icmp_ratelimit 0), so that every test sees every hop.

The server accepts TCP on SERVER_PORTS (the kernel's SYN-ACK; a one-line banner).  Each
router has an nftables forward chain for the firewall rules of a test (`set_rule`), and
router 2 can play an SMTP inspection device: a NAT redirect of port 25 to a listener of
its own that answers the SYN itself (`intercept`).

Command line (root):  python -m tests.lab.hoplab up|down|status
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from tests.lab.common import LabLock, command

NS = {"cli": "xphop-cli", "r1": "xphop-r1", "r2": "xphop-r2", "r3": "xphop-r3", "srv": "xphop-srv"}
CHAIN = ["cli", "r1", "r2", "r3", "srv"]  # link n joins CHAIN[n-1] and CHAIN[n]
ROUTERS = ("r1", "r2", "r3")
SERVER_PORTS = (25, 80, 110, 143, 1026, 3268)
INTERCEPT_PORT = 2525  # router 2's own "inspection device" listener
ACTIONS = {
    "drop": "drop",
    "reset": "reject with tcp reset",
    "icmp": "reject with icmpx type admin-prohibited",
}


def v4(link: int, end: int) -> str:
    return f"10.251.{link}.{end}"


def v6(link: int, end: int) -> str:
    return f"fd00:e6:{link}::{end}"


SERVER = {4: v4(4, 2), 6: v6(4, 2)}
CLIENT = {4: v4(1, 1), 6: v6(1, 1)}
# Hop n as the client sees it: the router's address on the link towards the client.
HOPS = {4: [v4(n, 2) for n in (1, 2, 3)], 6: [v6(n, 2) for n in (1, 2, 3)]}
SERVER_HOPS = 4

LISTENER = r"""
import selectors, socket, sys
banner = sys.argv[1].encode() + b"\r\n"
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[2:]):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); s.listen(256); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        try:
            c, _ = key.fileobj.accept()
        except OSError:
            continue
        try:
            c.setblocking(False); c.send(banner)
        except OSError:
            pass
        c.close()
"""


class HopLabError(RuntimeError):
    """The hop lab could not be set up."""


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    return command(argv, check=check, timeout=timeout, error=HopLabError)


def ns_argv(node: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", NS[node], *argv]


def _ns(node: str, *argv: str, check: bool = True) -> str:
    return _run(ns_argv(node, argv), check=check)


LOCK = "/tmp/exprobe-hoplab.lock"  # one hop lab per machine: the names are fixed


@dataclass
class HopLab:
    """The routed lab; `up()` builds it, `down()` removes every trace of it.  Between the
    two it holds LOCK, so that two test runs on one machine take turns."""

    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    lock: LabLock = field(default_factory=lambda: LabLock(LOCK))

    def up(self, wait: float = 900) -> None:
        self.lock.acquire(wait)
        self.down(release=False)
        try:
            self._links()
            self._routes()
            self._firewalls()
            self._listen("srv", "220 server.hop.test ESMTP", SERVER_PORTS)
        except BaseException:
            self.down()
            raise

    def _links(self) -> None:
        for node in CHAIN:
            _run(["ip", "netns", "add", NS[node]])
            _ns(node, "ip", "link", "set", "lo", "up")
            for key, value in (("net.ipv6.conf.all.accept_dad", "0"),
                               ("net.ipv6.conf.default.accept_dad", "0"),
                               ("net.ipv4.icmp_ratelimit", "0"),
                               ("net.ipv6.icmp.ratelimit", "0")):  # fmt: skip
                _ns(node, "sysctl", "-qw", f"{key}={value}")
            if node in ROUTERS:
                _ns(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
                _ns(node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for link in range(1, 5):
            left, right = CHAIN[link - 1], CHAIN[link]
            a, b = f"xph{link}a", f"xph{link}b"
            _run(["ip", "link", "add", a, "netns", NS[left], "type", "veth",
                  "peer", "name", b, "netns", NS[right]])  # fmt: skip
            for node, dev, end in ((left, a, 1), (right, b, 2)):
                _ns(node, "ip", "addr", "add", f"{v4(link, end)}/24", "dev", dev)
                _ns(node, "ip", "-6", "addr", "add", f"{v6(link, end)}/64", "dev", dev, "nodad")
                _ns(node, "ip", "link", "set", dev, "up")

    def _routes(self) -> None:
        for i, node in enumerate(CHAIN):
            # Node i sits on links i (left, towards the client) and i+1 (right).
            for link in range(1, 5):
                if link in (i, i + 1):
                    continue
                if link < i:
                    gw4, gw6 = v4(i, 1), v6(i, 1)
                else:
                    gw4, gw6 = v4(i + 1, 2), v6(i + 1, 2)
                _ns(node, "ip", "route", "add", f"10.251.{link}.0/24", "via", gw4)
                _ns(node, "ip", "-6", "route", "add", f"fd00:e6:{link}::/64", "via", gw6)

    def _firewalls(self) -> None:
        for node in ROUTERS:
            self.set_rule(node)

    def set_rule(self, router: str, action: str | None = None, port: int | None = None) -> None:
        """Router `router`'s forward chain: accept all, or `action` (drop, reset, icmp) for
        TCP to `port`."""
        rule = f"tcp dport {port} {ACTIONS[action]}" if action and port else ""
        ruleset = (
            f"flush ruleset\ntable inet xphop {{\n  chain xpfwd {{\n"
            f"    type filter hook forward priority 0; policy accept;\n    {rule}\n  }}\n}}\n"
        )
        subprocess.run(ns_argv(router, ["nft", "-f", "-"]), input=ruleset, text=True,
                       check=True, capture_output=True, timeout=30)  # fmt: skip

    def open_all(self) -> None:
        for node in ROUTERS:
            self.set_rule(node)

    @contextlib.contextmanager
    def intercept(self, router: str = "r2", port: int = 25) -> Iterator[None]:
        """`router` redirects TCP to `port` (both families) to a listener of its own that
        answers like an SMTP inspection device."""
        ruleset = (
            "table inet xphop_nat {\n  chain pre {\n"
            "    type nat hook prerouting priority -100; policy accept;\n"
            f"    tcp dport {port} redirect to :{INTERCEPT_PORT}\n  }}\n}}\n"
        )
        self._listen(router, "220 inspector.hop.test ESMTP ready", (INTERCEPT_PORT,))
        subprocess.run(ns_argv(router, ["nft", "-f", "-"]), input=ruleset, text=True,
                       check=True, capture_output=True, timeout=30)  # fmt: skip
        try:
            yield
        finally:
            _ns(router, "nft", "delete", "table", "inet", "xphop_nat", check=False)
            self._stop(router)

    def _listen(self, node: str, banner: str, ports: Sequence[int]) -> None:
        proc = subprocess.Popen(
            ns_argv(node, [sys.executable, "-c", LISTENER, banner, *map(str, ports)]),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )  # fmt: skip
        self.procs[node] = proc
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            self._stop(node)
            raise HopLabError(f"the listener in {NS[node]} did not start")

    def _stop(self, node: str) -> None:
        proc = self.procs.pop(node, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: only what we started
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()

    def down(self, release: bool = True) -> None:
        for node in list(self.procs):
            self._stop(node)
        present = set(_run(["ip", "netns", "list"], check=False).split())
        for node in CHAIN:
            if NS[node] in present:
                _run(["ip", "netns", "del", NS[node]], check=False)
        # The veth pairs go with their namespaces; give the kernel a moment.
        for _ in range(50):
            if not any(NS[n] in _run(["ip", "netns", "list"], check=False) for n in CHAIN):
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
    lab = HopLab()
    if args == ["up"]:
        lab.up()
        # The listener dies with this process: keep it in the foreground.
        print("hop lab up; Ctrl-C tears it down", flush=True)
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
    print("usage: python -m tests.lab.hoplab up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
