"""The lab's RFC 1006 (ISO transport over TCP) peer: python-snap7's S7 server.

It answers a COTP Connection Request with a Connection Confirm and accepts any TSAPs.
``python -m snap7.server`` needs ``click`` and defaults to port 1102, hence this
wrapper (lab-notes pitfall 13). It binds one IPv4 address (no IPv6) and runs in the
foreground until SIGTERM or SIGINT.

Usage: ``python tests/lab/s7server.py [--host 0.0.0.0] [--port 102]``
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import snap7.server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="0.0.0.0", help="IPv4 address to bind (default: all)")
    parser.add_argument("--port", type=int, default=102)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="s7server: %(message)s")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    server = snap7.server.Server(log=False)
    if server.start_to(args.host, tcp_port=args.port) != 0:
        print(f"s7server: cannot listen on {args.host}:{args.port}", file=sys.stderr)
        return 1
    print(f"s7server: listening on {args.host}:{args.port}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop()
    server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
