"""DNS lookups at a chosen server: A/AAAA, SRV and MX, each failure named.

dnspython's asyncio resolver (`dns.asyncresolver`) rather than `getaddrinfo`: it can ask
one given server (`--dns-server`, the way to see split-brain DNS, a classic Exchange
fault: the internal and the external view of the same name), it reads SRV and MX records,
and it tells the failures apart, which `getaddrinfo` folds into one error:

- `nxdomain`: the name does not exist;
- `nodata`: the name exists without records of that type;
- `servfail`: the server failed to answer (a broken delegation, DNSSEC);
- `refused`: the server will not answer for that name (not its zone, no recursion);
- `timeout`: no answer within the time allowed.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from exprobe.errors import InputError

DEFAULT_PORT = 53
WORDS = {
    "nxdomain": "NXDOMAIN (no such name)",
    "nodata": "NODATA (no {rtype} record)",
    "servfail": "SERVFAIL (the server failed)",
    "refused": "REFUSED (the server will not answer)",
    "timeout": "timeout (no answer)",
}


def parse_server(text: str) -> tuple[str, int]:
    """`ADDR`, `ADDR:PORT`, `[V6]:PORT` or a bare IPv6 address; InputError otherwise."""
    host, port = text.strip(), DEFAULT_PORT
    if host.startswith("["):
        inside, _, rest = host[1:].partition("]")
        host = inside
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise InputError(f"--dns-server {text!r}: expected ADDR[:PORT] or [V6]:PORT")
            port = int(rest[1:])
    elif host.count(":") == 1:
        host, _, raw = host.partition(":")
        if not raw.isdigit():
            raise InputError(f"--dns-server {text!r}: port {raw!r} is not a number")
        port = int(raw)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise InputError(f"--dns-server {text!r}: not an IP address") from None
    if not 1 <= port <= 65535:
        raise InputError(f"--dns-server {text!r}: port {port} is not in 1-65535")
    return host, port


@dataclass(frozen=True, slots=True)
class Answer:
    """What one lookup gave: records, or the failure (`error`: a WORDS key)."""

    name: str
    rtype: str
    records: tuple[Any, ...] = ()
    error: str | None = None
    server: str = "system"

    def describe(self) -> str:
        """`A/AAAA two.lab: NODATA (no A or AAAA record)`."""
        if self.error is None:
            return f"{self.rtype} {self.name}: {len(self.records)} record(s)"
        text = WORDS.get(self.error, self.error).format(rtype=self.rtype.replace("/", " or "))
        return f"{self.rtype} {self.name}: {text}"


@dataclass(slots=True)
class Resolver:
    """Lookups at `server` (`ADDR[:PORT]`; None: the system's resolver, /etc/resolv.conf)."""

    server: str | None = None
    timeout: float = 5.0
    _impl: Any = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return self.server or "system"

    def _resolver(self) -> Any:
        if self._impl is None:
            if self.server is None:
                impl = dns.asyncresolver.Resolver()
            else:
                host, port = parse_server(self.server)
                impl = dns.asyncresolver.Resolver(configure=False)
                impl.nameservers = [host]
                impl.port = port
            impl.lifetime = self.timeout
            impl.timeout = self.timeout
            self._impl = impl
        return self._impl

    async def query(self, name: str, rtype: str, lifetime: float | None = None) -> Answer:
        """One lookup; never raises for a DNS failure (see `Answer.error`)."""
        try:
            answer = await self._resolver().resolve(
                name, rtype, lifetime=lifetime or self.timeout, search=False
            )
        except dns.resolver.NXDOMAIN:
            return Answer(name, rtype, error="nxdomain", server=self.label)
        except dns.resolver.NoAnswer:
            return Answer(name, rtype, error="nodata", server=self.label)
        except dns.resolver.NoNameservers as exc:
            kind = "refused" if "REFUSED" in str(exc) else "servfail"
            return Answer(name, rtype, error=kind, server=self.label)
        except dns.exception.Timeout:
            return Answer(name, rtype, error="timeout", server=self.label)
        except (dns.exception.DNSException, ValueError, OSError) as exc:
            return Answer(name, rtype, error=f"error: {type(exc).__name__}", server=self.label)
        return Answer(name, rtype, tuple(answer), server=self.label)

    async def addresses(
        self, name: str, family: int = socket.AF_UNSPEC, lifetime: float | None = None
    ) -> Answer:
        """A and AAAA (as the family allows), as one answer `A/AAAA` of address strings."""
        by_family: dict[int, list[str]] = {socket.AF_INET: ["A"], socket.AF_INET6: ["AAAA"]}
        kinds = by_family.get(family, ["A", "AAAA"])
        found: list[str] = []
        errors: list[str] = []
        for rtype in kinds:
            ans = await self.query(name, rtype, lifetime)
            if ans.error is None:
                found += [r.address for r in ans.records]
            else:
                errors.append(ans.error)
        label = "/".join(kinds)
        if found:
            return Answer(name, label, tuple(dict.fromkeys(found)), server=self.label)
        # Both failed: the name's own failure wins over "no record of this type".
        worst = next((e for e in ("nxdomain", "servfail", "refused", "timeout") if e in errors),
                     errors[0] if errors else "nodata")  # fmt: skip
        return Answer(name, label, error=worst, server=self.label)

    async def srv(self, name: str, lifetime: float | None = None) -> Answer:
        """SRV records, best first (lowest priority, then highest weight), as
        `(priority, weight, port, target)` tuples."""
        ans = await self.query(name, "SRV", lifetime)
        if ans.error is not None:
            return ans
        records = sorted(
            ((r.priority, r.weight, r.port, r.target.to_text(omit_final_dot=True))
             for r in ans.records),
            key=lambda t: (t[0], -t[1], t[3]),
        )  # fmt: skip
        return Answer(name, "SRV", tuple(records), server=self.label)

    async def mx(self, name: str, lifetime: float | None = None) -> Answer:
        """MX records by preference, as `(preference, exchange)` tuples."""
        ans = await self.query(name, "MX", lifetime)
        if ans.error is not None:
            return ans
        records = sorted(
            (r.preference, r.exchange.to_text(omit_final_dot=True)) for r in ans.records
        )
        return Answer(name, "MX", tuple(records), server=self.label)
