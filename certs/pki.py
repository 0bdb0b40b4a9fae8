"""A CA and serving certificates for an in-cluster HTTPS endpoint, as PEM bytes.

Every function is pure: the current time is an argument, nothing reads the clock, files or the environment.
Keys are ECDSA P-256. Certificates carry the extensions a TLS client expects: basicConstraints, keyUsage,
subject and authority key identifiers, subjectAltName and extendedKeyUsage serverAuth on serving certificates.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

# Certificates start a little before `now` so a peer whose clock lags slightly still accepts them.
CLOCK_SKEW = timedelta(minutes=5)


class PkiError(ValueError):
    """Bad input to a certificate function (unparseable PEM, not a CA, a name that cannot go in a SAN)."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate and its private key, both PEM-encoded (the key as unencrypted PKCS#8)."""

    cert_pem: bytes
    key_pem: bytes


def generate_ca(*, common_name: str, now: datetime, valid_for: timedelta) -> KeyPair:
    """Create a self-signed CA that may sign end-entity certificates only (pathLen 0)."""
    if not common_name.strip():
        raise PkiError("the CA common name is empty")
    _check_validity(valid_for)
    start = _as_utc(now)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert_pem=_cert_to_pem(cert), key_pem=_key_to_pem(key))


def issue_serving_cert(
    ca: KeyPair,
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    now: datetime,
    valid_for: timedelta,
) -> KeyPair:
    """Issue a TLS server certificate signed by `ca` for the given DNS names and IP addresses.

    The certificate never outlives its CA: its end is capped at the CA's ``notAfter``.
    """
    _check_validity(valid_for)
    names = [_check_dns_name(name) for name in dns_names]
    ips = [_parse_ip(value) for value in ip_addresses]
    if not names and not ips:
        raise PkiError("a serving certificate needs at least one DNS name or IP address")
    ca_cert = load_certificate(ca.cert_pem)
    ca_key = _load_ec_key(ca.key_pem)
    _check_is_ca(ca_cert)
    if ca_cert.public_key() != ca_key.public_key():
        raise PkiError("the CA key does not belong to the CA certificate")
    start = _as_utc(now)
    end = min(start + valid_for, ca_cert.not_valid_after_utc)
    if end <= start:
        raise PkiError(f"the CA expired at {ca_cert.not_valid_after_utc.isoformat()}")
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = names[0] if names else str(ips[0])
    san: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    san += [x509.IPAddress(ip) for ip in ips]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(start - CLOCK_SKEW, ca_cert.not_valid_before_utc))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert_pem=_cert_to_pem(cert), key_pem=_key_to_pem(key))


def service_dns_names(service: str, namespace: str, *, cluster_domain: str = "cluster.local") -> list[str]:
    """The names a client inside the cluster may use for a Service, shortest first."""
    for label, value in (("service", service), ("namespace", namespace)):
        if not value or "." in value:
            raise PkiError(f"the {label} name {value!r} must be a single DNS label")
    base = f"{service}.{namespace}"
    names = [service, base, f"{base}.svc"]
    domain = cluster_domain.strip(".")
    if domain:
        names.append(f"{base}.svc.{domain}")
    return [_check_dns_name(name) for name in names]


def needs_renewal(cert_pem: bytes, *, now: datetime, renew_before: timedelta) -> bool:
    """True when the certificate is not valid at `now` or expires within `renew_before` of it."""
    cert = load_certificate(cert_pem)
    at = _as_utc(now)
    if at < cert.not_valid_before_utc:
        return True
    return at + renew_before >= cert.not_valid_after_utc


def load_certificate(cert_pem: bytes) -> x509.Certificate:
    """Parse the first certificate of a PEM blob, or raise `PkiError`."""
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate: {exc}") from exc


def is_ca_keypair(pair: KeyPair) -> bool:
    """True when `pair` is a CA certificate with its own matching private key."""
    try:
        cert = load_certificate(pair.cert_pem)
        _check_is_ca(cert)
        return cert.public_key() == _load_ec_key(pair.key_pem).public_key()
    except PkiError:
        return False


def is_issued_by(cert_pem: bytes, ca_cert_pem: bytes) -> bool:
    """True when `cert_pem` carries a valid signature by the CA in `ca_cert_pem`."""
    cert = load_certificate(cert_pem)
    ca_cert = load_certificate(ca_cert_pem)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def covers_names(cert_pem: bytes, *, dns_names: Sequence[str], ip_addresses: Sequence[str] = ()) -> bool:
    """True when the certificate's SAN holds exactly the given DNS names and IP addresses."""
    cert = load_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    have_ips = set(san.get_values_for_type(x509.IPAddress))
    want_dns = {name.lower() for name in dns_names}
    want_ips = {_parse_ip(value) for value in ip_addresses}
    return have_dns == want_dns and have_ips == want_ips


def matches_key(cert_pem: bytes, key_pem: bytes) -> bool:
    """True when `key_pem` is the private key of the certificate."""
    try:
        return load_certificate(cert_pem).public_key() == _load_ec_key(key_pem).public_key()
    except PkiError:
        return False


def _check_validity(valid_for: timedelta) -> None:
    if valid_for <= timedelta(0):
        raise PkiError(f"the validity period must be positive, got {valid_for}")


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signatures only; a CA may also sign certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _check_is_ca(cert: x509.Certificate) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound as exc:
        raise PkiError("the certificate has no basicConstraints: not a CA") from exc
    if not constraints.ca:
        raise PkiError("the certificate is not a CA (basicConstraints CA:FALSE)")


def _check_dns_name(name: str) -> str:
    labels = name.split(".")
    ok = 0 < len(name) <= 253 and name.isascii() and all(_is_label(label) for label in labels)
    if not ok:
        raise PkiError(f"{name!r} is not a valid DNS name")
    return name


def _is_label(label: str) -> bool:
    if label == "*":
        return True
    return (
        0 < len(label) <= 63
        and not label.startswith("-")
        and not label.endswith("-")
        and all(char.isalnum() or char == "-" for char in label)
    )


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise PkiError(f"{value!r} is not an IP address") from exc


def _load_ec_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("the private key is not an ECDSA key")
    return key


def _as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC; aware ones are converted."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
