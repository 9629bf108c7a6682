"""`tls`: a TLS handshake and nothing more: the certificate and version facts of any TLS
endpoint (HTTPS 443, LDAPS 636/3269, SMTPS 465, IMAPS 993, POP3S 995, Edge 50636).

Params: `tls` (implicit; `none` is taken as implicit too: the handshake is the check),
and the `tls_versions` / `tls_version` every probe has: `--set tls_versions=true` adds
one derived check per TLS version (`<id>/tls1.0` ... `<id>/tls1.3`), each offering that
version alone, to list which versions the server accepts.

Steps: tls-handshake.
"""

from __future__ import annotations

from dataclasses import dataclass

from exprobe.net.stream import Stream
from exprobe.probes._text import tls_summary
from exprobe.probes.base import Params, ProbeContext, register


@dataclass(frozen=True, slots=True)
class TlsParams(Params):
    """`tls`: implicit (the handshake right after connect)."""


@register(
    "tls",
    TlsParams,
    default_port=443,
    tls_ports={"implicit": 443},
    summary="TLS handshake only: version, cipher, certificate (and, optionally, every version)",
    tls_capable=True,
)
async def tls(stream: Stream, params: TlsParams, ctx: ProbeContext) -> None:
    """The handshake (unless the runner did it: `tls=implicit`) and its facts."""
    if params.tls != "implicit":
        await ctx.start_tls(stream)
    ctx.summary = f"TLS handshake ok{tls_summary(ctx)}"
