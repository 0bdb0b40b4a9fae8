"""Decide what a certificate directory or Secret should hold now: keep, renew, or create.

Pure: the stored PEM bytes and the current time come in, the certificates to store go out, with the reason.
A CA that is about to expire is replaced, and the old one stays in the trust bundle until it expires, so
clients that still trust only the old CA keep working while the new serving certificate rolls out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certs.pki import (
    KeyPair,
    PkiError,
    covers_names,
    generate_ca,
    is_ca_keypair,
    is_issued_by,
    issue_serving_cert,
    load_certificate,
    matches_key,
    needs_renewal,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CertRequest:
    """What the serving certificate must cover and how long things live."""

    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...] = ()
    valid_for: timedelta = timedelta(days=365)
    renew_before: timedelta = timedelta(days=30)
    ca_valid_for: timedelta = timedelta(days=3650)
    ca_common_name: str = "extproc-guard-ca"


@dataclass(frozen=True, slots=True)
class StoredCerts:
    """PEM bytes as found in a directory or Secret; None where nothing is stored."""

    ca_bundle: bytes | None = None
    ca_key: bytes | None = None
    serving_cert: bytes | None = None
    serving_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class CertSet:
    """What to store: the signing CA, the trust bundle (current CA first) and the serving pair."""

    ca: KeyPair
    ca_bundle: bytes
    serving: KeyPair

    def as_stored(self) -> StoredCerts:
        return StoredCerts(
            ca_bundle=self.ca_bundle,
            ca_key=self.ca.key_pem,
            serving_cert=self.serving.cert_pem,
            serving_key=self.serving.key_pem,
        )


@dataclass(frozen=True, slots=True)
class Rotation:
    """The outcome: the certificates and why the CA or serving certificate changed (empty = kept)."""

    certs: CertSet
    ca_reason: str
    serving_reason: str

    @property
    def changed(self) -> bool:
        return bool(self.ca_reason or self.serving_reason)


class StoredCAError(PkiError):
    """A CA is stored but cannot be used; replacing it silently would break every client that trusts it."""


def rotate_certs(stored: StoredCerts, *, request: CertRequest, now: datetime) -> Rotation:
    """Keep what is still good, renew what is not, create what is missing."""
    ca, ca_reason = _current_ca(stored, request=request, now=now)
    if ca is None:
        ca = generate_ca(common_name=request.ca_common_name, now=now, valid_for=request.ca_valid_for)
        serving, serving_reason = None, "CA replaced"
    else:
        serving, serving_reason = _reusable_serving(stored, ca=ca, request=request, now=now)
    bundle = build_trust_bundle(ca.cert_pem, stored.ca_bundle or b"", now=now)
    if serving is None:
        serving = issue_serving_cert(
            ca,
            dns_names=request.dns_names,
            ip_addresses=request.ip_addresses,
            now=now,
            valid_for=request.valid_for,
        )
    return Rotation(
        certs=CertSet(ca=ca, ca_bundle=bundle, serving=serving),
        ca_reason=ca_reason,
        serving_reason=serving_reason,
    )


def build_trust_bundle(ca_cert_pem: bytes, previous_bundle: bytes, *, now: datetime) -> bytes:
    """The current CA first, then every other CA of the previous bundle that has not expired."""
    current = x509.load_pem_x509_certificate(ca_cert_pem)
    keep = [current]
    seen = {current.fingerprint(hashes.SHA256())}
    for cert in _load_bundle(previous_bundle):
        fingerprint = cert.fingerprint(hashes.SHA256())
        if fingerprint in seen or needs_renewal(_to_pem(cert), now=now, renew_before=timedelta(0)):
            continue
        seen.add(fingerprint)
        keep.append(cert)
    return b"".join(_to_pem(cert) for cert in keep)


def _current_ca(stored: StoredCerts, *, request: CertRequest, now: datetime) -> tuple[KeyPair | None, str]:
    """The stored CA and "" when it can be reused; None and the reason to create one otherwise."""
    if stored.ca_bundle is None and stored.ca_key is None:
        return None, "no CA stored"
    if stored.ca_bundle is None or stored.ca_key is None:
        missing = "CA certificate" if stored.ca_bundle is None else "CA key"
        raise StoredCAError(f"the {missing} is missing; remove the other half to create a new CA")
    try:
        certs = _load_bundle(stored.ca_bundle)
    except ValueError as exc:
        raise StoredCAError(f"the stored CA bundle does not parse: {exc}") from exc
    for cert in certs:
        pair = KeyPair(cert_pem=_to_pem(cert), key_pem=stored.ca_key)
        if is_ca_keypair(pair):
            if needs_renewal(pair.cert_pem, now=now, renew_before=request.renew_before):
                return None, "CA expires soon"
            return pair, ""
    raise StoredCAError("the stored CA key matches no CA certificate of the bundle")


def _reusable_serving(
    stored: StoredCerts, *, ca: KeyPair, request: CertRequest, now: datetime
) -> tuple[KeyPair | None, str]:
    """The stored serving pair and "", or None and why it cannot stay."""
    cert, key = stored.serving_cert, stored.serving_key
    if cert is None or key is None:
        return None, "no serving certificate stored"
    problem = _serving_problem(cert, key, ca=ca, request=request, now=now)
    if problem:
        return None, problem
    return KeyPair(cert_pem=cert, key_pem=key), ""


def _serving_problem(cert: bytes, key: bytes, *, ca: KeyPair, request: CertRequest, now: datetime) -> str:
    """Why the stored serving certificate cannot stay, or "" when it can."""
    try:
        load_certificate(cert)
        if not matches_key(cert, key):
            return "serving key does not match the certificate"
        if not is_issued_by(cert, ca.cert_pem):
            return "serving certificate not issued by the current CA"
        if not covers_names(cert, dns_names=request.dns_names, ip_addresses=request.ip_addresses):
            return "serving certificate names differ from the requested ones"
        if needs_renewal(cert, now=now, renew_before=request.renew_before):
            return "serving certificate expires soon"
    except PkiError as exc:
        return f"serving certificate unreadable ({exc})"
    return ""


def _load_bundle(pem: bytes) -> list[x509.Certificate]:
    if not pem.strip():
        return []
    return x509.load_pem_x509_certificates(pem)


def _to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
