"""A self-signed certificate made at start-up, and the server TLS context around it.

The certificate names the listener (CN and a DNS SAN) and every bind address (IP SANs),
so a client that checks names sees a match, and its subject says what it is: an exprobe
rehearsal, not the future server's real certificate.  Nothing is written to disk
except for the instant `ssl` needs to read it (a private temporary directory).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

ORGANIZATION = "exprobe listen (rehearsal, not a real server)"


@dataclass(frozen=True, slots=True)
class CertMaterial:
    """PEM certificate and key, with the names they carry."""

    cert_pem: bytes
    key_pem: bytes
    name: str
    addresses: tuple[str, ...]


def make_certificate(name: str, addresses: list[str], *, days: int = 30) -> CertMaterial:
    """A fresh RSA-2048 self-signed certificate for `name` and `addresses`."""
    from cryptography import x509  # lazy: start-up time of the other commands matters
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    for a in addresses:
        ip = ipaddress.ip_address(a)
        if not ip.is_unspecified:
            sans.append(x509.IPAddress(ip))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertMaterial(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        name,
        tuple(addresses),
    )


def server_context(material: CertMaterial) -> ssl.SSLContext:
    """A server context with the certificate loaded; TLS 1.2 and later."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # `load_cert_chain` reads only from files: hand it a private directory for a moment.
    with tempfile.TemporaryDirectory(prefix="exprobe-listen-") as tmp:
        os.chmod(tmp, 0o700)
        cert = Path(tmp) / "cert.pem"
        key = Path(tmp) / "key.pem"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(material.key_pem)
        cert.write_bytes(material.cert_pem)
        ctx.load_cert_chain(cert, key)
    return ctx
