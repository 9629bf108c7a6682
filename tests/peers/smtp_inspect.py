"""A scripted SMTP inspection device: Cisco ASA `inspect esmtp` as it strips STARTTLS.

It relays every connection to the real SMTP server (the upstream of the client's address
family) and alters the dialogue the way ASA's ESMTP inspection does: in the server's
lines, the keyword STARTTLS becomes `XXXXXXXA` (same length, last letter kept); a
client's STARTTLS command becomes `XXXXXXXX`, which the server refuses as unknown.  The
lab sends it the connections with an nftables `redirect` on the router.

Command line:  python -m tests.peers.smtp_inspect --port 10587 \\
                   --upstream4 10.249.2.2 --upstream6 fd00:e9:2::2 --upstream-port 587
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import socket
from collections.abc import Callable

_SERVER_KEYWORD = re.compile(rb"^(25[0-9][ -])STARTTLS\b", re.IGNORECASE)
_CLIENT_COMMAND = re.compile(rb"^STARTTLS\b", re.IGNORECASE)


def server_line(line: bytes) -> bytes:
    """A server line as the device passes it on (STARTTLS in an EHLO reply masked)."""
    return _SERVER_KEYWORD.sub(rb"\1XXXXXXXA", line)


def client_line(line: bytes) -> bytes:
    """A client line as the device passes it on (the STARTTLS command masked)."""
    return _CLIENT_COMMAND.sub(b"XXXXXXXX", line)


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    rewrite: Callable[[bytes], bytes],
) -> None:
    try:
        while True:
            line = await reader.readline()  # the StreamReader's own 64 KiB bound
            if not line:
                break
            writer.write(rewrite(line))
            await writer.drain()
    except (ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def relay(
    args: argparse.Namespace, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    # Both families listen on sockets of their own (asyncio sets IPV6_V6ONLY).
    v4 = writer.get_extra_info("socket").family == socket.AF_INET
    upstream = args.upstream4 if v4 else args.upstream6
    try:
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(upstream, args.upstream_port), 5
        )
    except (OSError, TimeoutError):
        writer.close()
        return
    await asyncio.gather(
        _pump(up_reader, writer, server_line), _pump(reader, up_writer, client_line)
    )


async def main_async(args: argparse.Namespace) -> None:
    server = await asyncio.start_server(
        lambda r, w: relay(args, r, w), None, args.port, reuse_address=True
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=10587)
    ap.add_argument("--upstream4", required=True)
    ap.add_argument("--upstream6", required=True)
    ap.add_argument("--upstream-port", type=int, default=587)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
