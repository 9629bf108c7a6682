"""Opening TCP connections: the lean connect-only path and the stream path."""

from __future__ import annotations

import asyncio
import socket

from exprobe.net.stream import MAX_LINE, Stream


class _Discard(asyncio.Protocol):
    """A protocol that ignores everything: the connect-only check needs no reader."""

    def data_received(self, data: bytes) -> None:  # pragma: no cover - nothing to do
        pass


def _local(address: str, source: str | None) -> tuple[str, int] | None:
    if not source:
        return None
    return (source, 0)


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


async def connect_only(address: str, port: int, *, source: str | None) -> None:
    """Complete the three-way handshake, then close.  Raises OSError / TimeoutError."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(
        _Discard, address, port, family=_family(address), local_addr=_local(address, source)
    )
    transport.abort()  # no data to flush; do not linger in FIN_WAIT for a probe


async def open_stream(
    address: str, port: int, *, source: str | None, max_line: int = MAX_LINE
) -> Stream:
    """A connected `Stream`.  Raises OSError / TimeoutError (mapped by the runner)."""
    reader, writer = await asyncio.open_connection(
        address,
        port,
        family=_family(address),
        local_addr=_local(address, source),
        limit=max_line,
    )
    return Stream(reader, writer, max_line=max_line)
