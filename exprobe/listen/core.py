"""The listener framework: bounded, time-limited connections, each one logged.

`ListenServer` binds the given addresses on each `Listener`'s port and hands every
accepted connection to that listener's responder as a `Conn`.  The framework owns what
a hostile or merely curious peer could abuse: a global connection limit, a deadline per
connection and per read, bounded lines and a byte budget, TLS handshakes (implicit or
after STARTTLS), and the one log record per connection (`ConnRecord`).  A responder
only speaks its protocol; whatever it raises ends that connection and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from exprobe.result import now_iso

Responder = Callable[["Conn"], Awaitable[None]]
RecordSink = Callable[["ConnRecord"], None]

LINE_LIMIT = 4096  # longest command line accepted (RFC 5321 asks for 512)
MAX_BYTES_IN = 256 * 1024  # per connection; no rehearsal dialogue comes near this
MAX_ACTIONS = 24  # actions kept per connection record
MAX_PEERS_PER_PORT = 1024  # distinct peers remembered per port for the summary
ACTION_CHARS = 120


class Hangup(Exception):
    """A responder ends the connection; the message becomes the record's outcome."""


class LineTooLong(Hangup):
    """The peer sent a line longer than the listener's limit."""


class BindError(Exception):
    """A listening socket could not be opened: address, port and the OS reason."""

    def __init__(self, address: str, port: int, err: int | None, text: str) -> None:
        super().__init__(text)
        self.address = address
        self.port = port
        self.errno = err


@dataclass(frozen=True, slots=True)
class Listener:
    """One port to open, the protocol label it is logged under, and who answers it."""

    port: int
    protocol: str  # "smtp", "smtps", "pop3", "epm", "dce-is", ...
    responder: Responder
    implicit_tls: bool = False
    line_limit: int = LINE_LIMIT
    checks: tuple[str, ...] = ()  # the profile checks this port serves (for the log)
    note: str = ""  # e.g. "IS: EMSMDB, store admin"


@dataclass(slots=True)
class ConnRecord:
    """What one peer did on one port: the unit of the connection log."""

    time: str
    peer: str
    peer_port: int
    local: str
    port: int
    protocol: str
    actions: list[str] = field(default_factory=list)
    outcome: str = ""
    tls: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    duration_ms: float = 0.0
    dropped_actions: int = 0

    def did(self, action: str) -> None:
        if len(self.actions) >= MAX_ACTIONS:
            self.dropped_actions += 1
            return
        if len(action) > ACTION_CHARS:
            action = action[: ACTION_CHARS - 1] + "…"
        self.actions.append(action)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": "connection",
            "time": self.time,
            "peer": self.peer,
            "peer_port": self.peer_port,
            "local": self.local,
            "port": self.port,
            "protocol": self.protocol,
            "actions": list(self.actions),
            "outcome": self.outcome,
            "tls": self.tls,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_ms": self.duration_ms,
        }
        if self.dropped_actions:
            d["dropped_actions"] = self.dropped_actions
        return d


class Conn:
    """One accepted connection as a responder sees it: bounded reads, logged actions."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: ConnRecord,
        *,
        name: str,
        tls_context: ssl.SSLContext | None,
        idle_timeout: float,
        line_limit: int,
        max_bytes: int = MAX_BYTES_IN,
        server: ListenServer | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.record = record
        self.name = name  # the server name the banners and the certificate carry
        self.tls_context = tls_context
        self.idle_timeout = idle_timeout
        self.line_limit = line_limit
        self.max_bytes = max_bytes
        self.server = server

    # -- state ---------------------------------------------------------------------------

    @property
    def tls_active(self) -> bool:
        return self.record.tls is not None

    @property
    def tls_available(self) -> bool:
        """STARTTLS may be offered: a certificate exists and TLS is not on yet."""
        return self.tls_context is not None and not self.tls_active

    def did(self, action: str) -> None:
        """Record something the peer did (shown in the log line, in order)."""
        self.record.did(action)

    # -- reading -------------------------------------------------------------------------

    def _take(self, n: int) -> None:
        self.record.bytes_in += n
        if self.record.bytes_in > self.max_bytes:
            raise Hangup(f"sent more than {self.max_bytes} bytes")

    async def read_line(self) -> bytes:
        """One line without CR LF, within the idle timeout.  EOF: IncompleteReadError."""
        try:
            async with asyncio.timeout(self.idle_timeout):
                data = await self.reader.readuntil(b"\n")
        except (asyncio.LimitOverrunError, ValueError) as exc:
            self._take(self.line_limit)
            raise LineTooLong(f"line longer than {self.line_limit} bytes") from exc
        self._take(len(data))
        if len(data) > self.line_limit:
            raise LineTooLong(f"line longer than {self.line_limit} bytes")
        return data.rstrip(b"\r\n")

    async def read_exact(self, n: int) -> bytes:
        """Exactly `n` bytes within the idle timeout (bounded by the byte budget)."""
        if n < 0 or self.record.bytes_in + n > self.max_bytes:
            raise Hangup(f"announced {n} bytes, more than a rehearsal dialogue needs")
        async with asyncio.timeout(self.idle_timeout):
            data = await self.reader.readexactly(n)
        self._take(n)
        return data

    async def read_some(self, n: int = 4096) -> bytes:
        """Up to `n` bytes within the idle timeout; b'' at EOF."""
        async with asyncio.timeout(self.idle_timeout):
            data = await self.reader.read(n)
        self._take(len(data))
        return data

    # -- writing -------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        self.record.bytes_out += len(data)
        self.writer.write(data)
        async with asyncio.timeout(self.idle_timeout):
            await self.writer.drain()

    async def write_line(self, line: str) -> None:
        await self.write(line.encode("utf-8", "replace") + b"\r\n")

    async def write_lines(self, lines: list[str]) -> None:
        await self.write(b"".join(x.encode("utf-8", "replace") + b"\r\n" for x in lines))

    # -- TLS -----------------------------------------------------------------------------

    async def start_tls(self) -> None:
        """Server side of a TLS handshake (after STARTTLS, or at once for implicit TLS)."""
        if self.tls_context is None:
            raise Hangup("TLS requested but no certificate")
        # Bytes the client sent before our go-ahead would be read as if they came over
        # TLS: the STARTTLS command-injection flaw (CVE-2011-0411).  Refuse them.
        if getattr(self.reader, "_buffer", b""):
            self.did("data pipelined after STARTTLS")
            raise Hangup("plaintext pipelined after STARTTLS (refused)")
        try:
            async with asyncio.timeout(self.idle_timeout):
                await self.writer.start_tls(
                    self.tls_context, ssl_handshake_timeout=self.idle_timeout
                )
        except ssl.SSLError as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise Hangup(f"TLS handshake failed ({str(reason).lower()})") from exc
        obj = self.writer.get_extra_info("ssl_object")
        version = obj.version() if obj is not None else None
        self.record.tls = version or "TLS"
        self.did(f"TLS {version}" if version else "TLS")


@dataclass(slots=True)
class PortStats:
    """Who reached one listening port, for the closing summary."""

    port: int
    protocol: str
    addresses: list[str] = field(default_factory=list)
    connections: int = 0
    peers: dict[str, int] = field(default_factory=dict)
    checks: tuple[str, ...] = ()
    note: str = ""

    def count(self, peer: str) -> None:
        self.connections += 1
        if peer in self.peers or len(self.peers) < MAX_PEERS_PER_PORT:
            self.peers[peer] = self.peers.get(peer, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "protocol": self.protocol,
            "addresses": list(self.addresses),
            "connections": self.connections,
            "peers": dict(self.peers),
            "checks": list(self.checks),
        }


def _peer(info: Any) -> tuple[str, int]:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return "?", 0


def _local(info: Any) -> str:
    return str(info[0]) if isinstance(info, tuple) and info else "?"


class ListenServer:
    """Every listener on every bind address, a shared connection limit, one log sink."""

    def __init__(
        self,
        addresses: list[str],
        listeners: list[Listener],
        *,
        name: str,
        tls_context: ssl.SSLContext | None = None,
        max_connections: int = 256,
        conn_timeout: float = 30.0,
        idle_timeout: float = 10.0,
        on_record: RecordSink | None = None,
    ) -> None:
        ports = [x.port for x in listeners]
        if len(ports) != len(set(ports)):
            raise ValueError("two listeners on one port")
        self.addresses = list(addresses)
        self.listeners = sorted(listeners, key=lambda x: x.port)
        self.name = name
        self.tls_context = tls_context
        self.max_connections = max(1, max_connections)
        self.conn_timeout = conn_timeout
        self.idle_timeout = idle_timeout
        self.on_record = on_record
        self.stats = {
            x.port: PortStats(x.port, x.protocol, list(addresses), checks=x.checks, note=x.note)
            for x in self.listeners
        }
        self.active = 0
        self.total = 0
        self.over_limit = 0
        self.sink_errors = 0
        self._servers: list[asyncio.Server] = []
        self._sockets: list[socket.socket] = []  # implicit-TLS listening sockets
        self._acceptors: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind everything or nothing: on the first failure close what was opened."""
        try:
            for lst in self.listeners:
                for addr in self.addresses:
                    if lst.implicit_tls:
                        self._bind_tls(addr, lst)
                    else:
                        self._servers.append(await self._bind(addr, lst))
        except BaseException:
            await self._close_servers()
            raise

    async def _bind(self, addr: str, lst: Listener) -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._handle(lst, reader, writer)

        try:
            return await asyncio.start_server(
                handle,
                host=addr,
                port=lst.port,
                limit=max(lst.line_limit, 1024) + 2,
                reuse_address=True,
                backlog=128,
            )
        except OSError as exc:
            raise BindError(addr, lst.port, exc.errno, exc.strerror or str(exc)) from None

    def _bind_tls(self, addr: str, lst: Listener) -> None:
        """Implicit TLS: a plain listening socket and our own accept loop.

        A client sends its ClientHello right after the TCP handshake.  A stream server
        would already have read it as plaintext (uvloop does, even when paused at once)
        before the TLS layer could be put in place; `connect_accepted_socket` wraps the
        socket in TLS before anything is read, and tells us when the handshake fails.
        """
        try:
            info = socket.getaddrinfo(
                addr, lst.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            )[0]
            sock = socket.socket(info[0], socket.SOCK_STREAM)
        except OSError as exc:
            raise BindError(addr, lst.port, exc.errno, exc.strerror or str(exc)) from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if info[0] == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(info[4])
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise BindError(addr, lst.port, exc.errno, exc.strerror or str(exc)) from None
        self._sockets.append(sock)
        self._acceptors.append(asyncio.create_task(self._accept_loop(sock, lst)))

    async def _accept_loop(self, sock: socket.socket, lst: Listener) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                conn, _addr = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    await asyncio.sleep(0.1)  # out of descriptors: let connections finish
                    continue
                if self._closing or exc.errno in (errno.EBADF, errno.EINVAL):
                    return
                continue  # ECONNABORTED and friends: that client is gone, go on
            task = asyncio.create_task(self._handle_tls(lst, conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _close_servers(self) -> None:
        servers, self._servers = self._servers, []
        acceptors, self._acceptors = self._acceptors, []
        for a in acceptors:
            a.cancel()
        for s in servers:
            s.close()
        if acceptors:
            await asyncio.gather(*acceptors, return_exceptions=True)
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()
        for s in servers:
            with contextlib.suppress(Exception):
                await s.wait_closed()

    async def close(self) -> None:
        """Stop accepting, end every open connection, wait for their handlers."""
        self._closing = True
        for s in self._servers:
            s.close()
        for a in self._acceptors:
            a.cancel()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_servers()

    async def __aenter__(self) -> ListenServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- one connection ----------------------------------------------------------------------

    def _admit(self, rec: ConnRecord) -> bool:
        """Count the connection; False (and a record saying so) when over the limit."""
        self.total += 1
        self.stats[rec.port].count(rec.peer)
        if self._closing or self.active >= self.max_connections:
            self.over_limit += 1
            rec.outcome = f"closed at once: {self.max_connections} connections already open"
            return False
        return True

    async def _handle(
        self, lst: Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A plain connection (the stream server calls this once per accept)."""
        peer, peer_port = _peer(writer.get_extra_info("peername"))
        rec = ConnRecord(
            now_iso(), peer, peer_port, _local(writer.get_extra_info("sockname")), lst.port,
            lst.protocol,
        )  # fmt: skip
        t0 = time.perf_counter()
        if not self._admit(rec):
            writer.transport.abort()  # accepted by the kernel already: close without a word
            self._emit(rec, t0)
            return

        async def opened() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return reader, writer

        await self._run(lst, rec, t0, opened, None)

    async def _handle_tls(self, lst: Listener, sock: socket.socket) -> None:
        """An implicit-TLS connection: handshake first, then the responder."""
        try:
            peer, peer_port = _peer(sock.getpeername())
            local = _local(sock.getsockname())
        except OSError:  # reset before we looked
            sock.close()
            return
        rec = ConnRecord(now_iso(), peer, peer_port, local, lst.port, lst.protocol)
        t0 = time.perf_counter()
        if not self._admit(rec):
            sock.close()
            self._emit(rec, t0)
            return
        loop = asyncio.get_running_loop()
        limit = max(lst.line_limit, 1024) + 2

        async def opened() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            if self.tls_context is None:
                raise Hangup("implicit TLS port but no certificate")
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            proto = asyncio.StreamReaderProtocol(reader, loop=loop)
            try:
                async with asyncio.timeout(self.idle_timeout):
                    transport, _ = await loop.connect_accepted_socket(
                        lambda: proto,
                        sock,
                        ssl=self.tls_context,
                        ssl_handshake_timeout=self.idle_timeout,
                    )
            except ssl.SSLError as exc:
                reason = getattr(exc, "reason", None) or type(exc).__name__
                raise Hangup(f"TLS handshake failed ({str(reason).lower()})") from exc
            writer = asyncio.StreamWriter(transport, proto, reader, loop)
            obj = writer.get_extra_info("ssl_object")
            version = obj.version() if obj is not None else None
            rec.tls = version or "TLS"
            rec.did(f"TLS {version}" if version else "TLS")
            return reader, writer

        await self._run(lst, rec, t0, opened, sock)

    async def _run(
        self,
        lst: Listener,
        rec: ConnRecord,
        t0: float,
        opened: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]],
        sock: socket.socket | None,
    ) -> None:
        """Open (TLS handshake, for implicit TLS), run the responder, log, close."""
        task = asyncio.current_task()
        self.active += 1
        if task is not None:
            self._tasks.add(task)
        writer: asyncio.StreamWriter | None = None
        clean = False
        try:
            async with asyncio.timeout(self.conn_timeout):
                reader, writer = await opened()
                conn = Conn(
                    reader,
                    writer,
                    rec,
                    name=self.name,
                    tls_context=self.tls_context,
                    idle_timeout=self.idle_timeout,
                    line_limit=lst.line_limit,
                    server=self,
                )
                await lst.responder(conn)
            clean = True
            rec.outcome = rec.outcome or "answered"
        except Hangup as exc:
            rec.outcome = str(exc)
        except asyncio.IncompleteReadError as exc:
            rec.outcome = "peer closed" + (" mid-message" if exc.partial else "")
        except TimeoutError:
            rec.outcome = (
                f"timed out (no data for {self.idle_timeout:g}s or "
                f"longer than {self.conn_timeout:g}s)"
            )
        except ConnectionError:
            rec.outcome = "peer reset the connection"
        except ssl.SSLError as exc:
            rec.outcome = f"TLS error ({getattr(exc, 'reason', None) or exc})"
        except OSError as exc:
            rec.outcome = f"socket error ({errno.errorcode.get(exc.errno or 0, exc)})"
        except asyncio.CancelledError:
            rec.outcome = "listener stopped"
            if not self._closing:
                raise
        except Exception as exc:  # a responder bug must end this connection only
            rec.outcome = f"responder error ({type(exc).__name__}: {exc})"
        finally:
            self.active -= 1
            if task is not None:
                self._tasks.discard(task)
            if writer is not None:
                await _close(writer, polite=clean)
            elif sock is not None:
                sock.close()
            self._emit(rec, t0)

    def _emit(self, rec: ConnRecord, t0: float) -> None:
        rec.duration_ms = round((time.perf_counter() - t0) * 1000, 3)
        if self.on_record is None:
            return
        try:
            self.on_record(rec)
        except Exception:
            # A failing log sink (full disk, closed pipe) must not take the listener down.
            self.sink_errors += 1

    def summary(self) -> dict[str, Any]:
        reached = [s for s in self.stats.values() if s.connections]
        never = [s for s in self.stats.values() if not s.connections]
        return {
            "type": "summary",
            "connections": self.total,
            "over_limit": self.over_limit,
            "ports": [s.to_dict() for s in self.stats.values()],
            "reached": [s.port for s in reached],
            "never_reached": [s.port for s in never],
        }


async def _close(writer: asyncio.StreamWriter, *, polite: bool) -> None:
    """Close without letting a peer that stopped reading hold us (abort after a moment)."""
    if not polite:
        writer.transport.abort()
        return
    try:
        writer.close()
        async with asyncio.timeout(0.5):
            await writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
