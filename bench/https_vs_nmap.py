"""exprobe's HTTPS checks of one Exchange server against nmap's scripts, on the web lab.

Both sides look at the same nginx-fronted server (tests/lab/weblab.py, port 443):

- nmap: `nmap -Pn -n -p 443 --script http-headers,http-ntlm-info,ssl-cert
  --script-args http-ntlm-info.root=/ews/`: the headers of `/`, the NTLM identity of
  `/ews/`, the certificate.
- exprobe: one `run` of a profile with an `http` check (`/EWS/Exchange.asmx`, NTLM) and an
  `exchange-http` check of each of the nine virtual directories (each with its
  healthcheck.htm and NTLM identity where offered): the same facts as nmap's and the
  Exchange ones nmap does not have.

Runs alternate (nmap, exprobe, nmap, ...) and the median wall time of each is printed with
the ratio; the NTLM names and the certificate subject are checked to agree first.

Usage (root):  python bench/https_vs_nmap.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import iana_names, nmap_suites  # noqa: E402
from tests.lab.weblab import PORTS, SERVER, WebLab  # noqa: E402

VDIRS = ("owa", "ecp", "autodiscover", "ews", "mapi", "nspi", "rpc", "oab", "eas")
NMAP = ["nmap", "-Pn", "-n", "-p", str(PORTS["ex1"]), "--script",
        "http-headers,http-ntlm-info,ssl-cert", "--script-args",
        "http-ntlm-info.root=/ews/", SERVER[4]]  # fmt: skip
# The comparison: service detection and the TLS versions and ciphers too.
NMAP_FULL = ["nmap", "-sV", "-Pn", "-n", "-p", str(PORTS["ex1"]), "--script",
             "http-ntlm-info,ssl-cert,ssl-enum-ciphers", "--script-args",
             "http-ntlm-info.root=/ews/", SERVER[4]]  # fmt: skip


def profile(full: bool = False) -> str:
    """The checks; `full` adds a `tls` check listing the versions and, per version up to
    1.2, the cipher suites (what ssl-enum-ciphers lists)."""
    out = ['schema_version = 1', 'title = "HTTPS checks of one Exchange server"', ""]
    if full:
        out += ["[checks.tls]", 'probe = "tls"', f'port = {PORTS["ex1"]}', 'tls = "implicit"',
                "tls_versions = true", "tls_ciphers = true", ""]  # fmt: skip
    out += ['[checks.ews-ntlm]', 'probe = "http"', f'port = {PORTS["ex1"]}', 'tls = "implicit"',
            'path = "/EWS/Exchange.asmx"', "ntlm = true", ""]  # fmt: skip
    for v in VDIRS:
        out += [f"[checks.{v}]", 'probe = "exchange-http"', f'port = {PORTS["ex1"]}',
                'tls = "implicit"', f'vdir = "{v}"', ""]  # fmt: skip
    names = ", ".join(f'"{n}"' for n in ("ews-ntlm", *VDIRS, *(("tls",) if full else ())))
    out += ["[scenarios.https]", 'title = "HTTPS"', f"all = [{names}]"]
    return "\n".join(out) + "\n"


def timed(lab: WebLab, argv: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = lab.cli(argv)
    return time.perf_counter() - t0, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    lab = WebLab()
    lab.up()
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(profile())
        ours = [sys.executable, "-m", "exprobe", "run", SERVER[4], "-p", f.name, "--format", "json"]
        _, out = timed(lab, ours)
        report = json.loads(out)
        results = {r["id"].split("@")[0]: r for t in report["targets"] for r in t["results"]}
        bad = {k: r["status"] for k, r in results.items() if r["status"] != "success"}
        assert not bad, bad
        _, nmap_out = timed(lab, NMAP)
        nmap = dict(re.findall(r"\|_?\s+(\w+): (\S+)", nmap_out))
        ntlm = results["ews-ntlm"]["facts"]["ntlm"]
        assert nmap["DNS_Computer_Name"] == ntlm["dns_computer"], (nmap, ntlm)
        assert nmap["Product_Version"] == ntlm["os_version"]
        sha1 = re.search(r"SHA-1: ([0-9a-f ]+)", nmap_out)
        assert sha1 is not None, nmap_out
        san = re.search(r"Subject Alternative Name: (.*)", nmap_out)
        assert san is not None
        assert "DNS:mail.corp.example" in san[1]
        assert "DNS:mail.corp.example" in results["ews-ntlm"]["facts"]["cert_san"]
        facts = sum(len(r["facts"]) for r in results.values())
        # nmap's facts only: headers, NTLM identity and certificate in one `http` check.
        same = [sys.executable, "-m", "exprobe", "check", SERVER[4], "http", "--port",
                str(PORTS["ex1"]), "--tls", "implicit", "--path", "/ews/", "--set", "ntlm=true",
                "--format", "json"]  # fmt: skip
        _, out = timed(lab, same)
        (one,) = [r for t in json.loads(out)["targets"] for r in t["results"]]
        assert one["facts"]["ntlm"]["dns_computer"] == nmap["DNS_Computer_Name"], one
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as g:
            g.write(profile(full=True))
        full = [sys.executable, "-m", "exprobe", "run", SERVER[4], "-p", g.name, "--format",
                "json"]  # fmt: skip
        _, full_out = timed(lab, full)
        tls = next(r for t in json.loads(full_out)["targets"] for r in t["results"]
                   if r["id"] == "tls")  # fmt: skip
        versions = tls["facts"]["tls_accepted"]
        _, nmap_full_out = timed(lab, NMAP_FULL)
        theirs = sorted(set(re.findall(r"\|\s+TLSv(1\.[0-3]):", nmap_full_out)))
        assert versions == theirs, (versions, theirs)
        names = iana_names()
        mine = {v: sorted(names[c] for c in cs) for v, cs in tls["facts"]["tls_ciphers"].items()}
        suites = nmap_suites(nmap_full_out)
        # TLS 1.3's suites cannot be offered one by one with Python's ssl: compared up to 1.2.
        assert mine == {v: s for v, s in suites.items() if v != "1.3"}, (mine, suites)
        n_suites = sum(len(s) for s in mine.values())
        t_nmap: list[float] = []
        t_ours: list[float] = []
        t_same: list[float] = []
        t_nfull: list[float] = []
        t_full: list[float] = []
        for _ in range(args.rounds):
            t_nmap.append(timed(lab, NMAP)[0])
            t_ours.append(timed(lab, ours)[0])
            t_same.append(timed(lab, same)[0])
            t_nfull.append(timed(lab, NMAP_FULL)[0])
            t_full.append(timed(lab, full)[0])
        mn, mo, ms = (statistics.median(t) for t in (t_nmap, t_ours, t_same))
        print(f"exprobe check: one http check (headers, NTLM, certificate: nmap's facts): "
              f"median {ms * 1000:.0f} ms, ratio nmap/exprobe {mn / ms:.2f}")
        print("nmap http-headers,http-ntlm-info,ssl-cert (1 port, 3 scripts): "
              f"median {mn * 1000:.0f} ms")
        print(f"exprobe run: http+NTLM and exchange-http x {len(VDIRS)} vdirs "
              f"({len(results)} checks, {facts} top-level facts): "
              f"median {mo * 1000:.0f} ms")
        print(f"ratio nmap/exprobe: {mn / mo:.2f} ({args.rounds} interleaved rounds)")
        nf, of = statistics.median(t_nfull), statistics.median(t_full)
        print(f"nmap -sV http-ntlm-info,ssl-cert,ssl-enum-ciphers: median {nf * 1000:.0f} ms;"
              f" exprobe run of the same plus a tls check with tls_versions and tls_ciphers"
              f" (TLS {', '.join(theirs)} agree; the {n_suites} suites up to TLS 1.2 agree):"
              f" median {of * 1000:.0f} ms; ratio nmap/exprobe {nf / of:.2f}")
    finally:
        lab.down()


if __name__ == "__main__":
    main()
