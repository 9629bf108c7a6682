"""Start a listen plan on addresses: bind-address rules, certificate, error messages.

Shared by `exprobe listen` (real addresses, until Ctrl-C) and `exprobe demo` (loopback,
in-process, for a few seconds).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import ssl
from dataclasses import dataclass

from exprobe.errors import InputError
from exprobe.listen.core import BindError, ListenServer, RecordSink
from exprobe.listen.plan import ListenPlan

PRIVILEGED_BELOW = 1024
SUGGESTED_OFFSET = 10000


def parse_bind_addresses(values: list[str], *, allow_wildcard: bool) -> list[str]:
    """Literal IP addresses, deduplicated; a wildcard only with `allow_wildcard`."""
    if not values:
        raise InputError("--bind ADDR is required: the address the future server will have")
    out: list[str] = []
    for v in values:
        text = v.strip().strip("[]")
        try:
            addr = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            raise InputError(
                f"--bind {v!r}: not an IP address (give the address itself, not a name)"
            ) from None
        if addr.is_unspecified and not allow_wildcard:
            raise InputError(
                f"--bind {v}: a wildcard answers on every interface of this machine; "
                "name the address the future server will have (or pass --allow-wildcard)"
            )
        if addr.is_multicast:
            raise InputError(f"--bind {v}: a multicast address cannot accept connections")
        s = str(addr) if "%" not in text else text
        if s not in out:
            out.append(s)
    return out


def bind_error_text(exc: BindError, port_offset: int) -> str:
    """One line saying why a port could not be opened, and what to do about it."""
    where = f"[{exc.address}]:{exc.port}" if ":" in exc.address else f"{exc.address}:{exc.port}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        hint = (
            f"ports below {PRIVILEGED_BELOW} need root or CAP_NET_BIND_SERVICE; "
            f"rehearse unprivileged with --port-offset {SUGGESTED_OFFSET} "
            f"(and `exprobe run --port-offset {SUGGESTED_OFFSET}` on the client side)"
        )
        if port_offset:
            hint = f"ports below {PRIVILEGED_BELOW} need root; choose a larger --port-offset"
        return f"cannot listen on {where}: permission denied ({hint})"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is already in use by another program "
            "(stop it, or rehearse on other ports with --port-offset N)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {where}: {exc.address} is not an address of this machine "
            "(add it to an interface first, e.g. `ip addr add ADDR/PREFIX dev IFACE`)"
        )
    return f"cannot listen on {where}: {exc}"


@dataclass(slots=True)
class ServiceOptions:
    name: str
    max_connections: int = 256
    conn_timeout: float = 30.0
    idle_timeout: float = 10.0


def default_name() -> str:
    """The host name the banners and the certificate carry by default."""
    name = socket.gethostname() or "exprobe-rehearsal"
    return name if len(name) <= 64 else name[:64]


def build_server(
    plan: ListenPlan,
    addresses: list[str],
    opts: ServiceOptions,
    on_record: RecordSink | None = None,
    *,
    tls_context: ssl.SSLContext | None = None,
) -> ListenServer:
    """A server for `plan` (not started yet), with a fresh certificate unless given one."""
    from exprobe.listen.tlscert import make_certificate, server_context

    if opts.max_connections < 1:
        raise InputError("--max-connections must be at least 1")
    if opts.conn_timeout <= 0 or opts.idle_timeout <= 0:
        raise InputError("timeouts must be positive")
    if tls_context is None:
        tls_context = server_context(make_certificate(opts.name, addresses))
    return ListenServer(
        addresses,
        plan.listeners,
        name=opts.name,
        tls_context=tls_context,
        max_connections=opts.max_connections,
        conn_timeout=opts.conn_timeout,
        idle_timeout=opts.idle_timeout,
        on_record=on_record,
    )
