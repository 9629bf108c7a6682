"""`rfc1006`: ISO transport over TCP (RFC 1006, ISO 8073 class 0): CR, expect a CC.

What X.400 MTAs (Exchange's X.400 connector, TCP 102 by default, configurable as the
"RFC1006 port") and S7 PLCs speak first: a TPKT-framed COTP Connection Request.

Parameters:
    tls: only "none" (RFC 1006 has no TLS).
    calling_tsap, called_tsap: the TSAPs to send; hex (`0x0100`, `hex:0100`) or text
        (`MTA1`, `ascii:...`); empty leaves the parameter out.
    tpdu_size: the TPDU size to propose, a power of two in 128..8192 (default 1024).

Steps:
    cotp-cr  send the Connection Request (class 0, TPDU size, TSAPs)
    cotp-cc  read one TPKT: a Connection Confirm is success; a Disconnect Request or an
             Error TPDU is application-error with its reason; anything else is
             protocol-error
    cotp-dr  send a Disconnect Request (normal disconnect) before the runner closes
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from exprobe.errors import ApplicationError, ProtocolError
from exprobe.net.stream import Stream
from exprobe.probes.base import Params, ProbeContext, register
from exprobe.wire.cotp import (
    TPDU_SIZES,
    TPKT_HEADER,
    Tpdu,
    build_cr,
    build_dr,
    format_tsap,
    parse_tpdu,
    parse_tsap,
    tpkt_length,
)

SRC_REF = 0x002A  # our source reference; the CC must echo it as its destination reference


@dataclass(frozen=True, slots=True)
class Rfc1006Params(Params):
    """Parameters of the `rfc1006` probe (see the module docstring)."""

    calling_tsap: str = ""
    called_tsap: str = ""
    tpdu_size: int = 1024

    def __post_init__(self) -> None:
        Params.__post_init__(self)
        if self.tls != "none":
            raise ValueError(f'rfc1006 has no TLS: tls must be "none", not {self.tls!r}')
        parse_tsap(self.calling_tsap)  # ValueError names the bad TSAP
        parse_tsap(self.called_tsap)
        if self.tpdu_size not in TPDU_SIZES:
            sizes = ", ".join(str(s) for s in TPDU_SIZES)
            raise ValueError(f"tpdu_size {self.tpdu_size} is not one of {sizes}")


def describe(tpdu: Tpdu) -> str:
    """One transcript line for a TPDU."""
    if tpdu.kind in ("CR", "CC"):
        text = f"{tpdu.kind} dst-ref 0x{tpdu.dst_ref:04x} src-ref 0x{tpdu.src_ref:04x}"
        text += f" class {tpdu.class_option >> 4}"
        if tpdu.tpdu_size:
            text += f" TPDU {tpdu.tpdu_size}"
        if tpdu.calling_tsap is not None:
            text += f" calling {format_tsap(tpdu.calling_tsap)}"
        if tpdu.called_tsap is not None:
            text += f" called {format_tsap(tpdu.called_tsap)}"
        return text
    if tpdu.kind == "DR":
        return (
            f"DR src-ref 0x{tpdu.src_ref:04x} reason 0x{tpdu.reason or 0:02x} ({tpdu.reason_text})"
        )
    if tpdu.kind == "ER":
        return f"ER cause 0x{tpdu.cause or 0:02x} ({tpdu.reason_text})"
    return f"{tpdu.kind} TPDU (code 0x{tpdu.code:02x}, {len(tpdu.data)} data bytes)"


@register(
    "rfc1006",
    Rfc1006Params,
    default_port=102,
    summary="ISO transport over TCP (RFC 1006): COTP Connection Request, expect Confirm",
)
async def rfc1006(stream: Stream, params: Rfc1006Params, ctx: ProbeContext) -> None:
    """CR → CC, then DR: does an ISO transport entity (an X.400 MTA) answer here?"""
    calling = parse_tsap(params.calling_tsap)
    called = parse_tsap(params.called_tsap)

    ctx.step("cotp-cr")
    cr = build_cr(
        src_ref=SRC_REF, calling_tsap=calling, called_tsap=called, tpdu_size=params.tpdu_size
    )
    note = f"CR src-ref 0x{SRC_REF:04x} class 0 TPDU {params.tpdu_size}"
    if calling:
        note += f" calling {format_tsap(calling)}"
    if called:
        note += f" called {format_tsap(called)}"
    await stream.write(cr, note=note)

    ctx.step("cotp-cc")
    length = tpkt_length(await stream.read_exact(TPKT_HEADER))
    tpdu = parse_tpdu(await stream.read_exact(length - TPKT_HEADER))
    stream.transcript.add("S", describe(tpdu))
    ctx.facts["tpdu"] = tpdu.kind
    if tpdu.kind == "DR":
        ctx.facts["dr_reason"] = tpdu.reason
        ctx.facts["dr_reason_text"] = tpdu.reason_text
        raise ApplicationError(
            f"Disconnect Request: reason 0x{tpdu.reason or 0:02x} ({tpdu.reason_text})"
        )
    if tpdu.kind == "ER":
        ctx.facts["er_cause"] = tpdu.cause
        ctx.facts["er_cause_text"] = tpdu.reason_text
        raise ApplicationError(f"Error TPDU: cause 0x{tpdu.cause or 0:02x} ({tpdu.reason_text})")
    if tpdu.kind != "CC":
        raise ProtocolError(f"expected a Connection Confirm, got a {tpdu.kind} TPDU")

    # ISO 8073: without a TPDU-size parameter the size is the default, 128.
    accepted = tpdu.tpdu_size or 128
    ctx.facts["tpdu_size_requested"] = params.tpdu_size
    ctx.facts["tpdu_size_accepted"] = accepted
    ctx.facts["calling_tsap_echoed"] = _tsap(tpdu.calling_tsap)
    ctx.facts["called_tsap_echoed"] = _tsap(tpdu.called_tsap)
    ctx.facts["src_ref"] = f"0x{tpdu.src_ref:04x}"
    ctx.facts["dst_ref"] = f"0x{tpdu.dst_ref:04x}"
    ctx.facts["class"] = tpdu.class_option >> 4
    if tpdu.dst_ref != SRC_REF:
        ctx.warn(f"the CC references 0x{tpdu.dst_ref:04x}, the CR used 0x{SRC_REF:04x}")
    if tpdu.class_option >> 4 != 0:
        ctx.warn(f"the CC selects class {tpdu.class_option >> 4}; only class 0 was proposed")
    if accepted > params.tpdu_size:
        ctx.warn(f"the CC raises the TPDU size to {accepted} (only lowering is allowed)")
    if 0xC0 in tpdu.params and tpdu.tpdu_size is None:
        ctx.warn(f"the CC carries an invalid TPDU-size parameter {tpdu.params[0xC0].hex()}")
    ctx.summary = (
        f"CC: TPDU size {accepted}, TSAPs {_tsap(tpdu.calling_tsap) or '-'}"
        f" -> {_tsap(tpdu.called_tsap) or '-'}"
    )

    ctx.step("cotp-dr")
    # Class 0 normally ends with the TCP close; a DR first is what the issue asks and
    # what MTAs tolerate.  The peer may already be gone: the CC is what mattered.
    with contextlib.suppress(OSError):
        await stream.write(
            build_dr(tpdu.src_ref, SRC_REF, 128), note="DR reason 0x80 (normal disconnect)"
        )


def _tsap(value: bytes | None) -> str | None:
    return None if value is None else format_tsap(value)
