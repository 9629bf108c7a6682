"""The SMTP/POP3/IMAP/NNTP line parsers: examples from the RFCs and real servers, and
properties: any bytes in -> a value or ProtocolError, never another exception."""

from __future__ import annotations

import contextlib
import string
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exprobe.errors import ProtocolError
from exprobe.wire.textproto import (
    DotBlockParser,
    SmtpReply,
    SmtpReplyParser,
    apop_timestamp,
    imap_auth_mechanisms,
    imap_capabilities,
    is_masked_banner,
    parse_capability_lines,
    parse_capability_list,
    parse_dot_block,
    parse_ehlo,
    parse_imap_response,
    parse_nntp_status,
    parse_pop3_status,
    parse_smtp_line,
    parse_smtp_reply,
)

ATOM_CHARS = string.ascii_letters + string.digits + "-=."

# Postfix 3.7 in the lab, as nmap's smtp-commands saw it.
POSTFIX_EHLO = [
    b"250-mail.lab.test",
    b"250-PIPELINING",
    b"250-SIZE 10240000",
    b"250-VRFY",
    b"250-ETRN",
    b"250-STARTTLS",
    b"250-ENHANCEDSTATUSCODES",
    b"250-8BITMIME",
    b"250-DSN",
    b"250-SMTPUTF8",
    b"250 CHUNKING",
]


# -- SMTP -------------------------------------------------------------------------------


def test_smtp_single_line_reply() -> None:
    reply = parse_smtp_reply([b"220 mail.lab.test ESMTP Postfix (exprobe lab)"])
    assert reply == SmtpReply(220, ("mail.lab.test ESMTP Postfix (exprobe lab)",))
    assert reply.describe() == "220 mail.lab.test ESMTP Postfix (exprobe lab)"


def test_smtp_code_alone_is_a_final_line() -> None:
    assert parse_smtp_line(b"250").last is True
    assert parse_smtp_reply(["250-first", "250"]) == SmtpReply(250, ("first", ""))


def test_smtp_multiline_reply_rfc5321_example() -> None:
    reply = parse_smtp_reply(
        [b"250-First line", b"250-Second line", b"250-234 Text beginning with numbers",
         b"250 The last line"]
    )  # fmt: skip
    assert reply.code == 250
    assert reply.lines == (
        "First line",
        "Second line",
        "234 Text beginning with numbers",
        "The last line",
    )


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([b"+OK POP3 ready"], "not an SMTP reply line"),
        ([b"2200 nope"], "not an SMTP reply line"),
        ([b"22 short"], "not an SMTP reply line"),
        ([b"650 bad class"], "not an SMTP reply line"),
        ([b"220_underscore"], "not an SMTP reply line"),
        ([b""], "not an SMTP reply line"),
        ([b"250-a", b"251 b"], "reply code changed"),
        ([b"250-a"], "incomplete reply"),
        ([b"250 a", b"250 b"], "lines after the final line"),
        ([], "incomplete reply"),
    ],
)
def test_smtp_malformed_replies(lines: list[bytes], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_smtp_reply(lines)


def test_smtp_reply_parser_is_bounded() -> None:
    parser = SmtpReplyParser(max_lines=3)
    assert parser.feed(b"250-a") is None
    assert parser.feed(b"250-b") is None
    with pytest.raises(ProtocolError, match="longer than 3 lines"):
        parser.feed(b"250-c")


def test_smtp_reply_parser_resets_after_each_reply() -> None:
    parser = SmtpReplyParser()
    assert parser.feed(b"220 hi") == SmtpReply(220, ("hi",))
    assert parser.feed(b"250-x") is None
    assert parser.feed(b"250 y") == SmtpReply(250, ("x", "y"))


def test_ehlo_postfix() -> None:
    info = parse_ehlo(parse_smtp_reply(POSTFIX_EHLO))
    assert info.domain == "mail.lab.test"
    assert info.extensions == {
        "PIPELINING": "",
        "SIZE": "10240000",
        "VRFY": "",
        "ETRN": "",
        "STARTTLS": "",
        "ENHANCEDSTATUSCODES": "",
        "8BITMIME": "",
        "DSN": "",
        "SMTPUTF8": "",
        "CHUNKING": "",
    }
    assert info.starttls is True
    assert info.starttls_stripped is False
    assert info.size_limit == 10240000
    assert info.auth_mechanisms == []


def test_ehlo_auth_both_syntaxes_merge() -> None:
    # Exchange-era servers announce AUTH twice: RFC 4954 and the old "AUTH=" form.
    info = parse_ehlo(
        parse_smtp_reply(
            [
                b"250-ex.example Hello [192.0.2.1]",
                b"250-AUTH GSSAPI NTLM LOGIN",
                b"250-AUTH=LOGIN PLAIN",
                b"250-size",
                b"250 auth  x-extra",
            ]
        )
    )
    assert info.domain == "ex.example"
    assert info.greeting == "Hello [192.0.2.1]"
    assert info.auth_mechanisms == ["GSSAPI", "NTLM", "LOGIN", "PLAIN", "x-extra"]
    assert info.extensions["SIZE"] == ""
    assert info.size_limit is None


def test_ehlo_asa_masked_starttls() -> None:
    info = parse_ehlo(
        parse_smtp_reply([b"250-mx.example", b"250-PIPELINING", b"250-XXXXXXXA", b"250 8BITMIME"])
    )
    assert info.masked == ("XXXXXXXA",)
    assert info.starttls_stripped is True
    assert info.starttls is False
    assert "XXXXXXXA" not in info.extensions


def test_ehlo_unparsable_lines_are_kept_aside() -> None:
    info = parse_ehlo(parse_smtp_reply([b"250-mx", b"250-*** ***", b"250-", b"250 OK"]))
    assert info.unparsed == ("*** ***", "")
    assert info.extensions == {"OK": ""}


def test_ehlo_needs_250() -> None:
    with pytest.raises(ProtocolError, match="not a positive EHLO reply"):
        parse_ehlo(SmtpReply(500, ("unrecognized",)))


@pytest.mark.parametrize(
    ("size", "expected"),
    [("0", 0), ("52428800", 52428800), ("", None), ("x", None), ("²", None), ("9" * 30, None)],
)
def test_ehlo_size_values(size: str, expected: int | None) -> None:
    info = parse_ehlo(SmtpReply(250, ("mx", f"SIZE {size}".strip())))
    assert info.size_limit == expected


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("*************************************0****2******0*******2002*******2***0*00", True),
        ("**** ****** ******", True),
        ("mail.lab.test ESMTP Postfix", False),
        ("2020", False),  # digits only: nothing says a middlebox was here
        ("** 2", False),
        ("", False),
    ],
)
def test_masked_banner(text: str, masked: bool) -> None:
    assert is_masked_banner(text) is masked


# -- POP3 -------------------------------------------------------------------------------


def test_pop3_status_lines() -> None:
    ok = parse_pop3_status(b"+OK Dovecot (Debian) ready.")
    assert (ok.ok, ok.text) == (True, "Dovecot (Debian) ready.")
    assert parse_pop3_status(b"+OK").text == ""
    err = parse_pop3_status("-ERR [SYS/TEMP] too many connections")
    assert (err.ok, err.text) == (False, "[SYS/TEMP] too many connections")
    assert err.describe() == "-ERR [SYS/TEMP] too many connections"
    assert parse_pop3_status(b"+ok lower-case").ok is True


@pytest.mark.parametrize("line", [b"OK ready", b"+OKAY", b"* OK imap", b"", b"220 smtp"])
def test_pop3_status_rejects_other_protocols(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="not a POP3 status line"):
        parse_pop3_status(line)


def test_apop_timestamp_rfc1939_example() -> None:
    text = "POP3 server ready <1896.697170952@dbc.mtview.ca.us>"
    assert apop_timestamp(text) == "<1896.697170952@dbc.mtview.ca.us>"
    assert apop_timestamp("Dovecot ready.") is None
    assert apop_timestamp("ready <no-at-sign>") is None


def test_dot_block_unstuffing() -> None:
    with pytest.raises(ProtocolError, match="lines after the end"):
        parse_dot_block([b"CAPA", b"..hidden", b".", b""])
    assert parse_dot_block([b"TOP", b"..stuffed", b"...", b"."]) == ["TOP", ".stuffed", ".."]
    assert parse_dot_block([b"."]) == []


def test_dot_block_needs_terminator_and_is_bounded() -> None:
    with pytest.raises(ProtocolError, match="not terminated"):
        parse_dot_block([b"TOP", b"USER"])
    parser = DotBlockParser(max_lines=2)
    parser.feed(b"a")
    parser.feed(b"b")
    with pytest.raises(ProtocolError, match="longer than 2 lines"):
        parser.feed(b"c")
    done = DotBlockParser()
    assert done.feed(b".") is True
    with pytest.raises(ProtocolError, match="after the end"):
        done.feed(b"x")


def test_pop3_capa_lines() -> None:
    # Dovecot 2.3 on 110 before STLS (lab notes).
    capa = ["CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE", "STLS", "SASL"]
    caps = parse_capability_lines(capa)
    assert "STLS" in caps
    assert caps["SASL"] == ""
    caps = parse_capability_lines(["sasl PLAIN  LOGIN", "", "USER", "SASL ignored-dup"])
    assert caps == {"SASL": "PLAIN LOGIN", "USER": ""}


# -- IMAP -------------------------------------------------------------------------------

DOVECOT_143 = (
    b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
    b"LOGINDISABLED] Dovecot (Debian) ready."
)


def test_imap_greeting_with_capability_code() -> None:
    resp = parse_imap_response(DOVECOT_143)
    assert resp.untagged
    assert resp.kind == "OK"
    assert resp.is_status
    assert resp.text == "Dovecot (Debian) ready."
    caps = imap_capabilities(resp)
    assert caps is not None
    assert caps[0] == "IMAP4REV1"
    assert "STARTTLS" in caps
    assert "LOGINDISABLED" in caps
    assert imap_auth_mechanisms(caps) == []


def test_imap_untagged_capability_and_tagged_ok() -> None:
    resp = parse_imap_response(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN auth=login AUTH= IDLE idle")
    caps = imap_capabilities(resp)
    assert caps == ["IMAP4REV1", "AUTH=PLAIN", "AUTH=LOGIN", "AUTH=", "IDLE"]
    assert imap_auth_mechanisms(caps) == ["PLAIN", "LOGIN"]
    done = parse_imap_response(b"A1 OK [CAPABILITY IMAP4rev2] Pre-login capabilities listed")
    assert done.tag == "A1"
    assert done.kind == "OK"
    assert imap_capabilities(done) == ["IMAP4REV2"]
    assert imap_capabilities(parse_imap_response(b"A2 OK done")) is None


@pytest.mark.parametrize(
    ("line", "tag", "kind", "code", "text"),
    [
        (b"* PREAUTH IMAP4rev1 server logged in as Smith", "*", "PREAUTH", None,
         "IMAP4rev1 server logged in as Smith"),
        (b"* BYE Autologout; idle for too long", "*", "BYE", None, "Autologout; idle for too long"),
        (b"* 23 EXISTS", "*", "EXISTS", None, "23"),
        (b"+ Ready for additional command text", "+", "CONTINUE", None,
         "Ready for additional command text"),
        (b"a002 no [ALERT] go away", "a002", "NO", "ALERT", "go away"),
        (b"* OK [] empty code", "*", "OK", "", "empty code"),
        (b"* ok", "*", "OK", None, ""),
    ],
)  # fmt: skip
def test_imap_responses(line: bytes, tag: str, kind: str, code: str | None, text: str) -> None:
    resp = parse_imap_response(line)
    assert (resp.tag, resp.kind, resp.code, resp.text) == (tag, kind, code, text)


def test_imap_literal_is_announced() -> None:
    assert parse_imap_response(b"* 12 FETCH (BODY[] {342}").literal == 342
    assert parse_imap_response(b"* OK {5+}").literal == 5
    assert parse_imap_response(b"* OK no literal").literal is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"+OK POP3 ready", "not an IMAP response"),
        (b"220 mail ESMTP", "tagged response is not OK, NO or BAD"),
        (b"*", "not an IMAP response"),
        (b"* OK [CAPABILITY IMAP4rev1 unterminated", "unterminated response code"),
        (b"A(1 OK x", "not an IMAP response"),
        (b"", "not an IMAP response"),
        (b"\x16\x03\x01\x02\x00\x01", "not an IMAP response"),
    ],
)
def test_imap_malformed(line: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_imap_response(line)


def test_capability_list_dedupes_case_insensitively() -> None:
    assert parse_capability_list("IMAP4rev1 imap4REV1  STARTTLS") == ["IMAP4REV1", "STARTTLS"]


# -- NNTP -------------------------------------------------------------------------------


def test_nntp_status_lines() -> None:
    s = parse_nntp_status(
        b"200 news.lab.test InterNetNews NNRP server INN 2.7.1 ready (posting ok)"
    )
    assert s.code == 200
    assert s.text.startswith("news.lab.test")
    assert parse_nntp_status(b"201").describe() == "201"
    assert parse_nntp_status("382 Continue with TLS negotiation").code == 382


@pytest.mark.parametrize("line", [b"+OK", b"2000 x", b"20", b"", b"600 nope", b"200-cont"])
def test_nntp_status_malformed(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="not an NNTP status line"):
        parse_nntp_status(line)


def test_nntp_capabilities_rfc3977_example() -> None:
    block = parse_dot_block(
        [b"VERSION 2", b"READER", b"IHAVE", b"POST", b"NEWNEWS", b"LIST ACTIVE NEWSGROUPS",
         b"STARTTLS", b"AUTHINFO USER SASL", b"SASL PLAIN", b"."]
    )  # fmt: skip
    caps = parse_capability_lines(block)
    assert caps["VERSION"] == "2"
    assert caps["LIST"] == "ACTIVE NEWSGROUPS"
    assert "STARTTLS" in caps
    assert caps["AUTHINFO"] == "USER SASL"


# -- properties -------------------------------------------------------------------------

LINE_PARSERS: list[Callable[[bytes], Any]] = [
    parse_smtp_line,
    parse_pop3_status,
    parse_imap_response,
    parse_nntp_status,
]

# Bytes that look like the protocols half of the time: the interesting cases.
prefixes = st.sampled_from([b"", b"250-", b"250 ", b"220 ", b"+OK ", b"-ERR ", b"* OK [",
                            b"* ", b"A1 ", b"+ ", b"200 ", b"101 ", b"."])  # fmt: skip
lines = st.builds(lambda p, b: p + b, prefixes, st.binary(max_size=80))


@settings(max_examples=400, deadline=None)
@given(lines)
def test_line_parsers_total(line: bytes) -> None:
    for parse in LINE_PARSERS:
        with contextlib.suppress(ProtocolError):
            parse(line)


@settings(max_examples=300, deadline=None)
@given(st.lists(lines, max_size=12))
def test_block_parsers_total(block: list[bytes]) -> None:
    for parse in (parse_smtp_reply, parse_dot_block):
        with contextlib.suppress(ProtocolError):
            parse(block)
    try:
        info = parse_ehlo(parse_smtp_reply(block))
    except ProtocolError:
        return
    _ = (info.auth_mechanisms, info.size_limit, info.starttls, info.starttls_stripped)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.sampled_from([250, 220]))
def test_smtp_reply_round_trip(text: str, code: int) -> None:
    # Any text without line breaks survives formatting as a reply and parsing back.
    text = text.replace("\r", "").replace("\n", "")
    wire = [f"{code}-{text}".encode(), f"{code} {text}".encode()]
    assert parse_smtp_reply(wire) == SmtpReply(code, (text, text))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=30).map(lambda t: t.replace("\r", "").replace("\n", "")),
                max_size=20))  # fmt: skip
def test_dot_block_round_trip(payload: list[str]) -> None:
    # Dot-stuffing (RFC 1939 §3) then parsing gives the payload back.
    stuffed = [("." + x if x.startswith(".") else x).encode() for x in payload] + [b"."]
    assert parse_dot_block(stuffed) == payload


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(ATOM_CHARS, min_size=1, max_size=16), max_size=10))
def test_imap_capability_round_trip(atoms: list[str]) -> None:
    resp = parse_imap_response(("* CAPABILITY " + " ".join(atoms)).encode())
    expected: list[str] = []
    for a in atoms:
        if a.upper() not in expected:
            expected.append(a.upper())
    assert imap_capabilities(resp) == expected
