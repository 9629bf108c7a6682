"""LDAP responder (RFC 4511, StartTLS RFC 4513): bind, rootDSE, StartTLS, unbind.

An anonymous simple bind succeeds; a simple bind with a DN is answered with success too,
unchecked (the rehearsal proves a path, not an account; the password is never logged);
SASL is declined.  A search of the rootDSE returns an entry that names exprobe; any
other base object does not exist.  Messages are framed and decoded by
`exprobe.wire.ldap`, so a malformed one ends the connection without a word.
"""

from __future__ import annotations

from exprobe import __version__
from exprobe.errors import ProtocolError
from exprobe.listen.core import Conn, Hangup

MAX_MESSAGE = 64 * 1024  # a rehearsal dialogue's largest request is a few hundred bytes
MAX_MESSAGES = 100
NAMING_CONTEXT = "o=exprobe-rehearsal"


def rootdse(conn: Conn) -> dict[str, list[str]]:
    """The rootDSE attributes this listener publishes."""
    attrs = {
        "objectClass": ["top", "extensibleObject"],
        "namingContexts": [NAMING_CONTEXT],
        "defaultNamingContext": [NAMING_CONTEXT],
        "dnsHostName": [conn.name],
        "supportedLDAPVersion": ["2", "3"],
        "vendorName": ["exprobe"],
        "vendorVersion": [f"exprobe listen {__version__} (rehearsal, not a real directory)"],
    }
    if conn.tls_available:
        from exprobe.wire.ldap import STARTTLS_OID

        attrs["supportedExtension"] = [STARTTLS_OID]
    return attrs


def _select(attrs: dict[str, list[str]], wanted: tuple[str, ...]) -> dict[str, list[str]]:
    """RFC 4511 4.5.1.8: no list, `*` or `+` means all; otherwise the names asked for."""
    if not wanted or any(w in ("*", "+") for w in wanted):
        return attrs
    low = {w.lower() for w in wanted}
    return {k: v for k, v in attrs.items() if k.lower() in low}


async def read_message(conn: Conn) -> bytes:
    """One whole LDAPMessage, framed by its BER length (refused above MAX_MESSAGE)."""
    from exprobe.wire.ldap import bytes_needed

    buf = b""
    for _ in range(12):  # tag, length, length bytes, content: a few reads at most
        try:
            need = bytes_needed(buf, MAX_MESSAGE)
        except ProtocolError as exc:
            raise Hangup(f"not LDAP ({exc})") from None
        if need == 0:
            return buf
        buf += await conn.read_exact(need)
    raise Hangup("not LDAP (framing did not converge)")


async def ldap(conn: Conn) -> None:
    """Answer bind, rootDSE search, StartTLS and unbind; decline the rest."""
    from exprobe.wire import ldap as w

    for _ in range(MAX_MESSAGES):
        raw = await read_message(conn)
        try:
            msg = w.decode_message(raw, MAX_MESSAGE)
        except ProtocolError as exc:
            raise Hangup(f"not LDAP ({exc})") from None
        mid = msg.message_id
        if msg.op == "bindRequest":
            who = msg.name or "anonymous"
            conn.did(f"bind v{msg.version} {msg.auth} {who}")
            if msg.version not in (2, 3):
                await conn.write(
                    w.encode_bind_response(mid, 2, diagnostic="only LDAP versions 2 and 3")
                )
            elif msg.auth != "simple":
                await conn.write(
                    w.encode_bind_response(
                        mid, 7, diagnostic="exprobe rehearsal listener: simple bind only"
                    )
                )
            else:
                diag = "" if not msg.name else "exprobe rehearsal: accepted without checking"
                await conn.write(w.encode_bind_response(mid, 0, diagnostic=diag))
        elif msg.op == "searchRequest":
            if msg.name == "":
                conn.did("search rootDSE")
                entry = _select(rootdse(conn), msg.attributes)
                await conn.write(
                    w.encode_search_entry(mid, "", entry) + w.encode_search_done(mid, 0)
                )
            else:
                conn.did(f"search {msg.name}")
                await conn.write(
                    w.encode_search_done(
                        mid, 32, diagnostic="exprobe rehearsal listener: only the rootDSE"
                    )
                )
        elif msg.op == "extendedReq":
            if msg.request_name == w.STARTTLS_OID:
                conn.did("StartTLS")
                if conn.tls_available:
                    await conn.write(
                        w.encode_extended_response(mid, 0, response_name=w.STARTTLS_OID)
                    )
                    await conn.start_tls()
                else:
                    code = 1 if conn.tls_active else 52
                    await conn.write(
                        w.encode_extended_response(
                            mid,
                            code,
                            response_name=w.STARTTLS_OID,
                            diagnostic="TLS already active" if conn.tls_active else "no TLS",
                        )
                    )
            else:
                conn.did(f"extended {msg.request_name}")
                await conn.write(
                    w.encode_extended_response(mid, 2, diagnostic="unsupported extended operation")
                )
        elif msg.op == "unbindRequest":
            conn.did("unbind")
            conn.record.outcome = "said goodbye"
            return
        elif msg.op == "abandonRequest":
            conn.did("abandon")
        else:
            conn.did(msg.op)
            # No codec for every response type: say goodbye the RFC 4511 4.4.1 way.
            await conn.write(
                w.encode_extended_response(
                    0,
                    53,
                    response_name=w.NOTICE_OF_DISCONNECTION_OID,
                    diagnostic="exprobe rehearsal listener: read-only rootDSE only",
                )
            )
            raise Hangup(f"declined {msg.op}")
    raise Hangup(f"more than {MAX_MESSAGES} messages")
