"""`exprobe listen` checked by independent clients, and against hostile ones.

The listener runs in a background thread on 127.0.0.1 (ports + an offset found free).
Its handshakes are judged by clients exprobe did not write: smtplib, poplib, imaplib,
ldap3, `openssl s_client -starttls ...`, impacket's own DCERPC transport with
`hept_lookup`/`hept_map`, and a raw COTP CR.  Then by exprobe's own probes (`exprobe run
-p exchange55 --port-offset N`: every scenario passes).  Hostile input (garbage, huge
lines, silence, a flood above --max-connections) must never take the listener down.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import imaplib
import importlib.util
import json
import os
import poplib
import random
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exprobe.engine.plan import CheckDef
from exprobe.errors import InputError
from exprobe.listen.core import BindError, ConnRecord, ListenServer
from exprobe.listen.plan import DEFAULT_STATIC_PORTS, build_plan
from exprobe.listen.service import (
    ServiceOptions,
    bind_error_text,
    build_server,
    parse_bind_addresses,
)
from exprobe.probes.base import Params
from exprobe.wire import cotp
from tests.helpers import exprobe, validate_report

HOST = "127.0.0.1"
NAME = "rehearsal.test"
# ldap3 2.9 drives pyasn1 0.6 through names pyasn1 now deprecates: not our warning.
LDAP3_WARNINGS = pytest.mark.filterwarnings(
    "ignore:(tagMap|typeMap) is deprecated:DeprecationWarning"
)
# Every shifted port (the highest is 8081) stays below the kernel's ephemeral range
# (32768+), so no client socket of a parallel test can be sitting on one of them.
OFFSETS = tuple(range(10000, 32768 - 8081, 1700))

ADHOC = [
    CheckDef("smtp", "smtp", Params(tls="starttls"), 25),
    CheckDef("smtps", "smtp", Params(tls="implicit"), 465),
    CheckDef("pop3", "pop3", Params(tls="starttls"), 110),
    CheckDef("pop3s", "pop3", Params(tls="implicit"), 995),
    CheckDef("imap", "imap", Params(tls="starttls"), 143),
    CheckDef("imaps", "imap", Params(tls="implicit"), 993),
    CheckDef("nntp", "nntp", Params(tls="starttls"), 119),
    CheckDef("nntps", "nntp", Params(tls="implicit"), 563),
    CheckDef("ldap", "ldap", Params(tls="starttls"), 389),
    CheckDef("ldaps", "ldap", Params(tls="implicit"), 636),
    CheckDef("x400", "rfc1006", Params(), 102),
    CheckDef("epm", "msrpc-epm", Params(), 135),
    CheckDef("raw", "tcp", Params(), 8080),
]


class ThreadedListener:
    """A `ListenServer` on its own event loop in a thread, at the first free offset."""

    def __init__(
        self,
        defs: list[CheckDef],
        *,
        loop: str = "asyncio",
        plan_kw: dict[str, Any] | None = None,
        name: str = NAME,
        addresses: list[str] | None = None,
        offsets: list[int] | None = None,
        **opts: Any,
    ) -> None:
        self.records: list[ConnRecord] = []
        self.name = name
        self.addresses = addresses or [HOST]
        self._offsets = offsets
        self._defs = defs
        self._plan_kw = plan_kw or {}
        self._opts = opts
        if loop == "uvloop":  # what `exprobe listen` runs on when uvloop is installed
            import uvloop

            self._loop = uvloop.new_event_loop()
        else:
            self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.server: ListenServer | None = None
        self.offset = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("listener did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:  # reported to the constructor
            self._error = exc
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    async def _start(self) -> None:
        from exprobe.listen.tlscert import make_certificate, server_context

        tls = server_context(make_certificate(self.name, self.addresses))
        offsets = list(self._offsets or OFFSETS)
        if self._offsets is None:
            random.shuffle(offsets)
        for offset in offsets:
            plan = build_plan(self._defs, port_offset=offset, **self._plan_kw)
            server = build_server(
                plan,
                self.addresses,
                ServiceOptions(self.name, **self._opts),
                self.records.append,
                tls_context=tls,
            )
            try:
                await server.start()
            except BindError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            self.server, self.offset = server, offset
            return
        raise RuntimeError("no free offset")

    def port(self, base: int) -> int:
        return base + self.offset

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def close(self) -> None:
        if self.server is not None:
            self.call(self.server.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def records_for(self, base: int) -> list[ConnRecord]:
        return [r for r in self.records if r.port == self.port(base)]

    def wait_records(self, base: int, n: int, timeout: float = 10.0) -> list[ConnRecord]:
        """The first `n` records of a port (a record is written when its connection ends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.records_for(base)
            if len(got) >= n:
                return got
            time.sleep(0.01)
        raise AssertionError(
            f"{n} records on {self.port(base)} expected, got {self.records_for(base)}"
        )


LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


@pytest.fixture(scope="module", params=LOOPS)
def lst(request: pytest.FixtureRequest) -> Iterator[ThreadedListener]:
    t = ThreadedListener(ADHOC, loop=request.param, idle_timeout=5.0, conn_timeout=20.0)
    yield t
    t.close()


def unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def no_responder_errors(t: ThreadedListener) -> None:
    bad = [r for r in t.records if r.outcome.startswith("responder error")]
    assert not bad, bad


# -- independent clients ------------------------------------------------------------------


def test_smtplib_ehlo_starttls_quit(lst: ThreadedListener) -> None:
    s = smtplib.SMTP(HOST, lst.port(25), timeout=10)
    try:
        code, _banner = s.ehlo("client.test")
        assert code == 250
        for ext in ("starttls", "size", "pipelining", "8bitmime"):
            assert s.has_extn(ext), ext
        assert s.esmtp_features["size"] == "10240000"
        code, _ = s.starttls(context=unverified())
        assert code == 220
        s.ehlo("client.test")
        assert not s.has_extn("starttls")  # offered only before TLS
        assert s.sock is not None
        assert s.sock.version() in ("TLSv1.2", "TLSv1.3")
        code, _ = s.quit()
        assert code == 221
    finally:
        s.close()
    (rec,) = lst.wait_records(25, 1)
    assert rec.actions == ["EHLO client.test", "STARTTLS", f"TLS {rec.tls}", "EHLO client.test",
                           "QUIT"]  # fmt: skip
    assert rec.outcome == "said goodbye"


def test_smtp_banner_names_exprobe(lst: ThreadedListener) -> None:
    with socket.create_connection((HOST, lst.port(25)), timeout=10) as c:
        banner = c.makefile("rb").readline()
    assert banner.startswith(f"220 {NAME} ESMTP exprobe listen".encode())
    assert b"rehearsal, not a real mail server" in banner


def test_smtplib_helo_and_implicit_tls(lst: ThreadedListener) -> None:
    s = smtplib.SMTP_SSL(HOST, lst.port(465), timeout=10, context=unverified())
    try:
        code, text = s.helo("old.client")
        assert code == 250
        assert NAME.encode() in text
        # A real sender must be told to try later (4xx), never bounced (5xx).
        code, text = s.mail("a@b.test")
        assert code == 421
        assert b"rehearsal" in text
    finally:
        s.close()


def test_poplib_capa_stls(lst: ThreadedListener) -> None:
    p = poplib.POP3(HOST, lst.port(110), timeout=10)
    try:
        assert p.getwelcome().startswith(f"+OK {NAME} POP3 exprobe listen".encode())
        assert "STLS" in p.capa()
        p.stls(context=unverified())
        assert "STLS" not in p.capa()
        assert p.quit().startswith(b"+OK")
    finally:
        p.close()


def test_poplib_implicit_tls(lst: ThreadedListener) -> None:
    p = poplib.POP3_SSL(HOST, lst.port(995), timeout=10, context=unverified())
    try:
        assert "IMPLEMENTATION" in p.capa()
        p.quit()
    finally:
        p.close()


def test_imaplib_capability_starttls(lst: ThreadedListener) -> None:
    m = imaplib.IMAP4(HOST, lst.port(143), timeout=10)
    try:
        assert "STARTTLS" in m.capabilities
        assert "IMAP4REV1" in m.capabilities
        typ, _ = m.starttls(ssl_context=unverified())
        assert typ == "OK"
        assert "STARTTLS" not in m.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="no mailboxes"):
            m.login("user", "secret")  # refused politely, never logged
    finally:
        assert m.logout()[0] == "BYE"
    (rec,) = lst.wait_records(143, 1)
    assert "secret" not in json.dumps(rec.to_dict())
    assert rec.actions[:3] == ["CAPABILITY", "STARTTLS", f"TLS {rec.tls}"]


def test_imaplib_implicit_tls(lst: ThreadedListener) -> None:
    m = imaplib.IMAP4_SSL(HOST, lst.port(993), timeout=10, ssl_context=unverified())
    try:
        assert "IMAP4REV1" in m.capabilities
    finally:
        m.logout()


@LDAP3_WARNINGS
def test_ldap3_anonymous_rootdse(lst: ThreadedListener) -> None:
    import ldap3

    server = ldap3.Server(HOST, port=lst.port(389), get_info=ldap3.DSA, connect_timeout=10)
    conn = ldap3.Connection(server, auto_bind=True, receive_timeout=10)
    try:
        assert conn.bound
        info = server.info
        assert info.naming_contexts == ["o=exprobe-rehearsal"]
        assert info.vendor_name == ["exprobe"]
        assert "rehearsal" in info.vendor_version[0]
        assert {str(v) for v in info.supported_ldap_versions} == {"2", "3"}
        assert "1.3.6.1.4.1.1466.20037" in [e[0] for e in info.supported_extensions]
        assert info.other["dnsHostName"] == [NAME]
    finally:
        conn.unbind()


@LDAP3_WARNINGS
def test_ldap3_start_tls_then_bind(lst: ThreadedListener) -> None:
    import ldap3

    tls = ldap3.Tls(validate=ssl.CERT_NONE)
    server = ldap3.Server(HOST, port=lst.port(389), tls=tls, connect_timeout=10)
    conn = ldap3.Connection(server, receive_timeout=10)
    try:
        conn.open()
        assert conn.start_tls() is True
        assert conn.bind() is True
        assert conn.search("", "(objectClass=*)", search_scope=ldap3.BASE,
                           attributes=["namingContexts"])  # fmt: skip
        assert conn.entries[0]["namingContexts"].values == ["o=exprobe-rehearsal"]
        # Only the rootDSE exists here.
        assert not conn.search("o=exprobe-rehearsal", "(objectClass=*)")
        assert conn.result["result"] == 32
    finally:
        conn.unbind()


@LDAP3_WARNINGS
def test_ldap3_ldaps(lst: ThreadedListener) -> None:
    import ldap3

    tls = ldap3.Tls(validate=ssl.CERT_NONE)
    server = ldap3.Server(HOST, port=lst.port(636), use_ssl=True, tls=tls, get_info=ldap3.DSA)
    conn = ldap3.Connection(server, auto_bind=True, receive_timeout=10)
    try:
        assert server.info.naming_contexts == ["o=exprobe-rehearsal"]
        assert not server.info.supported_extensions  # no StartTLS inside TLS
    finally:
        conn.unbind()


# openssl is in .ci/lab-packages.sh; its absence is a failure, not a skip.
OPENSSL = shutil.which("openssl")


@pytest.mark.parametrize(
    ("proto", "base"), [("smtp", 25), ("pop3", 110), ("imap", 143), ("nntp", 119), ("ldap", 389)]
)
def test_openssl_s_client_starttls(lst: ThreadedListener, proto: str, base: int) -> None:
    assert OPENSSL is not None
    proc = subprocess.run(
        [
            OPENSSL,
            "s_client",
            "-starttls",
            proto,
            "-connect",
            f"{HOST}:{lst.port(base)}",
            "-servername",
            NAME,
            "-brief",
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert "CONNECTION ESTABLISHED" in out, out
    assert f"CN = {NAME}" in out or f"CN={NAME}" in out, out
    assert "Protocol version: TLSv1." in out, out


def test_certificate_names_listener(lst: ThreadedListener) -> None:
    from cryptography import x509

    with (
        socket.create_connection((HOST, lst.port(993)), timeout=10) as raw,
        unverified().wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [NAME]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == [HOST]
    assert "exprobe listen" in cert.subject.rfc4514_string()


@pytest.mark.parametrize(("base", "greets"), [(993, True), (995, True), (465, True),
                                             (563, True), (636, False)])  # fmt: skip
def test_implicit_tls_client_hello_before_accept(
    lst: ThreadedListener, base: int, greets: bool
) -> None:
    """A ClientHello already waiting when the listener accepts must reach the TLS layer
    (found in the lab: sent right after the SYN/ACK, it was read as plaintext)."""
    blocked = threading.Event()

    def block() -> None:  # hold the listener's loop while the client connects and speaks
        blocked.set()
        time.sleep(0.5)

    lst._loop.call_soon_threadsafe(block)
    assert blocked.wait(10)
    with (
        socket.create_connection((HOST, lst.port(base)), timeout=10) as raw,
        unverified().wrap_socket(raw) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        if greets:
            assert tls.recv(4)  # the greeting, over TLS


def test_raw_cotp_cr_gets_cc_with_tsaps(lst: ThreadedListener) -> None:
    with socket.create_connection((HOST, lst.port(102)), timeout=10) as c:
        c.sendall(cotp.build_cr(src_ref=0x2A, calling_tsap=b"MTA1", called_tsap=b"MTA2"))
        head = _recv_exact(c, 4)
        cc = cotp.parse_tpkt(head + _recv_exact(c, cotp.tpkt_length(head) - 4))
        assert cc.kind == "CC"
        assert cc.dst_ref == 0x2A
        assert (cc.calling_tsap, cc.called_tsap, cc.tpdu_size) == (b"MTA1", b"MTA2", 1024)
        c.sendall(cotp.build_dr(cc.src_ref, 0x2A))
        assert c.recv(10) == b""  # class 0: a DR ends the connection
    (rec,) = lst.wait_records(102, 1)
    assert rec.actions[0] == "CR calling=MTA1 called=MTA2 size=1024"
    assert rec.outcome == "said goodbye"


def test_cotp_data_after_cc_gets_dr(lst: ThreadedListener) -> None:
    with socket.create_connection((HOST, lst.port(102)), timeout=10) as c:
        c.sendall(cotp.build_cr(calling_tsap=b"\x01\x00", called_tsap=b"\x01\x02"))
        head = _recv_exact(c, 4)
        _recv_exact(c, cotp.tpkt_length(head) - 4)
        c.sendall(cotp.build_dt(b"session connect"))
        head = _recv_exact(c, 4)
        dr = cotp.parse_tpkt(head + _recv_exact(c, cotp.tpkt_length(head) - 4))
        assert dr.kind == "DR"
        assert dr.reason == 2


def _recv_exact(c: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = c.recv(n - len(buf))
        if not chunk:
            raise AssertionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def _impacket_dce(port: int) -> Any:
    from impacket.dcerpc.v5 import transport

    t = transport.DCERPCTransportFactory(f"ncacn_ip_tcp:{HOST}[{port}]")
    t.set_connect_timeout(10)
    dce = t.get_dce_rpc()
    dce.connect()
    return dce


def test_impacket_hept_lookup(lst: ThreadedListener) -> None:
    from impacket.dcerpc.v5 import epm

    dce = _impacket_dce(lst.port(135))
    try:
        entries = epm.hept_lookup(None, dce=dce)
    finally:
        dce.disconnect()
    got = {
        (
            str(epm.PrintStringBinding(e["tower"]["Floors"])),
            e["tower"]["Floors"][0]["InterfaceUUID"],
        )
        for e in entries
    }
    bindings = {b for b, _ in got}
    assert bindings == {
        f"ncacn_ip_tcp:{HOST}[{p + lst.offset}]" for p in DEFAULT_STATIC_PORTS.values()
    }
    nspi = next(e for e in entries if b"NSPI" in bytes(e["annotation"]))
    assert str(epm.PrintStringBinding(nspi["tower"]["Floors"])).endswith(
        f"[{DEFAULT_STATIC_PORTS['ds'] + lst.offset}]"
    )
    assert len(entries) == 9  # DS 2, IS 4, MTA 1, SA 2


def test_impacket_hept_map(lst: ThreadedListener) -> None:
    from impacket.dcerpc.v5 import epm
    from impacket.dcerpc.v5.rpcrt import DCERPCException
    from impacket.uuid import uuidtup_to_bin

    dce = _impacket_dce(lst.port(135))
    try:
        is_binding = epm.hept_map(
            HOST,
            uuidtup_to_bin(("A4F1DB00-CA47-1067-B31F-00DD010662DA", "0.81")),
            protocol="ncacn_ip_tcp",
            dce=dce,
        )
        assert is_binding == f"ncacn_ip_tcp:{HOST}[{DEFAULT_STATIC_PORTS['is'] + lst.offset}]"
        mta = epm.hept_map(
            HOST,
            uuidtup_to_bin(("9E8EE830-4459-11CE-979B-00AA005FFEBE", "2.0")),
            protocol="ncacn_ip_tcp",
            dce=dce,
        )
        assert mta == f"ncacn_ip_tcp:{HOST}[{DEFAULT_STATIC_PORTS['mta'] + lst.offset}]"
        with pytest.raises(DCERPCException, match="ept_s_not_registered"):
            epm.hept_map(  # lsarpc: not an Exchange interface, not registered here
                HOST,
                uuidtup_to_bin(("12345778-1234-ABCD-EF00-0123456789AB", "0.0")),
                protocol="ncacn_ip_tcp",
                dce=dce,
            )
    finally:
        dce.disconnect()


def test_impacket_binds_to_the_static_ports(lst: ThreadedListener) -> None:
    from impacket.dcerpc.v5.rpcrt import DCERPCException
    from impacket.uuid import uuidtup_to_bin

    emsmdb = uuidtup_to_bin(("A4F1DB00-CA47-1067-B31F-00DD010662DA", "0.81"))
    nspi = uuidtup_to_bin(("F5CC5A18-4264-101A-8C59-08002B2F8426", "56.0"))
    dce = _impacket_dce(lst.port(DEFAULT_STATIC_PORTS["is"]))
    try:
        dce.bind(emsmdb)  # raises unless the context is accepted
    finally:
        dce.disconnect()
    dce = _impacket_dce(lst.port(DEFAULT_STATIC_PORTS["ds"]))
    try:
        with pytest.raises(DCERPCException, match=r"abstract_syntax_not_supported|rejected"):
            dce.bind(emsmdb)  # the store's interface is not on the directory's port
    finally:
        dce.disconnect()
    dce = _impacket_dce(lst.port(DEFAULT_STATIC_PORTS["ds"]))
    try:
        dce.bind(nspi)
    finally:
        dce.disconnect()


# -- plan, options and errors ---------------------------------------------------------------


def test_plan_registers_offset_static_ports_from_the_profile() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True, slots=True)
    class EpmParams(Params):
        expect_ds: int | None = None
        expect_is: int | None = None
        expect_mta: int | None = None
        components: tuple[str, ...] = ("ds", "is", "mta")

    plan = build_plan(
        [CheckDef("epm", "msrpc-epm", EpmParams(expect_ds=4000, expect_is=4001), 135)],
        port_offset=10000,
    )
    assert plan.static_ports == {"ds": 14000, "is": 14001, "mta": 11602}
    assert plan.ports() == [10135, 11602, 14000, 14001]
    assert plan.notes == ["no expected port for MTA (using 1602)"]
    plan = build_plan([CheckDef("epm", "msrpc-epm", EpmParams(components=("is",)), 135)])
    assert plan.static_ports == {"is": 1601}
    assert plan.notes == [
        "no pinned DS/IS/MTA ports given (msrpc-epm expect_ds/expect_is/expect_mta): "
        "registering the defaults IS 1601"
    ]


def test_plan_refuses_two_protocols_on_one_port() -> None:
    with pytest.raises(InputError, match="port 25: check b needs pop3 but a needs smtp"):
        build_plan([CheckDef("a", "smtp", Params(), 25), CheckDef("b", "pop3", Params(), 25)])
    # A TCP check shares any listener.
    plan = build_plan([CheckDef("t", "tcp", Params(), 25), CheckDef("s", "smtp", Params(), 25)])
    assert [(x.port, x.protocol, x.checks) for x in plan.listeners] == [(25, "smtp", ("t", "s"))]


@pytest.mark.parametrize(
    ("given_", "message"),
    [
        (["0.0.0.0"], "a wildcard answers on every interface"),
        (["::"], "a wildcard answers on every interface"),
        (["mail.example.com"], "not an IP address"),
        ([], "--bind ADDR is required"),
        (["224.0.0.1"], "multicast"),
    ],
)
def test_bind_addresses_refused(given_: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_bind_addresses(given_, allow_wildcard=False)


def test_bind_addresses_accepted() -> None:
    assert parse_bind_addresses(["10.0.0.5", "[fd00::5]", "10.0.0.5"], allow_wildcard=False) == [
        "10.0.0.5",
        "fd00::5",
    ]
    assert parse_bind_addresses(["0.0.0.0"], allow_wildcard=True) == ["0.0.0.0"]


def test_bind_error_texts() -> None:
    text = bind_error_text(BindError("10.0.0.5", 25, errno.EACCES, "Permission denied"), 0)
    assert text.startswith("cannot listen on 10.0.0.5:25: permission denied")
    assert "--port-offset 10000" in text
    text = bind_error_text(BindError("fd00::5", 135, errno.EADDRINUSE, "in use"), 0)
    assert text.startswith("cannot listen on [fd00::5]:135: the port is already in use")


# -- hostile input ----------------------------------------------------------------------------


def _raw(port: int, payload: bytes, *, read: bool = True) -> bytes:
    with socket.create_connection((HOST, port), timeout=10) as c:
        with contextlib.suppress(OSError):
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
        out = b""
        while read and len(out) < 1 << 20:
            try:
                chunk = c.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            out += chunk
        return out


@pytest.mark.parametrize("base", [25, 110, 143, 119])
def test_huge_line_is_refused_and_listener_lives(lst: ThreadedListener, base: int) -> None:
    before = len(lst.records_for(base))
    reply = _raw(lst.port(base), b"A" * 200_000)
    assert b"too long" in reply
    rec = lst.wait_records(base, before + 1)[-1]
    assert rec.outcome == "line longer than 4096 bytes"
    assert rec.bytes_in <= 8192
    # and the next client is served normally
    with socket.create_connection((HOST, lst.port(base)), timeout=10) as c:
        assert c.recv(100)


def test_pipelined_data_after_starttls_is_refused(lst: ThreadedListener) -> None:
    """CVE-2011-0411: bytes sent before the go-ahead must not be read as if over TLS."""
    before = len(lst.records_for(25))
    reply = _raw(lst.port(25), b"EHLO x\r\nSTARTTLS\r\nRSET\r\n")
    assert b"220 2.0.0 Ready to start TLS" in reply
    rec = lst.wait_records(25, before + 1)[-1]
    assert rec.outcome == "plaintext pipelined after STARTTLS (refused)"


@pytest.mark.parametrize(
    ("base", "outcome"),
    [
        (389, "not LDAP"),
        (102, "not RFC 1006"),
        (135, "not DCE/RPC"),
        (DEFAULT_STATIC_PORTS["is"], "not DCE/RPC"),
        (993, "TLS handshake failed"),
    ],
)
def test_binary_garbage_is_dropped(lst: ThreadedListener, base: int, outcome: str) -> None:
    before = len(lst.records_for(base))
    _raw(lst.port(base), b"\x16\x99GET / HTTP/1.0\r\n\r\n" + bytes(range(256)))
    rec = lst.wait_records(base, before + 1)[-1]
    assert rec.outcome.startswith(outcome), rec


def test_dce_truncated_and_oversized_pdus(lst: ThreadedListener) -> None:
    from exprobe.wire import dcerpc as d

    bind = d.build_bind(1, d.EPM_UUID, d.EPM_VERSION)
    before = len(lst.records_for(135))
    _raw(lst.port(135), bind[:30])  # frag_len says 72, 30 arrive, then EOF
    _raw(lst.port(135), bind[:8] + b"\xff\xff" + bind[10:])  # frag_len 65535, body short
    bad_ctx = bytearray(bind)
    bad_ctx[24] = 200  # 200 presentation contexts announced, one present
    _raw(lst.port(135), bytes(bad_ctx))
    recs = lst.wait_records(135, before + 3)[before:]
    assert [r.outcome for r in recs].count("peer closed mid-message") == 2, recs
    assert any(r.outcome.startswith("bad bind") for r in recs), recs
    no_responder_errors(lst)


def test_unbound_request_gets_fault(lst: ThreadedListener) -> None:
    from exprobe.wire import dcerpc as d

    reply = _raw(lst.port(135), d.build_request(7, 2, d.build_ept_lookup_stub())[0])
    fault = d.parse_fault(reply)
    assert (fault.call_id, fault.status) == (7, d.NCA_S_UNK_IF)


FUZZ_PORTS = (25, 110, 143, 119, 389, 102, 135, 1601, 8080)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(base=st.sampled_from(FUZZ_PORTS), payload=st.binary(max_size=600))
def test_fuzz_any_bytes_never_break_a_responder(
    lst: ThreadedListener, base: int, payload: bytes
) -> None:
    before = len(lst.records_for(base))
    _raw(lst.port(base), payload)
    lst.wait_records(base, before + 1)
    no_responder_errors(lst)


def test_silent_client_times_out_and_flood_is_capped() -> None:
    """Slow clients are cut at the idle timeout; connections above the limit are closed at
    once; the listener serves normally afterwards."""
    t = ThreadedListener([CheckDef("smtp", "smtp", Params(), 25)], idle_timeout=0.5,
                         max_connections=5)  # fmt: skip
    try:
        port = t.port(25)
        held = [socket.create_connection((HOST, port), timeout=10) for _ in range(5)]
        for c in held:  # all five greeted: they hold the five slots
            assert c.recv(200).startswith(b"220 ")
        extra = [socket.create_connection((HOST, port), timeout=10) for _ in range(20)]
        for c in extra:
            with contextlib.suppress(ConnectionResetError):
                assert c.recv(200) == b""  # closed without a word
            c.close()
        # The held ones say nothing: the idle timeout ends them.
        for c in held:
            with contextlib.suppress(ConnectionResetError):
                assert c.recv(200) == b""
            c.close()
        recs = t.wait_records(25, 25)
        over = [r for r in recs if r.outcome.startswith("closed at once: 5 connections")]
        timed = [r for r in recs if r.outcome.startswith("timed out")]
        assert (len(over), len(timed)) == (20, 5)
        assert t.server is not None
        assert t.server.over_limit == 20
        s = smtplib.SMTP(HOST, port, timeout=10)
        assert s.ehlo()[0] == 250
        s.quit()
        s.close()
    finally:
        t.close()


def test_records_are_json_and_escaped_on_screen(lst: ThreadedListener) -> None:
    from rich.console import Console

    from exprobe.commands.listen import record_line

    before = len(lst.records_for(25))
    _raw(lst.port(25), b"EHLO \x1b[31mred\x1b]0;title\x07\r\nQUIT\r\n")
    rec = lst.wait_records(25, before + 1)[-1]
    json.dumps(rec.to_dict())
    console = Console(file=None, record=True, width=300, color_system=None)
    console.print(record_line(rec))
    text = console.export_text()
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "EHLO \\x1b[31mred" in text


# -- exprobe's own probes, end to end ---------------------------------------------------------


def test_exprobe_run_exchange55_against_listen_passes() -> None:
    """`exprobe listen -p exchange55 --port-offset N` + `exprobe run -p exchange55
    --port-offset N`: every scenario passes (the EPM's ports are not offset twice)."""
    from exprobe.profile import load_profile

    defs, scenarios = load_profile("exchange55").select([])
    t = ThreadedListener(defs)
    try:
        proc = exprobe(
            "run", HOST, "-p", "exchange55", "--port-offset", str(t.offset), "--format", "json"
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = validate_report(json.loads(proc.stdout))
        verdicts = report["targets"][0]["scenarios"]
        assert {v["id"] for v in verdicts} == {s.id for s in scenarios}
        assert all(v["verdict"] == "pass" for v in verdicts), verdicts
        results = report["targets"][0]["results"]
        derived = sorted((r["facts"].get("component"), r["port"], r["status"])
                         for r in results if r.get("parent"))  # fmt: skip
        # The endpoint mapper hands out the offset ports, and run does not add N again.
        assert derived == [
            ("ds", 1600 + t.offset, "success"),
            ("is", 1601 + t.offset, "success"),
            ("mta", 1602 + t.offset, "success"),
        ]
        # Every listener was reached (SA is not among the profile's components).
        assert t.server is not None
        assert t.server.summary()["never_reached"] == []
        no_responder_errors(t)
    finally:
        t.close()


# -- the command itself -----------------------------------------------------------------------


class ListenProcess:
    """`python -m exprobe listen ...` in its own session; stdout lines collected by a thread."""

    def __init__(self, *args: str) -> None:
        import queue
        import sys

        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.stderr = ""
        self.eof = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exprobe", "listen", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 20.0) -> str | None:
        """The first line containing `text`; None if the process ended first."""
        import queue

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                self.eof = True
                return None
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not seen within {timeout}s: {self.seen}")

    def finish(self, sig: int | None = signal.SIGTERM, timeout: float = 20.0) -> str:
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            assert self.proc.stderr is not None
            self.proc.stderr.close()
            raise
        while not self.eof:
            line = self.lines.get(timeout=10)
            if line is None:
                self.eof = True
            else:
                self.seen.append(line)
        assert self.proc.stderr is not None
        with self.proc.stderr:
            self.stderr = self.proc.stderr.read()
        return "\n".join(self.seen)


def start_listen(*args: str, offsets: list[int] | None = None) -> tuple[ListenProcess, int]:
    """A listener CLI at the first free offset (another test run may hold one)."""
    if offsets is None:
        offsets = list(OFFSETS)
        random.shuffle(offsets)
    for offset in offsets:
        lp = ListenProcess("--bind", HOST, "--port-offset", str(offset), *args)
        if lp.wait_for("listening ") is not None:
            return lp, offset
        lp.finish(None)
        err = lp.stderr
        assert lp.proc.returncode == 2, err
        assert "already in use" in err, err
    raise AssertionError("no free offset")


def test_listen_cli_logs_each_connection_and_summarises_on_sigterm(tmp_path: Path) -> None:
    log, ca = tmp_path / "listen.jsonl", tmp_path / "ca.pem"
    lp, offset = start_listen(
        "--check", "smtp:25:starttls", "--check", "pop3", "--log-json", str(log),
        "--ca-out", str(ca), "--name", NAME,
    )  # fmt: skip
    try:
        head = "\n".join(lp.seen)
        assert f"2 ports on {HOST} for ad hoc checks, port offset +{offset}" in head
        assert f"--port-offset {offset} --ca-file {ca}" in head
        # A verifying client that trusts the rehearsal CA: no certificate complaint.
        proc = exprobe(
            "run", HOST, "--check", "smtp:25:starttls", "--port-offset", str(offset),
            "--ca-file", str(ca), "--tls-verify", "--format", "json",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (r,) = json.loads(proc.stdout)["targets"][0]["results"]
        assert (r["status"], r["facts"]["cert_trusted"], r["warnings"]) == ("success", True, [])
        line = lp.wait_for(f"→ {25 + offset}/smtp")
        assert line is not None
        assert "· STARTTLS · TLS TLSv1." in line
        assert line.endswith("[said goodbye]", 0, line.rindex(" "))
    finally:
        out = lp.finish(signal.SIGTERM)
    assert lp.proc.returncode == 0, lp.stderr
    assert "terminated: 1 connections" in out
    assert f"never reached: {110 + offset}" in out
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["type"] for r in records] == ["listening", "connection", "summary"]
    assert records[0]["addresses"] == [HOST]
    assert records[0]["port_offset"] == offset
    conn = records[1]
    assert (conn["peer"], conn["port"], conn["protocol"]) == (HOST, 25 + offset, "smtp")
    assert conn["actions"][1:3] == ["STARTTLS", f"TLS {conn['tls']}"]
    assert records[2]["never_reached"] == [110 + offset]
    assert records[2]["reached"] == [25 + offset]


def test_listen_cli_port_in_use_is_one_line_and_nothing_stays_open() -> None:
    def free(port: int) -> bool:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))  # Linux refuses a port that has a listener
            except OSError:
                return False
            return True

    # An offset whose 8080 is free (the module's listener holds 8080 at its own offset)
    # and whose 8081 the squatter takes.
    shuffled = random.sample(OFFSETS, len(OFFSETS))
    first = next((o for o in shuffled if free(8080 + o) and free(8081 + o)), None)
    if first is None:
        pytest.skip("no offset with both ports free")
    others = [o for o in shuffled if o != first]
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((HOST, 8081 + first))
        squatter.listen(1)
        lp, offset = start_listen("--port", "8080", "--port", "8081", offsets=[first, *others])
        out = lp.finish(signal.SIGTERM)
    assert offset != first
    assert lp.proc.returncode == 0, lp.stderr
    assert "terminated: 0 connections" in out
    # The failed attempt closed what it had opened before hitting the busy port.
    with socket.socket() as probe:
        assert probe.connect_ex((HOST, 8080 + first)) == errno.ECONNREFUSED


def test_listen_cli_sigint_and_duration(tmp_path: Path) -> None:
    lp, _ = start_listen("--port", "8080")
    out = lp.finish(signal.SIGINT)
    assert lp.proc.returncode == 0
    assert "interrupted: 0 connections" in out
    lp, _ = start_listen("--port", "8080", "--duration", "0.5")
    out = lp.finish(None)
    assert lp.proc.returncode == 0
    assert "stopped: 0 connections" in out


def test_listen_cli_privileged_port_without_privileges() -> None:
    """Without CAP_NET_BIND_SERVICE (dropped from the bounding set, root or not), port 25
    cannot be bound: one line naming the fix, exit 2."""
    import sys

    cmd = ["setpriv", "--bounding-set", "-net_bind_service", "--inh-caps", "-net_bind_service",
           sys.executable, "-m", "exprobe", "listen", "--bind", HOST, "--check", "smtp"]  # fmt: skip
    if Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip() != "1024":
        # This machine lets anyone bind low ports; the sysctl is per network namespace and
        # a new one starts at the kernel's default, 1024.
        cmd = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    proc = subprocess.run(
        cmd,
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        f"exprobe: error: cannot listen on {HOST}:25: permission denied (ports below 1024 "
        "need root or CAP_NET_BIND_SERVICE; rehearse unprivileged with --port-offset 10000 "
        "(and `exprobe run --port-offset 10000` on the client side))"
    )
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bind", "0.0.0.0", "--port", "8080"], "--bind 0.0.0.0: a wildcard answers"),
        (["--port", "8080"], "--bind ADDR is required"),
        (["--bind", HOST], "nothing to listen for"),
        (["--bind", HOST, "-p", "exchange55", "--port", "1"], "exclude each other"),
        (["--bind", HOST, "-p", "exchange55", "--scenario", "nope"], "no such scenario"),
        (["--bind", HOST, "--port", "8080", "--name", "bad name"], "not a host name"),
        (["--bind", "192.0.2.77", "--port", "8080", "--port-offset", "20000"],
         "192.0.2.77 is not an address of this machine"),
    ],
)  # fmt: skip
def test_listen_cli_input_errors(args: list[str], message: str) -> None:
    proc = exprobe("listen", *args, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
