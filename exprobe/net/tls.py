"""TLS client contexts and certificate facts.

The handshake itself never verifies: a path that completes TLS *works*, and whether a
client would trust the certificate is a separate fact (a warning by default, a
`tls-error` with `--tls-verify`).  Trust is decided with `cryptography`'s X.509
verifier over the chain the server actually sent, so the reason can be named.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import ipaddress
import ssl
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """What the user asked of TLS for this run."""

    verify: bool = False
    ca_file: str | None = None
    cert_warn_days: int = 14
    server_name: str | None = None  # SNI / name to match; defaults to the target's name


_VERSIONS = {"1.0": "TLSv1", "1.1": "TLSv1_1", "1.2": "TLSv1_2", "1.3": "TLSv1_3"}


@functools.lru_cache(maxsize=64)
def client_context(only: str | None = None, without: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A permissive client context: we want to see every server, even old ones.  `only`
    ("1.0" ... "1.3") offers that TLS version alone; `without` leaves those cipher suites
    (OpenSSL names) out of the offer, to find the next one the server accepts."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # Exchange 5.5-era servers may only speak TLS 1.0; see them rather than fail.
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with contextlib.suppress(ssl.SSLError):  # depends on the OpenSSL build
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    if without:
        offer = [c["name"] for c in ctx.get_ciphers()
                 if c["protocol"] != "TLSv1.3" and c["name"] not in without]  # fmt: skip
        # An empty offer cannot be set: a suite no server agrees to ends the search.
        ctx.set_ciphers(":".join(offer or ["NULL-MD5"]) + ":@SECLEVEL=0")
    if only is not None:
        with warnings.catch_warnings():  # TLSv1 and TLSv1_1 are deprecated names: we know
            warnings.simplefilter("ignore", DeprecationWarning)
            version = getattr(ssl.TLSVersion, _VERSIONS[only])
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


@dataclass(slots=True)
class TlsReport:
    """Facts and warnings about one TLS session."""

    facts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    trusted: bool = False
    name_matches: bool = False
    problem: str | None = None  # why a verifying client would refuse


def describe_session(obj: ssl.SSLObject, name: str | None, opts: TlsOptions) -> TlsReport:
    """Facts about a completed handshake: version, cipher, certificate, trust, expiry."""
    report = TlsReport()
    report.facts["tls_version"] = obj.version()
    cipher = obj.cipher()
    if cipher:
        report.facts["tls_cipher"] = cipher[0]
    chain = _peer_chain(obj)
    if not chain:
        report.problem = "server sent no certificate"
        report.warnings.append("TLS: server sent no certificate")
        return report
    _describe_certificate(chain, name, opts, report)
    return report


def _peer_chain(obj: ssl.SSLObject) -> list[bytes]:
    # Python 3.11/3.12 keep the unverified chain accessor private; 3.13 made it public.
    inner = getattr(obj, "_sslobj", None)
    getter = getattr(obj, "get_unverified_chain", None) or getattr(
        inner, "get_unverified_chain", None
    )
    if getter is not None:
        try:
            certs = getter() or []
            return [
                c.public_bytes(ssl._ssl.ENCODING_DER) if not isinstance(c, bytes) else c  # type: ignore[attr-defined]
                for c in certs
            ]
        except (ValueError, ssl.SSLError, AttributeError):
            pass
    der = obj.getpeercert(binary_form=True)
    return [der] if der else []


def _describe_certificate(
    chain: list[bytes], name: str | None, opts: TlsOptions, report: TlsReport
) -> None:
    from cryptography import x509  # lazy: costs ~40 ms at start-up

    report.facts["cert_sha256"] = hashlib.sha256(chain[0]).hexdigest()
    try:
        leaf = x509.load_der_x509_certificate(chain[0])
    except ValueError as exc:
        report.problem = f"certificate does not parse ({exc})"
        report.warnings.append(f"TLS: {report.problem}")
        return
    try:
        report.facts["cert_subject"] = leaf.subject.rfc4514_string()
        report.facts["cert_issuer"] = leaf.issuer.rfc4514_string()
    except ValueError:
        report.facts["cert_subject"] = report.facts["cert_issuer"] = "(unparseable name)"
    sans = _sans(leaf)
    report.facts["cert_san"] = sans
    not_before = leaf.not_valid_before_utc
    not_after = leaf.not_valid_after_utc
    now = dt.datetime.now(dt.UTC)
    days_left = (not_after - now).days if not_after >= now else -((now - not_after).days + 1)
    report.facts["cert_not_before"] = not_before.isoformat()
    report.facts["cert_not_after"] = not_after.isoformat()
    report.facts["cert_days_left"] = days_left

    problems: list[str] = []
    if now > not_after:
        problems.append(f"certificate expired {not_after.date().isoformat()}")
    elif now < not_before:
        problems.append(f"certificate not valid before {not_before.date().isoformat()}")
    elif days_left < opts.cert_warn_days:
        report.warnings.append(
            f"TLS: certificate expires in {days_left} days ({not_after.date().isoformat()})"
        )

    if name:
        report.name_matches = name_matches(name, sans, leaf)
        report.facts["cert_name_matches"] = report.name_matches
        if not report.name_matches:
            problems.append(f"certificate does not match the name {name!r}")
    trust_problem = _chain_problem(chain, opts.ca_file)
    report.trusted = trust_problem is None
    report.facts["cert_trusted"] = report.trusted
    if trust_problem:
        problems.append(trust_problem)
    if problems:
        report.problem = "; ".join(problems)
        report.facts["cert_problem"] = report.problem
        report.warnings.extend(f"TLS: {p}" for p in problems)


def _sans(cert: Any) -> list[str]:
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    out: list[str] = [f"DNS:{n}" for n in ext.get_values_for_type(x509.DNSName)]
    out += [f"IP:{a}" for a in ext.get_values_for_type(x509.IPAddress)]
    return out


def name_matches(name: str, sans: list[str], cert: Any) -> bool:
    """RFC 6125 matching: SANs (single left-most wildcard); CN only when there are no SANs."""
    try:
        ip = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        ip = None
    if ip is not None:
        return f"IP:{ip}" in sans
    host = name.rstrip(".").lower()
    dns = [s[4:].lower() for s in sans if s.startswith("DNS:")]
    if not sans:
        from cryptography.x509.oid import NameOID

        dns = [
            str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    for pattern in dns:
        if pattern == host:
            return True
        first, _, rest = host.partition(".")
        if pattern.startswith("*.") and first and rest == pattern[2:]:
            return True
    return False


@functools.lru_cache(maxsize=4)
def _trust_store(ca_file: str | None) -> Any:
    from cryptography.x509.verification import Store

    roots = _trust_roots(ca_file)
    return Store(list(roots)) if roots else None


@functools.lru_cache(maxsize=4)
def _trust_roots(ca_file: str | None) -> tuple[Any, ...]:
    from cryptography import x509

    certs: list[x509.Certificate] = []
    paths = [ca_file] if ca_file else []
    default = ssl.get_default_verify_paths().cafile
    paths += [p for p in (default, *SYSTEM_BUNDLES) if p]
    seen: set[str] = set()
    for p in paths:
        if p in seen or not Path(p).is_file():
            continue
        seen.add(p)
        try:
            # Some system bundles hold roots with non-positive serial numbers; the
            # deprecation warning cryptography emits for them is noise here (and an
            # error under `-W error`).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                certs += x509.load_pem_x509_certificates(Path(p).read_bytes())
        except ValueError:
            continue
        if not ca_file:
            break  # one system bundle is enough
    return tuple(certs)


def _chain_problem(chain: list[bytes], ca_file: str | None) -> str | None:
    """None when the chain leads to a trusted root; otherwise the reason it does not."""
    from cryptography import x509
    from cryptography.x509 import verification as v

    try:
        store = _trust_store(ca_file)
    except (OSError, ValueError) as exc:
        return f"trust store unreadable ({exc})"
    if store is None:
        return "no trust store available"
    try:
        leaf = x509.load_der_x509_certificate(chain[0])
        intermediates = [x509.load_der_x509_certificate(c) for c in chain[1:]]
        # Name matching is judged separately; verify the chain against one of the
        # certificate's own names so the answer here is about trust only.
        subject: x509.DNSName | x509.IPAddress
        sans = _sans(leaf)
        if sans and sans[0].startswith("IP:"):
            subject = x509.IPAddress(ipaddress.ip_address(sans[0][3:]))
        elif sans:
            subject = x509.DNSName(sans[0][4:].replace("*.", "wildcard."))
        else:
            return "certificate has no subjectAltName (not trusted by modern clients)"
        # Expiry is reported on its own, with the date: judge the chain at a moment
        # inside the leaf's validity so this answer is about trust only.
        now = dt.datetime.now(dt.UTC)
        when = min(max(now, leaf.not_valid_before_utc), leaf.not_valid_after_utc)
        builder = v.PolicyBuilder().store(store).time(when)
        verifier = builder.build_server_verifier(subject)
        try:
            verifier.verify(leaf, intermediates)
        except v.VerificationError:
            # An issuer that was not valid at any moment of the leaf's validity (a CA
            # younger than its expired leaf) defeats the time shift above.  Expiry is
            # reported anyway; for trust, fall back to the signatures.
            if when != now and _signed_up_to_root(leaf, intermediates, _trust_roots(ca_file)):
                return None
            raise
    except v.VerificationError as exc:
        text = str(exc)
        if "candidates exhausted" in text or "no issuer" in text.lower():
            return "certificate chain not trusted (issuer unknown)"
        return f"certificate chain not trusted ({text})"
    except ValueError as exc:
        return f"certificate chain not trusted ({exc})"
    return None


def _signed_up_to_root(leaf: Any, intermediates: list[Any], roots: tuple[Any, ...]) -> bool:
    """Whether signatures lead from `leaf` through `intermediates` to one of `roots`.

    Only names and signatures are checked (no dates, no constraints): a fallback for
    a certificate that already fails on its dates.
    """

    def signed_by(cert: Any, issuer: Any) -> bool:
        try:
            cert.verify_directly_issued_by(issuer)
        except Exception:  # InvalidSignature, ValueError, TypeError: not this issuer
            return False
        return True

    current = leaf
    for _ in range(len(intermediates) + 1):  # bounded: each step climbs one certificate
        if any(r.subject == current.issuer and signed_by(current, r) for r in roots):
            return True
        current = next(
            (c for c in intermediates if c.subject == current.issuer and signed_by(current, c)),
            None,
        )
        if current is None:
            return False
    return False
