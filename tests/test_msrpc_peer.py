"""msrpc-epm and msrpc-bind against the scripted endpoint mapper (tests/peers/epm_peer.py).

The peer runs in the test's event loop on loopback ports; the checks run through the real
engine (`Session`: runner + scheduler), so derived checks are scheduled, run and linked
back to their parent exactly as in a run.  Every unhappy path asserts its exact status
and failed step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from exprobe.engine.plan import CheckDef
from exprobe.engine.runner import RunOptions, run_check
from exprobe.engine.scheduler import Limits
from exprobe.engine.session import Session
from exprobe.probes import load_all
from exprobe.probes.base import CheckSpec
from exprobe.probes.msrpc import BindParams, EpmParams
from exprobe.result import CheckResult
from exprobe.status import PortState, Status
from exprobe.targets import parse_target
from exprobe.wire import dcerpc as rpc
from tests.helpers import exprobe, validate_report
from tests.peers.epm_peer import LSARPC, SAMR, WINREG, EpmPeer, PeerConfig

NSPI = "f5cc5a18-4264-101a-8c59-08002b2f8426"
EMSMDB = "a4f1db00-ca47-1067-b31f-00dd010662da"
MTA = "9e8ee830-4459-11ce-979b-00aa005ffebe"
SA = "469d6ec0-0d87-11ce-b13f-00aa003bac6c"
EX55_ENTRIES = 11  # 6 Exchange registrations + 5 others (tcp, np, lrpc, http, 7-floor)


async def run_epm(
    port: int,
    host: str = "127.0.0.1",
    *,
    deadline: float = 10.0,
    **params: Any,
) -> tuple[CheckResult, dict[str, CheckResult]]:
    """Run msrpc-epm through a Session; return its result and the derived ones by id."""
    load_all()
    definition = CheckDef(f"msrpc-epm:{port}", "msrpc-epm", EpmParams(**params), port)
    session = Session(
        [parse_target(host)],
        [definition],
        RunOptions(timeout=deadline, connect_timeout=min(2.0, deadline)),
        Limits(concurrency=16, per_host=8),
    )
    report = await session.run()
    results = report.all_results()
    (epm,) = [r for r in results if r.probe == "msrpc-epm"]
    derived = {r.id: r for r in results if r.parent is not None}
    assert all(r.parent == epm.id for r in derived.values())
    return epm, derived


def components(r: CheckResult) -> dict[str, Any]:
    return r.facts["components"]  # type: ignore[no-any-return]


# -- the happy path ----------------------------------------------------------------------------


async def test_exchange55_components_ports_and_bind_follow_through() -> None:
    async with EpmPeer(PeerConfig()) as peer:
        r, derived = await run_epm(peer.port, components=("ds", "is", "mta", "sa"))
    assert (r.status, r.failed_step, r.port_state) == (Status.SUCCESS, None, PortState.OPEN)
    comps = components(r)
    for name in ("ds", "is", "mta", "sa"):
        assert comps[name]["registered"] is True
        assert comps[name]["ports"] == [peer.ports[name]]
        assert comps[name]["protocols"] == ["ncacn_ip_tcp"]
    assert {(i["uuid"], i["version"]) for i in comps["is"]["interfaces"]} == {
        (EMSMDB, "0.81"),
        ("a4f1db00-ca47-1067-b31e-00dd010662da", "1.0"),
    }
    assert {i["uuid"] for i in comps["ds"]["interfaces"]} == {
        NSPI,
        "f5cc5a7c-4264-101a-8c59-08002b2f8426",
    }
    assert all(i["via"] == ["lookup", "map"] for c in comps.values() for i in c["interfaces"])
    assert r.facts["lookup"] == {
        "rounds": 1,
        "entries": EX55_ENTRIES,
        "end": "null-handle",
        "complete": True,
    }
    assert r.facts["endpoint_count"] == EX55_ENTRIES
    registered = {(m["uuid"], m["registered"]) for m in r.facts["map"]}
    assert (EMSMDB, True) in registered
    assert ("5261574a-4572-206e-b268-6b199213b4e4", False) in registered
    # Every raw endpoint is kept, the non-Exchange ones too.
    protos = sorted(e["protocol"] for e in r.facts["endpoints"])
    assert protos.count("ncacn_ip_tcp") == 8
    assert {"ncacn_np", "ncalrpc", "ncacn_http"} <= set(protos)
    pipe = next(e for e in r.facts["endpoints"] if e["protocol"] == "ncacn_np")
    assert (pipe["pipe"], pipe["host"], pipe["port"]) == ("\\PIPE\\epmapper", "\\\\EXCH55", None)
    seven = next(e for e in r.facts["endpoints"] if e["annotation"] == "Spooler (7-floor tower)")
    assert seven["port"] == 49170
    # One derived anonymous bind per (component, port), linked to the EPM check.
    assert set(derived) == {f"{r.id}/{c}:{peer.ports[c]}" for c in ("ds", "is", "mta", "sa")}
    for name, iface in (("is", EMSMDB), ("ds", NSPI), ("mta", MTA), ("sa", SA)):
        d = derived[f"{r.id}/{name}:{peer.ports[name]}"]
        assert (d.probe, d.status, d.address, d.port) == (
            "msrpc-bind",
            Status.SUCCESS,
            "127.0.0.1",
            peer.ports[name],
        )
        assert d.facts["component"] == name
        assert d.facts["interface"] == iface
        assert d.facts["bind"]["accepted"] is True
    assert peer.listener_binds == {"ds": 1, "is": 1, "mta": 1, "sa": 1}


async def test_summary_and_pinning_with_fixed_ports() -> None:
    ports = {"ds": 1600, "is": 1601, "mta": 4000, "sa": 50000}
    async with EpmPeer(PeerConfig(ports=ports, listeners=())) as peer:
        r, derived = await run_epm(
            peer.port,
            components=("is", "ds", "mta", "sa"),
            expect_is=1601,
            expect_ds=1700,
            follow="none",
        )
    assert r.status is Status.SUCCESS
    assert r.message == (
        f"{peer.port} open ({EX55_ENTRIES} endpoints listed); IS registered on 127.0.0.1:1601 "
        "(pinned as expected); DS on 1600 (expected 1700); MTA on 4000 (dynamic); "
        "SA on 50000 (dynamic)"
    )
    comps = components(r)
    assert comps["is"]["pinning"] == "pinned as expected"
    assert comps["ds"]["pinning"] == "registered on 1600, expected 1700"
    assert comps["mta"]["pinning"] == "dynamic (in the ephemeral range)"
    assert (comps["is"]["expected"], comps["ds"]["expected"]) == (1601, 1700)
    assert r.warnings == ("DS: registered on 1600, expected 1700",)
    assert derived == {}


async def test_static_port_without_expectation() -> None:
    async with EpmPeer(PeerConfig(ports={"is": 6001}, listeners=())) as peer:
        r, _ = await run_epm(peer.port, components=("is",), follow="none")
    assert components(r)["is"]["pinning"] == (
        "static (not in the ephemeral range, no expectation given)"
    )
    assert r.message.endswith("IS registered on 127.0.0.1:6001 (static)")


async def test_listeners_for_some_components_only() -> None:
    """Registered ≠ reachable: the derived checks tell them apart."""
    async with EpmPeer(PeerConfig(listeners=("is",))) as peer:
        r, derived = await run_epm(peer.port)
        r_tcp, derived_tcp = await run_epm(peer.port, follow="tcp")
    assert r.status is Status.SUCCESS
    assert components(r)["mta"]["registered"] is True
    is_, ds, mta = (derived[f"{r.id}/{c}:{peer.ports[c]}"] for c in ("is", "ds", "mta"))
    assert (is_.status, is_.port_state) == (Status.SUCCESS, PortState.OPEN)
    for d in (ds, mta):
        assert (d.status, d.port_state, d.failed_step) == (
            Status.CONNECTION_REFUSED,
            PortState.CLOSED,
            "connect",
        )
    # The component and interface are in the facts even though no probe function ran.
    assert (ds.facts["component"], ds.facts["interface"]) == ("ds", NSPI)
    assert set(derived_tcp) == set(derived)
    for cid, d in derived_tcp.items():
        assert d.probe == "tcp"
        assert d.status is derived[cid].status
        assert d.facts["component"] == derived[cid].facts["component"]
    assert r_tcp.status is Status.SUCCESS


async def test_bind_rejected_by_a_listener_is_an_application_error() -> None:
    """A port where an RPC server answers, but not for the interface asked."""
    async with EpmPeer(PeerConfig()) as peer:
        load_all()
        spec = CheckSpec(
            "b",
            "msrpc-bind",
            "127.0.0.1",
            peer.ports["mta"],
            BindParams(interface=EMSMDB, version="0.81"),
            "127.0.0.1",
            meta=(("component", "is"),),
        )
        out = await run_check(spec, RunOptions(timeout=5))
    r = out.result
    assert (r.status, r.failed_step) == (Status.APPLICATION_ERROR, "rpc-bind")
    assert "provider rejection, abstract syntax not supported" in r.message
    assert "an RPC server answers on this port, but not for this interface" in r.message
    assert (r.facts["component"], r.facts["interface"]) == ("is", EMSMDB)


# -- paging, fragments, segmentation, end of enumeration ----------------------------------------


@pytest.mark.parametrize(
    ("end", "last"), [("windows", "null-handle"), ("samba", "no-more-entries")]
)
async def test_paging_honours_max_entries(end: str, last: str) -> None:
    async with EpmPeer(PeerConfig(end=end)) as peer:
        r, _ = await run_epm(peer.port, max_entries=3, follow="none")
    assert r.status is Status.SUCCESS
    assert r.facts["lookup"] == {
        "rounds": 4,
        "entries": EX55_ENTRIES,
        "end": last,
        "complete": True,
    }
    assert peer.lookup_rounds == 4
    assert components(r)["is"]["ports"] == [peer.ports["is"]]


async def test_samba_end_in_one_reply_keeps_the_entries() -> None:
    """Samba: the whole list + 0x16C9A0D6 + NULL handle (impacket's hept_lookup drops it)."""
    async with EpmPeer(PeerConfig(end="samba")) as peer:
        r, _ = await run_epm(peer.port, map=False, follow="none")
    assert r.facts["lookup"]["end"] == "no-more-entries"
    assert r.facts["endpoint_count"] == EX55_ENTRIES
    assert components(r)["ds"]["ports"] == [peer.ports["ds"]]
    assert components(r)["ds"]["interfaces"][0]["via"] == ["lookup"]
    assert "map" not in r.facts


async def test_multi_fragment_replies_with_hundreds_of_entries() -> None:
    async with EpmPeer(PeerConfig(synthetic=300, max_frag=1024)) as peer:
        r, _ = await run_epm(peer.port, follow="none")
    assert r.status is Status.SUCCESS
    assert r.facts["lookup"]["entries"] == EX55_ENTRIES + 300
    assert r.facts["lookup"]["complete"] is True
    synthetic = [e for e in r.facts["endpoints"] if e["annotation"].startswith("synthetic ")]
    assert len(synthetic) == 300
    # ~38 KB of stub in ~40 fragments of at most 1024 bytes.
    assert any("fragment(s)" in line and "(" in line for line in r.transcript)
    frag_line = next(line for line in r.transcript if "fragment(s)" in line)
    assert int(frag_line.split("response: ")[1].split(" ")[0]) > 30


async def test_fragments_larger_than_offered_but_announced_in_the_bind_ack() -> None:
    """A server that announces max_xmit 8000 in its bind_ack and then sends 8000-byte
    fragments (above our 4280) is taken at its word (frag-len-65535 covers the rest)."""
    cfg = PeerConfig(synthetic=100, max_frag=8000, honour_max_recv=False)
    async with EpmPeer(cfg) as peer:
        r, _ = await run_epm(peer.port, follow="none", map=False)
    assert r.status is Status.SUCCESS
    assert r.facts["epm"]["max_xmit"] == 8000
    assert r.facts["lookup"]["entries"] == EX55_ENTRIES + 100


async def test_trickled_bind_ack_and_replies() -> None:
    """Every PDU written a few bytes at a time (impacket's bind() crashes on this)."""
    async with EpmPeer(PeerConfig(trickle=7, others=False)) as peer:
        r, derived = await run_epm(peer.port, components=("is",), deadline=20)
    assert r.status is Status.SUCCESS
    assert components(r)["is"]["ports"] == [peer.ports["is"]]
    assert [d.status for d in derived.values()] == [Status.SUCCESS]


async def test_endless_enumeration_stops_at_max_rounds() -> None:
    async with EpmPeer(PeerConfig(behaviour="endless")) as peer:
        r, derived = await run_epm(peer.port, max_entries=50, max_rounds=5)
    assert r.status is Status.SUCCESS
    assert r.facts["lookup"] == {
        "rounds": 5,
        "entries": 250,
        "end": "max-rounds",
        "complete": False,
    }
    assert peer.lookup_rounds == 5
    assert any("max_rounds" in w for w in r.warnings)
    assert r.message.startswith(f"{peer.port} open (250+ endpoints listed); IS registered on")
    # ept_map still answered over the same association.
    assert components(r)["is"]["ports"] == [peer.ports["is"]]
    assert len(derived) == 3


async def test_endless_enumeration_stops_at_the_byte_budget() -> None:
    async with EpmPeer(PeerConfig(behaviour="endless")) as peer:
        r, _ = await run_epm(peer.port, follow="none", deadline=60)
    assert r.status is Status.SUCCESS
    lookup = r.facts["lookup"]
    assert (lookup["end"], lookup["complete"]) == ("byte-budget", False)
    assert 1 < lookup["rounds"] < 64
    assert peer.lookup_rounds == lookup["rounds"]
    assert components(r)["ds"]["registered"] is True


# -- what the mapper says --------------------------------------------------------------------------


async def test_nothing_registered() -> None:
    async with EpmPeer(PeerConfig(mode="empty")) as peer:
        r, derived = await run_epm(peer.port)
    assert r.status is Status.SUCCESS
    assert r.message == (
        f"{peer.port} open (5 endpoints listed); IS not registered; DS not registered; "
        "MTA not registered"
    )
    assert all(not c["registered"] for c in components(r).values())
    assert all(m["status"] == "0x16c9a0d6 ept_s_not_registered" for m in r.facts["map"])
    assert derived == {}


async def test_map_only_and_lookup_only() -> None:
    async with EpmPeer(PeerConfig()) as peer:
        mapped, _ = await run_epm(peer.port, lookup=False, follow="none")
        looked, _ = await run_epm(peer.port, map=False, follow="none")
    assert "lookup" not in mapped.facts
    assert mapped.facts["endpoint_count"] == 0
    assert components(mapped)["mta"]["ports"] == [peer.ports["mta"]]
    assert mapped.message.startswith(f"{peer.port} open; IS registered on 127.0.0.1:")
    assert components(looked)["mta"]["ports"] == [peer.ports["mta"]]
    assert peer.requests.count(rpc.OPNUM_EPT_LOOKUP) == 1


async def test_lookup_fault_falls_back_to_ept_map() -> None:
    async with EpmPeer(PeerConfig(behaviour="lookup-fault")) as peer:
        r, derived = await run_epm(peer.port)
    assert r.status is Status.SUCCESS
    assert r.facts["lookup"]["end"] == "fault"
    assert r.warnings == (
        "ept_lookup round 1: fault 0x1c010002 nca_s_op_rng_error; trying ept_map alone",
    )
    assert r.message.startswith(f"{peer.port} open (ept_lookup refused); IS registered on")
    assert len(derived) == 3


async def test_advertised_host_is_recorded_but_the_queried_address_is_probed() -> None:
    async with EpmPeer(PeerConfig(host_floor="192.0.2.55")) as peer:
        r, derived = await run_epm(peer.port)
    assert components(r)["is"]["advertised_hosts"] == ["192.0.2.55"]
    assert {d.address for d in derived.values()} == {"127.0.0.1"}
    assert all(d.status is Status.SUCCESS for d in derived.values())


async def test_zero_host_floor_means_the_queried_address() -> None:
    async with EpmPeer(PeerConfig(host_floor="0.0.0.0")) as peer:
        r, derived = await run_epm(peer.port, components=("ds",))
    assert "advertised_hosts" not in components(r)["ds"]
    assert f"DS registered on 127.0.0.1:{peer.ports['ds']} (" in r.message
    assert [d.status for d in derived.values()] == [Status.SUCCESS]


async def test_ipv6_uses_the_queried_address() -> None:
    async with EpmPeer(PeerConfig(), hosts="::1") as peer:
        r, derived = await run_epm(peer.port, host="::1")
    assert r.status is Status.SUCCESS
    assert peer.host_floor == "0.0.0.0"
    assert f"IS registered on [::1]:{peer.ports['is']}" in r.message
    assert {d.address for d in derived.values()} == {"::1"}
    assert all(d.status is Status.SUCCESS for d in derived.values())


async def test_extra_interfaces_become_component_other() -> None:
    async with EpmPeer(PeerConfig(mode="samba-like")) as peer:
        r, derived = await run_epm(
            peer.port,
            components=("is",),
            interfaces=(f"{LSARPC}:0.0", f"{SAMR}:1.0", f"{WINREG}:1.0"),
            follow="tcp",
        )
    other = components(r)["other"]
    assert other["ports"] == [49152, 49153]
    assert {(i["uuid"], i["port"]) for i in other["interfaces"]} == {
        (LSARPC, 49152),
        (SAMR, 49152),
        (WINREG, 49153),
    }
    assert components(r)["is"]["registered"] is False
    assert set(derived) == {f"{r.id}/other:49152", f"{r.id}/other:49153"}
    assert {d.facts["component"] for d in derived.values()} == {"other"}


def test_params_are_validated() -> None:
    from exprobe.errors import InputError
    from exprobe.probes.base import make_params

    spec = load_all()["msrpc-epm"]
    ok = make_params(spec.params_type, {"components": "is,mta", "expect_is": "1601"}, "t")
    assert ok == EpmParams(components=("is", "mta"), expect_is=1601)
    for values, message in (
        ({"components": "is,exchange"}, "unknown component"),
        ({"expect_ds": 70000}, "outside 1-65535"),
        ({"interfaces": "not-a-uuid:1.0"}, "is not a UUID"),
        ({"interfaces": f"{LSARPC}"}, "expected UUID:MAJOR.MINOR"),
        ({"lookup": False, "map": False}, "cannot both be off"),
        ({"max_rounds": 0}, "max_rounds"),
        ({"follow": "udp"}, "is not one of"),
    ):
        with pytest.raises(InputError, match=message):
            make_params(spec.params_type, values, "t")
    with pytest.raises(InputError, match="interface version"):
        make_params(load_all()["msrpc-bind"].params_type, {"version": "x"}, "t")


# -- refusals and hostile peers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "step", "message"),
    [
        ("bind-nak", "epm-bind", "refused the anonymous bind: bind_nak (reason not specified)"),
        ("reject-bind", "epm-bind", "bind rejected (provider rejection, abstract syntax not"),
        ("bind-fault", "epm-bind", "fault 0x00000005 rpc_s_access_denied; it requires auth"),
        ("access-denied", "ept-lookup", "requires authentication: ept_lookup answered 0x00000005"),
        ("lookup-denied-status", "ept-lookup", "requires authentication: ept_lookup answered"),
    ],
)
async def test_refusals_are_application_errors(behaviour: str, step: str, message: str) -> None:
    async with EpmPeer(PeerConfig(behaviour=behaviour)) as peer:
        r, derived = await run_epm(peer.port)
    assert (r.status, r.failed_step, r.port_state) == (
        Status.APPLICATION_ERROR,
        step,
        PortState.OPEN,
    )
    assert message in r.message
    assert "says nothing about Exchange" in r.message
    assert derived == {}


async def test_access_denied_on_map_only() -> None:
    async with EpmPeer(PeerConfig(behaviour="access-denied")) as peer:
        r, _ = await run_epm(peer.port, lookup=False)
    assert (r.status, r.failed_step) == (Status.APPLICATION_ERROR, "ept-map")
    assert "endpoint mapper requires authentication: ept_map answered 0x00000005" in r.message


@pytest.mark.parametrize(
    ("behaviour", "step", "message"),
    [
        ("bad-frag-len", "epm-bind", "frag_len 12 is shorter than the header"),
        ("frag-len-65535", "epm-bind", "frag_len 65535 exceeds the negotiated maximum 4280"),
        ("big-endian", "epm-bind", "big-endian data representation is not supported"),
        ("garbage", "epm-bind", "not DCE/RPC v5 connection-oriented"),
        ("truncated-stub", "ept-lookup", "malformed ept_lookup response"),
        ("garbage-towers", "ept-lookup", "tower floor 0: bad LHS length 19"),
        ("wrong-call-id", "ept-lookup", "response for call 1002, expected 2"),
    ],
)
async def test_malformed_pdus_are_protocol_errors(behaviour: str, step: str, message: str) -> None:
    async with EpmPeer(PeerConfig(behaviour=behaviour)) as peer:
        r, derived = await run_epm(peer.port, deadline=5)
    assert (r.status, r.failed_step) == (Status.PROTOCOL_ERROR, step)
    assert message in r.message
    assert derived == {}


async def test_close_after_bind_is_connection_closed() -> None:
    async with EpmPeer(PeerConfig(behaviour="close-after-bind")) as peer:
        r, _ = await run_epm(peer.port)
    assert (r.status, r.failed_step, r.port_state) == (
        Status.CONNECTION_CLOSED,
        "ept-lookup",
        PortState.OPEN,
    )


async def test_tarpit_ends_at_the_deadline() -> None:
    async with EpmPeer(PeerConfig(behaviour="tarpit")) as peer:
        r, _ = await run_epm(peer.port, deadline=1.0)
    assert (r.status, r.failed_step, r.port_state) == (
        Status.IO_TIMEOUT,
        "epm-bind",
        PortState.OPEN,
    )


async def test_tarpit_cancel_is_immediate() -> None:
    async with EpmPeer(PeerConfig(behaviour="tarpit")) as peer:
        load_all()
        spec = CheckSpec("c", "msrpc-epm", "127.0.0.1", peer.port, EpmParams(), "127.0.0.1")
        task = asyncio.create_task(run_check(spec, RunOptions(timeout=3600)))
        await asyncio.wait_for(peer.connected.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)  # a bound, not a timing assertion
        # The connection was dropped, not left to the peer's idle timeout.
        for _ in range(500):
            if peer.disconnects:
                break
            await asyncio.sleep(0.01)
        assert peer.disconnects == 1


async def test_large_replies_are_decoded_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 300-entry reply (~38 KB) is decoded in a worker thread, a small one inline."""
    import exprobe.probes.msrpc as probe

    calls: list[tuple[str, int]] = []
    real = asyncio.to_thread

    async def spy(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        if func.__name__.startswith("decode_"):
            calls.append((func.__name__, len(args[0])))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(probe.asyncio, "to_thread", spy)
    async with EpmPeer(PeerConfig(synthetic=300)) as peer:
        r, _ = await run_epm(peer.port, follow="none")
    assert r.facts["lookup"]["entries"] == EX55_ENTRIES + 300
    assert [name for name, _ in calls] == ["decode_ept_lookup_response"]
    assert calls[0][1] > probe.DECODE_IN_THREAD


# -- an independent client: impacket's own blocking EPM helpers ---------------------------------


def _impacket_dce(port: int) -> Any:
    from impacket.dcerpc.v5 import transport

    t = transport.DCERPCTransportFactory(f"ncacn_ip_tcp:127.0.0.1[{port}]")
    t.set_connect_timeout(5)
    dce = t.get_dce_rpc()
    dce.connect()
    return dce


async def test_impacket_hept_map_and_hept_lookup_talk_to_the_peer() -> None:
    from impacket.dcerpc.v5 import epm
    from impacket.dcerpc.v5.rpcrt import DCERPCException
    from impacket.uuid import uuidtup_to_bin

    def map_nspi(port: int) -> str:
        dce = _impacket_dce(port)
        try:
            return str(
                epm.hept_map(
                    "127.0.0.1", uuidtup_to_bin((NSPI, "56.0")), protocol="ncacn_ip_tcp", dce=dce
                )
            )
        finally:
            dce.disconnect()

    def lookup(port: int) -> list[str]:
        dce = _impacket_dce(port)
        try:
            entries = epm.hept_lookup(None, dce=dce)
        finally:
            dce.disconnect()
        return [str(e["tower"]["Floors"][0]) for e in entries]

    # others=False: impacket's EPMTower cannot parse the peer's 7-floor tower.
    async with EpmPeer(PeerConfig(others=False)) as peer:
        binding = await asyncio.to_thread(map_nspi, peer.port)
        floors = await asyncio.to_thread(lookup, peer.port)
    assert binding == f"ncacn_ip_tcp:127.0.0.1[{peer.ports['ds']}]"
    assert f"{EMSMDB.upper()} v0.81" in floors
    assert len(floors) == 6
    async with EpmPeer(PeerConfig(others=False, end="samba")) as peer:
        with pytest.raises(DCERPCException, match="ept_s_not_registered"):
            await asyncio.to_thread(lookup, peer.port)


# -- the CLI --------------------------------------------------------------------------------------


@contextlib.contextmanager
def peer_in_thread(config: PeerConfig, host: str = "127.0.0.1") -> Iterator[EpmPeer]:
    """The peer on its own event loop, for a CLI run in a subprocess."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    peer = EpmPeer(config, host)
    try:
        asyncio.run_coroutine_threadsafe(peer.start(), loop).result(10)
        yield peer
    finally:
        asyncio.run_coroutine_threadsafe(peer.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_cli_epm_json_and_table() -> None:
    evil = "\x1b[2J\x1b]0;pwned\x07[bold red]x[/bold red]"
    with peer_in_thread(PeerConfig(listeners=("is", "ds"), annotation=evil)) as peer:
        out = exprobe("epm", "127.0.0.1", "--port", str(peer.port), "--format", "json",
                      "--components", "is,ds,mta", "--expect", "is=1", "--timeout", "5")  # fmt: skip
        table = exprobe("epm", "127.0.0.1", "--port", str(peer.port), "--timeout", "5")
        bad = exprobe("epm", "127.0.0.1", "--expect", "store=1")
    report = validate_report(json.loads(out.stdout))
    assert out.returncode == 1  # the MTA port refuses
    (view,) = report["epm"]
    assert view["status"] == "success"
    comps = view["components"]
    assert comps["is"]["pinning"] == f"registered on {peer.ports['is']}, expected 1"
    assert comps["is"]["ports"][0]["status"] == "success"
    assert comps["mta"]["ports"][0]["status"] == "connection-refused"
    assert comps["mta"]["ports"][0]["check"] == f"msrpc-epm:{peer.port}/mta:{peer.ports['mta']}"
    assert table.returncode == 1
    assert "\x1b" not in table.stdout
    assert "[/bold red]" in table.stdout  # shown, not interpreted as markup
    assert "\\x1b[2J" in table.stdout
    for word in ("IS", "DS", "MTA", "connection-refused", "ncacn_np", "rpcss.dll"):
        assert word in table.stdout
    assert bad.returncode == 2
    assert "--expect 'store=1': expected COMPONENT=PORT" in bad.stderr


def test_cli_check_msrpc_epm_with_set() -> None:
    with peer_in_thread(PeerConfig(listeners=("is", "ds", "mta"))) as peer:
        out = exprobe("check", "127.0.0.1", "msrpc-epm", "--port", str(peer.port),
                      "--set", f"expect_is={peer.ports['is']}", "--format", "json")  # fmt: skip
    report = validate_report(json.loads(out.stdout))
    assert out.returncode == 0, out.stdout
    results = {r["id"]: r for r in report["targets"][0]["results"]}
    epm_result = results[f"msrpc-epm:{peer.port}"]
    assert epm_result["facts"]["components"]["is"]["pinning"] == "pinned as expected"
    derived = [r for r in results.values() if r.get("parent") == epm_result["id"]]
    assert sorted(r["facts"]["component"] for r in derived) == ["ds", "is", "mta"]
    assert all(r["status"] == "success" for r in derived)


async def test_pinned_ports_are_compared_with_the_port_offset() -> None:
    """`run --port-offset N` against a rehearsal listener: its EPM registers pinned+N."""
    offset = 10000
    async with EpmPeer(PeerConfig(ports={"is": 1601 + offset}, listeners=())) as peer:
        load_all()
        definition = CheckDef(
            "epm", "msrpc-epm", EpmParams(components=("is",), expect_is=1601, follow="none"),
            peer.port - offset,
        )
        session = Session(
            [parse_target("127.0.0.1")], [definition],
            RunOptions(timeout=10, connect_timeout=2, port_offset=offset), Limits(),
        )
        report = await session.run()
    (r,) = report.all_results()
    assert r.status is Status.SUCCESS
    assert r.port == peer.port
    assert components(r)["is"]["pinning"] == "pinned as expected"
    assert components(r)["is"]["expected"] == 1601 + offset
    assert r.warnings == ()
