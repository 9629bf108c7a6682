"""The one status vocabulary, and the one map from OS and asyncio errors to it.

Every check ends with exactly one `Status`; `PortState` says the same thing in the words
firewall people use (nmap's).  Refused, timed out and unreachable are always kept apart:
for someone verifying a firewall that difference is the whole point.
"""

from __future__ import annotations

import errno
import ssl
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """How a check ended.  The values are a public contract (JSON, metrics, docs)."""

    SUCCESS = "success"
    DNS_ERROR = "dns-error"
    CONNECTION_REFUSED = "connection-refused"
    CONNECTION_TIMEOUT = "connection-timeout"
    UNREACHABLE = "unreachable"
    CONNECTION_CLOSED = "connection-closed"
    IO_TIMEOUT = "io-timeout"
    TLS_ERROR = "tls-error"
    PROTOCOL_ERROR = "protocol-error"
    APPLICATION_ERROR = "application-error"
    INTERCEPTED = "intercepted"
    INTERNAL_ERROR = "internal-error"
    SKIPPED = "skipped"


class PortState(StrEnum):
    """The TCP port's state as nmap would name it."""

    OPEN = "open"
    CLOSED = "closed"
    FILTERED = "filtered"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Classified:
    """An error mapped to the vocabulary: status, port state and a short human reason."""

    status: Status
    port_state: PortState
    reason: str
    errno_name: str | None = None
    icmp: dict[str, Any] | None = None  # the ICMP error behind it, with its sender


# ICMP unreachable / administratively prohibited arrive as these errnos on Linux
# (`reject with icmpx type admin-prohibited` gives EHOSTUNREACH, not ECONNREFUSED).
_UNREACHABLE_ERRNOS = {
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EACCES,
    errno.EPERM,
    errno.EHOSTDOWN,
    errno.ENONET,
    errno.EPROTO,
}
_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ESHUTDOWN}


def _errno_name(err: int | None) -> str | None:
    return errno.errorcode.get(err) if err is not None else None


def classify_connect_error(exc: BaseException) -> Classified:
    """Map an exception raised while opening a TCP connection."""
    if isinstance(exc, TimeoutError):
        return Classified(Status.CONNECTION_TIMEOUT, PortState.FILTERED, "no answer to SYN")
    icmp = getattr(exc, "icmp", None)  # exprobe.net.connect.failed: who sent which ICMP error
    if icmp is not None:
        return _classify_icmp(exc, icmp)
    if isinstance(exc, ConnectionRefusedError):
        return Classified(
            Status.CONNECTION_REFUSED, PortState.CLOSED, "refused (RST)", "ECONNREFUSED"
        )
    if isinstance(exc, OSError):
        err = exc.errno
        name = _errno_name(err)
        if err == errno.ETIMEDOUT:
            return Classified(
                Status.CONNECTION_TIMEOUT, PortState.FILTERED, "no answer to SYN", name
            )
        if err in _UNREACHABLE_ERRNOS:
            return Classified(
                Status.UNREACHABLE, PortState.FILTERED, f"unreachable (ICMP, {name})", name
            )
        if err in _RESET_ERRNOS:
            return Classified(Status.CONNECTION_CLOSED, PortState.UNKNOWN, f"reset ({name})", name)
        if err in (errno.EADDRNOTAVAIL, errno.EADDRINUSE, errno.EAFNOSUPPORT):
            return Classified(
                Status.UNREACHABLE, PortState.UNKNOWN, f"no usable local address ({name})", name
            )
        if err in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            return Classified(
                Status.INTERNAL_ERROR,
                PortState.UNKNOWN,
                f"local resources exhausted ({name})",
                name,
            )
        return Classified(Status.UNREACHABLE, PortState.UNKNOWN, f"connect failed ({name})", name)
    return Classified(Status.INTERNAL_ERROR, PortState.UNKNOWN, f"{type(exc).__name__}: {exc}")


def _classify_icmp(exc: BaseException, icmp: Any) -> Classified:
    """A connect ended by an ICMP error whose sender the kernel named: the same status as
    its errno alone gives, and the reason says which hop sent what."""
    base = classify_connect_error(_plain(exc))
    said = icmp.describe()
    if base.status is Status.CONNECTION_REFUSED:
        # ICMP port-unreachable (nft's default `reject`), not a RST: nmap calls it filtered.
        reason = f"refused ({said})"
        state = PortState.FILTERED
    else:
        reason = f"unreachable ({said}, {base.errno_name})"
        state = base.port_state
    return Classified(base.status, state, reason, base.errno_name, icmp.to_dict())


def _plain(exc: BaseException) -> BaseException:
    if isinstance(exc, OSError) and exc.errno is not None:
        return OSError(exc.errno, exc.strerror)
    return exc


def classify_io_error(exc: BaseException) -> Classified:
    """Map an exception raised on an established connection (port state is then `open`)."""
    if isinstance(exc, TimeoutError):
        return Classified(Status.IO_TIMEOUT, PortState.OPEN, "no answer before the deadline")
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return Classified(Status.TLS_ERROR, PortState.OPEN, f"TLS: {_ssl_reason(exc)}")
    if isinstance(exc, ConnectionError | EOFError):
        err = getattr(exc, "errno", None)
        name = _errno_name(err)
        if isinstance(exc, ConnectionResetError):
            return Classified(Status.CONNECTION_CLOSED, PortState.OPEN, "reset by peer", name)
        return Classified(Status.CONNECTION_CLOSED, PortState.OPEN, "closed by peer", name)
    if isinstance(exc, OSError):
        name = _errno_name(exc.errno)
        if exc.errno in _RESET_ERRNOS:
            return Classified(Status.CONNECTION_CLOSED, PortState.OPEN, f"reset ({name})", name)
        if exc.errno in _UNREACHABLE_ERRNOS or exc.errno == errno.ETIMEDOUT:
            return Classified(Status.UNREACHABLE, PortState.OPEN, f"path lost ({name})", name)
        return Classified(Status.CONNECTION_CLOSED, PortState.OPEN, f"socket error ({name})", name)
    return Classified(Status.INTERNAL_ERROR, PortState.OPEN, f"{type(exc).__name__}: {exc}")


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return str(exc) or type(exc).__name__


# Nagios / exit-code severity of a status, used by reporters that need an order.
FAILURE_STATUSES = frozenset(Status) - {Status.SUCCESS, Status.SKIPPED}
