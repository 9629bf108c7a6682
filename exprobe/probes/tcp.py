"""`tcp`: a TCP connect and nothing more; `banner`: connect and read the first line.

`tcp` has no probe function: the runner takes its lean path (no stream, no reader),
which is what makes large sweeps fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from exprobe.errors import ProtocolError
from exprobe.net.stream import Stream
from exprobe.probes.base import REGISTRY, Params, ProbeContext, ProbeSpec, register


@dataclass(frozen=True, slots=True)
class TcpParams(Params):
    """Only the port matters; `tls` is accepted for symmetry but must stay "none"."""


REGISTRY["tcp"] = ProbeSpec(
    "tcp", None, TcpParams, default_port=None, summary="TCP connect (three-way handshake) only"
)


@dataclass(frozen=True, slots=True)
class BannerParams(Params):
    """`tls = "implicit"` reads the banner over TLS."""


@register(
    "banner",
    BannerParams,
    default_port=None,
    summary="TCP connect and read the first line the server sends",
    tls_capable=True,
)
async def banner(stream: Stream, params: BannerParams, ctx: ProbeContext) -> None:
    """Read one line (the greeting), bounded by the stream's line limit."""
    ctx.step("banner")
    line = await stream.read_line()
    text = line.decode("utf-8", "replace")
    if not text:
        raise ProtocolError("empty banner line")
    ctx.facts["banner"] = text
    ctx.summary = text
