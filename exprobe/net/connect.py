"""Opening TCP connections: the lean connect-only path and the stream path.

Both start with the same non-blocking `connect()` on a bare socket: no name resolution
(addresses are literal by now), no transport or protocol objects, one timer.  The
connect-only check then resets the connection at once; the stream path wraps the
connected socket in a `Stream`, which reads and writes on it directly.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import errno
import os
import socket
import struct
import sys
from typing import Any, cast

from exprobe.net.stream import MAX_LINE, Stream
from exprobe.wire import icmperr

# SO_LINGER {on, 0 s}: close() sends RST and frees the socket at once (no FIN_WAIT or
# TIME_WAIT left behind per probe), as nmap's connect scan does.
_LINGER_RESET = struct.pack("ii", 1, 0)
# Linux: let connect() pick the source port, so a bound source address does not cap the
# run at one ephemeral port per connection across all destinations.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN)
# Linux queues the ICMP error that ended a connect, with its sender, for a socket that
# asks (IP_RECVERR): no raw socket, no privilege.  Elsewhere hops cannot be named.
HOPS_SUPPORTED = sys.platform.startswith("linux")


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _bind_source(sock: _socket.socket, source: str) -> None:
    if sock.family == socket.AF_INET:
        with contextlib.suppress(OSError):  # not Linux: a port per bound socket, as before
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source, 0))


def _ask_for_errors(sock: Any, family: int) -> None:
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, icmperr.IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, icmperr.IP_RECVERR, 1)
    except OSError:
        pass


def set_ttl(sock: Any, family: int, ttl: int) -> None:
    """The IP TTL (IPv6 hop limit) of the packets `sock` sends."""
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, icmperr.IPV6_UNICAST_HOPS, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IP, icmperr.IP_TTL, ttl)


def read_icmp_error(sock: Any) -> icmperr.IcmpError | None:
    """The newest ICMP error the kernel queued on `sock` (None if none); never blocks,
    never raises."""
    found: icmperr.IcmpError | None = None
    for _ in range(4):  # a retransmitted SYN may have drawn more than one
        try:
            _d, ancdata, _f, _a = sock.recvmsg(1, 512, icmperr.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except (OSError, ValueError):
            break
        for level, kind, cdata in ancdata:
            err = icmperr.decode(level, kind, cdata)
            if err is not None:
                found = err
    return found


def reset_close(sock: _socket.socket) -> None:
    """Close with RST (no lingering states); never raises."""
    try:  # noqa: SIM105 - contextlib.suppress costs more than the call, once per check
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


def _established(sock: _socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:  # ENOTCONN: still in SYN_SENT (or already failed)
        return False
    return True


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


def start_connect(
    address: str, port: int, source: str | None, *, bare: bool = False, ttl: int | None = None
) -> tuple[_socket.socket, int]:
    """A new non-blocking socket with its connect() started: `(sock, err)`, err 0 when
    connected already (loopback), EINPROGRESS when the answer is pending (see
    `wait_connected`), another errno when it failed at once.  `bare=True` gives the C
    socket type without the Python wrapper, for a socket that is only closed again.
    `ttl` limits how many hops its packets travel (a trace).  Every socket asks for its
    ICMP errors (see `failed`)."""
    family = _family(address)
    sock = (
        _socket.socket(family, socket.SOCK_STREAM)
        if bare
        else socket.socket(family, socket.SOCK_STREAM)
    )
    try:
        sock.setblocking(False)
        if HOPS_SUPPORTED:
            _ask_for_errors(sock, family)
        if ttl is not None:
            set_ttl(sock, family, ttl)
        if source:
            _bind_source(sock, source)
        err = sock.connect_ex((address, port))
        if err in _IN_PROGRESS and _established(sock):
            err = 0  # on loopback the handshake is over before connect() returns
    except BaseException:
        reset_close(sock)
        raise
    return sock, err


async def wait_connected(sock: _socket.socket, connect_timeout: float | None) -> int:
    """Wait for a started connect() to end: its errno (0: connected); TimeoutError after
    `connect_timeout` seconds.  Leaves the socket open either way."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, _wake, fut)
    timer = loop.call_later(connect_timeout, _expire, fut) if connect_timeout is not None else None
    try:
        await fut
    except TimeoutError:
        # A loop that stalled (a busy machine; uvloop runs timers before polling) can
        # see the deadline pass after the answer came: report the answer.
        err: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not err and not _established(sock):
            raise
        return err
    finally:
        loop.remove_writer(fd)
        if timer is not None:
            timer.cancel()
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


def failed(err: int, sock: Any) -> OSError:
    """The error for a connect that ended with `err`, carrying (as `.icmp`) the ICMP error
    that caused it, with its sender, when the kernel queued one."""
    exc = OSError(err, os.strerror(err))  # OSError picks the subclass (refused, ...)
    exc.icmp = read_icmp_error(sock) if HOPS_SUPPORTED else None  # type: ignore[attr-defined]
    return exc


def raise_errno(err: int, sock: Any) -> None:
    if err:
        raise failed(err, sock)


async def connect_socket(
    address: str, port: int, *, source: str | None, connect_timeout: float | None = None
) -> socket.socket:
    """A connected non-blocking TCP socket.  Raises OSError, or TimeoutError after
    `connect_timeout` seconds.

    On any failure (cancellation included) the socket is closed before the error leaves.
    """
    sock, err = start_connect(address, port, source)
    try:
        if err in _IN_PROGRESS:
            err = await wait_connected(sock, connect_timeout)
        raise_errno(err, sock)
    except BaseException:
        reset_close(sock)
        raise
    return cast(socket.socket, sock)  # not bare: the Python socket type


async def connect_only(
    address: str, port: int, *, source: str | None, connect_timeout: float | None = None
) -> None:
    """Complete the three-way handshake, then reset.  Raises OSError / TimeoutError.

    The lean path of a sweep: the C socket type (no Python wrapper), closed with RST
    whatever happened; on loopback it never suspends."""
    sock, err = start_connect(address, port, source, bare=True)
    try:
        if err in _IN_PROGRESS:
            err = await wait_connected(sock, connect_timeout)
        raise_errno(err, sock)
    finally:
        reset_close(sock)


async def open_stream(
    address: str,
    port: int,
    *,
    source: str | None,
    max_line: int = MAX_LINE,
    connect_timeout: float | None = None,
) -> Stream:
    """A connected `Stream`.  Raises OSError / TimeoutError (mapped by the runner)."""
    # The Python socket class, not the bare one: uvloop keeps a socket.socket open for
    # a TLS transport (_io_refs), but a bare socket's finalizer would close the
    # descriptor a second time, by then perhaps another connection's.
    sock = await connect_socket(address, port, source=source, connect_timeout=connect_timeout)
    return Stream(sock, max_line=max_line)
