"""`tls`: a TLS handshake and nothing more: the certificate and version facts of any TLS
endpoint (HTTPS 443, LDAPS 636/3269, SMTPS 465, IMAPS 993, POP3S 995, Edge 50636).

Params: `tls` (implicit; `none` is taken as implicit too: the handshake is the check),
and the `tls_versions` / `tls_version` every probe has: `--set tls_versions=true` adds
one derived check per TLS version (`<id>/tls1.0` ... `<id>/tls1.3`), each offering that
version alone, to list which versions the server accepts.  After the run the check
itself gathers them (`tls_accepted`: the versions that completed a handshake) and warns
about each accepted version listed in `warn_versions` (e.g. ["1.0", "1.1"], which
Exchange 2019 and later refuse by default).

Steps: tls-handshake.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from exprobe.errors import TlsError
from exprobe.net.stream import Stream
from exprobe.probes._text import tls_summary
from exprobe.probes.base import TLS_VERSIONS, Params, ProbeContext, register
from exprobe.result import CheckResult


@dataclass(frozen=True, slots=True)
class TlsParams(Params):
    """`tls`: implicit (the handshake right after connect); `warn_versions`: versions
    whose acceptance is worth a warning (with `tls_versions`); `tls_ciphers`: with
    `tls_versions`, list the cipher suites each accepted version up to 1.2 takes;
    `tls_exclude`: the suites not to offer (set by the search itself)."""

    warn_versions: tuple[str, ...] = ()
    tls_ciphers: bool = False
    tls_exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        Params.__post_init__(self)
        bad = [v for v in self.warn_versions if v not in TLS_VERSIONS]
        if bad:
            raise ValueError(f"warn_versions: {bad[0]!r} is not one of {', '.join(TLS_VERSIONS)}")
        if len(self.tls_exclude) > MAX_ROUNDS:
            raise ValueError(f"tls_exclude: at most {MAX_ROUNDS} suites")


MAX_ROUNDS = 64  # cipher suites listed per TLS version, at most (a handshake each)
SEARCHABLE = ("1.0", "1.1", "1.2")  # TLS 1.3's suites cannot be offered one by one here


def summarise(result: CheckResult, kids: list[CheckResult]) -> CheckResult:
    """The check restated from what it derived: the versions accepted (a `tls_versions`
    check), or the cipher suites a version takes, in the order the server chose them (a
    version's check, from its search rounds)."""
    mine = [k for k in kids if k.address == result.address]
    rounds = sorted((k for k in mine if k.facts.get("tls_round")), key=_round)
    if result.facts.get("tls_version_accepted") and (rounds or result.facts.get("tls_round") == 1):
        return _with_ciphers(result, rounds)
    tried = {
        str(k.facts["tls_version_tried"]): k for k in mine if k.facts.get("tls_version_tried")
    }
    if not tried:
        return result
    accepted = [v for v in TLS_VERSIONS if v in tried and tried[v].ok]
    refused = [v for v in TLS_VERSIONS if v in tried and not tried[v].ok]
    facts = {**result.facts, "tls_accepted": accepted, "tls_refused": refused}
    ciphers = {
        v: tried[v].facts["tls_ciphers"] for v in accepted if "tls_ciphers" in tried[v].facts
    }
    if ciphers:
        facts["tls_ciphers"] = ciphers
    warn = [v for v in accepted if v in _warn_versions(result)]
    warnings = result.warnings
    if warn:
        names = ", ".join(f"TLS {v}" for v in warn)
        warnings = (*warnings, f"accepts {names}, which the profile expects refused")
    return dataclasses.replace(result, facts=facts, warnings=warnings)


def _round(r: CheckResult) -> int:
    value = r.facts.get("tls_round")
    return value if isinstance(value, int) else 0


def _with_ciphers(result: CheckResult, rounds: list[CheckResult]) -> CheckResult:
    """A version's check with the suites its rounds found (the first is its own)."""
    found = [str(result.facts.get("tls_cipher"))]
    done = False
    for r in rounds:
        if r.facts.get("tls_cipher_search_done"):
            done = True
            break
        if r.ok and r.facts.get("tls_cipher"):
            found.append(str(r.facts["tls_cipher"]))
    facts = {**result.facts, "tls_ciphers": found, "tls_ciphers_complete": done}
    return dataclasses.replace(result, facts=facts)


def _warn_versions(result: CheckResult) -> tuple[str, ...]:
    value = result.facts.get("warn_versions")
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _next_round(ctx: ProbeContext, params: TlsParams) -> None:
    """Offer the same version without the suites found so far: the server's next choice."""
    chosen = ctx.facts.get("tls_cipher")
    if not isinstance(chosen, str) or len(params.tls_exclude) + 1 >= MAX_ROUNDS:
        return
    check = ctx.check
    root = check.parent if params.tls_exclude else check.id  # rounds hang off the version
    exclude = (*params.tls_exclude, chosen)
    ctx.derive(
        dataclasses.replace(
            check,
            id=f"{root}/c{len(exclude) + 1}",
            # The round makes its own handshake (tls none): a refusal ends the search.
            params=dataclasses.replace(params, tls="none", tls_exclude=exclude),
            parent=root,
            meta=(("tls_round", len(exclude) + 1),),
        )
    )


@register(
    "tls",
    TlsParams,
    default_port=443,
    tls_ports={"implicit": 443},
    summary="TLS handshake only: version, cipher, certificate (and, optionally, every version)",
    tls_capable=True,
    summarise=summarise,
)
async def tls(stream: Stream, params: TlsParams, ctx: ProbeContext) -> None:
    """The handshake (unless the runner did it: `tls=implicit`) and its facts."""
    if params.warn_versions:  # for `summarise`, which sees results, not parameters
        ctx.facts["warn_versions"] = list(params.warn_versions)
    searching = params.tls_ciphers and params.tls_version in SEARCHABLE
    if searching and not params.tls_exclude:
        ctx.facts["tls_round"] = 1
    if params.tls != "implicit":
        try:
            await ctx.start_tls(stream)
        except (TlsError, ConnectionError, EOFError) as exc:
            if not (searching and params.tls_exclude):
                raise
            # The server takes none of the suites left (with an alert, or, like SChannel,
            # by closing the connection): the search is complete.
            ctx.facts["tls_cipher_search_done"] = True
            said = str(exc) or type(exc).__name__
            ctx.summary = f"TLS {params.tls_version}: no further cipher suite accepted ({said})"
            return
    if searching:
        _next_round(ctx, params)
    ctx.summary = f"TLS handshake ok{tls_summary(ctx)}"
