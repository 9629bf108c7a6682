"""Targets: parse what the user typed or listed, expand CIDR blocks lazily, resolve names.

Forms: a host name, an IPv4 or IPv6 address, `host:port`, `[v6]:port`, a CIDR block.
Files hold one target per line, `#` comments, and optional `key=value` labels.
Every bad form is an `InputError` naming the file and line where there is one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from exprobe.errors import InputError
from exprobe.net.dns import Resolver

MAX_FILE_BYTES = 16 << 20
MAX_LINE = 4096
CONSENT_ADDRESSES = 65_536
_HOST_RE = re.compile(
    r"^(?=.{1,253}$)(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?$"
)
_LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
# The form of nearly every line of a big targets file: `a.b.c.d` or `a.b.c.d:port`.
_V4_RE = re.compile(r"([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})(?::([0-9]{1,5}))?")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Target:
    """One target as the user gave it."""

    text: str
    host: str | None = None  # a name to resolve
    address: IPAddress | None = None
    network: IPNetwork | None = None
    port: int | None = None
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def is_name(self) -> bool:
        return self.host is not None

    def size(self) -> int:
        """How many addresses this target can stand for (a name counts as one)."""
        if self.network is not None:
            return _host_count(self.network)
        return 1

    def addresses(self) -> Iterator[str]:
        """The literal addresses (not for names), lazily."""
        if self.address is not None:
            yield str(self.address)
        elif self.network is not None:
            if self.network.num_addresses == 1:
                yield str(self.network.network_address)
            else:
                for a in self.network.hosts():
                    yield str(a)


def _host_count(net: IPNetwork) -> int:
    n = net.num_addresses
    if net.version == 4 and net.prefixlen < 31:
        return n - 2
    if net.version == 6 and net.prefixlen < 127:
        return n - 1  # hosts() skips the subnet-router anycast address
    return n


def _port(text: str, where: str) -> int:
    if not text.isdigit():
        raise InputError(f"{where}: port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise InputError(f"{where}: port {port} is outside 1-65535")
    return port


def parse_target(
    text: str, *, where: str = "command line", labels: tuple[tuple[str, str], ...] = ()
) -> Target:
    """One target from its text form."""
    raw = text.strip()
    fast = _V4_RE.fullmatch(raw)
    if fast is not None:
        try:
            # inet_pton is strict (no leading zeros, no short forms), like ipaddress.
            packed = socket.inet_pton(socket.AF_INET, fast.group(1))
        except OSError:
            pass  # the general path below names the problem
        else:
            port_text = fast.group(2)
            return Target(
                raw,
                address=ipaddress.IPv4Address(int.from_bytes(packed, "big")),
                port=_port(port_text, where) if port_text is not None else None,
                labels=labels,
            )
    shown = raw if len(raw) <= 80 else raw[:77] + "..."
    if not raw:
        raise InputError(f"{where}: empty target")
    if any(ord(c) < 33 or ord(c) == 127 for c in raw):
        raise InputError(f"{where}: target {shown!r} contains spaces or control characters")
    port: int | None = None
    host = raw
    if raw.startswith("["):
        m = re.fullmatch(r"\[([^\]]+)\](?::(.*))?", raw)
        if not m:
            raise InputError(f"{where}: malformed bracketed address {shown!r}")
        host = m.group(1)
        if m.group(2) is not None:
            port = _port(m.group(2), where)
        try:
            addr6 = ipaddress.IPv6Address(host)
        except ValueError:
            raise InputError(f"{where}: {host!r} is not an IPv6 address") from None
        return Target(raw, address=addr6, port=port, labels=labels)
    if raw.count(":") == 1:
        host, port_text = raw.split(":")
        port = _port(port_text, where)
    if "/" in host:
        try:
            net = ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise InputError(f"{where}: {shown!r} is not a valid CIDR block") from None
        return Target(raw, network=net, port=port, labels=labels)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    if addr is not None:
        return Target(raw, address=addr, port=port, labels=labels)
    if ":" in host:
        raise InputError(
            f"{where}: {shown!r} is not a valid address (IPv6 with a port needs [v6]:port)"
        )
    if re.fullmatch(r"[0-9.]+", host):
        raise InputError(f"{where}: {shown!r} is not a valid IPv4 address")
    if not _HOST_RE.match(host):
        raise InputError(f"{where}: {shown!r} is not a valid host name or address")
    return Target(raw, host=host.rstrip(".").lower(), port=port, labels=labels)


def parse_file(path: str) -> list[Target]:
    """Targets from a file: one per line, `#` comments, optional `key=value` labels."""
    p = Path(path)
    try:
        if p.is_dir():
            raise InputError(f"targets file {path}: is a directory")
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError(f"targets file {path}: larger than {MAX_FILE_BYTES >> 20} MiB")
        data = p.read_bytes() if path != "-" else b""
    except OSError as exc:
        raise InputError(f"targets file {path}: cannot read ({exc.strerror or exc})") from None
    if b"\x00" in data:
        raise InputError(f"targets file {path}: binary content (NUL byte)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"targets file {path}:{line}: not UTF-8 text") from None
    targets = parse_lines(text.splitlines(), source=path)
    if not targets:
        raise InputError(f"targets file {path}: no targets in it")
    return targets


def parse_lines(lines: list[str], *, source: str) -> list[Target]:
    out: list[Target] = []
    for n, line in enumerate(lines, 1):
        where = f"{source}:{n}"
        if len(line) > MAX_LINE:
            raise InputError(f"{where}: line longer than {MAX_LINE} characters")
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        first, *rest = body.split()
        labels: list[tuple[str, str]] = []
        for item in rest:
            key, sep, value = item.partition("=")
            if not sep or not _LABEL_RE.match(key) or not value:
                raise InputError(f"{where}: {item!r} is not a key=value label")
            labels.append((key, value))
        out.append(parse_target(first, where=where, labels=tuple(labels)))
    return out


def is_public_wide(net: IPNetwork) -> bool:
    """A public range wider than a /24 (IPv4) or /120 (IPv6): needs explicit consent."""
    wide = net.prefixlen < (24 if net.version == 4 else 120)
    return wide and net.is_global


def consent_problem(targets: list[Target]) -> str | None:
    """Why this target list needs `--yes`, or None."""
    total = sum(t.size() for t in targets)
    if total > CONSENT_ADDRESSES:
        return f"{total} addresses is more than {CONSENT_ADDRESSES}"
    for t in targets:
        if t.network is not None and is_public_wide(t.network):
            return f"{t.text} is a public range wider than a /24"
    return None


@dataclass(slots=True)
class Resolved:
    """A target with the addresses it stands for (or the reason it stands for none).

    A CIDR block resolved with `expand=False` keeps its addresses in `pending`, a
    generator, so a /16 swept to a stream never sits in memory as 65,536 strings.
    """

    target: Target
    addresses: list[str] = field(default_factory=list)
    error: str | None = None
    pending: Iterator[str] | None = None

    def iter_addresses(self) -> Iterator[str]:
        yield from self.addresses
        if self.pending is not None:
            yield from self.pending

    def count(self) -> int:
        """How many addresses (an upper bound while some are pending)."""
        return len(self.addresses) + (self.target.size() if self.pending is not None else 0)


_FAMILY_VERSION: dict[int, int] = {socket.AF_INET: 4, socket.AF_INET6: 6}


def resolve_literal(
    target: Target, family: int = socket.AF_UNSPEC, *, expand: bool = True
) -> Resolved:
    """The addresses of an address or CIDR target (not a name), without the event loop."""
    literal = target.address if target.address is not None else target.network
    want = _FAMILY_VERSION.get(family)
    if literal is None or (want is not None and literal.version != want):
        return Resolved(target, [])
    if target.address is not None:
        if literal.version == 4:  # the text is canonical (the parser refuses other forms)
            return Resolved(target, [target.text.partition(":")[0]])
        return Resolved(target, [str(target.address)])
    if expand:
        return Resolved(target, list(target.addresses()))
    return Resolved(target, [], pending=target.addresses())


async def resolve(
    target: Target, family: int = socket.AF_UNSPEC, resolver: Resolver | None = None
) -> Resolved:
    """Every A and AAAA address of a name (once per run), or the literal addresses.
    `resolver` (`--dns-server`) asks that DNS server instead of `getaddrinfo`."""
    if not target.is_name:
        return resolve_literal(target, family)
    assert target.host is not None
    if resolver is not None:
        ans = await resolver.addresses(target.host, family)
        if ans.error is not None:
            return Resolved(target, [], f"dns-error: {ans.describe()} (asked {resolver.label})")
        return Resolved(target, [str(a) for a in ans.records])
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, None, family=family, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return Resolved(target, [], f"dns-error: {exc.strerror or exc}")
    except UnicodeError:
        return Resolved(target, [], "dns-error: name cannot be encoded")
    seen: dict[str, None] = {}
    for fam, *_rest, sockaddr in infos:
        if fam in (socket.AF_INET, socket.AF_INET6):
            seen.setdefault(str(sockaddr[0]), None)
    if not seen:
        return Resolved(target, [], "dns-error: no A or AAAA record")
    return Resolved(target, list(seen))
