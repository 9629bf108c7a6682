"""The whole exchange2019 profile of one server, with its DC, witness and Edge bound, against
nmap -sV with the matching NSE scripts on the same ports, in the modern Exchange lab.

The lab (tests/lab/xlab.py, rule set `open`): mbx1 (nginx-fronted Exchange vdirs, postfix
on 25/587/2525/465/475/717, 444, 64327, the DAG's endpoint mapper), the Samba AD DC (the
`dc` and `witness` roles), the Edge (postfix 25, slapd LDAPS 50636), all behind the
nftables router; exprobe and nmap both run in the client namespace, IPv4.

- exprobe: `exprobe run mbx1.xlab.example -p exchange2019 -4 --role dc=... --role
  witness=... --role edge=... --set autodiscover.domain=... --set mx.domain=...
  --dns-server ROUTER --ca-file LAB_CA --format json`: every scenario of the profile (no
  --vantage), the lab's CA trusted as a site's own CA would be.
- nmap: `nmap -sV -Pn -n -p PORTS --script SCRIPTS` on the three hosts, PORTS being every
  port exprobe's checks touched on them, SCRIPTS the NSE scripts for the same facts:
  http-ntlm-info (root /ews/), ssl-cert, ssl-enum-ciphers, smtp-commands, smtp-ntlm-info,
  ldap-rootdse, smb2-security-mode, smb-protocols, msrpc-enum.

Before timing, the facts both report are compared and must agree: the state of every port,
the NTLM identity of /ews/, the certificate subject on 443, the TLS versions and (up to
TLS 1.2) cipher suites on 443, the EHLO keywords on 25, the DC's defaultNamingContext and
SMB signing.  Then runs alternate (nmap, exprobe, ...) and the medians and ratio print.

Usage (root):  python bench/modern_vs_nmap.py [--rounds 2]   (rounds after the compared one)
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import iana_names  # noqa: E402
from tests.lab.xlab import ADDR, DOMAIN, ROUTER, XLab  # noqa: E402

MBX1 = f"mbx1.{DOMAIN}"
HOSTS = {"mbx1": ADDR["mbx1"][4], "dc": ADDR["dc"][4], "edge": ADDR["edge"][4]}
EXPROBE = [
    sys.executable, "-m", "exprobe", "run", MBX1, "-p", "exchange2019", "-4",
    "--role", "dc=dc1.ad.lab.test", "--role", "witness=dc1.ad.lab.test",
    "--role", f"edge=edge.{DOMAIN}", "--set", f"autodiscover.domain={DOMAIN}",
    "--set", f"mx.domain={DOMAIN}", "--dns-server", ROUTER[4], "--ca-file", str(XLab.ca_pem),
    "--format", "json",
]  # fmt: skip
SCRIPTS = ("http-ntlm-info,ssl-cert,ssl-enum-ciphers,smtp-commands,smtp-ntlm-info,"
           "ldap-rootdse,smb2-security-mode,smb-protocols,msrpc-enum")  # fmt: skip


def timed(lab: XLab, argv: list[str], timeout: float = 600) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = lab.run("cli", argv, timeout=timeout)
    return time.perf_counter() - t0, proc.stdout


def ports_touched(report: dict[str, Any]) -> dict[str, set[int]]:
    """Per lab host, the TCP ports exprobe's checks connected to."""
    out: dict[str, set[int]] = {name: set() for name in HOSTS}
    by_addr = {a: n for n, a in HOSTS.items()}
    for t in report["targets"]:
        for r in t["results"]:
            name = by_addr.get(r["address"] or "")
            if name and r["probe"] not in ("autodiscover", "mx"):
                out[name].add(r["port"])
    return out


def nmap_argv(ports: dict[str, set[int]]) -> list[str]:
    union = sorted(set().union(*ports.values()))
    return ["nmap", "-sV", "-Pn", "-n", "-p", ",".join(map(str, union)), "--script", SCRIPTS,
            "--script-args", "http-ntlm-info.root=/ews/", "-oX", "-", *HOSTS.values()]  # fmt: skip


def nmap_facts(xml: str) -> dict[str, Any]:
    """Port states and the script outputs nmap gave, per host and port."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    out: dict[str, Any] = {}
    for host in root.iter("host"):
        addr = host.find("address").get("addr", "")  # type: ignore[union-attr]
        ports: dict[int, dict[str, Any]] = {}
        for p in host.iter("port"):
            state = p.find("state").get("state", "")  # type: ignore[union-attr]
            scripts = {s.get("id", ""): s for s in p.iter("script")}
            ports[int(p.get("portid", "0"))] = {"state": state, "scripts": scripts}
        hostscripts = {s.get("id", ""): s for s in host.iter("script")}
        out[addr] = {"ports": ports, "hostscripts": hostscripts}
    return out


def elem(script: Any, key: str) -> str | None:
    for e in script.iter("elem"):
        if e.get("key") == key:
            return str(e.text)
    return None


def compare(report: dict[str, Any], nmap: dict[str, Any]) -> list[str]:
    """What both said, checked equal; returns the facts compared."""
    said: list[str] = []
    results = [r for t in report["targets"] for r in t["results"]]
    by = {(r["address"], r["id"]): r for r in results}
    mbx1, dc, edge = HOSTS["mbx1"], HOSTS["dc"], HOSTS["edge"]
    # 1. port states: exprobe's connect outcome against nmap's state, every port touched.
    word = {"open": "open", "closed": "closed", "filtered": "filtered"}
    for r in results:
        host = nmap.get(r["address"] or "")
        if host is None or r["probe"] in ("autodiscover", "mx"):
            continue
        theirs = host["ports"].get(r["port"], {}).get("state")
        ours = word.get(r["port_state"])
        if ours is not None and theirs is not None:
            assert ours == theirs, (r["id"], r["address"], r["port"], ours, theirs)
    said.append("port states")
    # 2. the NTLM identity of /ews/.
    ntlm = nmap[mbx1]["ports"][443]["scripts"]["http-ntlm-info"]
    assert elem(ntlm, "DNS_Computer_Name") == by[(mbx1, "ews")]["facts"]["ntlm"]["dns_computer"]
    said.append("NTLM identity")
    # 3. the certificate subject on 443.
    cert = nmap[mbx1]["ports"][443]["scripts"]["ssl-cert"]
    cn = next(e.text for e in cert.iter("elem") if e.get("key") == "commonName")
    assert f"CN={cn}" in by[(mbx1, "owa")]["facts"]["cert_subject"]
    said.append("certificate subject")
    # 4. TLS versions and cipher suites on 443.
    enum = nmap[mbx1]["ports"][443]["scripts"]["ssl-enum-ciphers"]
    theirs: dict[str, list[str]] = {}
    for table in enum.findall("table"):
        version = table.get("key", "")
        names = [
            e.text for c in table.iter("table") if c.get("key") == "ciphers"
            for t in c.findall("table") for e in t.findall("elem") if e.get("key") == "name"
        ]  # fmt: skip
        theirs[version.replace("TLSv", "")] = sorted(str(n) for n in names)
    tls = by[(mbx1, "tls-443")]["facts"]
    assert sorted(theirs) == tls["tls_accepted"], (theirs, tls["tls_accepted"])
    iana = iana_names()
    mine = {v: sorted(iana[c] for c in cs) for v, cs in tls.get("tls_ciphers", {}).items()}
    assert mine == {v: s for v, s in theirs.items() if v != "1.3"}, (mine, theirs)
    said.append(f"TLS versions {', '.join(sorted(theirs))} and their suites")
    # 5. EHLO keywords on 25.
    cmds = nmap[mbx1]["ports"][25]["scripts"].get("smtp-commands")
    output = str(cmds.get("output", "")) if cmds is not None else ""
    if output.startswith("Couldn't"):  # nmap's own connection failed: nothing to compare
        said.append(f"EHLO keywords not compared (smtp-commands: {output.strip()[:60]})")
    elif cmds is not None:
        # smtp-commands lists the EHLO reply's first line (the server's name), then keywords.
        listed = {w.split()[0].upper() for w in output.split(", ")[1:] if w.strip()}
        ours_kw = set(by[(mbx1, "intra-25")]["facts"]["ehlo_extensions"])
        assert ours_kw == listed, (ours_kw, listed)
        said.append("EHLO keywords")
    # 6. the DC's rootDSE and SMB signing.
    rootdse = nmap[dc]["ports"][389]["scripts"]["ldap-rootdse"]
    m = re.search(r"defaultNamingContext: (\S+)", str(rootdse.get("output", "")))
    assert m is not None, rootdse.get("output")
    assert m[1] == by[(dc, "dc-ldap")]["facts"]["default_naming_context"], m[1]
    said.append("defaultNamingContext")
    sec = nmap[dc]["hostscripts"].get("smb2-security-mode")
    if sec is not None:
        required = "required" in str(sec.get("output", ""))
        assert required == by[(dc, "dc-smb")]["facts"]["signing_required"]
        said.append("SMB signing")
    assert edge in nmap
    return said


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    # SIGTERM ends the run through `finally`, so the lab's servers go with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    lab = XLab()
    lab.up()
    try:
        first_ours, out = timed(lab, EXPROBE)
        report = json.loads(out)
        n_checks = sum(len(t["results"]) for t in report["targets"])
        n_facts = sum(len(r["facts"]) for t in report["targets"] for r in t["results"])
        verdicts = [v["verdict"] for t in report["targets"] for v in t.get("scenarios", [])]
        ports = ports_touched(report)
        nmap_cmd = nmap_argv(ports)
        first_nmap, xml = timed(lab, nmap_cmd)
        Path("/tmp/exprobe-bench-modern-nmap.xml").write_text(xml)  # to read when they differ
        Path("/tmp/exprobe-bench-modern.json").write_text(out)
        said = compare(report, nmap_facts(xml))
        # The runs compared count as the first round (nmap's take minutes each).
        t_ours: list[float] = [first_ours]
        t_nmap: list[float] = [first_nmap]
        for _ in range(args.rounds):
            t_nmap.append(timed(lab, nmap_cmd)[0])
            t_ours.append(timed(lab, EXPROBE)[0])
        mo, mn = statistics.median(t_ours), statistics.median(t_nmap)
        union = sorted(set().union(*ports.values()))
        print(f"hosts: mbx1, dc, edge; ports: {', '.join(map(str, union))}")
        print(f"agree: {'; '.join(said)}")
        print(f"exprobe run -p exchange2019 (every scenario, {len(verdicts)} verdicts:"
              f" {', '.join(f'{verdicts.count(v)} {v}' for v in sorted(set(verdicts)))};"
              f" {n_checks} checks, {n_facts} facts): median {mo:.2f} s"
              f" (runs {', '.join(f'{t:.2f}' for t in t_ours)})")
        print(f"nmap -sV --script {SCRIPTS} on the same ports of the 3 hosts: median"
              f" {mn:.2f} s (runs {', '.join(f'{t:.2f}' for t in t_nmap)})")
        print(f"ratio nmap/exprobe: {mn / mo:.1f} ({len(t_ours)} rounds)")
    finally:
        lab.down()


if __name__ == "__main__":
    main()
