"""A small, bounded stream interface that probes speak through.

Every read is bounded (line length, total bytes per check); the caller's deadline is
the runner's `asyncio.timeout`, so a peer that drips one byte a second cannot keep a
check alive.  What crosses the wire is kept in a bounded transcript.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Literal

from exprobe.errors import ProtocolError, TlsError

MAX_LINE = 8192
MAX_BYTES = 1 << 20
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
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_line: int = MAX_LINE,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.max_line = max_line
        self._budget = max_bytes
        self.transcript = Transcript()
        self.bytes_in = 0
        self.bytes_out = 0

    # -- reading -------------------------------------------------------------------------

    def _take(self, n: int) -> None:
        self.bytes_in += n
        if self.bytes_in > self._budget:
            raise ProtocolError(f"peer sent more than {self._budget} bytes")

    async def read_line(self, *, record: bool = True) -> bytes:
        """One line without its CR LF.  EOF raises `asyncio.IncompleteReadError`."""
        try:
            data = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            raise ProtocolError(f"line longer than {self.max_line} bytes") from exc
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                self.transcript.add("S", exc.partial)
            raise
        except ValueError as exc:  # readuntil's "separator not found, chunk exceeds limit"
            raise ProtocolError(f"line longer than {self.max_line} bytes") from exc
        self._take(len(data))
        if record:
            self.transcript.add("S", data)
        return data.rstrip(b"\r\n")

    async def read_exact(self, n: int) -> bytes:
        """Exactly `n` bytes (bounded by the per-check byte budget)."""
        if n < 0 or self.bytes_in + n > self._budget:
            raise ProtocolError(f"peer announced {n} bytes, more than the budget allows")
        data = await self._reader.readexactly(n)
        self._take(n)
        return data

    async def read_some(self, n: int = 4096) -> bytes:
        """Up to `n` bytes; b'' at EOF."""
        data = await self._reader.read(n)
        self._take(len(data))
        return data

    # -- writing -------------------------------------------------------------------------

    async def write(self, data: bytes, *, record: bool = True, note: str | None = None) -> None:
        """Send `data` and wait for the buffer to drain."""
        if record:
            self.transcript.add("C", note if note is not None else data)
        self.bytes_out += len(data)
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
        CVE-2011-0411 family): refuse them instead.
        """
        pending = len(getattr(self._reader, "_buffer", b""))
        if pending:
            raise TlsError(f"server sent {pending} bytes of plaintext after agreeing to start TLS")
        await self._writer.start_tls(context, server_hostname=server_hostname)
        obj = self._writer.get_extra_info("ssl_object")
        if obj is None:  # pragma: no cover - asyncio always sets it after start_tls
            raise ProtocolError("TLS layer missing after handshake")
        return obj  # type: ignore[no-any-return]

    @property
    def tls_object(self) -> ssl.SSLObject | None:
        return self._writer.get_extra_info("ssl_object")  # type: ignore[no-any-return]

    def at_eof(self) -> bool:
        return self._reader.at_eof()

    def abort(self) -> None:
        """Drop the connection without waiting (no TLS close_notify, no FIN wait)."""
        transport = self._writer.transport
        transport.abort()

    async def close(self) -> None:
        """Close politely but never wait long: the deadline belongs to the check."""
        transport = self._writer.transport
        if transport.is_closing():
            return
        if not transport.get_write_buffer_size() and self.tls_object is None:
            # Nothing to flush and no TLS goodbye: the FIN leaves now, and one loop pass
            # lets the stdlib loop release the socket (no timer per check in a sweep).
            self._writer.close()
            await asyncio.sleep(0)
            return
        self._writer.close()
        try:
            async with asyncio.timeout(0.05):
                await self._writer.wait_closed()
        except (TimeoutError, OSError, ssl.SSLError):
            self.abort()
