"""exprobe.wire.dcerpc and exchange_uuids: PDUs, NDR round trips, towers, the classifier.

Byte layouts come from C706 ch. 12 / appendix L and from the captures in the shared
research note (the 72-byte EPM bind, the 40-byte ept_lookup stub).
"""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exprobe.errors import ProtocolError
from exprobe.wire import dcerpc as rpc
from exprobe.wire import exchange_uuids as xu

NSPI = "f5cc5a18-4264-101a-8c59-08002b2f8426"
EMSMDB = "a4f1db00-ca47-1067-b31f-00dd010662da"


def floor(lhs: bytes, rhs: bytes) -> bytes:
    return struct.pack("<H", len(lhs)) + lhs + struct.pack("<H", len(rhs)) + rhs


def uuid_floor(uuid: str, major: int, minor: int) -> bytes:
    return floor(
        b"\x0d" + rpc.uuid_bytes(uuid) + struct.pack("<H", major), struct.pack("<H", minor)
    )


NDR_FLOOR = uuid_floor(rpc.NDR_UUID, 2, 0)


def tower(*floors: bytes) -> bytes:
    return struct.pack("<H", len(floors)) + b"".join(floors)


# -- towers ---------------------------------------------------------------------------------------


def test_tcp_tower_hand_built_big_endian_port_and_ipv4() -> None:
    data = tower(
        uuid_floor(NSPI, 56, 0),
        NDR_FLOOR,
        floor(b"\x0b", b"\x00\x00"),
        floor(b"\x07", b"\x04\x01"),  # big-endian 1025, not 260
        floor(b"\x09", bytes([10, 0, 0, 5])),
    )
    t = rpc.parse_tower(data)
    assert (t.interface, t.version, t.protocol) == (NSPI, (56, 0), "ncacn_ip_tcp")
    assert (t.port, t.host, t.pipe, t.netbios) == (1025, "10.0.0.5", None, None)
    assert t.transfer_syntax == f"{rpc.NDR_UUID} v2.0"
    assert t.binding() == "ncacn_ip_tcp:10.0.0.5[1025]"
    assert len(t.floors) == 5


def test_zero_host_floor_is_kept_for_the_caller_to_substitute() -> None:
    t = rpc.parse_tower(rpc.build_tower(rpc.EPM_UUID, (3, 0), protocol="ncacn_http", port=593))
    assert (t.protocol, t.port, t.host) == ("ncacn_http", 593, "0.0.0.0")
    assert t.binding("fd00::2") == "ncacn_http:[fd00::2][593]"


@pytest.mark.parametrize("count", [7, 8, 12, 40])
def test_towers_with_more_than_six_floors(count: int) -> None:
    extra = [(bytes([0x40 + i]), b"\x00\x01") for i in range(count - 5)]
    data = rpc.build_tower(EMSMDB, (0, 81), port=1026, host="10.0.0.5", extra_floors=extra)
    t = rpc.parse_tower(data)
    assert len(t.floors) == count
    assert (t.interface, t.version, t.port, t.host) == (EMSMDB, (0, 81), 1026, "10.0.0.5")


def test_impacket_epmtower_breaks_on_seven_floors_which_is_why_we_parse_ourselves() -> None:
    from impacket.dcerpc.v5.epm import EPMTower

    data = rpc.build_tower(EMSMDB, (0, 81), port=1026, extra_floors=[(b"\x42", b"")] * 2)
    with pytest.raises(IndexError):
        EPMTower(data)
    assert rpc.parse_tower(data).port == 1026


@pytest.mark.parametrize("ident", [0x11, 0x01])
def test_named_pipe_with_netbios_host(ident: int) -> None:
    data = tower(
        uuid_floor(rpc.EPM_UUID, 3, 0),
        NDR_FLOOR,
        floor(b"\x0b", b"\x00\x00"),
        floor(b"\x0f", b"\\PIPE\\epmapper\x00"),
        floor(bytes([ident]), b"\\\\EXCH55\x00"),
    )
    t = rpc.parse_tower(data)
    assert (t.protocol, t.pipe, t.netbios, t.port, t.host) == (
        "ncacn_np",
        "\\PIPE\\epmapper",
        "\\\\EXCH55",
        None,
        None,
    )
    assert t.binding() == "ncacn_np:\\\\EXCH55[\\PIPE\\epmapper]"


def test_ncalrpc_udp_and_unknown_protocols() -> None:
    lrpc = rpc.parse_tower(rpc.build_tower(rpc.EPM_UUID, (3, 0), protocol="ncalrpc", pipe="epm"))
    assert (lrpc.protocol, lrpc.pipe, lrpc.binding()) == ("ncalrpc", "epm", "ncalrpc:[epm]")
    udp = rpc.parse_tower(rpc.build_tower(rpc.EPM_UUID, (3, 0), protocol="ncadg_ip_udp", port=135))
    assert (udp.protocol, udp.port) == ("ncadg_ip_udp", 135)
    odd = rpc.parse_tower(
        tower(uuid_floor(NSPI, 56, 0), NDR_FLOOR, floor(b"\x0b", b"\0\0"), floor(b"\x55", b"x"))
    )
    assert odd.protocol == "unknown(0x0b)"
    assert odd.port is None


def test_build_tower_round_trips_every_protocol() -> None:
    for proto, kw in (
        ("ncacn_ip_tcp", {"port": 65535, "host": "255.1.2.3"}),
        ("ncacn_http", {"port": 6001}),
        ("ncacn_np", {"pipe": "\\pipe\\lsass", "netbios": "\\\\DC1"}),
        ("ncalrpc", {"pipe": "LRPC-0123"}),
    ):
        t = rpc.parse_tower(rpc.build_tower(NSPI, (56, 7), protocol=proto, **kw))  # type: ignore[arg-type]
        assert (t.protocol, t.version) == (proto, (56, 7))
    with pytest.raises(ValueError, match="cannot build"):
        rpc.build_tower(NSPI, (56, 0), protocol="ncacn_vns_spp")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than its floor count"),
        (struct.pack("<H", 7) + uuid_floor(NSPI, 56, 0), "truncated in floor 1"),
        (struct.pack("<HH", 1, 0), "bad LHS length 0"),
        (struct.pack("<HH", 1, 19) + b"\x0d" * 5, "bad LHS length 19"),
        (struct.pack("<HH", 1, 1) + b"\x07" + struct.pack("<H", 255) + b"\0\1", "bad RHS length"),
        (tower(uuid_floor(NSPI, 56, 0), NDR_FLOOR), "2 floors"),
        (tower(floor(b"\x07", b"\0\0"), NDR_FLOOR, floor(b"\x0b", b"")), "not a UUID floor"),
        (
            tower(uuid_floor(NSPI, 56, 0), NDR_FLOOR, floor(b"\x0b", b""), floor(b"\x07", b"\x01")),
            "port floor with 1 bytes",
        ),
        (
            tower(uuid_floor(NSPI, 56, 0), NDR_FLOOR, floor(b"\x0b", b""), floor(b"\x09", b"\x01")),
            "IPv4 floor with 1 bytes",
        ),
    ],
)
def test_garbage_towers(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        rpc.parse_tower(data)


# -- the classifier -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uuid", "version", "expected"),
    [
        (EMSMDB, (0, 81), "is"),
        (EMSMDB, (0, 0), "is"),
        (EMSMDB.upper(), (0, 81), "is"),
        ("5261574a-4572-206e-b268-6b199213b4e4", (0, 1), "is"),
        ("a4f1db00-ca47-1067-b31e-00dd010662da", (1, 0), "is"),
        (NSPI, (56, 0), "ds"),
        ("1544f5e0-613c-11d1-93df-00c04fd7bd09", (1, 0), "ds"),
        ("f5cc5a7c-4264-101a-8c59-08002b2f8426", (21, 0), "ds"),
        ("f5cc59b4-4264-101a-8c59-08002b2f8426", (21, 0), "ds"),
        ("9e8ee830-4459-11ce-979b-00aa005ffebe", (2, 0), "mta"),
        ("38a94e72-a9bc-11d2-8faf-00c04fa378ff", (1, 0), "mta"),
        ("469d6ec0-0d87-11ce-b13f-00aa003bac6c", (16, 0), "sa"),
        ("f930c514-1215-11d3-99a5-00a0c9b61b04", (1, 0), "sa"),
    ],
)
def test_classify_exchange_interfaces(uuid: str, version: tuple[int, int], expected: str) -> None:
    found = xu.classify(uuid, version)
    assert found is not None
    assert found[0] == expected


@pytest.mark.parametrize(
    ("uuid", "version"),
    [
        ("f5cc59b4-4264-101a-8c59-08002b2f8426", (1, 1)),  # FRS, not Exchange
        ("f5cc59b4-4264-101a-8c59-08002b2f8426", (1, 0)),
        ("5261574a-4572-206e-b268-6b199213b4e5", (0, 1)),  # the wrong AsyncEMSMDB ending
        ("9e8ee830-4559-11ce-979b-00aa005ffebe", (2, 0)),  # OpenChange's MTA typo
        ("12345778-1234-abcd-ef00-0123456789ab", (0, 0)),  # lsarpc
        (rpc.EPM_UUID, (3, 0)),
    ],
)
def test_classify_rejects_non_exchange(uuid: str, version: tuple[int, int]) -> None:
    assert xu.classify(uuid, version) is None


def test_interface_table_shape() -> None:
    assert xu.classify(EMSMDB, (0, 81)) == ("is", "EMSMDB (MAPI store, MS-OXCRPC)")
    assert {i.component for i in xu.EXCHANGE_INTERFACES} == set(xu.COMPONENTS)
    assert all(i.confidence in ("H", "M", "?") for i in xu.EXCHANGE_INTERFACES)
    assert len({(i.uuid, i.version) for i in xu.EXCHANGE_INTERFACES}) == len(xu.EXCHANGE_INTERFACES)
    mapped = xu.interfaces_of(("ds",))
    assert [i.uuid for i in mapped] == [NSPI, "1544f5e0-613c-11d1-93df-00c04fd7bd09",
                                        "f5cc5a7c-4264-101a-8c59-08002b2f8426"]  # fmt: skip
    assert xu.primary("is") is not None
    assert xu.primary("is").uuid == EMSMDB
    assert xu.known_name("12345778-1234-abcd-ef00-0123456789ab", (0, 0)) is not None


# -- headers and PDUs -------------------------------------------------------------------------


def test_bind_is_the_documented_72_byte_pdu() -> None:
    expected = bytes.fromhex(
        "05000b03100000004800000001000000"
        "b810b8100000000001000000"
        "00000100"
        "0883afe11f5dc91191a408002b14a0fa03000000"
        "045d888aeb1cc9119fe808002b10486002000000"
    )
    assert rpc.build_bind(1, rpc.EPM_UUID, rpc.EPM_VERSION) == expected
    req = rpc.parse_bind(expected)
    assert req.contexts[0].abstract == rpc.EPM_UUID
    assert req.contexts[0].version == (3, 0)
    assert req.contexts[0].offers_ndr
    assert (req.max_xmit, req.max_recv, req.call_id) == (4280, 4280, 1)


def test_header_validation() -> None:
    good = rpc.build_bind_ack(7, [(0, 0)])
    h = rpc.parse_header(good)
    assert (h.ptype, h.call_id, h.frag_len, h.first, h.last) == (12, 7, len(good), True, True)
    with pytest.raises(ProtocolError, match="big-endian"):
        rpc.parse_header(good[:4] + b"\x00\x00\x00\x00" + good[8:])
    with pytest.raises(ProtocolError, match="EBCDIC"):
        rpc.parse_header(good[:4] + b"\x11\x00\x00\x00" + good[8:])
    with pytest.raises(ProtocolError, match=r"version 4\.0"):
        rpc.parse_header(b"\x04" + good[1:])
    with pytest.raises(ProtocolError, match="frag_len 12 is shorter"):
        rpc.parse_header(good[:8] + struct.pack("<H", 12) + good[10:])
    with pytest.raises(ProtocolError, match="frag_len 65535 exceeds the negotiated maximum 4280"):
        rpc.parse_header(good[:8] + struct.pack("<H", 65535) + good[10:], max_frag=4280)
    with pytest.raises(ProtocolError, match="auth_len"):
        rpc.parse_header(good[:10] + struct.pack("<H", 200) + good[12:])
    with pytest.raises(ProtocolError, match="needs 16 bytes"):
        rpc.parse_header(good[:15])
    with pytest.raises(ProtocolError, match="frag_len says"):
        rpc.parse_pdu(good + b"\x00")
    with pytest.raises(ProtocolError, match="frag_len says"):
        rpc.parse_pdu(good[:-1])


def test_bind_ack_results() -> None:
    ack = rpc.parse_bind_ack(
        rpc.build_bind_ack(3, [(0, 0)], max_xmit=5840, max_recv=5840, assoc_group=0xABC)
    )
    assert ack.accepted
    assert (ack.call_id, ack.max_xmit, ack.max_recv, ack.assoc_group) == (3, 5840, 5840, 0xABC)
    assert ack.secondary_address == "135"
    assert ack.results[0].transfer_syntax == f"{rpc.NDR_UUID} v2.0"
    rej = rpc.parse_bind_ack(rpc.build_bind_ack(4, [(2, 1)]))
    assert not rej.accepted  # result 2 (provider rejection) is not a bind_nak
    assert rej.results[0].describe() == "provider rejection, abstract syntax not supported"
    with pytest.raises(ProtocolError, match="expected a bind_ack PDU, got bind_nak"):
        rpc.parse_bind_ack(rpc.build_bind_nak(4, 0))


def test_bind_ack_without_results_is_malformed() -> None:
    ack = rpc.build_bind_ack(3, [])
    with pytest.raises(ProtocolError, match="0 context results"):
        rpc.parse_bind_ack(ack)


def test_bind_nak_and_fault() -> None:
    nak = rpc.parse_bind_nak(rpc.build_bind_nak(5, 8))
    assert (nak.call_id, nak.reason, nak.reason_text) == (
        5,
        8,
        "authentication type not recognized",
    )
    data = rpc.build_fault(6, 5)
    assert struct.unpack_from("<I", data, 24)[0] == 5
    fault = rpc.parse_fault(data)
    assert (fault.call_id, fault.status, fault.access_denied) == (6, 5, True)
    assert fault.name == "0x00000005 rpc_s_access_denied"
    assert rpc.status_name(rpc.EPT_S_NOT_REGISTERED) == "0x16c9a0d6 ept_s_not_registered"
    assert not rpc.parse_fault(rpc.build_fault(6, rpc.NCA_S_OP_RNG_ERROR)).access_denied
    with pytest.raises(ProtocolError, match="no status"):
        rpc.parse_fault(data[:8] + struct.pack("<H", 24) + data[10:24])


@pytest.mark.parametrize(("size", "max_frag"), [(0, 1024), (1, 1024), (1000, 1024), (64_000, 1024),
                                                (64_000, 4280), (5_000, 33)])  # fmt: skip
def test_response_fragmentation(size: int, max_frag: int) -> None:
    stub = bytes(i % 251 for i in range(size))
    frags = rpc.build_response(9, stub, max_frag=max_frag)
    parsed = [rpc.parse_response(f) for f in frags]
    assert all(len(f) <= max_frag for f in frags)
    assert parsed[0].first
    assert parsed[-1].last
    assert not any(p.first for p in parsed[1:])
    assert not any(p.last for p in parsed[:-1])
    assert all(len(p.stub) % 8 == 0 for p in parsed[:-1])  # NDR alignment survives
    assert parsed[0].alloc_hint == size
    assert b"".join(p.stub for p in parsed) == stub


def test_request_round_trip() -> None:
    stub = rpc.build_ept_lookup_stub()
    (frag,) = rpc.build_request(2, rpc.OPNUM_EPT_LOOKUP, stub, ctx_id=0)
    req = rpc.parse_request(frag)
    assert (req.call_id, req.opnum, req.ctx_id, req.stub, req.alloc_hint) == (2, 2, 0, stub, 40)
    frags = rpc.build_request(3, 3, bytes(100), max_frag=64)
    assert len(frags) == 3
    assert b"".join(rpc.parse_request(f).stub for f in frags) == bytes(100)


# -- the endpoint mapper's NDR -----------------------------------------------------------------


def test_ept_lookup_stub_is_the_documented_40_bytes() -> None:
    stub = rpc.build_ept_lookup_stub(rpc.NULL_HANDLE, 500)
    assert stub == bytes(4 + 4 + 4) + struct.pack("<I", 1) + bytes(20) + struct.pack("<I", 500)
    handle = b"\x00\x00\x00\x00" + bytes(range(1, 17))
    req = rpc.decode_ept_lookup_request(rpc.build_ept_lookup_stub(handle, 3))
    assert (req.inquiry_type, req.object, req.interface, req.vers_option) == (0, None, None, 1)
    assert (req.handle, req.max_ents) == (handle, 3)


def test_ept_map_stub_uses_fixed_referent_ids() -> None:
    stub = rpc.build_ept_map_stub(NSPI, (56, 0))
    assert struct.unpack_from("<I", stub, 0)[0] == 1  # object pointer
    assert struct.unpack_from("<I", stub, 20)[0] == 2  # tower pointer
    req = rpc.decode_ept_map_request(stub)
    assert (req.tower.interface, req.tower.version, req.tower.protocol) == (
        NSPI,
        (56, 0),
        "ncacn_ip_tcp",
    )
    assert (req.tower.port, req.tower.host, req.max_towers) == (0, "0.0.0.0", 4)


def test_lookup_reply_entries_are_parsed_before_the_status() -> None:
    towers = [
        rpc.build_tower(EMSMDB, (0, 81), port=1026, host="10.0.0.5"),
        rpc.build_tower(NSPI, (56, 0), port=1025, host="0.0.0.0"),
        rpc.build_tower(rpc.EPM_UUID, (3, 0), protocol="ncacn_np", pipe="\\PIPE\\epmapper",
                        netbios="\\\\X", extra_floors=[(b"\x42", b"")] * 3),
    ]  # fmt: skip
    entries = [rpc.EntrySpec(t, f"note {i}") for i, t in enumerate(towers)]
    # Samba's end of enumeration: the last batch together with 0x16C9A0D6 and a NULL handle.
    reply = rpc.decode_ept_lookup_response(
        rpc.build_ept_lookup_response(entries, rpc.NULL_HANDLE, rpc.EPT_S_NOT_REGISTERED)
    )
    assert reply.status == rpc.EPT_S_NOT_REGISTERED
    assert reply.handle_null
    assert [(e.tower.interface, e.tower.port, e.annotation) for e in reply.entries] == [
        (EMSMDB, 1026, "note 0"),
        (NSPI, 1025, "note 1"),
        (rpc.EPM_UUID, None, "note 2"),
    ]
    handle = b"\x00\x00\x00\x00" + b"\x5a" * 16
    paged = rpc.decode_ept_lookup_response(rpc.build_ept_lookup_response(entries[:1], handle))
    assert (paged.handle, paged.status, paged.handle_null) == (handle, 0, False)
    empty = rpc.decode_ept_lookup_response(
        rpc.build_ept_lookup_response([], rpc.NULL_HANDLE, rpc.EPT_S_NOT_REGISTERED)
    )
    assert empty.entries == ()
    assert empty.status == rpc.EPT_S_NOT_REGISTERED


def test_lookup_reply_count_mismatch_and_truncation() -> None:
    stub = rpc.build_ept_lookup_response(
        [rpc.EntrySpec(rpc.build_tower(NSPI, (56, 0), port=1))] * 2, rpc.NULL_HANDLE
    )
    bad_count = stub[:20] + struct.pack("<I", 3) + stub[24:]
    with pytest.raises(ProtocolError, match="num_ents 3 but the array holds 2"):
        rpc.decode_ept_lookup_response(bad_count)
    with pytest.raises(ProtocolError, match="malformed ept_lookup response"):
        rpc.decode_ept_lookup_response(stub[: len(stub) // 2])


def test_map_reply_round_trip() -> None:
    t = rpc.build_tower(NSPI, (56, 0), port=1600, host="10.0.0.5")
    reply = rpc.decode_ept_map_response(rpc.build_ept_map_response([t, t], rpc.NULL_HANDLE))
    assert reply.status == 0
    assert [x.port for x in reply.towers] == [1600, 1600]
    none = rpc.decode_ept_map_response(
        rpc.build_ept_map_response([], rpc.NULL_HANDLE, rpc.EPT_S_NOT_REGISTERED)
    )
    assert none.towers == ()
    assert none.status == rpc.EPT_S_NOT_REGISTERED


def test_versions_and_uuids() -> None:
    assert rpc.parse_version("0.81") == (0, 81)
    assert rpc.parse_version("3") == (3, 0)
    for bad in ("", "1.2.3", "a.b", "70000.0", "-1.0"):
        with pytest.raises(ValueError, match="interface version"):
            rpc.parse_version(bad)
    assert rpc.uuid_text(rpc.uuid_bytes(EMSMDB.upper())) == EMSMDB
    with pytest.raises(ProtocolError):
        rpc.uuid_text(b"short")


# -- any bytes in → a result or ProtocolError ------------------------------------------------------

DECODERS = [
    rpc.parse_header,
    rpc.parse_pdu,
    rpc.parse_bind_ack,
    rpc.parse_bind_nak,
    rpc.parse_fault,
    rpc.parse_response,
    rpc.parse_bind,
    rpc.parse_request,
    rpc.parse_tower,
    rpc.decode_ept_lookup_response,
    rpc.decode_ept_map_response,
    rpc.decode_ept_lookup_request,
    rpc.decode_ept_map_request,
]

VALID = [
    rpc.build_bind(1, NSPI, (56, 0)),
    rpc.build_bind_ack(1, [(0, 0), (2, 1)]),
    rpc.build_bind_nak(1, 4),
    rpc.build_fault(1, 5),
    rpc.build_response(1, bytes(40))[0],
    rpc.build_request(1, 2, rpc.build_ept_lookup_stub())[0],
    rpc.build_tower(EMSMDB, (0, 81), port=1026, host="10.0.0.5"),
    rpc.build_ept_lookup_response(
        [rpc.EntrySpec(rpc.build_tower(EMSMDB, (0, 81), port=1026), "x")] * 2, rpc.NULL_HANDLE
    ),
    rpc.build_ept_map_response([rpc.build_tower(NSPI, (56, 0), port=9)], rpc.NULL_HANDLE),
    rpc.build_ept_lookup_stub(),
    rpc.build_ept_map_stub(NSPI, (56, 0)),
]


def _total(data: bytes) -> None:
    for decode in DECODERS:
        with contextlib.suppress(ProtocolError):
            decode(data)  # type: ignore[operator]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_any_bytes_give_a_result_or_protocol_error(data: bytes) -> None:
    _total(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 2000),
)
def test_mutated_valid_pdus_give_a_result_or_protocol_error(
    base: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(base)
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    _total(bytes(data))
    _total(bytes(data[: cut % (len(data) + 1)]))


@pytest.mark.parametrize("base", VALID)
def test_valid_inputs_decode_with_the_matching_decoder(base: bytes) -> None:
    ok = 0
    for decode in DECODERS:
        try:
            decode(base)  # type: ignore[operator]
            ok += 1
        except ProtocolError:
            pass
    assert ok >= 1
