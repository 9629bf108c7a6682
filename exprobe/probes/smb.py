"""`smb`: SMB2/3 NEGOTIATE, and the NTLM identity from a credential-less SESSION_SETUP
(MS-SMB2; TCP 445: a DAG's file share witness, a domain controller).

Parameters:
    tls: only "none" (SMB over TCP has no TLS of its own).
    ntlm: send the SESSION_SETUP with an NTLMSSP NEGOTIATE to read the server's NTLM
        identity (default true).  No credential is ever sent: the exchange stops at the
        server's CHALLENGE.

Steps:
    negotiate      NEGOTIATE offering 2.0.2, 2.1, 3.0, 3.0.2 and 3.1.1: the dialect chosen,
                   signing enabled/required, server GUID, capabilities, server time
    session-setup  (ntlm) SESSION_SETUP whose SPNEGO token is an NTLMSSP NEGOTIATE; the
                   CHALLENGE names the server (NetBIOS and DNS computer, domain, forest,
                   Windows version) and gives a second clock.  A server that refuses it
                   (an error status, or no NTLM in its answer) is a warning, not a failure.

An SMB1 answer, a non-SMB answer or an error status to NEGOTIATE is protocol-error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exprobe.net.stream import Stream
from exprobe.probes._text import first_line
from exprobe.probes.base import Params, ProbeContext, register
from exprobe.wire.ntlm import NtlmChallenge, negotiate_message
from exprobe.wire.smb import (
    FRAME_HEADER,
    decode_negotiate,
    decode_session_setup,
    encode_negotiate,
    encode_session_setup,
    frame_length,
    spnego_ntlm_negotiate,
)

_NAMED = ("netbios_domain", "dns_computer")  # what the transcript line names
CLOCK_SKEW_LIMIT_S = 300  # Kerberos, which SMB to a DC uses, fails past 5 minutes


@dataclass(frozen=True, slots=True)
class SmbParams(Params):
    """Parameters of the `smb` probe (see the module docstring)."""

    ntlm: bool = True

    def __post_init__(self) -> None:
        Params.__post_init__(self)
        if self.tls != "none":
            raise ValueError(f'smb has no TLS: tls must be "none", not {self.tls!r}')


def identity_facts(challenge: NtlmChallenge) -> dict[str, Any]:
    """`facts.ntlm` as the mail probes write it: `offered`, then the CHALLENGE's identity
    (names as one line of at most 100 characters)."""
    facts: dict[str, Any] = {"offered": True}
    for key, value in challenge.facts().items():
        facts[key] = first_line(value, 100) if isinstance(value, str) else value
    return facts


async def _read(stream: Stream) -> bytes:
    length = frame_length(await stream.read_exact(FRAME_HEADER))
    return await stream.read_exact(length)


@register(
    "smb",
    SmbParams,
    default_port=445,
    summary="SMB2/3 NEGOTIATE (dialect, signing, GUID) and the NTLM identity, no credentials",
)
async def smb(stream: Stream, params: SmbParams, ctx: ProbeContext) -> None:
    """NEGOTIATE, then (ntlm) SESSION_SETUP with an NTLM NEGOTIATE up to the CHALLENGE."""
    ctx.step("negotiate")
    await stream.write(encode_negotiate(), note="NEGOTIATE dialects 2.0.2 2.1 3.0 3.0.2 3.1.1")
    neg = decode_negotiate(await _read(stream))
    facts = neg.facts()
    stream.transcript.add(
        "S",
        f"NEGOTIATE response dialect {neg.dialect_name} signing "
        f"{'required' if neg.signing_required else 'not required'} guid {neg.server_guid}",
    )
    ctx.facts.update(facts)
    skew = facts.get("clock_skew_s")
    if skew is not None and abs(skew) > CLOCK_SKEW_LIMIT_S:
        ctx.warn(f"clock skew {skew:+.0f} s with the server (Kerberos fails past 300 s)")
    signing = "required" if neg.signing_required else "optional"
    summary = f"SMB {neg.dialect_name}, signing {signing}"

    if params.ntlm:
        ctx.step("session-setup")
        blob = spnego_ntlm_negotiate(negotiate_message())
        await stream.write(
            encode_session_setup(blob),
            note="SESSION_SETUP SPNEGO(NTLMSSP NEGOTIATE), no credentials",
        )
        reply = decode_session_setup(await _read(stream))
        if reply.challenge is None:
            stream.transcript.add("S", f"SESSION_SETUP response status 0x{reply.status:08x}")
            ctx.facts["ntlm"] = {"offered": False, "status": f"0x{reply.status:08x}"}
            ctx.warn(f"no NTLM CHALLENGE in the SESSION_SETUP answer (status 0x{reply.status:08x})")
        else:
            ntlm = identity_facts(reply.challenge)
            stream.transcript.add(
                "S",
                "SESSION_SETUP response MORE_PROCESSING_REQUIRED NTLM CHALLENGE "
                + " ".join(
                    f"{k}={ntlm[k]}" for k in ("netbios_domain", "dns_computer") if k in ntlm
                ),
            )
            ctx.facts["ntlm"] = ntlm
            name = ntlm.get("dns_computer") or ntlm.get("netbios_computer")
            if name:
                summary += f", {name}"
            if ntlm.get("netbios_domain"):
                summary += f" ({ntlm['netbios_domain']})"
    ctx.summary = summary
