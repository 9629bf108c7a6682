"""A TCP trace to one port, with ordinary sockets: which hop answers at each TTL.

One non-blocking connect per TTL, 1..max_hops, all in flight at once (a 30-hop trace
costs about one timeout, not thirty).  Each socket sets its TTL (IPv6 hop limit) and
asks for its ICMP errors (`IP_RECVERR`, see `exprobe.net.connect`), so a router that
answers "time exceeded" is named by the kernel, with no raw socket and no privilege.
Each TTL ends as one `Reply`:

- `hop`: time exceeded, from `address`: a router at that distance forwarded it so far;
- `open`: a SYN-ACK came back (whoever answered is at most that far);
- `reset`: a RST came back;
- `icmp`: another ICMP error (unreachable, prohibited) from `address`;
- `silent`: nothing before the timeout;
- `error`: the local stack refused (no route, no address).

The analysis of what the replies mean is `exprobe.hops` (pure).
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from exprobe.net.connect import (
    _IN_PROGRESS,
    HOPS_SUPPORTED,
    read_icmp_error,
    reset_close,
    start_connect,
    wait_connected,
)
from exprobe.wire.icmperr import IcmpError

MAX_HOPS = 64
Gate = Callable[[], Awaitable[None]]  # awaited before each connect (the run's rate limit)


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back for one TTL."""

    ttl: int
    kind: str  # hop | open | reset | icmp | silent | error
    address: str | None = None
    rtt_ms: float | None = None
    icmp: IcmpError | None = None
    name: str | None = None  # reverse DNS, with --resolve-hops
    detail: str | None = None  # kind "error": the errno name

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "ttl": self.ttl,
            "reply": self.kind,
            "address": self.address,
            "rtt_ms": self.rtt_ms,
        }
        if self.icmp is not None and not self.icmp.time_exceeded:
            d["icmp"] = self.icmp.to_dict()
        if self.name is not None:
            d["name"] = self.name
        if self.detail is not None:
            d["detail"] = self.detail
        return d


async def probe_ttl(
    address: str, port: int, ttl: int, *, wait: float, source: str | None = None
) -> Reply:
    """One connect with this TTL; what came back (never raises but CancelledError)."""
    t0 = time.perf_counter()
    try:
        sock, err = start_connect(address, port, source, bare=True, ttl=ttl)
    except OSError as exc:
        return Reply(ttl, "error", detail=errno.errorcode.get(exc.errno or 0, str(exc.errno)))
    try:
        if err in _IN_PROGRESS:
            try:
                err = await wait_connected(sock, wait)
            except TimeoutError:
                return Reply(ttl, "silent")
        rtt = round((time.perf_counter() - t0) * 1000, 3)
        if err == 0:
            return Reply(ttl, "open", address, rtt)
        icmp = read_icmp_error(sock)
        if icmp is not None:
            kind = "hop" if icmp.time_exceeded else "icmp"
            return Reply(ttl, kind, icmp.offender, rtt, icmp)
        if err == errno.ECONNREFUSED:
            return Reply(ttl, "reset", address, rtt)
        return Reply(ttl, "error", None, rtt, detail=errno.errorcode.get(err, str(err)))
    finally:
        reset_close(sock)


async def trace(
    address: str,
    port: int,
    *,
    max_hops: int = 30,
    wait: float = 3.0,
    source: str | None = None,
    gate: Gate | None = None,
) -> list[Reply]:
    """The replies for TTL 1..max_hops, by TTL, each waited for at most `wait` seconds;
    every TTL in flight at once (each start passes `gate` first, the run's rate limit)."""
    if not HOPS_SUPPORTED:
        raise OSError(errno.ENOTSUP, "hop location needs Linux (IP_RECVERR)")
    max_hops = max(1, min(max_hops, MAX_HOPS))

    async def one(ttl: int) -> Reply:
        if gate is not None:
            await gate()
        return await probe_ttl(address, port, ttl, wait=wait, source=source)

    return list(await asyncio.gather(*(one(ttl) for ttl in range(1, max_hops + 1))))
