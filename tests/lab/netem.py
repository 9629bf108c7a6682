"""A userspace stand-in for ``tc netem`` (delay, jitter, loss) over NFQUEUE.

Some kernels (this lab VM's, for one) are built without ``sch_netem``. They can still
hand packets to userspace: an ``NFQUEUE`` rule queues them, and this program holds
each one for the delay before it accepts it, or drops it with the loss probability.
Pure Python over a raw netfilter netlink socket (no libnetfilter_queue).

Run it in the namespace whose packets it delays (``Lab.set_netem`` does that)::

    python tests/lab/netem.py --queue 0 --delay-ms 20 --jitter-ms 5 --loss-pct 1

It runs until SIGTERM/SIGINT. With the rule's ``--queue-bypass``, packets pass
undelayed whenever no program is bound to the queue.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from types import FrameType

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
NF_DROP = 0
NF_ACCEPT = 1


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + attrs  # nfgenmsg, res_id big-endian
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def _messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            return
        yield kind, data[offset + 16 : offset + length]
        offset += (length + 3) & ~3


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x7FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


class Delayer:
    """Holds queued packets for ``delay`` (+/- ``jitter``) seconds; drops a share ``loss``."""

    def __init__(self, queue: int, delay: float, jitter: float, loss: float) -> None:
        self.queue, self.delay, self.jitter, self.loss = queue, delay, jitter, loss
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self.pending: list[tuple[float, int]] = []  # (release time, packet id), a heap
        self.rng = random.Random()
        self._seq = 0

    def _request(self, msg: int, attrs: bytes) -> None:
        self._seq += 1
        self.sock.send(_message(msg, self.queue, attrs, NLM_F_REQUEST | NLM_F_ACK, self._seq))
        for kind, payload in _messages(self.sock.recv(65536)):
            if kind == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", payload)
                if err:
                    raise OSError(-err, f"nfqueue config: {os.strerror(-err)}")

    def bind(self) -> None:
        self._request(
            NFQNL_MSG_CONFIG, _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0))
        )
        params = struct.pack("!IBxxx", 0, NFQNL_COPY_META)[:5]
        self._request(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_PARAMS, params))
        self._request(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 65536)))

    def verdict(self, packet_id: int, verdict: int) -> None:
        hdr = _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
        self.sock.send(_message(NFQNL_MSG_VERDICT, self.queue, hdr))

    def step(self, timeout: float) -> None:
        """Wait up to ``timeout`` for packets, then release those that are due."""
        readable, _, _ = select.select([self.sock], [], [], max(timeout, 0.0))
        now = time.monotonic()
        if readable:
            data = self.sock.recv(1 << 20)
            for kind, payload in _messages(data):
                if kind != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    continue
                hdr = _attrs(payload[4:]).get(NFQA_PACKET_HDR)
                if hdr is None:
                    continue
                (packet_id,) = struct.unpack_from("!I", hdr)
                if self.loss and self.rng.random() < self.loss:
                    self.verdict(packet_id, NF_DROP)
                    continue
                hold = self.delay + (
                    self.rng.uniform(-self.jitter, self.jitter) if self.jitter else 0
                )
                heapq.heappush(self.pending, (now + max(hold, 0.0), packet_id))
        while self.pending and self.pending[0][0] <= now:
            self.verdict(heapq.heappop(self.pending)[1], NF_ACCEPT)

    def next_timeout(self) -> float:
        if not self.pending:
            return 0.5
        return self.pending[0][0] - time.monotonic()

    def close(self) -> None:
        for _, packet_id in self.pending:  # let what we hold go rather than lose it
            self.verdict(packet_id, NF_ACCEPT)
        self.pending.clear()
        self.sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss-pct", type=float, default=0.0)
    args = parser.parse_args(argv)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Stop  # out of select() at once (PEP 475 would restart it)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    d = Delayer(args.queue, args.delay_ms / 1000, args.jitter_ms / 1000, args.loss_pct / 100)
    d.bind()
    print(f"netem: queue {args.queue} bound", flush=True)
    try:
        while True:
            d.step(d.next_timeout())
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        d.close()
    return 0


class _Stop(Exception):
    """Raised by the signal handler to leave the loop."""


if __name__ == "__main__":
    sys.exit(main())
