"""Which TLS versions a server accepts (`--tls-versions`, `tls_versions=true`): derived
checks, one per version, each offering that version alone.  The servers are real:
`openssl s_server` limited to given versions, on loopback; nmap's ssl-enum-ciphers
must list the same versions."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.helpers import exprobe, iana_names, nmap_suites, validate_report

OPENSSL = shutil.which("openssl") or "openssl"


@contextlib.contextmanager
def s_server(tmp_path: Path, *versions: str, ciphers: str = "ALL") -> Iterator[int]:
    """`openssl s_server` on 127.0.0.1 accepting only `versions` ("tls1", "tls1_1", ...)
    and, up to TLS 1.2, only the cipher suites `ciphers` (an RSA key then, for RSA suites)."""
    key = trustme.KeyType.RSA if ciphers != "ALL" else trustme.KeyType.ECDSA
    cert = trustme.CA(key_type=key).issue_cert("127.0.0.1", "localhost", key_type=key)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    every = ("tls1", "tls1_1", "tls1_2", "tls1_3")
    off = [f"-no_{v}" for v in every if v not in versions]
    proc = subprocess.Popen(
        [OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(tmp_path / "c.pem"),
         "-key", str(tmp_path / "k.pem"), "-cipher", f"{ciphers}:@SECLEVEL=0",
         "-quiet", *off],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def accepted(report: dict[str, object]) -> dict[str, str]:
    out = {}
    for t in report["targets"]:  # type: ignore[attr-defined]
        for r in t["results"]:
            if "tls_version_tried" in r["facts"]:
                out[r["facts"]["tls_version_tried"]] = r["status"]
    return out


def nmap_versions(port: int) -> list[str]:
    proc = subprocess.run(["nmap", "-Pn", "-n", "-p", str(port), "--script", "ssl-enum-ciphers",
                           "127.0.0.1"], capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return re.findall(r"\|\s+TLSv(1\.[0-3]):", proc.stdout)


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        (("tls1_2", "tls1_3"), {"1.0": "tls-error", "1.1": "tls-error", "1.2": "success", "1.3": "success"}),
        (("tls1", "tls1_1", "tls1_2"), {"1.0": "success", "1.1": "success", "1.2": "success", "1.3": "tls-error"}),
        (("tls1_3",), {"1.0": "tls-error", "1.1": "tls-error", "1.2": "tls-error", "1.3": "success"}),
    ],
)  # fmt: skip
def test_accepted_versions_agree_with_nmap(
    tmp_path: Path, versions: tuple[str, ...], expected: dict[str, str]
) -> None:
    with s_server(tmp_path, *versions) as port:
        proc = exprobe("run", f"127.0.0.1:{port}", "--check", "tls", "--tls-versions",
                       "--format", "json")  # fmt: skip
        report = validate_report(json.loads(proc.stdout))
        theirs = nmap_versions(port)
    assert accepted(report) == expected
    assert sorted(v for v, s in expected.items() if s == "success") == sorted(theirs)
    by_id = {r["id"]: r for t in report["targets"] for r in t["results"]}
    parent = by_id["tls:443"] if "tls:443" in by_id else next(
        r for r in by_id.values() if "parent" not in r)
    kids = [r for r in by_id.values() if r.get("parent") == parent["id"]]
    assert sorted(r["id"].rsplit("/", 1)[1] for r in kids) == ["tls1.0", "tls1.1", "tls1.2", "tls1.3"]
    for r in kids:
        v = r["facts"]["tls_version_tried"]
        if r["status"] == "success":
            assert r["facts"]["tls_version_accepted"] == v
            assert r["facts"]["tls_version"] == {"1.0": "TLSv1", "1.1": "TLSv1.1",
                                                 "1.2": "TLSv1.2", "1.3": "TLSv1.3"}[v]  # fmt: skip
            retired = [f"TLS {v} accepted: a retired version (RFC 8996)"]
            # (The other warning: trustme's test CA is not trusted here.)
            said = [w for w in r["warnings"] if "retired" in w]
            assert said == (retired if v in ("1.0", "1.1") else [])
        else:
            assert r["failed_step"] == "tls-handshake"
            assert r["message"].startswith(f"TLS {v} refused: ")


def test_check_command_flag_and_bad_version() -> None:
    proc = exprobe("check", "127.0.0.1", "tls", "--port", "1", "--set", "tls_version=1.4")
    assert proc.returncode == 2
    assert proc.stderr == ("exprobe: error: --check tls:1:none: tls_version '1.4' is not one"
                           " of 1.0, 1.1, 1.2, 1.3\n")  # fmt: skip


def nmap_ciphers(port: int) -> dict[str, set[str]]:
    proc = subprocess.run(["nmap", "-Pn", "-n", "-p", str(port), "--script", "ssl-enum-ciphers",
                           "127.0.0.1"], capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return {v: set(s) for v, s in nmap_suites(proc.stdout).items()}


SUITES = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-SHA:AES256-SHA:AES128-GCM-SHA256"


def test_cipher_suites_per_version_agree_with_nmap(tmp_path: Path) -> None:
    """`tls_ciphers=true`: per accepted version up to 1.2, every suite the server takes, by
    offering again without those found; nmap's ssl-enum-ciphers lists the same ones."""
    with s_server(tmp_path, "tls1_1", "tls1_2", ciphers=SUITES) as port:
        proc = exprobe("check", "127.0.0.1", "tls", "--port", str(port), "--tls", "implicit",
                       "--tls-versions", "--set", "tls_ciphers=true", "--format", "json")  # fmt: skip
        report = validate_report(json.loads(proc.stdout))
        theirs = nmap_ciphers(port)
    by_id = {r["id"]: r for t in report["targets"] for r in t["results"]}
    root = by_id[f"tls:{port}:implicit"]
    assert root["status"] == "success"
    assert root["facts"]["tls_accepted"] == ["1.1", "1.2"]
    mine = {v: set(c) for v, c in root["facts"]["tls_ciphers"].items()}
    assert mine == {
        "1.1": {"ECDHE-RSA-AES256-SHA", "AES256-SHA"},  # no GCM before TLS 1.2
        "1.2": set(SUITES.split(":")),
    }
    names = iana_names()
    assert {v: {names[c] for c in cs} for v, cs in mine.items()} == theirs
    v12 = by_id[f"tls:{port}:implicit/tls1.2"]
    assert v12["facts"]["tls_ciphers_complete"] is True
    # Rounds: one per suite found after the first, and the last one that found none.
    rounds = sorted(r["id"] for r in by_id.values() if r.get("parent") == v12["id"])
    assert rounds == [f"{v12['id']}/c{n}" for n in (2, 3, 4, 5)]
    last = by_id[f"{v12['id']}/c5"]
    assert last["facts"]["tls_cipher_search_done"] is True
    assert last["status"] == "success"
