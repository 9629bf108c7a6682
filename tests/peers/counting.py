"""A TCP server that counts: concurrent connections and connection starts, per port set.

Run inside the lab's server namespace (`python -m tests.peers.counting --bind ADDR
--ports 8001-8020 --hold 0.3`): it accepts on every port, holds each connection `hold`
seconds, sends one banner line and closes; on SIGTERM (or after `--lifetime` seconds)
it prints one JSON line: the peak number of simultaneous connections and the accept
timestamps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time


async def main(bind: str, ports: list[int], hold: float, lifetime: float) -> None:
    state = {"current": 0, "peak": 0}
    starts: list[float] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        starts.append(time.monotonic())
        state["current"] += 1
        state["peak"] = max(state["peak"], state["current"])
        try:
            await asyncio.sleep(hold)
            w.write(b"220 counting peer\r\n")
            with contextlib.suppress(ConnectionError):
                await w.drain()
        finally:
            state["current"] -= 1
            w.close()

    servers = [await asyncio.start_server(handle, bind, p, backlog=512) for p in ports]
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), lifetime)
    for s in servers:
        s.close()
    t0 = starts[0] if starts else 0.0
    print(json.dumps({"peak": state["peak"], "accepted": len(starts),
                      "starts": [round(t - t0, 4) for t in starts]}), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bind", required=True)
    ap.add_argument("--ports", required=True, help="LO-HI")
    ap.add_argument("--hold", type=float, default=0.3)
    ap.add_argument("--lifetime", type=float, default=60.0)
    a = ap.parse_args()
    lo, hi = (int(x) for x in a.ports.split("-"))
    asyncio.run(main(a.bind, list(range(lo, hi + 1)), a.hold, a.lifetime))
    sys.exit(0)
