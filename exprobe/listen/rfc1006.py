"""RFC 1006 / ISO 8073 class 0 responder: Connection Request → Connection Confirm.

The CC echoes the caller's TSAPs and TPDU size (as an X.400 MTA that accepts the
connection would).  A Disconnect Request from the peer ends the connection; data after
the CC is answered with a DR ("session entity not attached", so a real MTA that reaches
the rehearsal retries later instead of giving up).  TPKT/COTP come from
`exprobe.wire.cotp`; anything that is not TPKT version 3 is dropped without a word.
"""

from __future__ import annotations

from exprobe.errors import ProtocolError
from exprobe.listen.core import Conn, Hangup
from exprobe.wire import cotp

MAX_TPDUS = 32
LOCAL_REF = 0x4578  # "Ex": our source reference in CC and DR


async def read_tpdu(conn: Conn) -> cotp.Tpdu:
    header = await conn.read_exact(cotp.TPKT_HEADER)
    try:
        length = cotp.tpkt_length(header)
        return cotp.parse_tpdu(await conn.read_exact(length - cotp.TPKT_HEADER))
    except ProtocolError as exc:
        raise Hangup(f"not RFC 1006 ({exc})") from None


async def rfc1006(conn: Conn) -> None:
    """CR → CC (TSAPs echoed); DR → close; DT → DR; anything else → ER."""
    first = await read_tpdu(conn)
    if first.kind != "CR":
        conn.did(f"{first.kind} before CR")
        await conn.write(cotp.build_er(first.src_ref, 2, _quote(first)))
        raise Hangup(f"expected a Connection Request, got {first.kind}")
    calling = cotp.format_tsap(first.calling_tsap) if first.calling_tsap else "-"
    called = cotp.format_tsap(first.called_tsap) if first.called_tsap else "-"
    conn.did(f"CR calling={calling} called={called} size={first.tpdu_size or '-'}")
    await conn.write(cotp.build_cc(first, src_ref=LOCAL_REF))
    peer_ref = first.src_ref
    for _ in range(MAX_TPDUS):
        tpdu = await read_tpdu(conn)
        if tpdu.kind == "DR":
            conn.did(f"DR {tpdu.reason_text}")
            conn.record.outcome = "said goodbye"
            return
        if tpdu.kind == "DT":
            conn.did(f"DT {len(tpdu.data)} bytes")
            await conn.write(cotp.build_dr(peer_ref, LOCAL_REF, 2, b"exprobe rehearsal listener"))
            raise Hangup("data after CC: no session layer here (sent DR)")
        conn.did(tpdu.kind)
        await conn.write(cotp.build_er(peer_ref, 2, _quote(tpdu)))
        raise Hangup(f"unexpected {tpdu.kind} (sent ER)")
    raise Hangup(f"more than {MAX_TPDUS} TPDUs")


def _quote(tpdu: cotp.Tpdu) -> bytes:
    return bytes((tpdu.code,))
