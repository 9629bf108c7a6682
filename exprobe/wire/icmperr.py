"""Linux's extended socket errors (`IP_RECVERR` / `IPV6_RECVERR`): which host sent the
ICMP error that ended a connect, and which type and code it was.

A TCP socket that asks for its errors (`setsockopt(IPPROTO_IP, IP_RECVERR, 1)`) gets, next
to the plain errno, a `struct sock_extended_err` on its error queue
(`recvmsg(..., MSG_ERRQUEUE)`, see ip(7)): the errno, where the error came from (the local
stack, ICMP or ICMPv6), the ICMP type and code, and right after the structure the
offender's address (`SO_EE_OFFENDER`).  That is how an unprivileged socket learns which
router answered "time exceeded" or "administratively prohibited", with no raw socket.

Pure codec: `decode(level, type, data)` on one control message, `describe()` for people;
`exprobe.net.connect` asks for the errors and reads the queue.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any

# <linux/in.h>, <linux/in6.h>, <linux/errqueue.h>: not all are in the socket module.
IP_RECVERR = 11
IPV6_RECVERR = 25
IP_TTL = socket.IP_TTL
IPV6_UNICAST_HOPS = getattr(socket, "IPV6_UNICAST_HOPS", 16)
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
ORIGIN_LOCAL, ORIGIN_ICMP, ORIGIN_ICMP6 = 1, 2, 3

_EE = struct.Struct("=IBBBBII")  # ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data
_MAX = 256  # a sock_extended_err and a sockaddr_in6 fit in 44 bytes

# Type/code names as firewall people say them (RFC 792, RFC 1812, RFC 4443).
_ICMP4_UNREACH = {
    0: "net-unreachable",
    1: "host-unreachable",
    2: "protocol-unreachable",
    3: "port-unreachable",
    4: "fragmentation-needed",
    5: "source-route-failed",
    6: "net-unknown",
    7: "host-unknown",
    9: "net-prohibited",
    10: "host-prohibited",
    11: "net-unreachable-for-tos",
    12: "host-unreachable-for-tos",
    13: "admin-prohibited",
    14: "host-precedence-violation",
    15: "precedence-cutoff",
}
_ICMP6_UNREACH = {
    0: "no-route",
    1: "admin-prohibited",
    2: "beyond-scope",
    3: "addr-unreachable",
    4: "port-unreachable",
    5: "policy-fail",
    6: "reject-route",
}


@dataclass(frozen=True, slots=True)
class IcmpError:
    """One ICMP (or ICMPv6) error as the kernel queued it for the socket."""

    family: int  # 4 or 6
    type: int
    code: int
    offender: str | None  # the address that sent it (None if the kernel gave none)
    errno: int

    @property
    def time_exceeded(self) -> bool:
        return (self.family, self.type) in ((4, 11), (6, 3))

    @property
    def unreachable(self) -> bool:
        return (self.family, self.type) in ((4, 3), (6, 1))

    @property
    def name(self) -> str:
        """`admin-prohibited`, `time-exceeded`, `port-unreachable`, ... or `type T code C`."""
        if self.time_exceeded:
            return "time-exceeded"
        if self.unreachable:
            table = _ICMP4_UNREACH if self.family == 4 else _ICMP6_UNREACH
            if self.code in table:
                return table[self.code]
        if (self.family, self.type) == (6, 2):
            return "packet-too-big"
        return f"type {self.type} code {self.code}"

    def describe(self) -> str:
        """`admin-prohibited (ICMP 3/13) from 10.1.0.1`."""
        proto = "ICMP" if self.family == 4 else "ICMPv6"
        sender = f" from {self.offender}" if self.offender else ""
        return f"{self.name} ({proto} {self.type}/{self.code}){sender}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "code": self.code,
            "name": self.name,
            "family": self.family,
            "from": self.offender,
            "errno": errno.errorcode.get(self.errno, str(self.errno)),
        }


def _offender(raw: bytes) -> str | None:
    """The sockaddr after the structure: sockaddr_in or sockaddr_in6, else None."""
    if len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        return str(ipaddress.IPv4Address(raw[4:8]))
    if family == socket.AF_INET6 and len(raw) >= 24:
        return str(ipaddress.IPv6Address(raw[8:24]))
    return None


def decode(level: int, kind: int, data: bytes) -> IcmpError | None:
    """An ICMP error from one control message of `recvmsg(MSG_ERRQUEUE)`; None when the
    message is not an extended error of ICMP origin (a local error, another option) or is
    malformed (never raises on any bytes)."""
    if (level, kind) not in ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)):
        return None
    if len(data) < _EE.size or len(data) > _MAX:
        return None
    ee_errno, origin, icmp_type, code, _pad, _info, _data = _EE.unpack_from(data)
    if origin not in (ORIGIN_ICMP, ORIGIN_ICMP6):
        return None
    return IcmpError(
        family=4 if origin == ORIGIN_ICMP else 6,
        type=icmp_type,
        code=code,
        offender=_offender(data[_EE.size :]),
        errno=ee_errno,
    )


def encode(err: IcmpError) -> bytes:
    """The control-message data the kernel would queue for `err` (tests, hostile peers)."""
    origin = ORIGIN_ICMP if err.family == 4 else ORIGIN_ICMP6
    head = _EE.pack(err.errno, origin, err.type, err.code, 0, 0, 0)
    if err.offender is None:
        return head + struct.pack("=H", socket.AF_UNSPEC) + bytes(14)
    ip = ipaddress.ip_address(err.offender)
    if ip.version == 4:
        return head + struct.pack("=H", socket.AF_INET) + bytes(2) + ip.packed + bytes(8)
    return head + struct.pack("=H", socket.AF_INET6) + bytes(6) + ip.packed + bytes(4)
