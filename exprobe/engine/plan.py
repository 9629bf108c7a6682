"""Cross targets with checks: the deduplicated, lazily generated list of work."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from exprobe.probes import get as get_probe
from exprobe.probes.base import CheckSpec, Params
from exprobe.targets import Resolved


@dataclass(frozen=True, slots=True)
class CheckDef:
    """A check before it meets an address: probe, parameters, port (None: the default)."""

    id: str
    probe: str
    params: Params
    port: int | None = None
    role: str | None = None  # run only against targets bound to this role (None: primary)

    def resolved_port(self, offset: int = 0) -> int:
        port = get_probe(self.probe).port_for(self.params, self.port)
        return port + offset if offset else port


def adhoc_id(probe: str, port: int, tls: str) -> str:
    """The id of a check given on the command line: `tcp:25`, `smtp:25:starttls`."""
    return f"{probe}:{port}" if tls == "none" else f"{probe}:{port}:{tls}"


def role_of(labels: tuple[tuple[str, str], ...], primary: str) -> str:
    """The role a target is bound to: its `role=` label, else the primary role."""
    for key, value in labels:
        if key == "role":
            return value
    return primary


def checks_for(target_port: int | None, defs: list[CheckDef], offset: int) -> list[CheckDef]:
    """A target that names its own port (`host:2525`) gets every probe on that port."""
    if target_port is None:
        return defs
    out: dict[str, CheckDef] = {}
    for d in defs or [CheckDef("", "tcp", get_probe("tcp").params_type())]:
        cid = adhoc_id(d.probe, target_port, d.params.tls)
        out.setdefault(cid, CheckDef(cid, d.probe, d.params, target_port - offset))
    return list(out.values())


def plan(
    targets: Iterable[Resolved],
    defs: list[CheckDef],
    *,
    port_offset: int = 0,
    primary_role: str | None = None,
) -> Iterator[CheckSpec]:
    """One `CheckSpec` per (address, check), each address probed once however often listed.

    With `primary_role` (a profile that binds checks to roles), a target gets only the
    checks of its role (`role_of`): the domain controller's checks go to the targets
    labelled `role=dc`, the checks without a role to the others.

    Unresolvable names yield one check per definition with no address; the runner turns
    those into `dns-error` results without touching the network.  A probe that opens no
    connection (autodiscover) gets one check per target, with no address.  Lazy: a sweep of
    100,000 targets holds one check at a time, plus one entry per address seen.
    """
    # Per target port: the definitions with their ports resolved, computed once, split
    # into those that connect and the lookup probes (autodiscover), which run once per
    # target whether or not the target's own name resolved.
    by_port: dict[
        tuple[int | None, str], tuple[list[tuple[CheckDef, int]], list[tuple[CheckDef, int]]]
    ] = {}
    # Per address: the definitions list already planned for it (the usual case: one
    # shared list), or the set of check ids when an address came with different lists.
    seen: dict[str, list[tuple[CheckDef, int]] | set[str]] = {}
    for res in targets:
        t = res.target
        role = role_of(t.labels, primary_role) if primary_role is not None else ""
        split = by_port.get((t.port, role))
        if split is None:
            mine = defs
            if primary_role is not None:
                mine = [d for d in defs if (d.role or primary_role) == role]
            both = [
                (d, d.resolved_port(port_offset)) for d in checks_for(t.port, mine, port_offset)
            ]
            split = by_port[(t.port, role)] = (
                [x for x in both if get_probe(x[0].probe).connects],
                [x for x in both if not get_probe(x[0].probe).connects],
            )
        host_defs, lookups = split
        name = t.host
        for d, port in lookups:
            yield CheckSpec(
                d.id, d.probe, None, port, d.params, t.text, server_name=name, labels=t.labels
            )
        if res.error:
            for d, port in host_defs:
                yield CheckSpec(
                    d.id, d.probe, None, port, d.params, t.text, server_name=name, labels=t.labels
                )
            continue
        for address in res.iter_addresses():
            prev = seen.get(address)
            if prev is None:
                seen[address] = todo = host_defs
            elif prev is host_defs:
                continue
            else:
                ids = prev if isinstance(prev, set) else {d.id for d, _ in prev}
                todo = [x for x in host_defs if x[0].id not in ids]
                ids.update(d.id for d, _ in todo)
                seen[address] = ids
            for d, port in todo:
                yield CheckSpec(
                    d.id,
                    d.probe,
                    address,
                    port,
                    d.params,
                    t.text,
                    server_name=name,
                    labels=t.labels,
                )
