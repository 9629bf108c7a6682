"""Exceptions a probe raises to end a check with a precise status.

Network errors (timeouts, resets, refused connections) are not wrapped: the runner maps
them in one place (`exprobe.status`).  These are for what a probe itself concludes.
"""

from __future__ import annotations

from exprobe.status import Status


class ProbeError(Exception):
    """A probe's conclusion that the check failed, with the status to report."""

    status: Status = Status.PROTOCOL_ERROR

    def __init__(self, message: str, *, facts: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.facts = facts or {}


class ProtocolError(ProbeError):
    """The peer does not speak the expected protocol (garbage, wrong greeting, bad framing)."""

    status = Status.PROTOCOL_ERROR


class ApplicationError(ProbeError):
    """The peer speaks the protocol but refuses (4xx/5xx, -ERR, BYE, resultCode, bind_nak)."""

    status = Status.APPLICATION_ERROR


class InterceptedError(ProbeError):
    """Something other than the expected server answered where it must (a reverse proxy's
    or WAF's page, an answer without the server's headers, another certificate or NTLM
    identity): the evidence goes in `facts`."""

    status = Status.INTERCEPTED


class TlsError(ProbeError):
    """The TLS handshake failed, or verification failed where it was required."""

    status = Status.TLS_ERROR


class InputError(Exception):
    """Bad user input (targets, options, profiles): one line, exit code 2, nothing probed."""
