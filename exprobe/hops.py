"""Which hop breaks a path: the analysis of TCP traces.  Pure: no I/O, no clock.

Given the trace of a failing port (one `Reply` per TTL, `exprobe.net.trace`) and, when
the same host has a port that answers, the trace of that port (the reference path,
Firewalk's idea), `locate` names where the failing port's trace stops while the
reference goes on, and how:

- `drop`: silence after hop k.  Exact when hop k+1 is a router that answers "time
  exceeded" for the reference port but never for the failing one ("dropped by hop 2").
  When hop k+1 is the server, a drop in the forward chain of hop k looks the same as one
  at the server (a router checks the TTL before its forward filter): "dropped by hop 2 or
  by the server".  Without a reference the server's distance is unknown.
- `icmp`: an ICMP error whose sender the kernel named: exact.
- `reset`: a RST that came back at a TTL too small to reach the server was forged by the
  hop before that TTL (a firewall's `reject with tcp reset`); at the server's own
  distance it is the server's or its last router's.
- `intercepted`: a SYN-ACK at a TTL too small to reach the server: something in between
  answers for it (a transparent proxy, an SMTP inspection device).

It never claims more than the replies show: `exact` says whether the hop is proved, and
`evidence` says what was seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from exprobe.net.trace import Reply

TERMINAL = ("open", "reset", "icmp")


@dataclass(frozen=True, slots=True)
class Break:
    """Where and how a port's path breaks."""

    kind: str  # drop | icmp | reset | intercepted
    hop: int | None  # the hop (TTL distance) that does it, if known
    address: str | None
    exact: bool  # proved by the replies, or one of two places (see `evidence`)
    summary: str  # for verdicts: "dropped by hop 2 (10.1.0.1); 25 passes there"
    evidence: str
    icmp: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "hop": self.hop,
            "address": self.address,
            "exact": self.exact,
            "summary": self.summary,
            "evidence": self.evidence,
        }
        if self.icmp is not None:
            d["icmp"] = self.icmp
        return d


def break_where(brk: dict[str, Any]) -> str:
    """A break of a report (`Break.to_dict()`) in a few words: `drop at hop 2 (10.1.0.1)`."""
    hop, addr = brk.get("hop"), brk.get("address")
    where = f"hop {hop}" if hop is not None else "an unknown hop"
    if addr:
        where += f" ({addr})"
    return f"{brk.get('kind')} at {where}"


def distance(replies: Sequence[Reply]) -> int | None:
    """The smallest TTL at which the port answered (SYN-ACK): the answerer's distance."""
    return min((r.ttl for r in replies if r.kind == "open"), default=None)


def routers(*traces: Sequence[Reply] | None) -> dict[int, str]:
    """TTL -> the address that answered "time exceeded" at it, from any of the traces."""
    out: dict[int, str] = {}
    for replies in traces:
        for r in replies or ():
            if r.kind == "hop" and r.address and r.ttl not in out:
                out[r.ttl] = r.address
    return out


def _first(replies: Sequence[Reply]) -> Reply | None:
    return min((r for r in replies if r.kind in TERMINAL), key=lambda r: r.ttl, default=None)


def _hop(n: int, path: dict[int, str]) -> str:
    return f"hop {n} ({path[n]})" if n in path else f"hop {n}"


def locate(
    replies: Sequence[Reply],
    server: str,
    port: int,
    reference: Sequence[Reply] | None = None,
    ref_port: int | None = None,
) -> Break | None:
    """Where the trace of `port` on `server` breaks, given the reference trace of
    `ref_port` (a port of the same host that answers); None when it does not break."""
    dist = distance(reference) if reference else None
    path = routers(replies, reference)
    passes = f"; {ref_port} passes there" if ref_port is not None else ""
    end = _first(replies)
    last = max((r.ttl for r in replies if r.kind == "hop"), default=0)
    if end is None:
        return _drop(port, server, last, dist, path, ref_port, passes)
    if end.kind == "icmp":
        return _icmp(end, server, path, dist)
    if end.kind == "reset":
        return _reset(end.ttl, port, server, dist, path)
    # A SYN-ACK.
    if dist is not None and end.ttl < dist:
        return Break(
            "intercepted",
            end.ttl,
            path.get(end.ttl),
            True,
            f"answered at {_hop(end.ttl, path)}, before the server ({dist} hops away):"
            " a transparent proxy or inspection device sits there",
            f"SYN-ACK for {port} at TTL {end.ttl}; {ref_port} reaches the server only at TTL"
            f" {dist}, and {_hop(end.ttl, path)} answers 'time exceeded' for it",
        )
    return None


def _drop(
    port: int,
    server: str,
    last: int,
    dist: int | None,
    path: dict[int, str],
    ref_port: int | None,
    passes: str,
) -> Break:
    if dist is None:
        if last == 0:
            return Break(
                "drop", None, None, False,
                f"dropped; no hop answers for {port}",
                f"no reply at any TTL for {port} (no router answered 'time exceeded'; no port"
                " of this host answered to tell the server's distance)",
            )  # fmt: skip
        return Break(
            "drop", last, path.get(last), False,
            f"dropped after {_hop(last, path)}, the last hop that answers",
            f"{_hop(last, path)} answers 'time exceeded' for {port}, nothing beyond it; the"
            " server's distance is unknown (no port of this host answered)",
        )  # fmt: skip
    if dist == 1:
        return Break("drop", 1, server, True, f"dropped by the server {server} itself{passes}",
                     f"no router between: {ref_port} answers at TTL 1, {port} never")  # fmt: skip
    if last + 1 < dist:
        nxt = last + 1
        if last == 0:
            return Break(
                "drop", None, None, False,
                f"dropped before {_hop(1, path)} answers{passes}",
                f"{_hop(1, path)} answers 'time exceeded' for {ref_port} but nothing answers"
                f" for {port}, not even at TTL 1: this machine's own firewall or hop 1 before"
                " its TTL check",
            )  # fmt: skip
        return Break(
            "drop", last, path.get(last), True,
            f"dropped by {_hop(last, path)}, the last hop that forwards it{passes}",
            f"{_hop(last, path)} answers 'time exceeded' for {port}; {_hop(nxt, path)} answers"
            f" for {ref_port} but never for {port}; the server is {dist} hops away",
        )  # fmt: skip
    if last + 1 == dist:
        return Break(
            "drop", last, path.get(last), False,
            f"dropped by {_hop(last, path)} or by the server{passes}",
            f"{_hop(last, path)} answers 'time exceeded' for {port}, then silence; the server"
            f" is the next hop ({dist}), and a router checks the TTL before its forward"
            " filter, so a drop there looks the same as one at the server",
        )  # fmt: skip
    return Break(
        "drop", last, path.get(last), False,
        f"dropped after {_hop(last, path)}",
        f"the path to {port} is longer ({last} hops answer) than to {ref_port} ({dist}):"
        " routed by port (policy routing, a load balancer)",
    )  # fmt: skip


def _icmp(end: Reply, server: str, path: dict[int, str], dist: int | None) -> Break:
    assert end.icmp is not None
    said = end.icmp.describe()
    sender = end.icmp.offender
    at = next((ttl for ttl, addr in path.items() if addr == sender), None)
    if at is None and sender == server:
        at = dist
    where = _hop(at, path) if at is not None and sender != server else (sender or "?")
    if sender == server:
        where = f"the server {server}"
    return Break(
        "icmp", at, sender, sender is not None,
        f"{end.icmp.name} from {where}",
        f"{said} at TTL {end.ttl}",
        end.icmp.to_dict(),
    )  # fmt: skip


def _reset(ttl: int, port: int, server: str, dist: int | None, path: dict[int, str]) -> Break:
    if dist is not None and ttl < dist:
        forger = max(ttl - 1, 1)
        return Break(
            "reset", forger, path.get(forger), True,
            f"reset by {_hop(forger, path)}, not by the server",
            f"RST for {port} at TTL {ttl}, which cannot reach the server ({dist} hops away)",
        )  # fmt: skip
    if dist is not None and ttl == dist:
        if dist == 1:
            return Break("reset", 1, server, True, f"reset by the server {server}",
                         f"RST for {port} at TTL 1; no router between")  # fmt: skip
        before = dist - 1
        return Break(
            "reset", before, path.get(before), False,
            f"reset by the server or by {_hop(before, path)} in front of it",
            f"RST for {port} first at TTL {ttl}, the server's distance: the server's own or"
            f" a reject in the forward chain of {_hop(before, path)}",
        )  # fmt: skip
    return Break(
        "reset", ttl - 1 if ttl > 1 else None, path.get(ttl - 1), False,
        f"reset at TTL {ttl}",
        f"RST for {port} first at TTL {ttl}; the server's distance is unknown (no port of"
        " this host answered)" if dist is None else f"RST for {port} at TTL {ttl}, beyond"
        f" the server's distance ({dist})",
    )  # fmt: skip
