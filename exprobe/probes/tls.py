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

from exprobe.net.stream import Stream
from exprobe.probes._text import tls_summary
from exprobe.probes.base import TLS_VERSIONS, Params, ProbeContext, register
from exprobe.result import CheckResult


@dataclass(frozen=True, slots=True)
class TlsParams(Params):
    """`tls`: implicit (the handshake right after connect); `warn_versions`: versions
    whose acceptance is worth a warning (with `tls_versions`)."""

    warn_versions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        Params.__post_init__(self)
        bad = [v for v in self.warn_versions if v not in TLS_VERSIONS]
        if bad:
            raise ValueError(f"warn_versions: {bad[0]!r} is not one of {', '.join(TLS_VERSIONS)}")


def summarise(result: CheckResult, kids: list[CheckResult]) -> CheckResult:
    """The check restated with the versions its per-version checks found accepted."""
    tried = {
        str(k.facts.get("tls_version_tried")): k
        for k in kids
        if k.address == result.address and k.facts.get("tls_version_tried")
    }
    if not tried:
        return result
    accepted = [v for v in TLS_VERSIONS if v in tried and tried[v].ok]
    refused = [v for v in TLS_VERSIONS if v in tried and not tried[v].ok]
    facts = {**result.facts, "tls_accepted": accepted, "tls_refused": refused}
    warn = [v for v in accepted if v in _warn_versions(result)]
    warnings = result.warnings
    if warn:
        names = ", ".join(f"TLS {v}" for v in warn)
        warnings = (*warnings, f"accepts {names}, which the profile expects refused")
    return dataclasses.replace(result, facts=facts, warnings=warnings)


def _warn_versions(result: CheckResult) -> tuple[str, ...]:
    value = result.facts.get("warn_versions")
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


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
    if params.tls != "implicit":
        await ctx.start_tls(stream)
    ctx.summary = f"TLS handshake ok{tls_summary(ctx)}"
