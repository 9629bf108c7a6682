"""A set of hostile TCP behaviours, one port each, served from a background thread.

Every behaviour is protocol-agnostic, so the same server stands in front of every
probe: the question is only whether exprobe ends each check on time, with the right
status, in bounded memory, and without disturbing the other checks of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Awaitable, Callable

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LIFETIME = 20.0  # no connection lives longer than this, whatever the client does


async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Accept and never speak (a tarpit)."""
    await r.read(1 << 16)
    await asyncio.sleep(LIFETIME)


async def drip(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """One byte every 0.2 s, forever: a greeting that never ends."""
    for _ in range(int(LIFETIME / 0.2)):
        w.write(b"2")
        await w.drain()
        await asyncio.sleep(0.2)


async def flood(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """10 MB without a newline."""
    chunk = b"A" * 65536
    for _ in range(160):
        w.write(chunk)
        await w.drain()


async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Binary noise, then silence."""
    w.write(bytes(range(256)) * 8 + b"\r\n")
    await w.drain()
    await r.read(1 << 16)
    await asyncio.sleep(2)


async def close_now(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """FIN right after the handshake."""
    w.close()


async def reset_now(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """RST right after the handshake (SO_LINGER 0), as inspection devices do."""
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


async def reset_after_first(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Wait for the client's first bytes (or 0.3 s), then reset."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(r.read(1), 0.3)
    await reset_now(r, w)


BEHAVIOURS: dict[str, Behaviour] = {
    "silent": silent,
    "drip": drip,
    "flood": flood,
    "garbage": garbage,
    "close": close_now,
    "reset": reset_now,
    "reset-after-first": reset_after_first,
}


class EvilServer:
    """Every behaviour on its own 127.0.0.1 port, in a thread with its own event loop."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def _wrap(self, behaviour: Behaviour) -> Behaviour:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            try:
                await asyncio.wait_for(behaviour(r, w), LIFETIME)
            except (TimeoutError, ConnectionError, asyncio.CancelledError):
                pass
            finally:
                w.transport.abort()
                self._tasks.discard(task)

        return handler

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            for name, behaviour in BEHAVIOURS.items():
                srv = await asyncio.start_server(self._wrap(behaviour), "127.0.0.1", 0,
                                                 backlog=256)
                self._servers.append(srv)
                self.ports[name] = srv.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()
        self._loop.run_until_complete(self._shutdown())
        self._loop.close()

    async def _shutdown(self) -> None:
        for srv in self._servers:
            srv.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for srv in self._servers:
            await srv.wait_closed()
        await asyncio.sleep(0.05)  # let aborted transports release their sockets

    def __enter__(self) -> EvilServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("evil server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
