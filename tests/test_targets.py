"""Target parsing: every accepted form and every rejected one, with exact messages."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from exprobe.errors import InputError
from exprobe.targets import consent_problem, parse_file, parse_target


@pytest.mark.parametrize(
    ("text", "host", "address", "network", "port"),
    [
        ("mail.example.com", "mail.example.com", None, None, None),
        ("MAIL.Example.COM.", "mail.example.com", None, None, None),
        ("mail.example.com:2525", "mail.example.com", None, None, 2525),
        ("10.0.0.5", None, "10.0.0.5", None, None),
        ("10.0.0.5:25", None, "10.0.0.5", None, 25),
        ("2001:db8::5", None, "2001:db8::5", None, None),
        ("[2001:db8::5]", None, "2001:db8::5", None, None),
        ("[2001:db8::5]:993", None, "2001:db8::5", None, 993),
        ("192.0.2.0/28", None, None, "192.0.2.0/28", None),
        ("192.0.2.7/28", None, None, "192.0.2.0/28", None),
        ("2001:db8::/126", None, None, "2001:db8::/126", None),
        ("localhost", "localhost", None, None, None),
    ],
)
def test_accepted_forms(
    text: str, host: str | None, address: str | None, network: str | None, port: int | None
) -> None:
    t = parse_target(text)
    assert t.host == host
    assert (str(t.address) if t.address else None) == address
    assert (str(t.network) if t.network else None) == network
    assert t.port == port
    assert t.text == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.300", "command line: '10.0.0.300' is not a valid IPv4 address"),
        ("10.0.0.0/33", "command line: '10.0.0.0/33' is not a valid CIDR block"),
        ("10.0.0.5:0", "command line: port 0 is outside 1-65535"),
        ("10.0.0.5:65536", "command line: port 65536 is outside 1-65535"),
        ("10.0.0.5:smtp", "command line: port 'smtp' is not a number"),
        ("[2001:db8::5]:99999", "command line: port 99999 is outside 1-65535"),
        ("[mail.example.com]:25", "command line: 'mail.example.com' is not an IPv6 address"),
        ("2001:db8::zz", "command line: '2001:db8::zz' is not a valid address (IPv6 with a port needs [v6]:port)"),
        ("-bad-.example", "command line: '-bad-.example' is not a valid host name or address"),
        ("a b", "command line: target 'a b' contains spaces or control characters"),
        ("", "command line: empty target"),
    ],
)
def test_rejected_forms(text: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        parse_target(text)
    assert str(info.value) == message


def test_cidr_expansion_is_lazy_and_counts_hosts() -> None:
    t = parse_target("10.0.0.0/8")
    assert t.size() == 2**24 - 2
    first = next(iter(t.addresses()))
    assert first == "10.0.0.1"
    assert list(parse_target("192.0.2.4/30").addresses()) == ["192.0.2.5", "192.0.2.6"]
    assert list(parse_target("192.0.2.4/32").addresses()) == ["192.0.2.4"]
    assert list(parse_target("192.0.2.4/31").addresses()) == ["192.0.2.4", "192.0.2.5"]


def test_file_with_comments_and_labels(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("# servers\n10.0.0.5 site=hq role=mbx\n\nmail.example.com   # the IMS\n[::1]:993\n")
    targets = parse_file(str(f))
    assert [t.text for t in targets] == ["10.0.0.5", "mail.example.com", "[::1]:993"]
    assert targets[0].labels == (("site", "hq"), ("role", "mbx"))
    assert (str(targets[2].address), targets[2].port) == ("::1", 993)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"10.0.0.5\n10.0.0.999\n", "{f}:2: '10.0.0.999' is not a valid IPv4 address"),
        (b"10.0.0.5 site\n", "{f}:1: 'site' is not a key=value label"),
        (b"# nothing\n\n", "targets file {f}: no targets in it"),
        (b"", "targets file {f}: no targets in it"),
        (b"10.0.0.5\n\xff\xfe\n", "targets file {f}:2: not UTF-8 text"),
        (b"10.0.0.5\x00\n", "targets file {f}: binary content (NUL byte)"),
        (b"x" * 5000 + b"\n", "{f}:1: line longer than 4096 characters"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    f = tmp_path / "targets.txt"
    f.write_bytes(content)
    with pytest.raises(InputError) as info:
        parse_file(str(f))
    assert str(info.value) == message.format(f=f)


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(InputError) as info:
        parse_file(str(missing))
    assert str(info.value) == f"targets file {missing}: cannot read (No such file or directory)"
    with pytest.raises(InputError) as info:
        parse_file(str(tmp_path))
    assert str(info.value) == f"targets file {tmp_path}: is a directory"


def test_consent_rules() -> None:
    assert consent_problem([parse_target("10.0.0.0/16")]) is None
    assert consent_problem([parse_target("10.0.0.0/15")]) == "131070 addresses is more than 65536"
    assert consent_problem([parse_target("192.0.2.0/24")]) is None
    assert consent_problem([parse_target("8.8.0.0/23")]) == "8.8.0.0/23 is a public range wider than a /24"
    assert ipaddress.ip_network("8.8.0.0/24").is_global
    assert consent_problem([parse_target("8.8.8.0/24")]) is None
