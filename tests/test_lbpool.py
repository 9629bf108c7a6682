"""lb-pool without a network: member parsing, params, the summary of a pool's answers,
and the scheduler queuing a check derived on an ancestor's behalf once."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from exprobe.engine.runner import Outcome
from exprobe.engine.scheduler import Limits, run_pool
from exprobe.errors import InputError
from exprobe.probes import get as get_probe
from exprobe.probes.base import CheckSpec, Params, make_params
from exprobe.probes.lbpool import EP_REASON, LbPoolParams, Member, parse_member, summarise
from exprobe.result import CheckResult
from exprobe.status import PortState, Status
from tests.helpers import validate_check_record

VIP = "10.0.0.2"
CERT = "aa" * 32
LB_CERT = "bb" * 32


def ok(vdir: str, fqdn: str, fe: str) -> dict[str, Any]:
    return {"vdir": vdir, "status": 200, "fqdn": fqdn, "fe_server": fe, "healthy": True}


def bad(vdir: str, fe: str, status: int = 503) -> dict[str, Any]:
    return {"vdir": vdir, "status": status, "fe_server": fe, "healthy": False,
            "answer": f"HTTP {status} (X-FEServer {fe})"}  # fmt: skip


def tls(cert: str = CERT, version: str = "TLSv1.3") -> dict[str, Any]:
    return {"cert_sha256": cert, "cert_subject": f"CN={cert[:2]}", "cert_issuer": "CN=ca",
            "tls_version": version, "tls_cipher": "TLS_AES_256_GCM_SHA384"}  # fmt: skip


def result(id: str, probe: str, address: str | None, *, answers: list[dict[str, Any]] | None = None,
           status: Status = Status.SUCCESS, mode: str = "implicit", facts: dict[str, Any] | None = None,
           parent: str | None = "pool", message: str = "", port: int = 443) -> CheckResult:  # fmt: skip
    f = dict(facts or {})
    if answers is not None:
        f["answers"] = answers
    return CheckResult(id, probe, "vip.example", address, port, status, PortState.OPEN, None,
                       1.0, 0.5, "2026-12-04T00:00:00Z", message, mode, f, parent=parent)  # fmt: skip


def pool(answers: list[dict[str, Any]], rounds: int, vdirs: list[str], *, cert: str = CERT,
         members: list[str] | None = None, mode: str = "implicit") -> CheckResult:  # fmt: skip
    facts: dict[str, Any] = {"requests": {"rounds": rounds, "vdirs": vdirs,
                                          "sent": rounds * len(vdirs)}}  # fmt: skip
    if members:
        facts["members_given"] = members
    if mode == "implicit":
        facts.update(tls(cert))
    return result("pool", "lb-pool", VIP, answers=answers, facts=facts, parent=None, mode=mode)


def vip(n: int, vdir: str, answer: dict[str, Any] | None, *, cert: str = CERT,
        status: Status = Status.SUCCESS, message: str = "", address: str = VIP,
        version: str = "TLSv1.3") -> CheckResult:  # fmt: skip
    facts = {"lb_vip": address, "lb_role": "vip", "lb_round": n, **tls(cert, version)}
    return result(f"pool/vip{n}/{vdir}", "lb-healthcheck", address, facts=facts, status=status,
                  answers=[answer] if answer else None, message=message)  # fmt: skip


def direct(member: str, address: str, answers: list[dict[str, Any]], *, cert: str = CERT,
           mode: str = "implicit", version: str = "TLSv1.3", port: int = 443) -> CheckResult:  # fmt: skip
    facts: dict[str, Any] = {"lb_vip": VIP, "lb_role": "direct", "lb_member": member}
    if mode == "implicit":
        facts.update(tls(cert, version))
    status = Status.SUCCESS if all(a["healthy"] for a in answers) else Status.APPLICATION_ERROR
    return result(f"pool/direct/{member}", "lb-healthcheck", address, answers=answers,
                  facts=facts, mode=mode, status=status, port=port)  # fmt: skip


def lookup(member: str, status: Status = Status.SUCCESS, message: str = "") -> CheckResult:
    facts = {"lb_vip": VIP, "lb_role": "lookup", "lb_member": member}
    return result(f"pool/lookup/{member}@{VIP}", "lb-member", None, facts=facts, status=status,
                  message=message)  # fmt: skip


EX1 = ("ex1.corp.example", "EX1")
EX2 = ("ex2.corp.example", "EX2")


def two_members(*, cert: str = CERT, member_cert: str = CERT, version: str = "TLSv1.3",
                member_version: str = "TLSv1.3") -> tuple[CheckResult, list[CheckResult]]:  # fmt: skip
    """Two rounds of owa and ews through the VIP, alternating EX1 and EX2; both asked directly."""
    order = [("owa", EX1), ("ews", EX2), ("owa", EX2), ("ews", EX1)]
    head = pool([ok("owa", *EX1)], 2, ["owa", "ews"], cert=cert)
    kids = [vip(i // 2 + 1, v, ok(v, *who), cert=cert, version=version)
            for i, (v, who) in enumerate(order) if i]  # fmt: skip
    for fqdn, fe in (EX1, EX2):
        kids += [lookup(fqdn), direct(fqdn, f"10.0.0.1{fe[-1]}",
                                      [ok("owa", fqdn, fe), ok("ews", fqdn, fe)],
                                      cert=member_cert, version=member_version)]  # fmt: skip
    return head, kids


# -- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "member"),
    [
        ("ex1.corp.example", Member("ex1.corp.example", 443, "implicit")),
        ("EX1.Corp.Example.", Member("ex1.corp.example", 443, "implicit")),
        ("ex1", Member("ex1", 443, "implicit")),
        ("10.0.0.11:4443", Member("10.0.0.11", 4443, "implicit")),
        ("http://10.0.0.11", Member("10.0.0.11", 80, "none")),
        ("https://ex1.corp.example:8443", Member("ex1.corp.example", 8443, "implicit")),
        ("fd00::11", Member("fd00::11", 443, "implicit")),
        ("[fd00::11]:444", Member("fd00::11", 444, "implicit")),
        ("http://[fd00::11]", Member("fd00::11", 80, "none")),
    ],
)
def test_parse_member(text: str, member: Member) -> None:
    assert parse_member(text) == member


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "member '' is not a host name or an address"),
        ("ex1:0", "member 'ex1:0': port '0' is not in 1-65535"),
        ("ex1:http", "member 'ex1:http': port 'http' is not in 1-65535"),
        ("[fd00::11", "member '[fd00::11': expected [IPv6]:PORT"),
        ("ex1/owa", "member 'ex1/owa' is not a host name or an address"),
        ("ex 1", "member 'ex 1' is not a host name or an address"),
        ("-ex1", "member '-ex1' is not a host name or an address"),
        ("\x1b[31mex1", "member '\\x1b[31mex1' is not a host name or an address"),
    ],
)
def test_parse_member_refuses(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=r"^member ") as exc:
        parse_member(text)
    assert str(exc.value) == error


def test_params_from_data_and_their_bounds() -> None:
    p = make_params(LbPoolParams, {"requests": "3", "vdirs": "owa,mapi",
                                   "members": "ex1,10.0.0.12:443"}, "--check lb-pool")  # fmt: skip
    assert (p.requests, p.vdirs, p.members) == (3, ("owa", "mapi"), ("ex1", "10.0.0.12:443"))
    assert LbPoolParams().vdirs == ("owa", "ecp", "ews", "mapi", "rpc", "oab", "autodiscover", "eas")
    assert (LbPoolParams().tls, make_params(LbPoolParams, {}, "profile").tls) == ("implicit",) * 2
    for values, error in (
        ({"requests": 0}, "requests 0: must be 1-64"),
        ({"requests": 65}, "requests 65: must be 1-64"),
        ({"vdirs": "owa,owa"}, "vdirs ('owa', 'owa'): each once"),
        ({"vdirs": []}, "vdirs: at least one"),
        ({"members": "ex1:99999"}, "member 'ex1:99999': port '99999' is not in 1-65535"),
        ({"member_port": 0}, "member_port 0: not in 1-65535"),
    ):
        with pytest.raises(InputError) as exc:
            make_params(LbPoolParams, values, "x")
        assert str(exc.value) == f"x: {error}"
    with pytest.raises(InputError, match=r"x.vdirs\[0\]: 'pop' is not one of"):
        make_params(LbPoolParams, {"vdirs": "pop"}, "x")
    spec = get_probe("lb-pool")
    assert (spec.default_port, spec.tls_capable, spec.summarise is not None) == (443, True, True)
    assert get_probe("lb-member").connects is False


# -- summarise -----------------------------------------------------------------------------


def test_healthy_pool_same_certificate() -> None:
    head, kids = two_members()
    r = summarise(head, kids)
    assert (r.status, r.failed_step) == (Status.SUCCESS, None)
    assert r.message == ("2 member(s) seen in 4 answer(s) to 4 request(s): EX1 (ex1.corp.example)"
                         " x2, EX2 (ex2.corp.example) x2; every answer healthy")  # fmt: skip
    f = r.facts
    assert [(m["fqdn"], m["fe_server"], m["seen_count"], m["seen_per_vdir"], m["healthy"],
             m["direct"]["asked"]) for m in f["members"]] == [
        ("ex1.corp.example", "EX1", 2, {"owa": 1, "ews": 1}, True, "10.0.0.11:443"),
        ("ex2.corp.example", "EX2", 2, {"ews": 1, "owa": 1}, True, "10.0.0.12:443"),
    ]  # fmt: skip
    assert f["pool_size_seen"] == 2
    assert f["requests"] == {"rounds": 2, "vdirs": ["owa", "ews"], "sent": 4, "answered": 4,
                             "unanswered": 0}  # fmt: skip
    assert f["vip_certificates"] == [{"sha256": CERT, "subject": "CN=aa", "issuer": "CN=ca",
                                      "tls_versions": ["TLSv1.3"],
                                      "tls_ciphers": ["TLS_AES_256_GCM_SHA384"], "seen_count": 4}]  # fmt: skip
    assert f["offload"] == {"suspected": False, "evidence": (
        f"the VIP and 2 member(s) asked directly present the same certificate (sha256 {CERT[:16]}...)"
        " and TLS version")}  # fmt: skip
    assert f["vdir_health"] == {
        "owa": {"answers": 2, "healthy": 2, "unhealthy": [],
                "members": {"ex1.corp.example": 1, "ex2.corp.example": 1}},
        "ews": {"answers": 2, "healthy": 2, "unhealthy": [],
                "members": {"ex2.corp.example": 1, "ex1.corp.example": 1}},
    }  # fmt: skip
    assert r.warnings == ()
    validate_check_record(r.to_dict())


def test_the_schema_holds_lb_pool_facts() -> None:
    import jsonschema

    head, kids = two_members()
    record = summarise(head, kids).to_dict()
    record["facts"]["offload"] = {"suspected": "maybe", "evidence": ""}
    with pytest.raises(jsonschema.ValidationError, match="'maybe' is not of type"):
        validate_check_record(record)
    for k in kids:
        validate_check_record(k.to_dict())


def test_another_certificate_on_the_vip_is_offloading() -> None:
    head, kids = two_members(cert=LB_CERT)
    r = summarise(head, kids)
    assert r.status is Status.SUCCESS
    evidence = (f"the VIP presents CN=bb (sha256 {LB_CERT[:16]}...) but directly"
                f" EX1 (ex1.corp.example) and EX2 (ex2.corp.example) CN=aa (sha256 {CERT[:16]}...)")
    assert r.facts["offload"] == {"suspected": True, "evidence": evidence}
    assert r.warnings == (f"SSL offloading suspected: {evidence}. {EP_REASON}",)


def test_another_tls_version_on_the_vip_is_offloading() -> None:
    head, kids = two_members(version="TLSv1.3", member_version="TLSv1.2")
    r = summarise(head, kids)
    assert r.facts["offload"] == {"suspected": True, "evidence": (
        "the VIP negotiates TLSv1.3 but EX1 (ex1.corp.example) TLSv1.2; "
        "the VIP negotiates TLSv1.3 but EX2 (ex2.corp.example) TLSv1.2")}  # fmt: skip
    assert len(r.warnings) == 1
    assert r.warnings[0].endswith(EP_REASON)


def test_another_cipher_alone_is_noted_not_offloading() -> None:
    head, kids = two_members()
    kids[-1] = dataclasses.replace(kids[-1], facts={**kids[-1].facts,
                                                    "tls_cipher": "TLS_AES_128_GCM_SHA256"})  # fmt: skip
    r = summarise(head, kids)
    assert r.facts["offload"] == {"suspected": False, "evidence": (
        f"the VIP and 2 member(s) asked directly present the same certificate (sha256 {CERT[:16]}...)"
        " and TLS version; the cipher differs (the VIP TLS_AES_256_GCM_SHA384,"
        " EX2 (ex2.corp.example) TLS_AES_128_GCM_SHA256): another TLS stack answers on the VIP")}  # fmt: skip
    assert r.warnings == ()


def test_plain_http_member_behind_a_tls_vip() -> None:
    head = pool([ok("owa", *EX1)], 1, ["owa"], members=["http://10.0.0.11"])
    kids = [lookup("http://10.0.0.11"),
            direct("http://10.0.0.11", "10.0.0.11", [ok("owa", *EX1)], mode="none", port=80)]
    r = summarise(head, kids)
    assert r.facts["offload"] == {"suspected": True, "evidence":
                                  "EX1 (ex1.corp.example) answers plain HTTP at 10.0.0.11:80"
                                  " while the VIP speaks TLS"}  # fmt: skip
    assert r.facts["members"][0]["given"] == "http://10.0.0.11"


def test_unhealthy_answer_via_the_vip_is_an_application_error() -> None:
    head = pool([ok("owa", *EX1)], 2, ["owa"])
    kids = [vip(2, "owa", bad("owa", "EX3")), lookup("ex1.corp.example"),
            direct("ex1.corp.example", "10.0.0.11", [ok("owa", *EX1)])]  # fmt: skip
    r = summarise(head, kids)
    assert (r.status, r.failed_step) == (Status.APPLICATION_ERROR, "members")
    assert r.message == ("owa: EX3 answers HTTP 503 (X-FEServer EX3) via the VIP (1 of 1)"
                         " (2 member(s) seen in 2 answer(s) to 2 request(s):"
                         " EX1 (ex1.corp.example) x1, EX3 x1)")  # fmt: skip
    ex3 = r.facts["members"][1]
    assert (ex3["fqdn"], ex3["fe_server"], ex3["healthy"], ex3["direct"]) == (None, "EX3", False, None)
    assert r.warnings == ("EX3 answers without a server FQDN: not asked directly",)
    assert r.facts["vdir_health"]["owa"]["unhealthy"] == ["EX3: HTTP 503 (X-FEServer EX3)"]


def test_unhealthy_only_when_asked_directly() -> None:
    head, kids = two_members()
    kids[-1] = direct("ex2.corp.example", "10.0.0.12", [ok("owa", *EX2), bad("ews", "EX2")])
    r = summarise(head, kids)
    assert r.status is Status.APPLICATION_ERROR
    assert r.message.startswith("ews: EX2 (ex2.corp.example) answers HTTP 503 (X-FEServer EX2)"
                                " when asked directly (the VIP did not send us there for it) (")  # fmt: skip
    assert [m["healthy"] for m in r.facts["members"]] == [True, False]


def test_requests_without_an_answer() -> None:
    head = pool([ok("owa", *EX1)], 3, ["owa"])
    kids = [vip(2, "owa", None, status=Status.IO_TIMEOUT, message="deadline passed"),
            vip(3, "owa", None, status=Status.IO_TIMEOUT, message="deadline passed"),
            lookup("ex1.corp.example"), direct("ex1.corp.example", "10.0.0.11", [ok("owa", *EX1)])]
    r = summarise(head, kids)
    assert r.status is Status.APPLICATION_ERROR
    assert r.message == ("2 of 3 request(s) to the VIP got no answer (2x io-timeout: deadline"
                         " passed) (1 member(s) seen in 1 answer(s) to 3 request(s):"
                         " EX1 (ex1.corp.example) x1)")  # fmt: skip
    assert r.facts["requests"]["unanswered"] == 2


def test_nothing_answered_keeps_the_runner_status_and_pinned_tls_checks_stay() -> None:
    head = result("pool", "lb-pool", VIP, status=Status.CONNECTION_REFUSED, parent=None,
                  message="refused (RST)", facts={"requests": {"rounds": 1, "vdirs": ["owa"],
                                                               "sent": 1}})  # fmt: skip
    r = summarise(head, [])
    assert (r.status, r.message, r.facts["members"]) == (Status.CONNECTION_REFUSED, "refused (RST)", [])
    pinned = result("pool/tls1.2", "lb-pool", VIP, answers=[ok("owa", *EX1)], parent="pool")
    assert summarise(pinned, []) is pinned


def test_kids_of_another_vip_address_are_not_mixed_in() -> None:
    head, kids = two_members()
    other = [vip(1, "ews", ok("ews", "ex9.corp.example", "EX9"), address="fd00::2")]
    r = summarise(head, kids + other)
    assert [m["fqdn"] for m in r.facts["members"]] == ["ex1.corp.example", "ex2.corp.example"]


def test_unresolved_and_unreachable_members_are_not_compared() -> None:
    head = pool([ok("owa", *EX1)], 2, ["owa"])
    why = "A ex4.corp.example: NXDOMAIN (no such name) at 10.0.0.53: not asked directly"
    kids = [vip(2, "owa", ok("owa", "ex4.corp.example", "EX4")),
            lookup("ex4.corp.example", Status.DNS_ERROR, why), lookup("ex1.corp.example"),
            result("pool/direct/ex1.corp.example", "lb-healthcheck", "10.0.0.11",
                   status=Status.CONNECTION_TIMEOUT, message="no answer to SYN",
                   facts={"lb_vip": VIP, "lb_role": "direct", "lb_member": "ex1.corp.example"})]
    r = summarise(head, kids)
    assert r.status is Status.SUCCESS
    ex1, ex4 = r.facts["members"]
    assert ex1["direct"] == {"asked": "10.0.0.11:443", "tls": "implicit", "status": "connection-timeout",
                             "answers": [], "healthy": False, "reason": "no answer to SYN"}  # fmt: skip
    assert (ex1["healthy"], ex4["healthy"]) == (True, True)
    assert ex4["direct"] == {"asked": None, "status": "dns-error", "reason": why}
    assert r.facts["offload"] == {"suspected": None,
                                  "evidence": "no member answered directly: nothing compared"}
    assert r.warnings == ("EX1 (ex1.corp.example) not compared directly: no answer to SYN",
                          f"EX4 (ex4.corp.example) not compared directly: {why}")  # fmt: skip
    validate_check_record(r.to_dict())


def test_one_member_seen_warns_only_against_a_longer_members_list() -> None:
    head = pool([ok("owa", *EX1)], 2, ["owa"], members=["10.0.0.11", "10.0.0.12"])
    kids = [vip(2, "owa", ok("owa", *EX1)),
            lookup("10.0.0.11"), direct("10.0.0.11", "10.0.0.11", [ok("owa", *EX1)]),
            lookup("10.0.0.12"), direct("10.0.0.12", "10.0.0.12", [ok("owa", *EX2)])]
    r = summarise(head, kids)
    assert r.facts["pool_size_seen"] == 1
    assert [(m["given"], m["fqdn"], m["seen_count"]) for m in r.facts["members"]] == [
        ("10.0.0.11", "ex1.corp.example", 2), ("10.0.0.12", "ex2.corp.example", 0)]
    assert r.warnings == ("members lists 2 but only EX1 (ex1.corp.example) answered in 2"
                          " answer(s) via the VIP",)  # fmt: skip


def test_a_member_answering_but_not_listed() -> None:
    head = pool([ok("owa", *EX1)], 2, ["owa"], members=["10.0.0.11"])
    kids = [vip(2, "owa", ok("owa", *EX2)), lookup("10.0.0.11"),
            direct("10.0.0.11", "10.0.0.11", [ok("owa", *EX1)])]
    r = summarise(head, kids)
    assert r.warnings == ("EX2 (ex2.corp.example) answers via the VIP but is not in members",)


def test_a_certificate_per_member_is_passthrough_not_offloading() -> None:
    head = pool([ok("owa", *EX1)], 2, ["owa"], cert=CERT)
    kids = [vip(2, "owa", ok("owa", *EX2), cert=LB_CERT),
            lookup("ex1.corp.example"), direct("ex1.corp.example", "10.0.0.11", [ok("owa", *EX1)]),
            lookup("ex2.corp.example"),
            direct("ex2.corp.example", "10.0.0.12", [ok("owa", *EX2)], cert=LB_CERT)]
    r = summarise(head, kids)
    assert r.facts["offload"] == {"suspected": False, "evidence": (
        "each of the VIP's 2 certificates is a member's: TLS passes through to the members")}
    assert r.warnings == ("the VIP presents 2 different certificates: the members of an Exchange"
                          " namespace must share one (load-balancing.md)",)  # fmt: skip


def test_plain_vip_compares_nothing() -> None:
    head = pool([ok("owa", *EX1)], 1, ["owa"], mode="none")
    r = summarise(head, [])
    assert r.facts["offload"] == {"suspected": None, "evidence": "the VIP was asked without TLS"}
    assert r.facts["vip_certificates"] == []


# -- the scheduler -------------------------------------------------------------------------


def test_a_check_derived_on_an_ancestors_behalf_runs_once() -> None:
    """Every answer from the VIP may name the same member: its lookup runs once."""
    ran: list[str] = []

    def spec(id: str, parent: str | None, address: str | None = "10.0.0.2") -> CheckSpec:
        return CheckSpec(id, "tcp", address, 443, Params(), "vip", parent=parent)

    async def run(check: CheckSpec) -> Outcome:
        ran.append(check.id)
        derived: list[CheckSpec] = []
        if check.id == "pool":
            derived = [spec(f"pool/vip{n}", "pool") for n in range(1, 5)]
            derived.append(spec("pool/own", "pool"))  # its own children are never merged
            derived.append(spec("pool/own", "pool"))
        elif check.id.startswith("pool/vip"):
            derived = [spec("pool/lookup/ex1", "pool", None), spec("pool/lookup/ex2", "pool", None)]
        r = CheckResult(check.id, "tcp", "vip", check.address, 443, Status.SUCCESS, PortState.OPEN,
                        None, 1.0, 1.0, "2026-12-04T00:00:00Z", parent=check.parent)  # fmt: skip
        return Outcome(r, derived)

    asyncio.run(run_pool([spec("pool", None)], run, Limits(concurrency=4, per_host=2),
                         lambda o: None))  # fmt: skip
    assert sorted(ran) == sorted(["pool", "pool/vip1", "pool/vip2", "pool/vip3", "pool/vip4",
                                  "pool/own", "pool/own", "pool/lookup/ex1", "pool/lookup/ex2"])


# -- a hostile pool on loopback ------------------------------------------------------------

HOSTILE = {
    b"/owa/": b"HTTP/1.1 200 OK\r\nX-FEServer: \x1b[2JEVIL\x07\r\nContent-Length: 27\r\n\r\n"
              b"200 OK<br/>\x1b]0;pwn\x07ex1.corp",
    b"/ews/": b"HTTP/1.1 200 OK\r\nContent-Length: 5011\r\n\r\n200 OK<br/>" + b"a" * 5000,
}


async def test_hostile_healthcheck_answers_stay_printable_and_bounded() -> None:
    from exprobe.engine.plan import CheckDef
    from exprobe.engine.runner import RunOptions
    from exprobe.engine.session import Session
    from exprobe.targets import parse_target

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1]
                writer.write(HOSTILE[path[: path.index(b"/", 1) + 1]])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    params = LbPoolParams(tls="none", requests=2, vdirs=("owa", "ews"),
                          members=(f"http://127.0.0.1:{port}",))
    session = Session([parse_target("127.0.0.1")], [CheckDef("pool", "lb-pool", params, port)],
                      RunOptions(timeout=5), Limits())  # fmt: skip
    async with server:
        report = await session.run()
    results = {r.id: r for r in report.all_results()}
    assert set(results) == {"pool", "pool/vip1/ews", "pool/vip2/owa", "pool/vip2/ews",
                            f"pool/lookup/http://127.0.0.1:{port}@127.0.0.1",
                            f"pool/direct/http://127.0.0.1:{port}"}  # fmt: skip
    r = results["pool"]
    assert (r.status, r.failed_step) == (Status.APPLICATION_ERROR, "members")
    evil = "\\x1b[2JEVIL\\x07"
    assert r.message == (
        f"owa: {evil} answers HTTP 200 OK (X-FEServer {evil}), no server FQDN in the body via"
        f" the VIP (2 of 2) and directly; ews: {evil} answers HTTP 200 OK, no server FQDN in the"
        " body when asked directly (the VIP did not send us there for it); ews: an unnamed server"
        " answers HTTP 200 OK, no server FQDN in the body via the VIP (2 of 2) (2 member(s) seen"
        f" in 4 answer(s) to 4 request(s): {evil} x2, an unnamed server x2)")
    assert [(m["fqdn"], m["fe_server"], m["seen_count"]) for m in r.facts["members"]] == [
        (None, evil, 2), (None, None, 2)]
    import json

    for x in results.values():
        validate_check_record(x.to_dict())
    text = json.dumps([x.to_dict() for x in results.values()])
    assert "\x1b" not in text
    assert "\x07" not in text
