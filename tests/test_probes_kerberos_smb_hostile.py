"""`kerberos`, `smb` and `ldap`'s AD additions against scripted peers: the unhappy paths.

Each peer plays one misbehaviour (silence, a lying record mark or NetBIOS length, a
truncated or malformed message, SMB1, a security buffer pointing outside the message,
escape codes in text, a skewed clock); each test asserts the exact status, failed step
and facts.  The success paths are proven against a real Samba AD DC in
tests/test_ad_lab.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
import tracemalloc
from collections.abc import Callable

import pytest

from exprobe.probes.kerberos import KerberosParams, default_realm
from exprobe.probes.ldap import LdapParams, generalized_time
from exprobe.probes.smb import SmbParams
from exprobe.wire import kerberos as k
from exprobe.wire import ldap as lw
from exprobe.wire import smb as s
from exprobe.wire.ntlm import encode_challenge
from tests.test_probes_ldap_rfc1006_hostile import (
    LIFETIME,
    Handler,
    check,
    close_after_request,
    peer,
    read_ldap,
    reply_once,
    silent,
)


def krb_error(
    code: int = 6, realm: str = "AD.EXAMPLE", *, shift: float = 0, susec: int = 0, e_text: str = ""
) -> bytes:
    stime = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=shift)
    return k.frame(k.encode_krb_error(code, realm, stime, susec, e_text))


# -- kerberos --------------------------------------------------------------------------


async def test_kerberos_silent_peer_is_io_timeout_at_krb_error() -> None:
    async with peer(silent) as port:
        r = await check("kerberos", port, KerberosParams(realm="AD.EXAMPLE"), deadline=0.5)
    assert (r.status, r.failed_step, r.port_state) == ("io-timeout", "krb-error", "open")


async def test_kerberos_scripted_krb_error_gives_exact_facts() -> None:
    async with peer(reply_once(krb_error(25, susec=500_000))) as port:
        r = await check("kerberos", port, KerberosParams(realm="AD.EXAMPLE"))
    assert r.status == "success", r.message
    assert r.facts["error_name"] == "KDC_ERR_PREAUTH_REQUIRED"
    assert (r.facts["error_code"], r.facts["realm"]) == (25, "AD.EXAMPLE")
    assert r.facts["sname"] == "krbtgt/AD.EXAMPLE"
    assert abs(r.facts["clock_skew_s"]) < 3
    assert r.warnings == ()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x80\x00\x00\x10" + b"\x00" * 16, "reserved bit"),
        (b"\x7f\xff\xff\xff" + b"\x00" * 4096, "2147483647 bytes (limit 65536)"),
        (b"\x00\x00\x00\x00", "empty Kerberos record"),
        (b"\x00\x00\x00\x04" + b"\x30\x02\x01\x00", "not a KRB-ERROR or AS-REP (first byte 0x30)"),
        (b"\x00\x00\x00\x06" + b"\x7e\x84\xff\xff\xff\xff", "malformed Kerberos reply"),
        (b"\x00\x00\x00\x04" + b"\x7e\x02\x02\x00", "malformed Kerberos reply"),
    ],
)
async def test_kerberos_malformed_replies_are_protocol_errors(data: bytes, reason: str) -> None:
    tracemalloc.start()
    try:
        async with peer(reply_once(data)) as port:
            r = await check("kerberos", port, KerberosParams(realm="AD.EXAMPLE"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (r.status, r.failed_step) == ("protocol-error", "krb-error"), r.message
    assert reason in r.message
    assert peak < 4 << 20, f"peak {peak} bytes"


async def test_kerberos_inner_der_length_lying_is_protocol_error() -> None:
    whole = k.encode_krb_error(6, "AD.EXAMPLE", dt.datetime.now(dt.UTC))
    cut = whole[: len(whole) // 2]  # a DER header promising more than the record holds
    async with peer(reply_once(k.frame(cut))) as port:
        r = await check("kerberos", port, KerberosParams(realm="AD.EXAMPLE"))
    assert (r.status, r.failed_step) == ("protocol-error", "krb-error")
    assert "malformed Kerberos reply" in r.message


async def test_kerberos_record_shorter_than_announced_then_close() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"\x00\x00\x01\x00" + b"\x7e" * 20)
        await writer.drain()
        writer.close()

    async with peer(handler) as port:
        r = await check("kerberos", port, KerberosParams(realm="AD.EXAMPLE"))
    assert (r.status, r.failed_step) == ("connection-closed", "krb-error")


async def test_kerberos_close_after_request_is_connection_closed() -> None:
    async with peer(close_after_request) as port:
        r = await check("kerberos", port, KerberosParams(realm="AD.EXAMPLE"))
    assert (r.status, r.failed_step) == ("connection-closed", "krb-error")


async def test_kerberos_escape_codes_in_e_text_are_neutralised() -> None:
    data = krb_error(6, e_text="\x1b[31mowned\x1b[0m\x07")
    async with peer(reply_once(data)) as port:
        r = await check("kerberos", port, KerberosParams(realm="AD.EXAMPLE"))
    assert r.status == "success"
    assert r.facts["e_text"] == "?[31mowned?[0m?"
    assert not any("\x1b" in line for line in r.transcript)


async def test_kerberos_skewed_clock_and_other_error_are_warned() -> None:
    data = krb_error(68, realm="OTHER.EXAMPLE", shift=600)
    async with peer(reply_once(data)) as port:
        r = await check("kerberos", port, KerberosParams(realm="AD.EXAMPLE"))
    assert r.status == "success"
    assert r.facts["error_name"] == "KDC_ERR_WRONG_REALM"
    assert 595 < r.facts["clock_skew_s"] < 605
    assert len(r.warnings) == 3
    assert r.warnings[0].startswith("clock skew +")
    assert "300 s (KRB_AP_ERR_SKEW)" in r.warnings[0]
    assert "KDC_ERR_WRONG_REALM" in r.warnings[1]
    assert r.warnings[2] == "the KDC answered for realm OTHER.EXAMPLE, asked for AD.EXAMPLE"


def test_kerberos_default_realm_from_name() -> None:
    assert default_realm("dc1.ad.example.com") == "AD.EXAMPLE.COM"
    assert default_realm("example.com") == "EXAMPLE.COM"
    assert default_realm("10.0.0.1") == "EXPROBE.INVALID"
    assert default_realm("[fd00::1]") == "EXPROBE.INVALID"
    assert default_realm(None) == "EXPROBE.INVALID"


def test_kerberos_params_refuse_tls() -> None:
    with pytest.raises(ValueError, match="no TLS"):
        KerberosParams(tls="implicit")


# -- smb -------------------------------------------------------------------------------


def smb2(command: int, status: int, body: bytes) -> bytes:
    """A framed SMB2 response: a 64-byte sync header, then `body`."""
    head = struct.pack("<4sHHIHHIIQIIQ16s", b"\xfeSMB", 64, 0, status, command, 1, 1, 0,
                       0, 0, 0, 0x1234, b"\x00" * 16)  # fmt: skip
    return s.frame(head + body)


def session_setup_reply(blob: bytes, status: int = s.STATUS_MORE_PROCESSING_REQUIRED) -> bytes:
    return smb2(1, status, struct.pack("<HHHH", 9, 0, 72, len(blob)) + blob)


def smb_server(*replies: bytes) -> Handler:
    """Answer each request read with the next reply, then stay silent."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for reply in replies:
            head = await reader.readexactly(4)
            await reader.readexactly(int.from_bytes(head[1:], "big"))
            writer.write(reply)
            await writer.drain()
        await asyncio.sleep(LIFETIME)

    return handler


GUID = bytes(range(16))


async def test_smb_silent_peer_is_io_timeout_at_negotiate() -> None:
    async with peer(silent) as port:
        r = await check("smb", port, SmbParams(), deadline=0.5)
    assert (r.status, r.failed_step, r.port_state) == ("io-timeout", "negotiate", "open")


async def test_smb_scripted_negotiate_gives_exact_facts() -> None:
    neg = s.encode_negotiate_response(0x0302, 0x01, GUID, 0x45)
    async with peer(smb_server(neg)) as port:
        r = await check("smb", port, SmbParams(ntlm=False))
    assert r.status == "success", r.message
    assert r.facts["dialect"] == "3.0.2"
    assert (r.facts["signing_enabled"], r.facts["signing_required"]) == (True, False)
    assert r.facts["server_guid"] == "03020100-0504-0706-0809-0a0b0c0d0e0f"
    assert r.facts["capabilities"] == ["DFS", "LARGE_MTU", "ENCRYPTION"]
    assert abs(r.facts["clock_skew_s"]) < 3
    assert r.message == "SMB 3.0.2, signing optional"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x85\x00\x00\x00", "not a NetBIOS session message (type 0x85)"),
        (b"\x00\xff\xff\xff" + b"\x00" * 4096, "16777215 bytes (limit 65536)"),
        (b"\x00\x00\x00\x10" + b"\x00" * 16, "shorter than an SMB2 header"),
        (s.frame(b"\xffSMB" + b"\x00" * 60), "SMB1"),
        (s.frame(b"HTTP/1.1 400 Bad" + b"\x00" * 60), "not an SMB2 message"),
        (smb2(0, 0, b"\x41\x00" + b"\x00" * 10), "truncated NEGOTIATE response"),
        (smb2(0, 0xC0000022, b"\x09\x00" + b"\x00" * 70), "status 0xc0000022"),
        (smb2(1, 0, b"\x41\x00" + b"\x00" * 70), "SMB2 command 1 in answer to NEGOTIATE"),
    ],
)
async def test_smb_malformed_negotiate_is_protocol_error(data: bytes, reason: str) -> None:
    tracemalloc.start()
    try:
        async with peer(reply_once(data)) as port:
            r = await check("smb", port, SmbParams())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (r.status, r.failed_step) == ("protocol-error", "negotiate"), r.message
    assert reason in r.message
    assert peak < 4 << 20, f"peak {peak} bytes"


async def test_smb_security_buffer_outside_the_message_is_protocol_error() -> None:
    raw = bytearray(s.encode_negotiate_response())
    # SecurityBufferOffset/Length sit 56 bytes into the body, after 4 + 64 header bytes.
    struct.pack_into("<HH", raw, 4 + 64 + 56, 128, 0xFFFF)
    async with peer(reply_once(bytes(raw))) as port:
        r = await check("smb", port, SmbParams())
    assert (r.status, r.failed_step) == ("protocol-error", "negotiate")
    assert "outside the" in r.message


async def test_smb_ntlm_identity_from_scripted_challenge() -> None:
    challenge = encode_challenge(netbios_computer="FSW1", netbios_domain="CORP",
                                 dns_computer="fsw1.corp.example", dns_domain="corp.example")  # fmt: skip
    blob = b"\xa1\x81\x00" + challenge  # a SPNEGO wrapper we do not trust anyway
    neg = s.encode_negotiate_response()
    async with peer(smb_server(neg, session_setup_reply(blob))) as port:
        r = await check("smb", port, SmbParams())
    assert r.status == "success", r.message
    ntlm = r.facts["ntlm"]
    assert ntlm["offered"] is True
    assert (ntlm["netbios_computer"], ntlm["dns_computer"]) == ("FSW1", "fsw1.corp.example")
    assert (ntlm["netbios_domain"], ntlm["os_version"]) == ("CORP", "10.0.17763")
    assert r.message == "SMB 3.1.1, signing required, fsw1.corp.example (CORP)"


async def test_smb_lying_ntlm_challenge_is_protocol_error_at_session_setup() -> None:
    challenge = bytearray(encode_challenge(netbios_computer="X", netbios_domain="Y",
                                           dns_computer="x.y", dns_domain="y"))  # fmt: skip
    struct.pack_into("<HHI", challenge, 40, 60000, 60000, 56)  # target info far past the end
    neg = s.encode_negotiate_response()
    async with peer(smb_server(neg, session_setup_reply(bytes(challenge)))) as port:
        r = await check("smb", port, SmbParams())
    assert (r.status, r.failed_step) == ("protocol-error", "session-setup"), r.message
    assert r.facts["dialect"] == "3.1.1"


async def test_smb_session_setup_refused_is_a_warning() -> None:
    neg = s.encode_negotiate_response()
    refused = smb2(1, 0xC0000022, struct.pack("<HBBI", 9, 0, 0, 0) + b"\x00")
    async with peer(smb_server(neg, refused)) as port:
        r = await check("smb", port, SmbParams())
    assert r.status == "success", r.message
    assert r.facts["ntlm"] == {"offered": False, "status": "0xc0000022"}
    assert r.warnings == ("no NTLM CHALLENGE in the SESSION_SETUP answer (status 0xc0000022)",)


async def test_smb_skewed_clock_is_warned() -> None:
    neg = s.encode_negotiate_response(system_time=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    async with peer(smb_server(neg)) as port:
        r = await check("smb", port, SmbParams(ntlm=False))
    assert r.status == "success"
    assert -3605 < r.facts["clock_skew_s"] < -3595
    assert len(r.warnings) == 1
    assert r.warnings[0].startswith("clock skew -360")
    assert r.warnings[0].endswith(" s with the server (Kerberos fails past 300 s)")


# -- ldap: Active Directory rootDSE facts and the NTLM step ----------------------------

AD_ROOTDSE = {
    "dnsHostName": ["dc9.corp.example"],
    "isGlobalCatalogReady": ["FALSE"],
    "domainFunctionality": ["7"],
    "forestFunctionality": ["99"],
    "domainControllerFunctionality": ["abc"],
    "supportedSASLMechanisms": ["GSSAPI", "GSS-SPNEGO"],
}


def ad_directory(sasl_reply: Callable[[int], bytes], rootdse: dict[str, list[str]]) -> Handler:
    """A scripted AD rootDSE; a SASL bind is answered with `sasl_reply(message_id)`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(10):
            msg = await read_ldap(reader)
            mid = msg.message_id
            if msg.op == "bindRequest" and msg.auth == "sasl":
                out = sasl_reply(mid)
            elif msg.op == "bindRequest":
                out = lw.encode_bind_response(mid)
            elif msg.op == "searchRequest":
                out = lw.encode_search_entry(mid, "", rootdse) + lw.encode_search_done(mid)
            else:
                return
            writer.write(out)
            await writer.drain()

    return handler


def ad_rootdse(shift: float = 0) -> dict[str, list[str]]:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=shift)
    return {**AD_ROOTDSE, "currentTime": [when.strftime("%Y%m%d%H%M%S.0Z")]}


def challenge_reply(mid: int) -> bytes:
    token = encode_challenge(netbios_computer="DC9", netbios_domain="CORP",
                             dns_computer="dc9.corp.example", dns_domain="corp.example")  # fmt: skip
    return lw.encode_bind_response(mid, 14, sasl_creds=token)


async def test_ldap_gc_not_ready_skewed_and_ntlm_over_gss_spnego() -> None:
    async with peer(ad_directory(challenge_reply, ad_rootdse(-7200))) as port:
        r = await check("ldap-gc", port, LdapParams(ntlm=True))
    assert r.status == "success", r.message
    f = r.facts
    assert f["global_catalog_ready"] is False
    assert (f["domain_functionality"], f["domain_functionality_name"]) == (7, "2016")
    assert (f["forest_functionality"], f["forest_functionality_name"]) == (99, "level 99")
    assert "dc_functionality" not in f  # "abc" is not a level
    assert -7202 < f["clock_skew_s"] < -7198
    assert (f["ntlm"]["offered"], f["ntlm"]["mechanism"]) == (True, "GSS-SPNEGO")
    assert (f["ntlm"]["netbios_computer"], f["ntlm"]["dns_domain"]) == ("DC9", "corp.example")
    assert len(r.warnings) == 2
    assert r.warnings[0].startswith("clock skew -7")
    assert r.warnings[1] == "isGlobalCatalogReady is FALSE: the GC has not finished its first sync"


async def test_ldap_ntlm_malformed_challenge_is_protocol_error() -> None:
    def bad(mid: int) -> bytes:
        return lw.encode_bind_response(mid, 14, sasl_creds=b"NTLMSSP\x00\x02\x00\x00\x00\xff")

    async with peer(ad_directory(bad, ad_rootdse())) as port:
        r = await check("ldap", port, LdapParams(ntlm=True))
    assert (r.status, r.failed_step) == ("protocol-error", "ntlm"), r.message


async def test_ldap_ntlm_refused_is_a_warning() -> None:
    def refused(mid: int) -> bytes:
        return lw.encode_bind_response(mid, 7, diagnostic="no")

    async with peer(ad_directory(refused, ad_rootdse())) as port:
        r = await check("ldap", port, LdapParams(ntlm=True))
    assert r.status == "success"
    assert r.facts["ntlm"] == {
        "offered": True,
        "mechanism": "GSS-SPNEGO",
        "refused": "SASL GSS-SPNEGO bind: 7 authMethodNotSupported: no",
    }
    assert r.warnings == (
        "NTLM is offered but the exchange was refused: "
        "SASL GSS-SPNEGO bind: 7 authMethodNotSupported: no",
    )


async def test_ldap_ntlm_not_offered_sends_nothing() -> None:
    rootdse = {**ad_rootdse(), "supportedSASLMechanisms": ["GSSAPI"]}
    async with peer(ad_directory(challenge_reply, rootdse)) as port:
        r = await check("ldap", port, LdapParams(ntlm=True))
    assert r.status == "success"
    assert r.facts["ntlm"] == {"offered": False}
    assert not any("NTLMSSP" in line for line in r.transcript)


async def test_ldap_gc_on_a_directory_that_is_not_ad() -> None:
    async with peer(ad_directory(challenge_reply, {"namingContexts": ["dc=x"]})) as port:
        r = await check("ldap-gc", port, LdapParams())
    assert r.status == "success"
    assert r.warnings == ("the rootDSE has no isGlobalCatalogReady: not an Active Directory GC",)


def test_generalized_time_accepts_ad_and_refuses_garbage() -> None:
    assert generalized_time("20261204013426.0Z") == dt.datetime(2026, 12, 4, 1, 34, 26,
                                                                tzinfo=dt.UTC)  # fmt: skip
    assert generalized_time("20261204013426Z") is not None
    assert generalized_time("\x1b[31m") is None
    assert generalized_time("99999999999999Z") is None
