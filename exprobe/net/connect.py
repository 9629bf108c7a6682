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
from typing import cast

from exprobe.net.stream import MAX_LINE, Stream

# SO_LINGER {on, 0 s}: close() sends RST and frees the socket at once (no FIN_WAIT or
# TIME_WAIT left behind per probe), as nmap's connect scan does.
_LINGER_RESET = struct.pack("ii", 1, 0)
# Linux: let connect() pick the source port, so a bound source address does not cap the
# run at one ephemeral port per connection across all destinations.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN)


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _bind_source(sock: _socket.socket, source: str) -> None:
    if sock.family == socket.AF_INET:
        with contextlib.suppress(OSError):  # not Linux: a port per bound socket, as before
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source, 0))


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
    address: str, port: int, source: str | None, *, bare: bool = False
) -> tuple[_socket.socket, int]:
    """A new non-blocking socket with its connect() started: `(sock, err)`, err 0 when
    connected already (loopback), EINPROGRESS when the answer is pending (see
    `wait_connected`), another errno when it failed at once.  `bare=True` gives the C
    socket type without the Python wrapper, for a socket that is only closed again."""
    sock = (
        _socket.socket(_family(address), socket.SOCK_STREAM)
        if bare
        else socket.socket(_family(address), socket.SOCK_STREAM)
    )
    try:
        sock.setblocking(False)
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


def raise_errno(err: int) -> None:
    if err:
        raise OSError(err, os.strerror(err))  # OSError picks the subclass (refused, ...)


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
        raise_errno(err)
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
        raise_errno(err)
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
