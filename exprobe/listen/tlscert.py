"""A throw-away certificate authority and server certificate, made at start-up.

The server certificate names the listener (CN and a DNS SAN) and every bind address (IP
SANs), so a client that checks names sees a match, and its subject says what it is: an
exprobe rehearsal, not the future server's real certificate.  It is issued by a one-off
CA (also made here, its key forgotten once the leaf is signed) so that `exprobe run
--ca-file` (`exprobe listen --ca-out FILE`) can trust the rehearsal and show only real
problems.  ECDSA P-256: instant to generate, and every TLS 1.2+ client speaks it.
Nothing is written to disk except for the instant `ssl` needs to read it (a private
temporary directory), and the CA certificate when asked to.
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
    """PEM server certificate (+ CA, the chain sent), key, and the CA certificate alone."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    name: str
    addresses: tuple[str, ...]


def make_certificate(name: str, addresses: list[str], *, days: int = 30) -> CertMaterial:
    """A fresh CA and a server certificate for `name` and `addresses`."""
    from cryptography import x509  # lazy: start-up time of the other commands matters
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(days=days)

    def subject(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn[:64]),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            ]
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = subject(f"exprobe rehearsal CA for {name}")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    for a in addresses:
        ip = ipaddress.ip_address(a.split("%", 1)[0])
        if not ip.is_unspecified:
            sans.append(x509.IPAddress(ip))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(subject(name))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_pem = ca.public_bytes(pem)
    return CertMaterial(
        leaf.public_bytes(pem) + ca_pem,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ca_pem,
        name,
        tuple(addresses),
    )


def server_context(material: CertMaterial) -> ssl.SSLContext:
    """A server context with the certificate chain loaded; TLS 1.2 and later."""
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
