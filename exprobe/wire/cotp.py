"""RFC 1006 TPKT framing and ISO 8073 (X.224) class 0 COTP TPDUs.

A TPKT (RFC 1006 section 6) is `03 00 LL LL` (version 3, reserved, big-endian total
length including these four bytes) followed by one TPDU: a length indicator (LI, the
header length without itself), the TPDU code, the fixed part, then variable
parameters `code length value`.  X.400 MTAs (Exchange's X.400 connector among them)
and S7 PLCs speak it on TCP 102.

Client side: `build_cr`, `build_dr`, `build_dt`.  Server side (scripted peers,
`exprobe listen`): `build_cc` (echoes the TSAPs and the TPDU size of a CR), `build_dr`,
`build_er`.  `tpkt_length` validates a TPKT header; `parse_tpkt` / `parse_tpdu` turn any
bytes into a `Tpdu` or raise `ProtocolError`.  `parse_tsap` reads TSAPs as users
write them: hex (`0x0100`, `hex:0100`) or text (`MTA1`, `ascii:0x01`).
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field

from exprobe.errors import ProtocolError

TPKT_VERSION = 3
TPKT_HEADER = 4
MIN_TPKT = 7  # header + LI + code + one more byte: the shortest TPDU (DT) has LI 2
MAX_TPKT = 0xFFFF

# TPDU codes (high nibble; the low nibble carries CDT or flags in some TPDUs).
CR, CC, DR, DC, DT, ER = 0xE0, 0xD0, 0x80, 0xC0, 0xF0, 0x70
_KIND = {
    0xE: "CR",
    0xD: "CC",
    0x8: "DR",
    0xC: "DC",
    0xF: "DT",
    0x7: "ER",
    0x1: "ED",
    0x2: "EA",
    0x5: "RJ",
    0x6: "AK",
}

# Variable-part parameter codes (ISO 8073 (X.224) 13.3).
P_TPDU_SIZE = 0xC0
P_CALLING_TSAP = 0xC1
P_CALLED_TSAP = 0xC2
P_ADDITIONAL_INFO = 0xE0  # in a DR
P_INVALID_TPDU = 0xC1  # in an ER: the bytes of the TPDU that was rejected

TPDU_SIZES = tuple(1 << n for n in range(7, 14))  # 128 .. 8192
MAX_TSAP = 32  # ISO 8073 allows at most 32 octets of TSAP-ID

# ISO 8073 (X.224) 13.5: DR reasons.
DR_REASONS: dict[int, str] = {
    0: "reason not specified",
    1: "congestion at TSAP",
    2: "session entity not attached to TSAP",
    3: "address unknown",
    128: "normal disconnect initiated by the session entity",
    129: "remote transport entity congestion at connect request time",
    130: "connection negotiation failed (proposed class not supported)",
    131: "duplicate source reference detected for the same pair of NSAPs",
    132: "mismatched references",
    133: "protocol error",
    135: "reference overflow",
    136: "connection request refused on this network connection",
    138: "header or parameter length invalid",
}

# ISO 8073 (X.224) 13.12: ER reject causes.
ER_CAUSES: dict[int, str] = {
    0: "reason not specified",
    1: "invalid parameter code",
    2: "invalid TPDU type",
    3: "invalid parameter value",
}


def size_code(size: int) -> int:
    """The TPDU-size parameter value for `size` bytes (1024 -> 0x0A)."""
    if size not in TPDU_SIZES:
        raise ValueError(f"TPDU size {size} is not a power of two in 128..8192")
    return size.bit_length() - 1


def dr_reason_text(reason: int) -> str:
    return DR_REASONS.get(reason, f"unknown reason 0x{reason:02x}")


def er_cause_text(cause: int) -> str:
    return ER_CAUSES.get(cause, f"unknown cause 0x{cause:02x}")


# -- TSAPs ------------------------------------------------------------------------------


def parse_tsap(text: str) -> bytes:
    """A TSAP as a user writes it: `0x0100` / `hex:0100` (hex), `ascii:X` or `MTA1` (text).

    Bare digits are text: X.400 MTAs commonly use printable TSAPs.  Raises ValueError.
    """
    raw = text.strip()
    low = raw.lower()
    if low.startswith(("0x", "hex:")):
        digits = raw[2:] if low.startswith("0x") else raw[4:]
        digits = digits.replace(" ", "").replace(":", "")
        try:
            value = binascii.unhexlify(digits)
        except (binascii.Error, ValueError):
            raise ValueError(f"TSAP {text!r}: not an even number of hex digits") from None
    else:
        if low.startswith("ascii:"):
            raw = raw[6:]
        if not raw.isascii() or not raw.isprintable():
            raise ValueError(f"TSAP {text!r}: text TSAPs must be printable ASCII")
        value = raw.encode("ascii")
    if len(value) > MAX_TSAP:
        raise ValueError(f"TSAP {text!r}: {len(value)} bytes, at most {MAX_TSAP}")
    return value


def format_tsap(value: bytes) -> str:
    """Printable ASCII as text (`MTA1`), anything else as hex (`0x0100`)."""
    if value and all(0x20 < b < 0x7F for b in value):
        return value.decode("ascii")
    return "0x" + value.hex()


# -- building ---------------------------------------------------------------------------


def encode_tpkt(tpdu: bytes) -> bytes:
    """Wrap one TPDU in a TPKT header."""
    total = TPKT_HEADER + len(tpdu)
    if total > MAX_TPKT:
        raise ValueError(f"TPKT of {total} bytes exceeds {MAX_TPKT}")
    return bytes((TPKT_VERSION, 0)) + total.to_bytes(2, "big") + tpdu


def _params(params: list[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for code, value in params:
        if len(value) > 255:
            raise ValueError(f"COTP parameter 0x{code:02x} longer than 255 bytes")
        out += bytes((code, len(value))) + value
    return bytes(out)


def _tpdu(code: int, fixed: bytes, params: bytes = b"", data: bytes = b"") -> bytes:
    li = 1 + len(fixed) + len(params)
    if li > 254:
        raise ValueError("COTP header longer than 254 bytes")
    return bytes((li, code)) + fixed + params + data


def build_cr(
    *,
    src_ref: int = 0x0001,
    calling_tsap: bytes = b"",
    called_tsap: bytes = b"",
    tpdu_size: int = 1024,
    class_option: int = 0x00,
) -> bytes:
    """A Connection Request (class 0 by default) in a TPKT: TPDU size, then TSAPs."""
    params = [(P_TPDU_SIZE, bytes((size_code(tpdu_size),)))]
    if calling_tsap:
        params.append((P_CALLING_TSAP, calling_tsap))
    if called_tsap:
        params.append((P_CALLED_TSAP, called_tsap))
    fixed = (0).to_bytes(2, "big") + src_ref.to_bytes(2, "big") + bytes((class_option,))
    return encode_tpkt(_tpdu(CR, fixed, _params(params)))


def build_cc(cr: Tpdu, *, src_ref: int = 0x0001, tpdu_size: int | None = None) -> bytes:
    """A Connection Confirm answering `cr` (server side): class 0, TSAPs echoed.

    The TPDU size is the CR's, or `tpdu_size` if given (a server may only lower it).
    """
    size = tpdu_size or cr.tpdu_size or 128
    params = [(P_TPDU_SIZE, bytes((size_code(size),)))]
    if cr.calling_tsap is not None:
        params.append((P_CALLING_TSAP, cr.calling_tsap))
    if cr.called_tsap is not None:
        params.append((P_CALLED_TSAP, cr.called_tsap))
    fixed = cr.src_ref.to_bytes(2, "big") + src_ref.to_bytes(2, "big") + b"\x00"
    return encode_tpkt(_tpdu(CC, fixed, _params(params)))


def build_dr(dst_ref: int, src_ref: int, reason: int = 128, info: bytes = b"") -> bytes:
    """A Disconnect Request in a TPKT (reason 128: normal disconnect)."""
    fixed = dst_ref.to_bytes(2, "big") + src_ref.to_bytes(2, "big") + bytes((reason,))
    params = _params([(P_ADDITIONAL_INFO, info)]) if info else b""
    return encode_tpkt(_tpdu(DR, fixed, params))


def build_er(dst_ref: int, cause: int = 0, invalid_tpdu: bytes = b"") -> bytes:
    """An Error TPDU in a TPKT (server side), optionally quoting the rejected TPDU."""
    fixed = dst_ref.to_bytes(2, "big") + bytes((cause,))
    params = _params([(P_INVALID_TPDU, invalid_tpdu[:255])]) if invalid_tpdu else b""
    return encode_tpkt(_tpdu(ER, fixed, params))


def build_dt(data: bytes, *, eot: bool = True) -> bytes:
    """A class 0 Data TPDU carrying `data`, in a TPKT."""
    return encode_tpkt(_tpdu(DT, bytes((0x80 if eot else 0x00,)), data=data))


# -- parsing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tpdu:
    """One decoded TPDU.  Fields not carried by its kind keep their defaults."""

    kind: str  # "CR", "CC", "DR", "DC", "ER", "DT", or "0xNN" for an unknown code
    code: int
    dst_ref: int = 0
    src_ref: int = 0
    class_option: int = 0
    params: dict[int, bytes] = field(default_factory=dict)
    reason: int | None = None  # DR
    cause: int | None = None  # ER
    eot: bool = False  # DT
    data: bytes = b""  # DT user data; DR additional information

    @property
    def tpdu_size(self) -> int | None:
        """The TPDU-size parameter in bytes; None if absent or not a valid code."""
        value = self.params.get(P_TPDU_SIZE)
        if value is None or len(value) != 1 or not 7 <= value[0] <= 13:
            return None
        return 1 << value[0]

    @property
    def calling_tsap(self) -> bytes | None:
        return self.params.get(P_CALLING_TSAP) if self.kind in ("CR", "CC") else None

    @property
    def called_tsap(self) -> bytes | None:
        return self.params.get(P_CALLED_TSAP) if self.kind in ("CR", "CC") else None

    @property
    def reason_text(self) -> str:
        if self.kind == "DR" and self.reason is not None:
            return dr_reason_text(self.reason)
        if self.kind == "ER" and self.cause is not None:
            return er_cause_text(self.cause)
        return ""


def tpkt_length(header: bytes) -> int:
    """Validate a 4-byte TPKT header and return the total TPKT length it announces."""
    if len(header) < TPKT_HEADER:
        raise ProtocolError(f"truncated TPKT header ({len(header)} bytes)")
    if header[0] != TPKT_VERSION:
        raise ProtocolError(f"not RFC 1006: TPKT version {header[0]}, expected 3")
    length = int.from_bytes(header[2:4], "big")
    if length < MIN_TPKT:
        raise ProtocolError(f"TPKT length {length} is too short for a TPDU (minimum {MIN_TPKT})")
    return length


def parse_tpkt(data: bytes) -> Tpdu:
    """Decode one complete TPKT (header included) into its TPDU."""
    length = tpkt_length(data)
    if len(data) != length:
        raise ProtocolError(f"TPKT announces {length} bytes, got {len(data)}")
    return parse_tpdu(data[TPKT_HEADER:])


def _parse_params(raw: bytes) -> dict[int, bytes]:
    params: dict[int, bytes] = {}
    i = 0
    while i < len(raw):
        if i + 2 > len(raw):
            raise ProtocolError("truncated COTP parameter")
        code, size = raw[i], raw[i + 1]
        if i + 2 + size > len(raw):
            raise ProtocolError(f"COTP parameter 0x{code:02x} runs past the header")
        params[code] = raw[i + 2 : i + 2 + size]
        i += 2 + size
    return params


def parse_tpdu(payload: bytes) -> Tpdu:
    """Decode one TPDU (what follows the TPKT header)."""
    if len(payload) < 2:
        raise ProtocolError("COTP TPDU shorter than 2 bytes")
    li = payload[0]
    if li == 0 or li == 255:
        raise ProtocolError(f"invalid COTP length indicator {li}")
    if li + 1 > len(payload):
        raise ProtocolError(f"COTP length indicator {li} exceeds the TPKT ({len(payload)} bytes)")
    code = payload[1]
    header = payload[2 : li + 1]  # fixed part and parameters, after the code
    user_data = payload[li + 1 :]
    kind = _KIND.get(code >> 4, f"0x{code:02x}")

    def need(n: int) -> None:
        if len(header) < n:
            raise ProtocolError(f"COTP {kind} header too short ({li} bytes)")

    if kind in ("CR", "CC"):
        need(5)
        return Tpdu(
            kind,
            code,
            dst_ref=int.from_bytes(header[0:2], "big"),
            src_ref=int.from_bytes(header[2:4], "big"),
            class_option=header[4],
            params=_parse_params(header[5:]),
            data=user_data,
        )
    if kind == "DR":
        need(5)
        params = _parse_params(header[5:])
        return Tpdu(
            kind,
            code,
            dst_ref=int.from_bytes(header[0:2], "big"),
            src_ref=int.from_bytes(header[2:4], "big"),
            reason=header[4],
            params=params,
            data=params.get(P_ADDITIONAL_INFO, b""),
        )
    if kind == "DC":
        need(4)
        return Tpdu(
            kind,
            code,
            dst_ref=int.from_bytes(header[0:2], "big"),
            src_ref=int.from_bytes(header[2:4], "big"),
            params=_parse_params(header[4:]),
        )
    if kind == "ER":
        need(3)
        return Tpdu(
            kind,
            code,
            dst_ref=int.from_bytes(header[0:2], "big"),
            cause=header[2],
            params=_parse_params(header[3:]),
        )
    if kind == "DT":
        need(1)
        return Tpdu(kind, code, eot=bool(header[0] & 0x80), data=user_data)
    return Tpdu(kind, code, data=user_data)
