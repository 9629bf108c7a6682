"""The two scenarios that need the test lab (tests/lab/lab.py): the Exchange profile
against real servers, and a WAN-like path (netem delay and loss) between the client and
the server namespaces.

The lab is used as found when it is already up (and left up), started and stopped
otherwise.  Whatever the bench changes in it (a scripted endpoint mapper on
10.250.0.2:135, netem) is undone before it returns.  Do not run it while lab tests run.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness import (
    REPO,
    Figure,
    Run,
    errors_against,
    exprobe_counts,
    interleaved,
    measure,
    med,
    nmap_gnmap_counts,
    nmap_xml,
    pair_ratios,
    python,
    record_of,
    say,
    show_run,
    summary_row,
    write_lines,
)

sys.path.insert(0, str(REPO))

EPM_PORTS = {"ds": 4600, "is": 4601, "mta": 4602}
WAN_PORTS = 10000


def cli_prefix() -> list[str]:
    from tests.lab.lab import CLI_NS

    return ["nsenter", f"--net=/run/netns/{CLI_NS}", "--"]


@contextlib.contextmanager
def lab_up() -> Iterator[Any]:
    from tests.lab.lab import Lab, preflight

    problem = preflight()
    if problem:
        raise RuntimeError(problem)
    lab = Lab()
    mine = not lab.running()
    if mine:
        lab.up()
    try:
        yield lab
    finally:
        lab.clear_netem()
        lab.stop_spawned()
        if mine:
            lab.down()


def with_lab(ctx: Any, scenarios: list[tuple[str, Callable[[Any, Any], None]]]) -> None:
    try:
        with lab_up() as lab:
            for _name, fn in scenarios:
                fn(ctx, lab)
    except (RuntimeError, ImportError, OSError) as exc:
        say(f"== lab scenarios not run: {exc} ==")
        for name, _ in scenarios:
            ctx.figures.append(Figure(f"{name} (lab)", "-", "no lab", None))
        say()


# -- scenario 3: the Exchange profile --------------------------------------------------------

PROFILE_PORTS = [25, 102, 110, 119, 135, 143, 389, 563, 636, 993, 995]
NMAP_SCRIPTS = "smtp-commands,pop3-capabilities,imap-capabilities,ldap-rootdse,ssl-cert"
TLS_PORTS = (25, 110, 119, 143, 389, 563, 636, 993, 995)
# nmap's ssl-cert speaks STARTTLS on 25/110/119/143/389; so does exprobe with these.
STARTTLS_SETS = [f"{c}.tls=starttls" for c in ("smtp", "pop3", "imap", "nntp", "ldap")]

# (fact, which ports it applies to)
FACTS: list[tuple[str, tuple[int, ...]]] = [
    ("port open", tuple(PROFILE_PORTS)),
    ("service identified", tuple(PROFILE_PORTS)),
    ("greeting text", (25, 110, 119, 143, 563, 993, 995)),
    ("SMTP EHLO extensions", (25,)),
    ("STARTTLS offered", (25, 110, 119, 143, 389)),
    ("capability list", (110, 119, 143, 563, 993, 995)),
    ("LDAP naming contexts", (389, 636)),
    ("TLS version and cipher", TLS_PORTS),
    ("certificate subject and expiry", TLS_PORTS),
    ("certificate trust and name check", TLS_PORTS),
    ("RFC 1006 connection confirm", (102,)),
    ("endpoint map (DS/IS/MTA ports)", (135,)),
    ("DS/IS/MTA ports reachable", (135,)),
]


def exprobe_facts(report: dict[str, Any]) -> dict[tuple[str, int], str]:
    got: dict[tuple[str, int], str] = {}
    results = [r for t in report["targets"] for r in t["results"]]
    for r in results:
        port, f, ok = r["port"], r["facts"], r["status"] == "success"
        if r.get("parent"):
            continue

        def put(fact: str, value: Any, port: int = port) -> None:
            if value not in (None, "", [], {}):
                got[(fact, port)] = str(value)[:60]

        put("port open", r["port_state"] if r["port_state"] == "open" else None)
        put("service identified", r["probe"] if ok else None)
        put("greeting text", f.get("banner"))
        put("SMTP EHLO extensions", " ".join(f.get("ehlo_extensions") or []))
        put("STARTTLS offered", "yes" if f.get("starttls_offered") else None)
        put("capability list", " ".join(map(str, f.get("capabilities") or [])))
        put("LDAP naming contexts", " ".join(f.get("naming_contexts") or []))
        if f.get("tls_version"):
            put("TLS version and cipher", f"{f['tls_version']} {f.get('tls_cipher', '')}")
        if f.get("cert_subject"):
            put("certificate subject and expiry", f"{f['cert_subject']} {f.get('cert_not_after')}")
        if "cert_trusted" in f:
            put(
                "certificate trust and name check",
                f"trusted={f['cert_trusted']} name={f.get('cert_name_matches')}",
            )
        if r["probe"] == "rfc1006" and ok:
            put("RFC 1006 connection confirm", f"class {f.get('class')} tpdu {f.get('tpdu')}")
        if r["probe"] == "msrpc-epm" and ok:
            put("endpoint map (DS/IS/MTA ports)", json.dumps(f.get("components"))[:60])
    derived = [r for r in results if r.get("parent") and r["status"] == "success"]
    if derived:
        got[("DS/IS/MTA ports reachable", 135)] = " ".join(str(r["port"]) for r in derived)
    return got


def nmap_facts(path: Path) -> dict[tuple[str, int], str]:
    got: dict[tuple[str, int], str] = {}
    for port in nmap_xml(path).iter("port"):
        num = int(port.get("portid", "0"))
        state = port.find("state")
        if state is None or state.get("state") != "open":
            continue
        got[("port open", num)] = "open"
        svc = port.find("service")
        if svc is not None and svc.get("product"):
            got[("service identified", num)] = f"{svc.get('product')} {svc.get('version', '')}"
        scripts = {s.get("id"): s.get("output") or "" for s in port.iter("script")}
        smtp = scripts.get("smtp-commands", "")
        if smtp:
            got[("SMTP EHLO extensions", num)] = smtp.strip()[:60]
        caps = scripts.get("pop3-capabilities") or scripts.get("imap-capabilities") or ""
        if caps:
            got[("capability list", num)] = caps.strip()[:60]
        if re.search(r"\b(STARTTLS|STLS)\b", smtp + caps) or "1.3.6.1.4.1.1466.20037" in (
            scripts.get("ldap-rootdse") or ""
        ):
            got[("STARTTLS offered", num)] = "yes"
        ctxs = re.findall(r"namingContexts: (\S+)", scripts.get("ldap-rootdse") or "")
        if ctxs:
            got[("LDAP naming contexts", num)] = " ".join(ctxs)
        cert = scripts.get("ssl-cert", "")
        if "Subject:" in cert:
            subject = cert.split("Subject:", 1)[1].splitlines()[0].strip()
            after = re.search(r"Not valid after:\s*(\S+)", cert)
            got[("certificate subject and expiry", num)] = (
                f"{subject} {after.group(1) if after else ''}"[:60]
            )
    return got


def scenario_exchange(ctx: Any, lab: Any) -> None:
    from tests.lab.lab import SRV_ADDR

    say(
        "== 3. the exchange55 profile against the lab's real servers "
        f"(exprobe --set {' --set '.join(STARTTLS_SETS)}) =="
    )
    with lab.exchange55_epm(EPM_PORTS, name="bench-epm-peer"):
        runs = 1 if ctx.quick else ctx.runs
        ours: list[Run] = []
        theirs: list[Run] = []
        ca = str(lab.ca_file)
        for i in range(runs):
            out = ctx.out / f"exchange-exprobe-{i}.json"
            argv = [python(), "-m", "exprobe", "run", SRV_ADDR, "-p", "exchange55", "-f", "json",
                    "-o", str(out), "--ca-file", ca]  # fmt: skip
            for setting in STARTTLS_SETS:
                argv += ["--set", setting]
            run = measure("exprobe", [*cli_prefix(), *argv], ctx.out, timeout=120)
            report = json.loads(out.read_text()) if out.exists() else {"targets": []}
            statuses = [r["status"] for t in report["targets"] for r in t["results"]]
            run.counts = {"checks": len(statuses), "success": statuses.count("success")}
            run.errors = len(statuses) - statuses.count("success") if statuses else 1
            ours.append(run)
            show_run(run)
            nout = ctx.out / f"exchange-nmap-{i}.xml"
            nargv = ["nmap", "-sT", "-Pn", "-n", "-sV", "--script", NMAP_SCRIPTS, "-p",
                     ",".join(map(str, PROFILE_PORTS)), SRV_ADDR, "-oX", str(nout)]  # fmt: skip
            nrun = measure("nmap", [*cli_prefix(), *nargv], ctx.out, timeout=900)
            nfacts = nmap_facts(nout) if nout.exists() else {}
            nrun.counts = {"open": sum(1 for (f, _) in nfacts if f == "port open")}
            nrun.errors = errors_against(nrun.counts, {"open": len(PROFILE_PORTS)})
            theirs.append(nrun)
            show_run(nrun)
        ratio = [t.wall / o.wall for o, t in zip(ours, theirs, strict=True) if o.ok]
        say(
            f"  exprobe wall {med([r.wall for r in ours]):.2f} s, nmap wall "
            f"{med([r.wall for r in theirs]):.2f} s: nmap / exprobe = {med(ratio):.1f}x"
        )
        efacts = exprobe_facts(json.loads(out.read_text())) if out.exists() else {}
        nfacts = nmap_facts(nout) if nout.exists() else {}
        show_facts(efacts, nfacts)
        e_n = sum(1 for f, ps in FACTS for p in ps if (f, p) in efacts)
        n_n = sum(1 for f, ps in FACTS for p in ps if (f, p) in nfacts)
        both = sum(1 for f, ps in FACTS for p in ps if (f, p) in nfacts and (f, p) in efacts)
        say(f"  facts obtained: exprobe {e_n}, nmap {n_n}; of nmap's, exprobe also has {both}")
        ctx.record["exchange"] = {
            "exprobe_wall": [r.wall for r in ours],
            "nmap_wall": [r.wall for r in theirs],
            "ratios": ratio,
            "facts": {
                f"{f} / {p}": {"exprobe": efacts.get((f, p)), "nmap": nfacts.get((f, p))}
                for f, ps in FACTS
                for p in ps
            },
        }
        ctx.figures.append(
            Figure(
                "exchange55 profile vs nmap -sV",
                ">= 10x faster, same facts",
                f"{med(ratio):.1f}x, {both}/{n_n}",
                bool(ratio) and med(ratio) >= 10 and both == n_n,
            )
        )
    say()


def show_facts(ours: dict[tuple[str, int], str], theirs: dict[tuple[str, int], str]) -> None:
    say(f"  {'fact':<34} {'port':>5}  {'exprobe':<8} {'nmap':<8} exprobe's value")
    for fact, ports in FACTS:
        for port in ports:
            e, n = ours.get((fact, port)), theirs.get((fact, port))
            say(
                f"  {fact:<34} {port:>5}  {'yes' if e else '-':<8} {'yes' if n else '-':<8} "
                f"{(e or '')[:44]}"
            )


# -- scenario 5: WAN paths ------------------------------------------------------------------


def listening_ports(lab: Any, address: str) -> set[int]:
    out = lab.run_srv(["ss", "-Hltn"], timeout=10).stdout
    ports = set()
    for line in out.splitlines():
        local = line.split()[3]
        host, _, port = local.rpartition(":")
        if host.strip("[]") in (address, "0.0.0.0", "*", "::"):
            ports.add(int(port))
    return {p for p in ports if p <= WAN_PORTS}


def scenario_wan(ctx: Any, lab: Any) -> None:
    from tests.lab.lab import SRV_ADDR

    n = 2000 if ctx.quick else WAN_PORTS
    say(f"== 5. WAN path: {n:,} ports of {SRV_ADDR} through netem (20 ms delay, 1% loss) ==")
    lab.set_firewall()
    open_ports = {p for p in listening_ports(lab, SRV_ADDR) if p <= n}
    truth_ours = {"success": len(open_ports), "connection-refused": n - len(open_ports)}
    truth_nmap = {"open": len(open_ports), "closed": n - len(open_ports)}
    targets = write_lines(ctx.out / "wan-targets.txt", [f"{SRV_ADDR}:{p}" for p in range(1, n + 1)])
    method = lab.set_netem(delay_ms=20, loss_pct=1)
    say(f"  netem by {method}; open ports: {sorted(open_ports)}")
    # One host, many ports: exprobe's per-host limit (default 4) would be the bottleneck
    # by design; open it to --concurrency, as nmap's per-host parallelism is.  A 5 s
    # connect timeout covers two lost SYNs (retransmitted at 1 s and 3 s).
    flags = ["--concurrency", "512", "--per-host", "512", "--connect-timeout", "5"]

    def ours(i: int) -> Run:
        out = ctx.out / f"wan-exprobe-{i}.jsonl"
        argv = [python(), "-m", "exprobe", "run", "-T", str(targets), "-f", "jsonl",
                "-o", str(out), *flags]  # fmt: skip
        run = measure("exprobe", [*cli_prefix(), *argv], ctx.out, timeout=600)
        run.counts = exprobe_counts(out) if out.exists() else {}
        run.errors = errors_against(run.counts, truth_ours)
        return run

    def theirs(i: int) -> Run:
        out = ctx.out / f"wan-nmap-{i}.gnmap"
        argv = ["nmap", "-sT", "-Pn", "-n", "-T4", "-p", f"1-{n}", SRV_ADDR, "-oG", str(out)]
        run = measure("nmap", [*cli_prefix(), *argv], ctx.out, timeout=900)
        run.counts = nmap_gnmap_counts(out) if out.exists() else {}
        run.errors = errors_against(run.counts, truth_nmap)
        return run

    try:
        got = interleaved(ctx, [("exprobe", ours), ("nmap", theirs)], "WAN")
    finally:
        lab.clear_netem()
    for name, runs in got.items():
        say(summary_row(name, runs, n))
    ratios = pair_ratios(got["exprobe"], got["nmap"])
    say(f"  nmap wall / exprobe wall: {med(ratios):.2f}x")
    ctx.record["wan"] = {**record_of(got, ratios), "netem": method}
    ctx.figures.append(
        Figure(
            "WAN (netem 20 ms, 1% loss)",
            ">= 1.5x nmap -sT",
            f"{med(ratios):.2f}x",
            bool(ratios) and med(ratios) >= 1.5,
        )
    )
    say()
