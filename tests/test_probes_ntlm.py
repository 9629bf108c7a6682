"""The `ntlm` step of smtp, imap and pop3 against scripted peers: Exchange's own SMTP
answer (only Exchange says "334 NTLM supported" and names EX01/CONTOSO), and hostile
challenges.  The real peer (postfix with Cyrus SASL's NTLM) is in tests/test_ntlm_lab.py."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest

from exprobe.wire import ntlm
from tests.test_probes_text_hostile import Peer, Reader, Writer, forever, run, serving


def exchange_challenge() -> bytes:
    """EX01's CHALLENGE, base64, its clock 400 s behind ours (made now: the skew is
    measured against the time of the check)."""
    return base64.b64encode(ntlm.encode_challenge(
        netbios_computer="EX01", netbios_domain="CONTOSO", dns_computer="ex01.contoso.com",
        dns_domain="contoso.com", dns_tree="contoso.com", os_version=(10, 0, 17763),
        timestamp=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=400),
    ))  # fmt: skip


B64 = exchange_challenge()
IDENTITY = {
    "offered": True, "netbios_computer": "EX01", "netbios_domain": "CONTOSO",
    "dns_computer": "ex01.contoso.com", "dns_domain": "contoso.com", "dns_tree": "contoso.com",
    "os_version": "10.0.17763", "target_name": "CONTOSO",
}  # fmt: skip


def exchange_smtp(challenge: bytes | None = None, *, first: bytes = b"334 NTLM supported") -> Any:
    """Exchange 2019's SMTP receive connector, as it answers AUTH NTLM."""

    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(b"220 ex01.contoso.com Microsoft ESMTP MAIL Service ready at Thu, 3 Dec 2026\r\n")
        await p.line(r)  # EHLO
        w.write(b"250-ex01.contoso.com Hello [192.0.2.9]\r\n250-SIZE 37748736\r\n"
                b"250-PIPELINING\r\n250-AUTH NTLM LOGIN\r\n250 8BITMIME\r\n")  # fmt: skip
        line = await p.line(r)
        if line.strip() == b"AUTH NTLM":
            w.write(first + b"\r\n")
            await p.line(r)  # the NEGOTIATE
            w.write(b"334 " + (challenge or exchange_challenge()) + b"\r\n")
            await p.line(r)  # "*"
            w.write(b"501 5.7.3 Authentication cancelled\r\n")
            line = await p.line(r)
        if line.strip() == b"QUIT":
            w.write(b"221 2.0.0 Service closing transmission channel\r\n")
        await forever(p)

    return script


async def test_exchange_smtp_gives_its_identity() -> None:
    async with serving(exchange_smtp()) as peer:
        res = await run("smtp", peer.port, ntlm=True)
    assert (res.status.value, res.failed_step) == ("success", None)
    facts = res.facts["ntlm"]
    skew = facts.pop("clock_skew_s")
    facts.pop("server_time")
    assert facts == IDENTITY
    assert -402 <= skew <= -398
    sent = [ln.strip() for ln in peer.received]
    assert sent[1] == b"AUTH NTLM"
    assert ntlm.decode_challenge  # the codec decoded what the peer sent
    assert base64.b64decode(sent[2]).startswith(b"NTLMSSP\x00\x01\x00\x00\x00")  # NEGOTIATE
    assert sent[3:] == [b"*", b"QUIT"]  # cancelled: no credential, ever
    steps = [s["step"] for s in res.steps]
    assert steps == ["connect", "greeting", "ehlo", "ntlm", "quit"]


async def test_cli_check_shows_the_identity() -> None:
    from tests.helpers import exprobe

    async with serving(exchange_smtp()) as peer:
        import asyncio

        proc = await asyncio.to_thread(exprobe, "check", "127.0.0.1", "smtp", "--port",
                                       str(peer.port), "--set", "ntlm=true", "-f", "json")  # fmt: skip
    import json

    r = json.loads(proc.stdout)["targets"][0]["results"][0]
    assert r["facts"]["ntlm"]["dns_computer"] == "ex01.contoso.com"


def mail_peer(probe: str, challenge: bytes, offered: bool = True) -> Any:
    """IMAP and POP3 peers that offer NTLM the RFC way (empty first continuation)."""

    async def script(r: Reader, w: Writer, p: Peer) -> None:
        if probe == "imap":
            auth = b" AUTH=NTLM" if offered else b""
            w.write(b"* OK [CAPABILITY IMAP4rev1" + auth + b"] ready\r\n")
            line = await p.line(r)
            tag = line.split(b" ", 1)[0]
            if b"AUTHENTICATE NTLM" in line:
                w.write(b"+ \r\n")
                await p.line(r)
                w.write(b"+ " + challenge + b"\r\n")
                await p.line(r)
                w.write(tag + b" BAD AUTHENTICATE cancelled\r\n")
                line = await p.line(r)
                tag = line.split(b" ", 1)[0]
            w.write(b"* BYE bye\r\n" + tag + b" OK LOGOUT done\r\n")
        else:
            w.write(b"+OK ready\r\n")
            await p.line(r)  # CAPA
            sasl = b"SASL PLAIN NTLM\r\n" if offered else b"SASL PLAIN\r\n"
            w.write(b"+OK\r\nUSER\r\n" + sasl + b".\r\n")
            line = await p.line(r)
            if line.strip() == b"AUTH NTLM":
                w.write(b"+ \r\n")
                await p.line(r)
                w.write(b"+ " + challenge + b"\r\n")
                await p.line(r)
                w.write(b"-ERR cancelled\r\n")
                await p.line(r)
            w.write(b"+OK bye\r\n")
        await forever(p)

    return script


@pytest.mark.parametrize("probe", ["imap", "pop3"])
async def test_imap_and_pop3_identity(probe: str) -> None:
    async with serving(mail_peer(probe, B64)) as peer:
        res = await run(probe, peer.port, ntlm=True)
    assert (res.status.value, res.failed_step) == ("success", None)
    assert {k: v for k, v in res.facts["ntlm"].items()
            if k not in ("clock_skew_s", "server_time")} == IDENTITY  # fmt: skip
    assert peer.received[-2].strip() == b"*" or peer.received[-3].strip() == b"*"


@pytest.mark.parametrize("probe", ["smtp", "imap", "pop3"])
async def test_not_offered_sends_nothing(probe: str) -> None:
    script = mail_peer(probe, B64, offered=False) if probe != "smtp" else None
    if script is None:
        async def script(r: Reader, w: Writer, p: Peer) -> None:
            w.write(b"220 mx ESMTP\r\n")
            await p.line(r)
            w.write(b"250-mx\r\n250 AUTH PLAIN\r\n")
            await p.line(r)
            w.write(b"221 bye\r\n")
            await forever(p)

    async with serving(script) as peer:
        res = await run(probe, peer.port, ntlm=True)
    assert res.status.value == "success"
    assert res.facts["ntlm"] == {"offered": False}
    assert not any(b"NTLM" in ln for ln in peer.received)


GARBAGE_CHALLENGES = [
    base64.b64encode(b"NTLMSSP\x00\x02\x00\x00\x00" + b"\xff" * 20),  # truncated
    base64.b64encode(b"NOTNTLM!" + bytes(60)),  # wrong signature
    b"!!!not base64!!!",
    base64.b64encode(b"NTLMSSP\x00\x01\x00\x00\x00" + bytes(40)),  # a NEGOTIATE, not a CHALLENGE
]


@pytest.mark.parametrize("challenge", GARBAGE_CHALLENGES)
@pytest.mark.parametrize("probe", ["smtp", "imap", "pop3"])
async def test_malformed_challenge_is_protocol_error(probe: str, challenge: bytes) -> None:
    script = exchange_smtp(challenge) if probe == "smtp" else mail_peer(probe, challenge)
    async with serving(script) as peer:
        res = await run(probe, peer.port, ntlm=True)
    assert (res.status.value, res.failed_step) == ("protocol-error", "ntlm")
    assert res.message.startswith("NTLM: not a CHALLENGE message (")
    assert "ntlm_challenge" in res.facts


async def test_escape_codes_in_names_never_reach_the_terminal() -> None:
    import asyncio

    from tests.helpers import exprobe

    evil = base64.b64encode(ntlm.encode_challenge(
        netbios_computer="EX\x1b[31m01", netbios_domain="C\x07ONTOSO",
        dns_computer="ex01\x1b]0;pwned\x07.contoso.com", dns_domain="contoso.com"))  # fmt: skip
    async with serving(exchange_smtp(evil)) as peer:
        res = await run("smtp", peer.port, ntlm=True)
        proc = await asyncio.to_thread(exprobe, "check", "127.0.0.1", "smtp", "--port",
                                       str(peer.port), "--set", "ntlm=true")  # fmt: skip
    assert res.status.value == "success"
    assert res.facts["ntlm"]["netbios_computer"] == "EX\x1b[31m01"  # kept as sent, in JSON
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout
    assert "\x07" not in proc.stdout
    assert "EX\\u001b[31m01" in proc.stdout  # shown escaped (the fact as JSON)


async def test_refused_is_a_warning_not_a_failure() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(b"220 mx ESMTP\r\n")
        await p.line(r)
        w.write(b"250-mx\r\n250 AUTH NTLM\r\n")
        await p.line(r)
        w.write(b"504 5.7.4 Unrecognized authentication type\r\n")
        await p.line(r)
        w.write(b"221 bye\r\n")
        await forever(p)

    async with serving(script) as peer:
        res = await run("smtp", peer.port, ntlm=True)
    assert res.status.value == "success"
    assert res.facts["ntlm"] == {"offered": True,
                                 "refused": "504 5.7.4 Unrecognized authentication type"}  # fmt: skip
    assert res.warnings == ("NTLM is offered but the exchange was refused: 504 5.7.4"
                            " Unrecognized authentication type",)  # fmt: skip


async def test_silent_after_negotiate_is_io_timeout_in_ntlm() -> None:
    async def script(r: Reader, w: Writer, p: Peer) -> None:
        w.write(b"220 mx ESMTP\r\n")
        await p.line(r)
        w.write(b"250-mx\r\n250 AUTH NTLM\r\n")
        await p.line(r)
        w.write(b"334 \r\n")
        await p.line(r)
        await forever(p)

    async with serving(script) as peer:
        res = await run("smtp", peer.port, deadline=0.7, ntlm=True)
    assert (res.status.value, res.failed_step) == ("io-timeout", "ntlm")
