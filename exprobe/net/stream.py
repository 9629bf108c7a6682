"""A small, bounded stream interface that probes speak through.

Every read is bounded (line length, total bytes per check); the caller's deadline is
the runner's `asyncio.timeout`, so a peer that drips one byte a second cannot keep a
check alive.  What crosses the wire is kept in a bounded transcript.

Plaintext is read and written on the connected socket itself (`loop.sock_recv`,
`loop.sock_sendall`): no transport, protocol or reader objects per connection, which
is most of what a banner grab costs.  TLS needs asyncio's SSL transport, so
`start_tls` hands the socket to one and reads go through it from then on; the
buffering and the bounds are the same in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass, field
from typing import Literal

from exprobe.errors import ProtocolError, TlsError

MAX_LINE = 8192
MAX_BYTES = 1 << 20
RECV_SIZE = 65536
TRANSCRIPT_LINES = 64
TRANSCRIPT_LINE_CHARS = 200

Direction = Literal["C", "S", "*"]


@dataclass(slots=True)
class Transcript:
    """Up to `TRANSCRIPT_LINES` lines of what was sent (C), received (S) or noted (*)."""

    lines: list[tuple[Direction, str]] = field(default_factory=list)
    dropped: int = 0

    def add(self, direction: Direction, data: bytes | str) -> None:
        text = data.decode("latin-1") if isinstance(data, bytes) else data
        text = text.rstrip("\r\n")
        if len(text) > TRANSCRIPT_LINE_CHARS:
            text = text[:TRANSCRIPT_LINE_CHARS] + f"...(+{len(text) - TRANSCRIPT_LINE_CHARS})"
        if len(self.lines) >= TRANSCRIPT_LINES:
            self.dropped += 1
            return
        self.lines.append((direction, text))

    def as_list(self) -> list[str]:
        out = [f"{d} {t}" for d, t in self.lines]
        if self.dropped:
            out.append(f"* ({self.dropped} more lines not kept)")
        return out


class Stream:
    """A connected TCP (or TLS) byte stream with bounded reads."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_line: int = MAX_LINE,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self._eof = False
        # Set once TLS is up: the socket then belongs to this transport.
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.max_line = max_line
        self._budget = max_bytes
        self.transcript = Transcript()
        self.bytes_in = 0
        self.bytes_out = 0

    # -- reading -------------------------------------------------------------------------

    async def _fill(self) -> None:
        """Append what the peer sends next to the buffer; at its end, mark EOF."""
        if self._reader is not None:
            data = await self._reader.read(RECV_SIZE)
        else:
            data = await self._loop.sock_recv(self._sock, RECV_SIZE)
        if data:
            self._buf += data
        else:
            self._eof = True

    def _take(self, n: int) -> bytes:
        self.bytes_in += n
        if self.bytes_in > self._budget:
            raise ProtocolError(f"peer sent more than {self._budget} bytes")
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _incomplete(self, expected: int | None) -> asyncio.IncompleteReadError:
        partial = bytes(self._buf)
        self._buf.clear()
        return asyncio.IncompleteReadError(partial, expected)

    async def read_line(self, *, record: bool = True) -> bytes:
        """One line without its CR LF.  EOF raises `asyncio.IncompleteReadError`."""
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end >= 0:
                break
            if len(self._buf) > self.max_line:
                raise ProtocolError(f"line longer than {self.max_line} bytes")
            if self._eof:
                exc = self._incomplete(None)
                if exc.partial:
                    self.transcript.add("S", exc.partial)
                raise exc
            start = len(self._buf)
            await self._fill()
        if end >= self.max_line:
            raise ProtocolError(f"line longer than {self.max_line} bytes")
        data = self._take(end + 1)
        if record:
            self.transcript.add("S", data)
        return data.rstrip(b"\r\n")

    async def read_exact(self, n: int) -> bytes:
        """Exactly `n` bytes (bounded by the per-check byte budget)."""
        if n < 0 or self.bytes_in + n > self._budget:
            raise ProtocolError(f"peer announced {n} bytes, more than the budget allows")
        while len(self._buf) < n:
            if self._eof:
                raise self._incomplete(n)
            await self._fill()
        return self._take(n)

    async def read_some(self, n: int = 4096) -> bytes:
        """Up to `n` bytes; b'' at EOF."""
        if not self._buf and not self._eof:
            await self._fill()
        return self._take(min(n, len(self._buf)))

    # -- writing -------------------------------------------------------------------------

    async def write(self, data: bytes, *, record: bool = True, note: str | None = None) -> None:
        """Send `data`; return once it is all with the kernel (or the TLS layer)."""
        if record:
            self.transcript.add("C", note if note is not None else data)
        self.bytes_out += len(data)
        if self._writer is None:
            await self._loop.sock_sendall(self._sock, data)
            return
        if self._writer.transport.is_closing():
            # The peer reset the connection: asyncio would fail at drain(), uvloop fails
            # at write() with a RuntimeError.  Say the same thing on both loops.
            raise ConnectionResetError("connection lost before the write")
        self._writer.write(data)
        await self._writer.drain()

    async def write_line(self, line: str, *, note: str | None = None) -> None:
        await self.write(line.encode("ascii", "replace") + b"\r\n", note=note)

    def note(self, text: str) -> None:
        """Add an explanatory line to the transcript."""
        self.transcript.add("*", text)

    # -- TLS and teardown -----------------------------------------------------------------

    async def start_tls(
        self, context: ssl.SSLContext, server_hostname: str | None
    ) -> ssl.SSLObject:
        """Upgrade the connection in place; returns the TLS object for facts.

        Bytes the server sent after its "go ahead" but before the handshake would be
        read later as if they had come over TLS (STARTTLS response injection, the
        CVE-2011-0411 family): refuse them instead, counting what already waits in the
        kernel too.
        """
        if self._reader is not None:
            raise ProtocolError("TLS is already up")
        # One read, never a loop: a peer that keeps the buffer full must not hold this
        # (await-free) code past the check's deadline.
        with contextlib.suppress(BlockingIOError, InterruptedError):
            self._buf += self._sock.recv(RECV_SIZE)
        if self._buf:
            raise TlsError(
                f"server sent {len(self._buf)} bytes of plaintext after agreeing to start TLS"
            )
        reader = asyncio.StreamReader(limit=self.max_line, loop=self._loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self._loop)
        transport, _ = await self._loop.create_connection(lambda: protocol, sock=self._sock)
        self._reader = reader
        self._writer = asyncio.StreamWriter(transport, protocol, reader, self._loop)
        await self._writer.start_tls(context, server_hostname=server_hostname)
        obj = self._writer.get_extra_info("ssl_object")
        if obj is None:  # pragma: no cover - asyncio always sets it after start_tls
            raise ProtocolError("TLS layer missing after handshake")
        return obj  # type: ignore[no-any-return]

    @property
    def tls_object(self) -> ssl.SSLObject | None:
        if self._writer is None:
            return None
        return self._writer.get_extra_info("ssl_object")  # type: ignore[no-any-return]

    def at_eof(self) -> bool:
        return self._eof and not self._buf

    def abort(self) -> None:
        """Drop the connection without waiting (no TLS close_notify, no FIN wait)."""
        if self._writer is not None:
            self._writer.transport.abort()
        else:
            self._sock.close()

    async def close(self) -> None:
        """Close politely but never wait long: the deadline belongs to the check."""
        if self._writer is None:
            # Plaintext: nothing is buffered on our side; the FIN leaves now.
            self._sock.close()
            return
        transport = self._writer.transport
        if transport.is_closing():
            return
        if not transport.get_write_buffer_size() and self.tls_object is None:
            self._writer.close()
            await asyncio.sleep(0)
            return
        self._writer.close()
        try:
            async with asyncio.timeout(0.05):
                await self._writer.wait_closed()
        except (TimeoutError, OSError, ssl.SSLError):
            self.abort()
