"""A scripted Exchange-like HTTP backend: what Exchange's own vdirs answer unauthenticated.

The answers are `exprobe.listen.exchange.ExchangeSite`'s (the ones `exprobe listen`
gives on 443), framed by `exprobe.listen.http.HttpServerSession`: this file only runs
them on a plain TCP port (nginx in the lab terminates TLS in front of it).  Keep-alive
as IIS does.  `--offline owa,ews`: those vdirs' `healthcheck.htm` answers 503, as when
Managed Availability takes a protocol offline.

Command line:  python -m tests.peers.exchange_http --listen 10.252.0.2 --port 8081 \\
                   --name EX1 --domain corp.example [--build 15.2.1544.4] [--offline owa]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from exprobe.listen.exchange import ExchangeSite as Exchange
from exprobe.listen.http import HttpServerSession

__all__ = ["Exchange", "serve_conn"]


async def serve_conn(
    ex: Exchange, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    session = HttpServerSession(ex.answer)
    try:
        while not session.closed:
            data = await reader.read(65536)
            out = session.receive(data)
            if out:
                writer.write(out)
                await writer.drain()
            if not data:
                return
    except ConnectionError:
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def main_async(args: argparse.Namespace) -> None:
    offline = tuple(o for o in args.offline.split(",") if o)
    ex = Exchange(args.name, args.domain, args.build, args.skew, offline)
    server = await asyncio.start_server(
        lambda r, w: serve_conn(ex, r, w), args.listen, args.port, reuse_address=True
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--name", default="EX1")
    ap.add_argument("--domain", default="corp.example")
    ap.add_argument("--build", default="15.2.1544.4")
    ap.add_argument("--skew", type=float, default=0.0)
    ap.add_argument("--offline", default="", help="vdirs whose healthcheck.htm answers 503")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
