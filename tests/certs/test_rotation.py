"""Renewal decisions over stored PEM bytes: keep, renew or create, and the CA trust bundle overlap."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from certs.pki import generate_ca, is_issued_by, issue_serving_cert, load_certificate, service_dns_names
from certs.rotation import CertRequest, StoredCAError, StoredCerts, build_trust_bundle, rotate_certs

NOW = datetime(2026, 6, 1, tzinfo=UTC)
REQUEST = CertRequest(
    dns_names=tuple(service_dns_names("guard", "ops")),
    ip_addresses=("127.0.0.1",),
    valid_for=timedelta(days=90),
    renew_before=timedelta(days=30),
    ca_valid_for=timedelta(days=365),
)


def _stored_at(moment: datetime) -> StoredCerts:
    return rotate_certs(StoredCerts(), request=REQUEST, now=moment).certs.as_stored()


def test_nothing_stored_creates_a_ca_and_a_serving_certificate() -> None:
    rotation = rotate_certs(StoredCerts(), request=REQUEST, now=NOW)
    assert rotation.ca_reason == "no CA stored"
    assert rotation.serving_reason == "CA replaced"
    assert is_issued_by(rotation.certs.serving.cert_pem, rotation.certs.ca.cert_pem)
    assert rotation.certs.ca_bundle == rotation.certs.ca.cert_pem


def test_valid_certificates_are_kept_byte_for_byte() -> None:
    stored = _stored_at(NOW)
    rotation = rotate_certs(stored, request=REQUEST, now=NOW + timedelta(days=10))
    assert not rotation.changed
    assert rotation.certs.as_stored() == stored


def test_serving_certificate_inside_the_renewal_window_is_reissued_by_the_same_ca() -> None:
    stored = _stored_at(NOW)
    rotation = rotate_certs(stored, request=REQUEST, now=NOW + timedelta(days=61))
    assert rotation.ca_reason == ""
    assert rotation.serving_reason == "serving certificate expires soon"
    assert rotation.certs.ca.cert_pem == stored.ca_bundle
    assert rotation.certs.serving.cert_pem != stored.serving_cert
    assert is_issued_by(rotation.certs.serving.cert_pem, rotation.certs.ca.cert_pem)


@pytest.mark.parametrize(
    "request_",
    [
        dataclasses.replace(REQUEST, ip_addresses=("127.0.0.1", "10.0.0.9")),
        dataclasses.replace(REQUEST, dns_names=("guard.ops.svc",)),
    ],
    ids=["ip-added", "dns-changed"],
)
def test_serving_certificate_is_reissued_when_the_requested_names_change(request_: CertRequest) -> None:
    stored = _stored_at(NOW)
    rotation = rotate_certs(stored, request=request_, now=NOW)
    assert "names differ" in rotation.serving_reason
    assert rotation.ca_reason == ""


def test_serving_certificate_with_a_foreign_key_is_reissued() -> None:
    stored = _stored_at(NOW)
    other = _stored_at(NOW)
    mixed = dataclasses.replace(stored, serving_key=other.serving_key)
    assert rotate_certs(mixed, request=REQUEST, now=NOW).serving_reason == (
        "serving key does not match the certificate"
    )


def test_serving_certificate_from_another_ca_is_reissued() -> None:
    stored = _stored_at(NOW)
    other = _stored_at(NOW)
    mixed = dataclasses.replace(stored, serving_cert=other.serving_cert, serving_key=other.serving_key)
    rotation = rotate_certs(mixed, request=REQUEST, now=NOW)
    assert rotation.serving_reason == "serving certificate not issued by the current CA"
    assert is_issued_by(rotation.certs.serving.cert_pem, stored.ca_bundle or b"")


def test_unreadable_serving_certificate_is_reissued() -> None:
    stored = _stored_at(NOW)
    broken = dataclasses.replace(stored, serving_cert=b"junk")
    assert "unreadable" in rotate_certs(broken, request=REQUEST, now=NOW).serving_reason


def test_expiring_ca_is_replaced_and_the_old_one_stays_trusted_until_it_expires() -> None:
    stored = _stored_at(NOW)
    later = NOW + timedelta(days=340)
    rotation = rotate_certs(stored, request=REQUEST, now=later)
    assert rotation.ca_reason == "CA expires soon"
    bundle = x509.load_pem_x509_certificates(rotation.certs.ca_bundle)
    assert [cert.subject for cert in bundle] == [load_certificate(rotation.certs.ca.cert_pem).subject] * 2
    assert bundle[0] == load_certificate(rotation.certs.ca.cert_pem)
    assert bundle[1] == load_certificate(stored.ca_bundle or b"")
    assert is_issued_by(rotation.certs.serving.cert_pem, rotation.certs.ca.cert_pem)
    after_old_expiry = NOW + timedelta(days=370)
    renewed = rotate_certs(rotation.certs.as_stored(), request=REQUEST, now=after_old_expiry)
    assert renewed.certs.ca_bundle == rotation.certs.ca.cert_pem


def test_trust_bundle_drops_duplicates_and_expired_cas() -> None:
    current = generate_ca(common_name="current", now=NOW, valid_for=timedelta(days=10))
    expired = generate_ca(common_name="expired", now=NOW - timedelta(days=20), valid_for=timedelta(days=10))
    live = generate_ca(common_name="live", now=NOW - timedelta(days=1), valid_for=timedelta(days=10))
    bundle = build_trust_bundle(
        current.cert_pem, current.cert_pem + expired.cert_pem + live.cert_pem, now=NOW
    )
    assert bundle == current.cert_pem + live.cert_pem


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda s: StoredCerts(ca_bundle=s.ca_bundle), "CA key is missing"),
        (lambda s: StoredCerts(ca_key=s.ca_key), "CA certificate is missing"),
        (lambda s: StoredCerts(ca_bundle=b"-----BEGIN CERTIFICATE-----\nxx", ca_key=s.ca_key), "not parse"),
        (lambda s: StoredCerts(ca_bundle=s.ca_bundle, ca_key=_stored_at(NOW).ca_key), "matches no CA"),
        (lambda s: StoredCerts(ca_bundle=s.serving_cert, ca_key=s.serving_key), "matches no CA"),
    ],
    ids=["key-missing", "cert-missing", "garbage-bundle", "foreign-key", "leaf-as-ca"],
)
def test_an_unusable_stored_ca_is_an_error_not_a_silent_replacement(
    mutate: Callable[[StoredCerts], StoredCerts], fragment: str
) -> None:
    stored = _stored_at(NOW)
    broken = mutate(stored)
    with pytest.raises(StoredCAError, match=fragment):
        rotate_certs(broken, request=REQUEST, now=NOW)


def test_a_leaf_issued_directly_fits_the_stored_layout() -> None:
    ca = generate_ca(common_name="hand-made", now=NOW, valid_for=timedelta(days=365))
    leaf = issue_serving_cert(
        ca,
        dns_names=REQUEST.dns_names,
        ip_addresses=REQUEST.ip_addresses,
        now=NOW,
        valid_for=timedelta(days=90),
    )
    stored = StoredCerts(
        ca_bundle=ca.cert_pem, ca_key=ca.key_pem, serving_cert=leaf.cert_pem, serving_key=leaf.key_pem
    )
    assert not rotate_certs(stored, request=REQUEST, now=NOW).changed
