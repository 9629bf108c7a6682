"""`ldap` and `rfc1006` against scripted peers on 127.0.0.1: the unhappy paths.

Each peer plays one misbehaviour (silence, absurd BER length, short TPKT, DR, ER,
garbage, early close, error result codes, refused StartTLS); each test asserts the exact
status, failed step and facts.  The success paths are proven against real servers in
tests/test_probes_ldap_rfc1006_lab.py; the scripted successes here only check what a
real server cannot show (what exactly went over the wire, and when).

The password tests run the real CLI and assert the secret never leaves the process
except inside the bind request, and never before TLS unless the user allowed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from exprobe.commands.common import parse_check_option
from exprobe.engine.runner import RunOptions, run_check
from exprobe.errors import InputError
from exprobe.net.tls import TlsOptions
from exprobe.probes.base import CheckSpec, Params, make_params
from exprobe.probes.ldap import LdapParams
from exprobe.probes.rfc1006 import Rfc1006Params
from exprobe.result import CheckResult
from exprobe.wire import cotp
from exprobe.wire import ldap as w

ROOT = Path(__file__).resolve().parent.parent
LIFETIME = 10.0  # no scripted connection outlives this
SECRET = "Zq9-hunter2-7f3e"  # must never be printed
USER_DN = "uid=labuser,ou=people,dc=lab,dc=test"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def peer(handler: Handler, *, settle: bool = False) -> AsyncIterator[int]:
    """Serve `handler` on an ephemeral loopback port; every connection is cancelled at exit.

    `settle`: first let the connections finish reading what the client sent last (the
    client has closed by then, so they end at EOF), bounded by 2 s.
    """
    tasks: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(LIFETIME):
                await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()

    def spawn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(run(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(spawn, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        if settle and tasks:
            await asyncio.wait(set(tasks), timeout=2.0)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def check(
    probe: str, port: int, params: Params, *, deadline: float = 3.0, ca: str | None = None
) -> CheckResult:
    """One check through the real runner, with `deadline` as the whole-check timeout."""
    spec = CheckSpec(f"{probe}:{port}", probe, "127.0.0.1", port, params, "127.0.0.1")
    opts = RunOptions(timeout=deadline, connect_timeout=1.0, tls=TlsOptions(ca_file=ca))
    return (await run_check(spec, opts)).result


async def read_ldap(reader: asyncio.StreamReader) -> w.LdapMessage:
    buf = b""
    for _ in range(4):
        need = w.bytes_needed(buf)
        if need == 0:
            break
        buf += await reader.readexactly(need)
    return w.decode_message(buf)


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    await asyncio.sleep(LIFETIME)


async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def close_after_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    writer.close()


def reply_once(data: bytes, *, then_sleep: bool = True) -> Handler:
    """Read the client's first request, answer with `data`, then stay (or hang up)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(data)
        await writer.drain()
        if then_sleep:
            await asyncio.sleep(LIFETIME)

    return handler


ROOTDSE = {
    "objectClass": ["top", "OpenLDAProotDSE"],
    "namingContexts": ["dc=lab,dc=test"],
    "supportedLDAPVersion": ["3"],
    "supportedExtension": [w.STARTTLS_OID],
}


@dataclass
class Directory:
    """A scripted LDAP server whose answers are set per test; it records what it saw."""

    bind_codes: dict[int, int] = field(default_factory=dict)  # anonymous: version -> code
    auth_code: int = 0
    auth_diag: str = ""
    rootdse: dict[str, list[str]] | None = field(default_factory=lambda: dict(ROOTDSE))
    search_code: int = 0
    starttls_code: int = 0
    tls: ssl.SSLContext | None = None
    silent_on: str | None = None  # op name to never answer
    seen: list[tuple[w.LdapMessage, bool]] = field(default_factory=list)  # (message, over TLS)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        over_tls = False
        for _ in range(20):
            msg = await read_ldap(reader)
            self.seen.append((msg, over_tls))
            mid = msg.message_id
            if msg.op == self.silent_on:
                await asyncio.sleep(LIFETIME)
            if msg.op == "bindRequest":
                if msg.name:
                    out = w.encode_bind_response(mid, self.auth_code, diagnostic=self.auth_diag)
                else:
                    out = w.encode_bind_response(mid, self.bind_codes.get(msg.version or 0, 0))
            elif msg.op == "searchRequest":
                out = b""
                if self.rootdse is not None and self.search_code == 0:
                    out = w.encode_search_entry(mid, "", self.rootdse)
                out += w.encode_search_done(mid, self.search_code)
            elif msg.op == "extendedReq":
                out = w.encode_extended_response(
                    mid, self.starttls_code, diagnostic="" if self.starttls_code == 0 else "no"
                )
            else:
                return  # unbind
            writer.write(out)
            await writer.drain()
            if msg.op == "extendedReq" and self.starttls_code == 0 and self.tls is not None:
                await writer.start_tls(self.tls)
                over_tls = True

    def ops(self) -> list[str]:
        return [m.op for m, _ in self.seen]

    def dn_binds(self) -> list[tuple[w.LdapMessage, bool]]:
        return [(m, t) for m, t in self.seen if m.op == "bindRequest" and m.name]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


# -- LDAP: silence, framing, garbage, close ---------------------------------------------


async def test_ldap_silent_peer_is_io_timeout_at_bind() -> None:
    async with peer(silent) as port:
        r = await check("ldap", port, LdapParams(), deadline=0.5)
    assert (r.status, r.failed_step, r.port_state) == ("io-timeout", "bind", "open")


async def test_ldap_silent_after_bind_is_io_timeout_at_rootdse() -> None:
    d = Directory(silent_on="searchRequest")
    async with peer(d) as port:
        r = await check("ldap", port, LdapParams(), deadline=0.5)
    assert (r.status, r.failed_step) == ("io-timeout", "rootdse")
    assert r.facts["ldap_version_used"] == 3


async def test_ldap_ber_length_2_pow_31_is_refused_at_once_in_bounded_memory() -> None:
    # 30 84 80000000: an LDAPMessage announcing 2 GiB, then a trickle of content.
    async with peer(reply_once(b"\x30\x84\x80\x00\x00\x00" + b"\x00" * 4096)) as port:
        tracemalloc.start()
        try:
            r = await check("ldap", port, LdapParams(), deadline=5.0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (r.status, r.failed_step) == ("protocol-error", "bind")
    assert "2147483648 bytes" in r.message
    assert peak < 4 << 20, f"peak {peak} bytes"


async def test_ldap_message_above_64k_is_refused() -> None:
    big = w.encode_search_entry(2, "", {"namingContexts": ["x" * 70000]})

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        msg = await read_ldap(reader)
        writer.write(w.encode_bind_response(msg.message_id))
        await read_ldap(reader)
        writer.write(big)
        await writer.drain()
        await asyncio.sleep(LIFETIME)

    async with peer(handler) as port:
        r = await check("ldap", port, LdapParams())
    assert (r.status, r.failed_step) == ("protocol-error", "rootdse")
    assert "limit 65536" in r.message


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "first byte 0x48"),
        (b"\x30\x05\xff\xff\xff\xff\xff", "malformed LDAP message"),
        (b"\x30\x80\x02\x01\x01\x00\x00", "indefinite length"),
        (bytes(range(256)), "first byte 0x00"),
    ],
)
async def test_ldap_garbage_is_protocol_error(data: bytes, reason: str) -> None:
    async with peer(reply_once(data)) as port:
        r = await check("ldap", port, LdapParams())
    assert (r.status, r.failed_step) == ("protocol-error", "bind")
    assert reason in r.message


@pytest.mark.parametrize("handler", [close_at_once, close_after_request])
async def test_ldap_early_close_is_connection_closed(handler: Handler) -> None:
    async with peer(handler) as port:
        r = await check("ldap", port, LdapParams())
    assert (r.status, r.failed_step) == ("connection-closed", "bind")


async def test_ldap_close_mid_message_is_connection_closed() -> None:
    partial = w.encode_bind_response(1)[:6]
    async with peer(reply_once(partial, then_sleep=False)) as port:
        r = await check("ldap", port, LdapParams())
    assert (r.status, r.failed_step) == ("connection-closed", "bind")


# -- LDAP: result codes and sequencing ----------------------------------------------------


async def test_ldap_anonymous_bind_refused_49_is_application_error() -> None:
    d = Directory(bind_codes={3: 49})
    async with peer(d) as port:
        r = await check("ldap", port, LdapParams())
    assert (r.status, r.failed_step) == ("application-error", "bind")
    assert r.message == "anonymous LDAPv3 bind refused: 49 invalidCredentials"
    assert d.ops() == ["bindRequest"]


async def test_ldap_protocol_error_falls_back_to_v2() -> None:
    d = Directory(bind_codes={3: 2}, search_code=32)  # an LDAPv2 server: no rootDSE
    async with peer(d, settle=True) as port:
        r = await check("ldap", port, LdapParams())
    assert r.status == "success", r.message
    assert r.facts["ldap_version_used"] == 2
    assert r.facts["bind_v3_result"] == "2 protocolError"
    assert [m.version for m, _ in d.seen if m.op == "bindRequest"] == [3, 2]
    assert r.warnings == ("no rootDSE over LDAPv2 (32 noSuchObject)",)
    assert d.ops() == ["bindRequest", "bindRequest", "searchRequest", "unbindRequest"]
    assert any("retrying as LDAPv2" in line for line in r.transcript)


async def test_ldap_version_2_param_binds_v2_only() -> None:
    d = Directory(bind_codes={2: 2})
    async with peer(d) as port:
        r = await check("ldap", port, LdapParams(version=2))
    assert (r.status, r.failed_step) == ("application-error", "bind")
    assert r.message == "anonymous LDAPv2 bind refused: 2 protocolError"
    assert [m.version for m, _ in d.seen] == [2]


async def test_ldap_rootdse_refused_on_v3_is_application_error() -> None:
    d = Directory(search_code=50)
    async with peer(d) as port:
        r = await check("ldap", port, LdapParams())
    assert (r.status, r.failed_step) == ("application-error", "rootdse")
    assert r.message == "rootDSE search refused: 50 insufficientAccessRights"


async def test_ldap_wrong_message_id_is_protocol_error() -> None:
    async with peer(reply_once(w.encode_bind_response(7))) as port:
        r = await check("ldap", port, LdapParams())
    assert (r.status, r.failed_step) == ("protocol-error", "bind")
    assert r.message == "answer to message 7 (bindResponse), expected 1"


async def test_ldap_wrong_operation_is_protocol_error() -> None:
    async with peer(reply_once(w.encode_search_done(1))) as port:
        r = await check("ldap", port, LdapParams())
    assert (r.status, r.failed_step) == ("protocol-error", "bind")
    assert r.message == "got searchResDone to message 1, expected bindResponse"


async def test_ldap_notice_of_disconnection_is_application_error() -> None:
    notice = w.encode_extended_response(
        0, 52, diagnostic="server shutting down", response_name=w.NOTICE_OF_DISCONNECTION_OID
    )
    async with peer(reply_once(notice)) as port:
        r = await check("ldap", port, LdapParams())
    assert (r.status, r.failed_step) == ("application-error", "bind")
    assert r.message == (
        "server sent a Notice of Disconnection: 52 unavailable: server shutting down"
    )


async def test_ldap_endless_search_references_are_cut_off() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        msg = await read_ldap(reader)
        writer.write(w.encode_bind_response(msg.message_id))
        msg = await read_ldap(reader)
        entry = w.encode_search_entry(msg.message_id, "", ROOTDSE)
        for _ in range(100):
            writer.write(entry)
        await writer.drain()
        await asyncio.sleep(LIFETIME)

    async with peer(handler) as port:
        r = await check("ldap", port, LdapParams())
    assert (r.status, r.failed_step) == ("protocol-error", "rootdse")
    assert r.message == "no searchResDone after 8 search messages"


@pytest.mark.parametrize(("code", "text"), [(2, "2 protocolError: no"), (52, "52 unavailable: no")])
async def test_ldap_starttls_refused_is_application_error(code: int, text: str) -> None:
    d = Directory(starttls_code=code)
    async with peer(d) as port:
        r = await check("ldap", port, LdapParams(tls="starttls"))
    assert (r.status, r.failed_step) == ("application-error", "starttls")
    assert r.message == f"StartTLS refused: {text}"
    assert r.facts["starttls_offered"] is True


async def test_ldap_starttls_refused_names_missing_advertisement() -> None:
    d = Directory(starttls_code=2, rootdse={"namingContexts": ["o=x"]})
    async with peer(d) as port:
        r = await check("ldap", port, LdapParams(tls="starttls"))
    assert (r.status, r.failed_step) == ("application-error", "starttls")
    assert r.message == "StartTLS refused (the rootDSE does not list StartTLS): 2 protocolError: no"
    assert r.facts["starttls_offered"] is False


async def test_ldap_silent_at_starttls_is_io_timeout() -> None:
    d = Directory(silent_on="extendedReq")
    async with peer(d) as port:
        r = await check("ldap", port, LdapParams(tls="starttls"), deadline=0.5)
    assert (r.status, r.failed_step) == ("io-timeout", "starttls")


async def test_ldap_rootdse_values_are_bounded() -> None:
    d = Directory(rootdse={"supportedExtension": [f"1.2.{i}" for i in range(500)]})
    async with peer(d) as port:
        r = await check("ldap", port, LdapParams())
    assert r.status == "success"
    assert len(r.facts["supported_extensions"]) == 64


# -- LDAP: the password ------------------------------------------------------------------


def test_ldap_params_refuse_a_clear_text_password_and_partial_credentials() -> None:
    with pytest.raises(InputError, match="clear text"):
        make_params(LdapParams, {"bind_dn": USER_DN, "password_env": "X"}, "t")
    with pytest.raises(InputError, match="need bind_dn"):
        make_params(LdapParams, {"password_env": "X", "tls": "starttls"}, "t")
    with pytest.raises(InputError, match="never taken from the command line"):
        make_params(LdapParams, {"bind_dn": USER_DN, "tls": "starttls"}, "t")
    with pytest.raises(InputError, match="not both"):
        make_params(
            LdapParams,
            {"bind_dn": USER_DN, "password_env": "X", "password_file": "/f", "tls": "implicit"},
            "t",
        )
    with pytest.raises(InputError, match="version must be 2 or 3"):
        make_params(LdapParams, {"version": "4"}, "t")
    ok = make_params(
        LdapParams,
        {"bind_dn": USER_DN, "password_env": "X", "allow_plaintext": "true", "version": "2"},
        "t",
    )
    assert (ok.allow_plaintext, ok.version) == (True, 2)


async def _run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exprobe",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **env},
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("fmt", ["json", "table"])
async def test_password_never_printed_when_the_bind_is_refused(fmt: str) -> None:
    # The peer refuses the bind and, to be nasty, echoes the password in its diagnostic.
    d = Directory(auth_code=49, auth_diag=f"bad password {SECRET} for {USER_DN}")
    async with peer(d) as port:
        rc, out, err = await _run_cli(
            "check", "127.0.0.1", "ldap", "--port", str(port), "--format", fmt,
            "--set", f"bind_dn={USER_DN}", "--set", "password_env=XP_TEST_SECRET",
            "--set", "allow_plaintext=true",
            env={"XP_TEST_SECRET": SECRET},
        )  # fmt: skip
    # The bind really carried the secret (so its absence below means something) ...
    ((bind, _),) = d.dn_binds()
    assert bind.password == SECRET.encode()
    # ... and it appears nowhere in what exprobe printed.
    assert rc == 1
    assert SECRET not in out
    assert SECRET not in err
    assert "<password redacted>" in out
    if fmt == "json":
        (res,) = [r for t in json.loads(out)["targets"] for r in t["results"]]
        assert (res["status"], res["failed_step"]) == ("application-error", "auth-bind")
        assert res["message"] == (
            f"bind as {USER_DN} refused: 49 invalidCredentials: "
            f"bad password <password redacted> for {USER_DN}"
        )
        assert SECRET not in json.dumps(res)
    else:
        assert "failed at step: auth-bind" in out
        assert "49 invalidCredentials" in out


async def test_password_goes_only_over_starttls(
    server_tls: ssl.SSLContext, ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XP_TEST_SECRET", SECRET)
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    d = Directory(tls=server_tls)
    params = LdapParams(tls="starttls", bind_dn=USER_DN, password_env="XP_TEST_SECRET")
    async with peer(d, settle=True) as port:
        r = await check("ldap", port, params, ca=str(cafile))
    assert r.status == "success", r.message
    assert r.facts["bound_as"] == USER_DN
    assert r.facts["tls_version"].startswith("TLS")
    assert r.facts["cert_san"] == ["IP:127.0.0.1"]
    ((bind, over_tls),) = d.dn_binds()
    assert over_tls is True
    assert bind.password == SECRET.encode()
    assert d.ops() == [
        "bindRequest",
        "searchRequest",
        "extendedReq",
        "bindRequest",
        "unbindRequest",
    ]
    assert [s["step"] for s in r.steps] == [
        "connect",
        "bind",
        "rootdse",
        "starttls",
        "tls-handshake",
        "auth-bind",
        "unbind",
    ]
    assert SECRET not in json.dumps(r.to_dict(verbose=True), default=str)
    assert any("<password redacted>" in line for line in r.transcript)


async def test_password_not_sent_when_starttls_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XP_TEST_SECRET", SECRET)
    d = Directory(starttls_code=52)
    params = LdapParams(tls="starttls", bind_dn=USER_DN, password_env="XP_TEST_SECRET")
    async with peer(d) as port:
        r = await check("ldap", port, params)
    assert (r.status, r.failed_step) == ("application-error", "starttls")
    assert d.dn_binds() == []


async def test_missing_password_env_fails_before_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XP_TEST_NO_SUCH_VAR", raising=False)
    d = Directory()
    params = LdapParams(tls="none", bind_dn=USER_DN, password_env="XP_TEST_NO_SUCH_VAR",
                        allow_plaintext=True)  # fmt: skip
    async with peer(d) as port:
        r = await check("ldap", port, params)
    assert (r.status, r.failed_step) == ("internal-error", "auth-bind")
    assert r.message == "environment variable XP_TEST_NO_SUCH_VAR is not set"
    assert d.dn_binds() == []


async def test_password_file_loses_only_its_trailing_newline(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SECRET + " \n")  # a trailing space is part of the password
    d = Directory()
    params = LdapParams(bind_dn=USER_DN, password_file=str(pw), allow_plaintext=True)
    async with peer(d) as port:
        r = await check("ldap", port, params)
    assert r.status == "success", r.message
    ((bind, over_tls),) = d.dn_binds()
    assert (bind.password, over_tls) == ((SECRET + " ").encode(), False)

    empty = tmp_path / "empty"
    empty.write_text("\n")
    d = Directory()
    params = LdapParams(bind_dn=USER_DN, password_file=str(empty), allow_plaintext=True)
    async with peer(d) as port:
        r = await check("ldap", port, params)
    assert (r.status, r.failed_step, r.message) == (
        "internal-error",
        "auth-bind",
        "the bind password is empty",
    )
    assert d.dn_binds() == []


# -- RFC 1006 ---------------------------------------------------------------------------


def tpkt(length: int, rest: bytes = b"") -> bytes:
    return bytes((3, 0)) + length.to_bytes(2, "big") + rest


async def test_rfc1006_silent_peer_is_io_timeout_at_cotp_cc() -> None:
    async with peer(silent) as port:
        r = await check("rfc1006", port, Rfc1006Params(), deadline=0.5)
    assert (r.status, r.failed_step) == ("io-timeout", "cotp-cc")


@pytest.mark.parametrize("length", [0, 3])
async def test_rfc1006_short_tpkt_length_is_protocol_error(length: int) -> None:
    async with peer(reply_once(tpkt(length, b"\x02\xd0\x00"))) as port:
        r = await check("rfc1006", port, Rfc1006Params())
    assert (r.status, r.failed_step) == ("protocol-error", "cotp-cc")
    assert r.message == f"TPKT length {length} is too short for a TPDU (minimum 7)"


async def test_rfc1006_dr_is_application_error_with_reason() -> None:
    async with peer(reply_once(cotp.build_dr(0x002A, 0x0001, 3))) as port:
        r = await check("rfc1006", port, Rfc1006Params(called_tsap="MTA9"))
    assert (r.status, r.failed_step) == ("application-error", "cotp-cc")
    assert r.message == "Disconnect Request: reason 0x03 (address unknown)"
    assert (r.facts["dr_reason"], r.facts["dr_reason_text"]) == (3, "address unknown")


async def test_rfc1006_er_is_application_error_with_cause() -> None:
    async with peer(reply_once(cotp.build_er(0x002A, 3, b"\xc0"))) as port:
        r = await check("rfc1006", port, Rfc1006Params())
    assert (r.status, r.failed_step) == ("application-error", "cotp-cc")
    assert r.message == "Error TPDU: cause 0x03 (invalid parameter value)"
    assert r.facts["er_cause"] == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not RFC 1006: TPKT version 83, expected 3"),
        (cotp.build_dt(b"hello"), "expected a Connection Confirm, got a DT TPDU"),
        (
            cotp.encode_tpkt(bytes.fromhex("0230ff")),
            "expected a Connection Confirm, got a 0x30 TPDU",
        ),
        (tpkt(9, b"\x20\xd0\x00\x00\x00"), "COTP length indicator 32 exceeds the TPKT (5 bytes)"),
    ],
)
async def test_rfc1006_garbage_is_protocol_error(data: bytes, message: str) -> None:
    async with peer(reply_once(data)) as port:
        r = await check("rfc1006", port, Rfc1006Params())
    assert (r.status, r.failed_step) == ("protocol-error", "cotp-cc")
    assert r.message == message


@pytest.mark.parametrize("handler", [close_at_once, close_after_request])
async def test_rfc1006_early_close_is_connection_closed(handler: Handler) -> None:
    async with peer(handler) as port:
        r = await check("rfc1006", port, Rfc1006Params())
    assert (r.status, r.failed_step) == ("connection-closed", "cotp-cc")


async def test_rfc1006_truncated_tpkt_is_connection_closed() -> None:
    async with peer(reply_once(tpkt(22, b"\x11\xd0\x00"), then_sleep=False)) as port:
        r = await check("rfc1006", port, Rfc1006Params())
    assert (r.status, r.failed_step) == ("connection-closed", "cotp-cc")


async def test_rfc1006_sends_the_configured_cr_and_a_dr_after_the_cc() -> None:
    seen: list[cotp.Tpdu] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            header = await reader.readexactly(4)
            tpdu = cotp.parse_tpdu(await reader.readexactly(cotp.tpkt_length(header) - 4))
            seen.append(tpdu)
            if tpdu.kind == "CR":
                writer.write(cotp.build_cc(tpdu, src_ref=0x4578, tpdu_size=512))
                await writer.drain()

    params = Rfc1006Params(calling_tsap="MTA1", called_tsap="hex:0102", tpdu_size=2048)
    async with peer(handler, settle=True) as port:
        r = await check("rfc1006", port, params)
    assert r.status == "success", r.message
    cr, dr = seen
    assert (cr.kind, cr.src_ref, cr.class_option, cr.tpdu_size) == ("CR", 0x002A, 0, 2048)
    assert (cr.calling_tsap, cr.called_tsap) == (b"MTA1", b"\x01\x02")
    assert (dr.kind, dr.dst_ref, dr.src_ref, dr.reason) == ("DR", 0x4578, 0x002A, 128)
    assert r.facts == {
        "tpdu": "CC",
        "tpdu_size_requested": 2048,
        "tpdu_size_accepted": 512,
        "calling_tsap_echoed": "MTA1",
        "called_tsap_echoed": "0x0102",
        "src_ref": "0x4578",
        "dst_ref": "0x002a",
        "class": 0,
    }
    assert r.warnings == ()
    assert [s["step"] for s in r.steps] == ["connect", "cotp-cr", "cotp-cc", "cotp-dr"]


async def test_rfc1006_odd_cc_gives_warnings() -> None:
    # dst-ref 0x0999 (not ours), class 4, TPDU size raised to 8192, no TSAPs.
    odd = cotp.encode_tpkt(bytes.fromhex("09d00999000140c0010d"))
    async with peer(reply_once(odd)) as port:
        r = await check("rfc1006", port, Rfc1006Params(tpdu_size=128))
    assert r.status == "success"
    assert r.warnings == (
        "the CC references 0x0999, the CR used 0x002a",
        "the CC selects class 4; only class 0 was proposed",
        "the CC raises the TPDU size to 8192 (only lowering is allowed)",
    )
    assert (r.facts["calling_tsap_echoed"], r.facts["called_tsap_echoed"]) == (None, None)


def test_rfc1006_params_are_validated() -> None:
    with pytest.raises(InputError, match="tpdu_size 1000 is not one of 128, 256"):
        make_params(Rfc1006Params, {"tpdu_size": "1000"}, "t")
    with pytest.raises(InputError, match="not an even number of hex digits"):
        make_params(Rfc1006Params, {"called_tsap": "0x123"}, "t")
    with pytest.raises(InputError, match="does not speak TLS"):
        parse_check_option("rfc1006:102:starttls")
    with pytest.raises(ValueError, match="rfc1006 has no TLS"):
        Rfc1006Params(tls="implicit")
    p = make_params(Rfc1006Params, {"tpdu_size": "0x2000", "calling_tsap": "MTA1"}, "t")
    assert (p.tpdu_size, p.calling_tsap) == (8192, "MTA1")
