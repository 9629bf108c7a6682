"""The modern Exchange lab: a client, a router playing the firewall, and Exchange's
neighbours behind it, as real servers where they exist (postfix, Samba AD DC, slapd,
nginx, dnsmasq) and scripted only where the answer is Exchange's own
(tests/peers/exchange_http.py; a DAG member's endpoint mapper, tests/peers/epm_peer.py
mode dag) or a middlebox's (tests/peers/smtp_inspect.py).

Ten network namespaces, IPv4 and IPv6.  Every node but the router sits on a link of its
own to the router `xpx-r1` (link L: 10.249.L.0/24 and fd00:e9:L::/64, the router .1/::1,
the node .2/::2), so every path between two nodes crosses r1's nftables forward chain:

| node | link | what answers there |
|---|---|---|
| cli  | 1 | nothing: the client vantage (exprobe runs here) |
| mbx1 | 2 | the Exchange mailbox address: nginx on 80, 443 and 444 (another, self-signed-style certificate: the backend site) fronting a scripted Exchange backend (MBX1); postfix on 25, 587 (STARTTLS, AUTH after TLS), 2525, 465, 475, 717; a TCP listener on 64327 (DAG replication); the endpoint mapper on 135 handing out the failover cluster's interface on CLUSTER_PORT; POP3/IMAP4 refused (off by default on 2013+) |
| mbx2 | 3 | a peer mailbox server: postfix on 25 and 2525 (the mbx vantage runs exprobe here) |
| dc   | 4 | Samba AD DC (tests/lab/adlab.py's provisioning): 53, 88, 135 + dynamic RPC, 389, 445, 636, 3268, 3269; also the DAG's witness |
| vip  | 5 | nginx, the load-balancer VIP on 443: TCP pass-through (the members' certificate) round robin to m1 and m2; SSL offload with a certificate of its own under `ssl-offload` |
| m1, m2 | 6, 7 | pool members: nginx on 443 (the same certificate as mbx1) fronting scripted Exchange backends EX1, EX2 |
| edge | 8 | Edge Transport: postfix on 25, slapd with LDAPS on 50636 (AD LDS's EdgeSync port) |
| exo  | 9 | "Exchange Online": postfix on 25 that requires STARTTLS (smtpd_tls_security_level = encrypt); nginx with TLS on 443 |

The router also runs dnsmasq (DNS_RECORDS, on ROUTER's addresses) and an SMTP inspection
device (a relay that masks STARTTLS as Cisco ASA's `inspect esmtp` does) on 10587; under
`587-starttls-stripped` an nftables NAT redirect sends the client's connections to
mbx1:587 through it.  Certificates: `XLab.ca_pem` trusts the published names, SMTP, LDAPS
and EXO; the backend site's (444) comes from a CA nobody trusts; `XLab.sha256` holds
every leaf's fingerprint.

Real postfix cannot list Exchange's X-EXPS and X-ANONYMOUSTLS: on 25/2525 its EHLO reply
is PIPELINING, SIZE, VRFY, ETRN, STARTTLS, ENHANCEDSTATUSCODES, 8BITMIME, DSN, SMTPUTF8,
CHUNKING; 587 offers AUTH (NTLM LOGIN, Cyrus SASL) only after STARTTLS; 465, 475 and 717
are plain SMTP with STARTTLS, as Exchange's Client Proxy, mailbox delivery and outbound
proxy connectors are (465 is not SMTPS there).

`XLab.apply_rules(name)` switches the rule set (RULESETS): r1's forward and NAT rules are
swapped atomically (one `nft -f` that flushes and loads); the HTTP rule sets are nginx
configuration switches (mbx1's or the VIP's nginx restarted with the other configuration).

State: the Samba domain is provisioned once into BASE/samba-pristine and the postfix
queues are created once under BASE/NODE (slow steps); everything else is rewritten under
BASE/run at every `up()`.

Command line (root):  python -m tests.lab.xlab up [RULESET]|down
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.adlab import listening, provision, spawn_samba, wait_samba
from tests.lab.common import LabLock, command, delete_namespaces, run_in, start_in, stop
from tests.lab.dnslab import COMMON as DNSMASQ_OPTIONS
from tests.lab.dnslab import make_certs
from tests.lab.hoplab import LISTENER
from tests.lab.lab import POSTFIX_MASTER, TEMPLATES, _render
from tests.lab.weblab import nginx_main, start_nginx

LINKS = {"cli": 1, "mbx1": 2, "mbx2": 3, "dc": 4, "vip": 5, "m1": 6, "m2": 7, "edge": 8, "exo": 9}
NS = {node: f"xpx-{node}" for node in ("r1", *LINKS)}


def v4(link: int, end: int) -> str:
    return f"10.249.{link}.{end}"


def v6(link: int, end: int) -> str:
    return f"fd00:e9:{link}::{end}"


ADDR = {node: {4: v4(link, 2), 6: v6(link, 2)} for node, link in LINKS.items()}
ROUTER = {4: v4(1, 1), 6: v6(1, 1)}  # hop 1 as the client sees it
DOMAIN = "xlab.example"
NAME = f"mail.{DOMAIN}"  # the namespace name: mbx1's and the VIP's certificate
BUILD = "15.2.1544.4"  # Exchange 2019 CU14: Extended Protection on by default
BACKEND_PORT = 8081  # the scripted Exchange backend, on 127.0.0.1 of its node
BACKENDS = {"mbx1": "MBX1", "m1": "EX1", "m2": "EX2"}
INSPECT_PORT = 10587  # the inspection device's own listener on r1
DAG_PORT = 64327
SMTP_PORTS = {
    "mbx1": (25, 587, 2525, 465, 475, 717),
    "mbx2": (25, 2525),
    "edge": (25,),
    "exo": (25,),
}
CLUSTER_PORT = 49701  # the failover cluster's RPC port the endpoint mapper hands out
EDGE_LDAPS = 50636
EDGE_LDAP_LOCAL = 50389  # AD LDS's LDAP: local only, as on an Edge server
# dnsmasq on r1 (ROUTER): the lab's names; xlab.example has an MX and no address, so
# Autodiscover's method 1 finds nothing and method 2 (autodiscover.xlab.example) carries.
DNS_RECORDS = [
    *(f"--host-record={name},{ADDR[node][4]},{ADDR[node][6]}" for name, node in (
        (NAME, "vip"), (f"autodiscover.{DOMAIN}", "vip"), (f"mbx1.{DOMAIN}", "mbx1"),
        (f"mbx2.{DOMAIN}", "mbx2"), (f"ex1.{DOMAIN}", "m1"), (f"ex2.{DOMAIN}", "m2"),
        (f"edge.{DOMAIN}", "edge"), (f"exo.{DOMAIN}", "exo"), ("dc1.ad.lab.test", "dc"),
    )),
    f"--mx-host={DOMAIN},edge.{DOMAIN},10",
    f"--local=/{DOMAIN}/", "--local=/ad.lab.test/",
]  # fmt: skip
RULESETS = (
    "open",
    "mapi-refused",
    "rpc-verbs-refused",
    "2525-dropped",
    "3268-dropped",
    "50636-dropped",
    "ssl-offload",
    "587-starttls-stripped",
)
BASE = Path("/var/lib/exprobe-xlab")
RUN = BASE / "run"
TLS = RUN / "tls"
SAMBA_PRISTINE = str(BASE / "samba-pristine")
SAMBA_RUN = str(RUN / "samba")
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
LOCK = "/tmp/exprobe-xlab.lock"  # one such lab per machine: the names are fixed


class XLabError(RuntimeError):
    """The modern Exchange lab could not be set up."""


def _run(argv: Sequence[str], *, check: bool = True, input: str | None = None) -> str:
    return command(argv, check=check, input=input, timeout=120, error=XLabError)


def _ns(node: str, argv: Sequence[str], *, input: str | None = None) -> str:
    return _run(["ip", "netns", "exec", NS[node], *argv], input=input)


# -- configuration text -----------------------------------------------------------------


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _listen(node: str, port: int, extra: str = "") -> str:
    a = ADDR[node]
    return f"listen {a[4]}:{port}{extra}; listen [{a[6]}]:{port}{extra};"


PROXY = (
    'proxy_http_version 1.1; proxy_set_header Connection ""; '
    "proxy_set_header Host $host; proxy_pass {up};"
)


def _tls(stem: str) -> str:
    return f"ssl_certificate {TLS}/{stem}.pem; ssl_certificate_key {TLS}/{stem}-key.pem;"


def mbx1_nginx(d: Path, mode: str) -> str:
    """mbx1's front: 443 (`mode`: open, mapi-refused, rpc-verbs-refused), 80, 444."""
    to_backend = "location / { " + PROXY.format(up="http://exchange") + " }"
    refuse = {
        "open": "",
        # A reverse proxy that does not publish MAPI over HTTP.
        "mapi-refused": "location /mapi/ { return 403; } ",
        # A proxy that refuses RPC over HTTP's verbs (MS-RPCH 2.1.2.1).
        "rpc-verbs-refused": "if ($request_method ~ ^RPC_) { return 405; } ",
    }[mode]
    return nginx_main(d, (
        f"upstream exchange {{ server 127.0.0.1:{BACKEND_PORT}; }}\n"
        f"server {{ {_listen('mbx1', 443, ' ssl')} server_name {NAME}; {_tls('mail')} "
        f"{refuse}{to_backend} }}\n"
        f"server {{ {_listen('mbx1', 80)} server_name {NAME}; {to_backend} }}\n"
        f"server {{ {_listen('mbx1', 444, ' ssl')} {_tls('backend')} {to_backend} }}\n"
    ))  # fmt: skip


def member_nginx(d: Path, node: str) -> str:
    to_backend = "location / { " + PROXY.format(up="http://exchange") + " }"
    return nginx_main(d, (
        f"upstream exchange {{ server 127.0.0.1:{BACKEND_PORT}; }}\n"
        f"server {{ {_listen(node, 443, ' ssl')} server_name {NAME}; {_tls('mail')} "
        f"{to_backend} }}\n"
    ))  # fmt: skip


def exo_nginx(d: Path) -> str:
    """Exchange Online's HTTPS front door, as far as a TLS check sees it."""
    return nginx_main(d, (
        f"server {{ {_listen('exo', 443, ' ssl')} server_name exo.{DOMAIN}; {_tls('exo')} "
        'location / { return 200 "exo\\n"; } }\n'
    ))  # fmt: skip


def vip_nginx(d: Path, offload: bool) -> str:
    """The VIP: layer-4 pass-through round robin (the members' own TLS), or with `offload`
    TLS terminated on the VIP with its own certificate and re-encrypted to the members."""
    if offload:
        pool = "".join(f"server {ADDR[m][4]}:443; " for m in ("m1", "m2"))
        return nginx_main(d, (
            f"upstream pool {{ {pool}}}\n"
            f"server {{ {_listen('vip', 443, ' ssl')} server_name {NAME}; {_tls('offload')} "
            "location / { " + PROXY.format(up="https://pool") + " } }\n"
        ), modules=[STREAM_MODULE])  # fmt: skip
    stream = ""
    for f in (4, 6):
        members = " ".join(f"server {_hostport(ADDR[m][f], 443)};" for m in ("m1", "m2"))
        stream += (f"upstream pool{f} {{ {members} }}\n"
                   f"server {{ listen {_hostport(ADDR['vip'][f], 443)}; proxy_pass pool{f}; }}\n")  # fmt: skip
    return nginx_main(d, "", stream=stream, modules=[STREAM_MODULE])


def postfix_main(node: str) -> str:
    """The main lab's postfix main.cf (tests/lab/configs) for this node, then what differs
    (postfix keeps the last of two settings of one name)."""
    conf = RUN / node
    values = {"VAR": str(BASE / node), "LISTEN_POSTFIX": "all", "LOG": str(conf),
              "TLS": str(TLS), "RUN": str(conf), "ETC": str(conf)}  # fmt: skip
    extra = [f"myhostname = {node}.{DOMAIN}", f"mydomain = {DOMAIN}"]
    if node == "exo":
        extra.append("smtpd_tls_security_level = encrypt")
    return _render("postfix-main.cf", values) + "\n# exprobe xlab\n" + "\n".join(extra) + "\n"


def postfix_master(node: str) -> str:
    """One smtpd per port of SMTP_PORTS[node] (587: AUTH through Cyrus SASL, after TLS),
    then the main lab's internal services."""
    lines = ["# exprobe xlab: postfix master.cf (chroot = n everywhere)"]
    for port in SMTP_PORTS[node]:
        lines.append(f"{port} inet n - n - - smtpd\n  -o syslog_name=postfix/{port}")
        if port == 587:
            lines.append("  -o smtpd_sasl_auth_enable=yes\n  -o smtpd_sasl_type=cyrus\n"
                         "  -o smtpd_sasl_path=smtpd-xlab")  # fmt: skip
    template = (TEMPLATES / "postfix-master.cf").read_text().splitlines()
    lines += [ln for ln in template if ln.split()[1:2] in (["unix"], ["unix-dgram"])]
    return "\n".join(lines) + "\n"


# -- the lab ----------------------------------------------------------------------------


@dataclass
class XLab:
    """`up()` builds the lab (rule set `open`), `down()` removes every trace of it but the
    cached Samba domain and postfix queues.  Between the two it holds LOCK."""

    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    lock: LabLock = field(default_factory=lambda: LabLock(LOCK))
    timings: dict[str, float] = field(default_factory=dict)
    rules: str = ""
    mbx1_mode: str = "open"
    vip_offload: bool = False
    ca_pem: Path = TLS / "ca.pem"
    sha256: dict[str, str] = field(default_factory=dict)

    def up(self, wait: float = 900) -> None:
        self.lock.acquire(wait)
        self.down(release=False)
        start = time.monotonic()
        try:
            self.timings["provision_s"] = provision(pristine=SAMBA_PRISTINE, dc=ADDR["dc"])
            self._net()
            self._certs()
            self.procs["samba"] = spawn_samba(NS["dc"], SAMBA_PRISTINE, SAMBA_RUN, ADDR["dc"])
            self._postfix()
            self._slapd()
            self._scripted()
            self._nginx()
            self._wait()
            self.apply_rules("open")
        except BaseException:
            self.down()
            raise
        self.timings["up_s"] = time.monotonic() - start

    # -- network

    def _net(self) -> None:
        root = [f"netns add {ns}" for ns in NS.values()]
        for node, link in LINKS.items():
            root.append(f"link add xpx{link}r netns {NS['r1']} type veth "
                        f"peer name xpx{link}n netns {NS[node]}")  # fmt: skip
        _run(["ip", "-batch", "-"], input="\n".join(root) + "\n")
        router = ["link set lo up"]
        for node, link in LINKS.items():
            router += [f"addr add {v4(link, 1)}/24 dev xpx{link}r",
                       f"addr add {v6(link, 1)}/64 dev xpx{link}r nodad",
                       f"link set xpx{link}r up"]  # fmt: skip
            _run(["ip", "-n", NS[node], "-batch", "-"], input=(
                "link set lo up\n"
                f"addr add {v4(link, 2)}/24 dev xpx{link}n\n"
                f"addr add {v6(link, 2)}/64 dev xpx{link}n nodad\n"
                f"link set xpx{link}n up\n"
                # Only the lab's own prefixes: no way out.
                f"route add 10.249.0.0/16 via {v4(link, 1)}\n"
                f"route add fd00:e9::/32 via {v6(link, 1)}\n"
            ))  # fmt: skip
        _run(["ip", "-n", NS["r1"], "-batch", "-"], input="\n".join(router) + "\n")
        # Every hop answers a trace at once (no ICMP rate limit).
        _ns("r1", ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                   "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0"])  # fmt: skip

    # -- certificates

    def _certs(self) -> None:
        """One CA the clients trust (ca.pem) for the published names, another nobody
        trusts for the backend site's certificate on 444 (Exchange's is self-signed).
        The offloading VIP's certificate is valid for the same names, from the same CA,
        but another key: only its fingerprint tells it from the members'."""
        shutil.rmtree(RUN, ignore_errors=True)
        TLS.mkdir(parents=True)
        web = [NAME, f"autodiscover.{DOMAIN}", f"mbx1.{DOMAIN}", f"ex1.{DOMAIN}", f"ex2.{DOMAIN}",
               *(ADDR[n][f] for n in ("mbx1", "vip", "m1", "m2") for f in (4, 6))]  # fmt: skip
        make_certs(TLS, self.ca_pem, {
            "mail": web,
            "offload": web,
            "smtp": [*(f"{n}.{DOMAIN}" for n in SMTP_PORTS),
                     *(ADDR[n][f] for n in SMTP_PORTS for f in (4, 6))],
            "ldaps": [f"edge.{DOMAIN}", *ADDR["edge"].values()],
            "exo": [f"exo.{DOMAIN}", *ADDR["exo"].values()],
        })  # fmt: skip
        make_certs(TLS, TLS / "untrusted-ca.pem", {"backend": [f"mbx1.{DOMAIN}", *ADDR["mbx1"].values()]})
        for stem in ("mail", "offload", "smtp", "ldaps", "exo", "backend"):
            pem = (TLS / f"{stem}.pem").read_text()
            self.sha256[stem] = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
        # The names the main lab's postfix and slapd templates use.
        for src, dst in (("smtp.pem", "server.crt"), ("smtp-key.pem", "server.key"),
                         ("ldaps.pem", "ldap.crt"), ("ldaps-key.pem", "ldap.key"),
                         ("ca.pem", "ca.crt")):  # fmt: skip
            shutil.copy(TLS / src, TLS / dst)

    # -- daemons

    def _start(self, key: str, node: str, argv: Sequence[str]) -> None:
        self.procs[key] = start_in(NS[node], argv, ready=False)

    def _postfix(self) -> None:
        for node in SMTP_PORTS:
            conf = RUN / node / "postfix"
            (conf / "sasl").mkdir(parents=True)
            (conf / "main.cf").write_text(postfix_main(node))
            (conf / "master.cf").write_text(postfix_master(node))
            # Cyrus SASL for 587: the mechanisms Exchange's Client Frontend offers
            # (no GSSAPI here); no account exists, none is ever needed.
            (conf / "sasl" / "smtpd-xlab.conf").write_text(
                f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\n"
                f"sasldb_path: {RUN / node / 'sasldb2'}\nmech_list: NTLM LOGIN\n"
            )
            queue = BASE / node / "postfix" / "queue"
            if not (queue / "pid").is_dir() or not (queue.parent / "data").is_dir():
                # Creates the queue directories with their owners (slow: only once).
                (queue.parent / "data").mkdir(parents=True, exist_ok=True)
                shutil.chown(queue.parent / "data", "postfix")
                queue.mkdir(exist_ok=True)
                _ns(node, ["postfix", "-c", str(conf), "check"])
            (queue / "pid" / "master.pid").unlink(missing_ok=True)
            self._start(f"postfix-{node}", node, [POSTFIX_MASTER, "-c", str(conf), "-d"])

    def _slapd(self) -> None:
        d = RUN / "edge"
        for sub in ("slapd/slapd.d", "slapd/data"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        values = {"RUN": str(d), "VAR": str(d), "TLS": str(TLS)}
        for n, template in ((0, "slapd-config.ldif"), (1, "slapd-data.ldif")):
            ldif = d / template
            ldif.write_text(_render(template, values))
            _run(["slapadd", f"-n{n}", "-F", str(d / "slapd" / "slapd.d"), "-l", str(ldif)])
        urls = f"ldaps://:{EDGE_LDAPS}/ ldap://127.0.0.1:{EDGE_LDAP_LOCAL}/"
        self._start("slapd", "edge", ["slapd", "-d", "0", "-h", urls,
                                      "-F", str(d / "slapd" / "slapd.d")])  # fmt: skip

    def _scripted(self) -> None:
        for node, name in BACKENDS.items():
            self._start(f"exchange-{node}", node, [
                sys.executable, "-m", "tests.peers.exchange_http", "--listen", "127.0.0.1",
                "--port", str(BACKEND_PORT), "--name", name, "--domain", DOMAIN,
                "--build", BUILD,
            ])  # fmt: skip
        self._start("inspect", "r1", [
            sys.executable, "-m", "tests.peers.smtp_inspect", "--port", str(INSPECT_PORT),
            "--upstream4", ADDR["mbx1"][4], "--upstream6", ADDR["mbx1"][6],
        ])  # fmt: skip
        # DAG replication: something accepts on 64327 (the hop lab's listener); the
        # failover cluster's RPC through the endpoint mapper (the project's scripted EPM).
        self._start("dag", "mbx1", [sys.executable, "-c", LISTENER, "", str(DAG_PORT)])
        self._start("epm", "mbx1", [
            sys.executable, "-m", "tests.peers.epm_peer", "--bind", ADDR["mbx1"][4],
            "--bind", ADDR["mbx1"][6], "--port", "135", "--mode", "dag",
            "--ports", f"cluster={CLUSTER_PORT}", "--listeners", "cluster",
        ])  # fmt: skip
        self._start("dns", "r1", [
            "dnsmasq", *DNSMASQ_OPTIONS, f"--pid-file={RUN}/dnsmasq.pid",
            *(f"--listen-address={a}" for a in ROUTER.values()), *DNS_RECORDS,
        ])  # fmt: skip
        for key in [k for k in self.procs if k.startswith(("exchange-", "inspect", "dag", "epm"))]:
            out = self.procs[key].stdout
            assert out is not None
            if not out.readline().lower().startswith(b"ready"):
                raise XLabError(f"{key} did not start")

    def _nginx(self) -> None:
        self._restart_nginx("mbx1", mbx1_nginx(RUN / "nginx-mbx1", "open"))
        for node in ("m1", "m2"):
            self._restart_nginx(node, member_nginx(RUN / f"nginx-{node}", node))
        self._restart_nginx("vip", vip_nginx(RUN / "nginx-vip", offload=False))
        self._restart_nginx("exo", exo_nginx(RUN / "nginx-exo"))

    def _restart_nginx(self, node: str, conf: str) -> None:
        key = f"nginx-{node}"
        if key in self.procs:
            stop([self.procs.pop(key)])
        d = RUN / key
        d.mkdir(exist_ok=True)
        self.procs[key] = start_nginx(NS[node], d, conf)

    def _wait(self, timeout: float = 30) -> None:
        """Until every daemon listens (XLabError naming the missing ones after `timeout`)."""
        want: dict[str, set[int]] = {node: set(ports) for node, ports in SMTP_PORTS.items()}
        want["mbx1"] |= {80, 135, 443, 444, DAG_PORT, CLUSTER_PORT, BACKEND_PORT}
        want["m1"] = want["m2"] = {443, BACKEND_PORT}
        want["vip"] = {443}
        want["exo"].add(443)
        want["edge"].add(EDGE_LDAPS)
        want["r1"] = {INSPECT_PORT, 53}
        deadline = time.monotonic() + timeout
        samba = self.procs["samba"]
        wait_samba(samba, NS["dc"], SAMBA_RUN, deadline)
        while want:
            want = {n: p for n, p in want.items() if not p <= listening(NS[n])}
            for key, proc in self.procs.items():
                if proc.poll() is not None:
                    raise XLabError(f"{key} exited with {proc.returncode}")
            if want and time.monotonic() > deadline:
                raise XLabError(f"not listening after {timeout:g} s: {want}")
            time.sleep(0.05)

    # -- rule sets

    def apply_rules(self, name: str) -> None:
        """Switch to rule set `name` (one of RULESETS): r1's nftables in one transaction,
        and mbx1's or the VIP's nginx restarted when its configuration changes."""
        if name not in RULESETS:
            raise ValueError(f"unknown rule set {name!r}; one of {', '.join(RULESETS)}")
        _ns("r1", ["nft", "-f", "-"], input=ruleset(name))
        mode = name if name in ("mapi-refused", "rpc-verbs-refused") else "open"
        if mode != self.mbx1_mode:
            self._restart_nginx("mbx1", mbx1_nginx(RUN / "nginx-mbx1", mode))
            self.mbx1_mode = mode
        offload = name == "ssl-offload"
        if offload != self.vip_offload:
            self._restart_nginx("vip", vip_nginx(RUN / "nginx-vip", offload))
            self.vip_offload = offload
        self.rules = name

    # -- running things

    def run(self, node: str, argv: Sequence[str], timeout: float = 60,
            ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run `argv` in `node`'s namespace (this checkout importable)."""
        return run_in(NS[node], argv, timeout)

    def down(self, release: bool = True) -> None:
        stop(list(self.procs.values()))
        self.procs.clear()
        delete_namespaces(NS.values())
        for _ in range(50):
            listed = _run(["ip", "netns", "list"], check=False)
            if not any(ns in listed.split() for ns in NS.values()):
                break
            time.sleep(0.1)
        self.rules, self.mbx1_mode, self.vip_offload = "", "open", False
        if release:
            self.lock.release()


def _both(node: str, rule: str) -> list[str]:
    """`rule` for traffic to both of `node`'s addresses."""
    return [f"{'ip' if f == 4 else 'ip6'} daddr {ADDR[node][f]} {rule}" for f in (4, 6)]


def ruleset(name: str) -> str:
    """r1's whole nftables ruleset for rule set `name` (flushed and loaded at once)."""
    drops: list[str] = []
    nat: list[str] = []
    if name == "2525-dropped":
        # Between the mailbox addresses only: the client still reaches 2525.
        drops = [
            f"ip saddr {ADDR['mbx2'][4]} ip daddr {ADDR['mbx1'][4]} tcp dport 2525 drop",
            f"ip6 saddr {ADDR['mbx2'][6]} ip6 daddr {ADDR['mbx1'][6]} tcp dport 2525 drop",
        ]
    elif name == "3268-dropped":
        drops = _both("dc", "tcp dport 3268 drop")
    elif name == "50636-dropped":
        drops = _both("edge", f"tcp dport {EDGE_LDAPS} drop")
    elif name == "587-starttls-stripped":
        nat = _both("mbx1", f"tcp dport 587 redirect to :{INSPECT_PORT}")
    text = (
        "flush ruleset\ntable inet xpx {\n  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        + "".join(f"    {r}\n" for r in drops)
        + "  }\n}\n"
    )
    if nat:
        text += (
            "table inet xpx_nat {\n  chain prerouting {\n"
            "    type nat hook prerouting priority -100; policy accept;\n"
            + "".join(f"    {r}\n" for r in nat)
            + "  }\n}\n"
        )
    return text


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    lab = XLab()
    if args[:1] == ["up"] and len(args) <= 2:
        signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` tears it down as Ctrl-C does
        lab.up()
        if len(args) == 2:
            lab.apply_rules(args[1])
        print(f"xlab up ({lab.rules}; {lab.timings}); Ctrl-C tears it down", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
        lab.down()
        return 0
    if args == ["down"]:
        lab.down()
        return 0
    print(f"usage: python -m tests.lab.xlab up [{'|'.join(RULESETS)}] | down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
