"""A scripted Exchange-like HTTP backend: what Exchange's own vdirs answer unauthenticated.

Only Exchange's own answers are scripted (research note §b): the 302 of /owa/ and /ecp/
to the OWA logon, the 401s with each vdir's schemes, the NTLM CHALLENGE naming this server
(built by `exprobe.wire.ntlm.encode_challenge`), MAPI/HTTP and RPC/HTTP 401s, the Exchange
headers, and `healthcheck.htm` with the server's FQDN (503 for the vdirs `--offline`
names, as when Managed Availability takes a protocol offline).  Keep-alive as IIS does.

Command line:  python -m tests.peers.exchange_http --listen 10.252.0.2 --port 8081 \\
                   --name EX1 --domain corp.example [--build 15.2.1544.4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt

import h11

from exprobe.wire import ntlm

WINDOWS = ("/autodiscover/", "/ews/", "/mapi/", "/oab/", "/rpc/")


class Exchange:
    def __init__(self, name: str, domain: str, build: str, skew_s: float = 0.0,
                 offline: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.name = name.upper()
        self.offline = tuple(o.lower() for o in offline)
        self.fqdn = f"{name.lower()}.{domain}"
        self.domain = domain
        self.build = build
        self.skew_s = skew_s

    def headers(self) -> list[tuple[str, str]]:
        return [
            ("Server", "Microsoft-IIS/10.0"),
            ("X-FEServer", self.name),
            ("X-OWA-Version", self.build),
            ("request-id", "6a1c7a3e-0000-4000-8000-000000000001"),
            ("X-Powered-By", "ASP.NET"),
        ]

    def challenge(self) -> str:
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.skew_s)
        raw = ntlm.encode_challenge(
            netbios_computer=self.name,
            netbios_domain=self.domain.split(".")[0].upper(),
            dns_computer=self.fqdn,
            dns_domain=self.domain,
            timestamp=when,
        )
        return base64.b64encode(raw).decode()

    def answer(self, req: h11.Request) -> tuple[int, list[tuple[str, str]], bytes]:
        method = req.method.decode()
        target = req.target.decode()
        path = target.split("?")[0].lower()
        auth = dict((k.lower(), v) for k, v in req.headers).get(b"authorization", b"").decode()
        hdrs = self.headers()
        if path.endswith("/healthcheck.htm"):
            if path.split("/")[1] in self.offline:  # Managed Availability took it offline
                return 503, [*hdrs, ("Content-Type", "text/html")], b"<html>Service Unavailable</html>"
            return 200, [*hdrs, ("Content-Type", "text/html")], f"200 OK<br/>{self.fqdn}".encode()
        if path.startswith(("/owa", "/ecp")) and not path.startswith("/owa/auth"):
            loc = f"https://{self.fqdn}/owa/auth/logon.aspx?url=https%3a%2f%2f{self.fqdn}{target}&reason=0"
            return 302, [*hdrs, ("Location", loc)], b""
        if path.startswith("/powershell"):
            # The frontend PowerShell vdir: Kerberos only, no SSL required (research note
            # C7). The exact unauthenticated answer is unverified on a real server.
            return 401, [*hdrs, ("WWW-Authenticate", "Negotiate")], b""
        if path.startswith("/microsoft-server-activesync"):
            return 401, [*hdrs, ("WWW-Authenticate", f'Basic realm="{self.fqdn}"')], b""
        if path.startswith(WINDOWS):
            extra: list[tuple[str, str]] = [("X-CasErrorCode", "UnauthenticatedRequest")]
            if path.startswith("/mapi/"):
                extra += [("X-ServerApplication", f"Exchange/{self.build}"),
                          ("X-CalculatedBETarget", self.fqdn), ("X-BEServer", self.name),
                          ("X-BackEndHttpStatus", "401")]
                rtype = dict((k.lower(), v) for k, v in req.headers).get(b"x-requesttype", b"")
                extra.append(("X-RequestType", rtype.decode()))
            if method in ("RPC_IN_DATA", "RPC_OUT_DATA") and not path.startswith("/rpc/"):
                return 405, hdrs, b""
            if auth.split(" ")[0] in ("NTLM", "Negotiate") and len(auth.split(" ")) == 2:
                scheme = auth.split(" ")[0]
                return 401, [*hdrs, *extra, ("WWW-Authenticate", f"{scheme} {self.challenge()}")], b""
            schemes = [("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "NTLM")]
            if path.startswith(("/rpc/", "/autodiscover/")):
                schemes.append(("WWW-Authenticate", f'Basic realm="{self.fqdn}"'))
            return 401, [*hdrs, *extra, *schemes], b""
        return 404, [*hdrs, ("Content-Type", "text/html")], b"<html><body>404</body></html>"


async def serve_conn(ex: Exchange, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.Request):
                status, hdrs, body = ex.answer(event)
                if event.method == b"HEAD":
                    body = b""
                hdrs = [*hdrs, ("Content-Length", str(len(body)))]
                writer.write(conn.send(h11.Response(status_code=status, headers=hdrs)))
                if body:
                    writer.write(conn.send(h11.Data(data=body)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                continue
            if isinstance(event, h11.Data):
                continue
            if isinstance(event, h11.EndOfMessage):
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                continue
            return
    except (h11.ProtocolError, ConnectionError):
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
