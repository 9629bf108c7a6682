"""Making network text safe for a terminal: no markup, no escape sequences."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: object, limit: int = 200) -> str:
    """`text` with control and bidi characters shown as escapes, cut to `limit` chars.

    Rich markup in the result is harmless only if the caller renders it as a `Text`
    (never as markup); this function takes care of the terminal escape codes.
    """
    s = str(text)
    s = _UNSAFE.sub(
        lambda m: (
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}"
        ),
        s,
    )
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s
