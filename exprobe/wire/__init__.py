"""Pure wire codecs: bytes in, values out (and back).  No I/O, no awaits."""
