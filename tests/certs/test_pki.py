"""The CA and serving certificates: extensions, a real TLS handshake on loopback, renewal decisions."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

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
    service_dns_names,
)

# Fixed instants: the tests never read the clock to decide anything about certificate windows,
# except the TLS handshake, which OpenSSL checks against the real clock; that chain is issued around
# a fixed instant far enough into a wide window to be valid whenever the suite runs.
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HANDSHAKE_NOW = datetime(2020, 1, 1, tzinfo=UTC)
HANDSHAKE_VALIDITY = timedelta(days=365 * 60)
NAMES = service_dns_names("extproc-guard", "extproc-guard-system")


@pytest.fixture(scope="module")
def ca() -> KeyPair:
    return generate_ca(common_name="extproc-guard-ca", now=NOW, valid_for=timedelta(days=3650))


@pytest.fixture(scope="module")
def serving(ca: KeyPair) -> KeyPair:
    return issue_serving_cert(
        ca, dns_names=NAMES, ip_addresses=["127.0.0.1", "::1"], now=NOW, valid_for=timedelta(days=90)
    )


def test_service_dns_names_lists_the_four_in_cluster_spellings() -> None:
    assert service_dns_names("guard", "ops") == [
        "guard",
        "guard.ops",
        "guard.ops.svc",
        "guard.ops.svc.cluster.local",
    ]


def test_service_dns_names_follow_the_cluster_domain_setting() -> None:
    names = service_dns_names("guard", "ops", cluster_domain="corp.example")
    assert names[-1] == "guard.ops.svc.corp.example"


@pytest.mark.parametrize(
    ("service", "namespace"), [("", "ops"), ("a.b", "ops"), ("guard", "")], ids=["empty", "dotted", "no-ns"]
)
def test_service_dns_names_reject_names_that_are_not_labels(service: str, namespace: str) -> None:
    with pytest.raises(PkiError):
        service_dns_names(service, namespace)


def test_ca_is_a_self_signed_ca_limited_to_signing_leaves(ca: KeyPair) -> None:
    cert = load_certificate(ca.cert_pem)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert aki.key_identifier == ski.digest
    assert is_issued_by(ca.cert_pem, ca.cert_pem)
    assert is_ca_keypair(ca)
    assert cert.not_valid_before_utc < NOW < cert.not_valid_after_utc


def test_serving_cert_has_server_extensions_and_chains_to_the_ca(ca: KeyPair, serving: KeyPair) -> None:
    cert = load_certificate(serving.cert_pem)
    ca_cert = load_certificate(ca.cert_pem)
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski
    assert cert.issuer == ca_cert.subject
    assert is_issued_by(serving.cert_pem, ca.cert_pem)
    assert matches_key(serving.cert_pem, serving.key_pem)
    assert not is_ca_keypair(serving)
    assert covers_names(serving.cert_pem, dns_names=NAMES, ip_addresses=["127.0.0.1", "::1"])
    assert not covers_names(serving.cert_pem, dns_names=NAMES)


def test_serving_cert_is_not_issued_by_another_ca(serving: KeyPair) -> None:
    other = generate_ca(common_name="other", now=NOW, valid_for=timedelta(days=10))
    assert not is_issued_by(serving.cert_pem, other.cert_pem)


def test_serving_cert_never_outlives_its_ca() -> None:
    short_ca = generate_ca(common_name="short", now=NOW, valid_for=timedelta(days=10))
    leaf = issue_serving_cert(short_ca, dns_names=["a"], now=NOW, valid_for=timedelta(days=365))
    assert (
        load_certificate(leaf.cert_pem).not_valid_after_utc
        == load_certificate(short_ca.cert_pem).not_valid_after_utc
    )


@pytest.mark.parametrize(
    ("dns_names", "ips", "fragment"),
    [
        ([], [], "at least one"),
        (["bad name"], [], "not a valid DNS name"),
        (["ok"], ["10.0.0.300"], "not an IP address"),
    ],
    ids=["no-names", "space-in-name", "bad-ip"],
)
def test_issue_serving_cert_rejects_bad_names(
    ca: KeyPair, dns_names: list[str], ips: list[str], fragment: str
) -> None:
    with pytest.raises(PkiError, match=fragment):
        issue_serving_cert(ca, dns_names=dns_names, ip_addresses=ips, now=NOW, valid_for=timedelta(days=1))


def test_issue_serving_cert_refuses_a_leaf_as_ca(serving: KeyPair) -> None:
    with pytest.raises(PkiError, match="not a CA"):
        issue_serving_cert(serving, dns_names=["a"], now=NOW, valid_for=timedelta(days=1))


def test_issue_serving_cert_refuses_a_ca_with_a_foreign_key(ca: KeyPair, serving: KeyPair) -> None:
    mixed = KeyPair(cert_pem=ca.cert_pem, key_pem=serving.key_pem)
    with pytest.raises(PkiError, match="does not belong"):
        issue_serving_cert(mixed, dns_names=["a"], now=NOW, valid_for=timedelta(days=1))


def test_issue_serving_cert_refuses_an_expired_ca(ca: KeyPair) -> None:
    with pytest.raises(PkiError, match="expired"):
        issue_serving_cert(ca, dns_names=["a"], now=NOW + timedelta(days=4000), valid_for=timedelta(days=1))


def test_generate_ca_rejects_a_non_positive_validity() -> None:
    with pytest.raises(PkiError, match="positive"):
        generate_ca(common_name="x", now=NOW, valid_for=timedelta(0))


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (timedelta(0), False),
        (timedelta(days=60, seconds=-1), False),
        (timedelta(days=60), True),
        (timedelta(days=90), True),
        (timedelta(days=400), True),
        (timedelta(days=-1), True),
    ],
    ids=["fresh", "just-outside-window", "window-edge", "at-expiry", "long-expired", "not-yet-valid"],
)
def test_needs_renewal_when_inside_the_renewal_window_or_not_valid(
    serving: KeyPair, offset: timedelta, expected: bool
) -> None:
    assert needs_renewal(serving.cert_pem, now=NOW + offset, renew_before=timedelta(days=30)) is expected


def test_needs_renewal_takes_naive_datetimes_as_utc(serving: KeyPair) -> None:
    naive = (NOW + timedelta(days=61)).replace(tzinfo=None)
    assert needs_renewal(serving.cert_pem, now=naive, renew_before=timedelta(days=30))


def test_needs_renewal_rejects_garbage() -> None:
    with pytest.raises(PkiError, match="not a PEM certificate"):
        needs_renewal(b"not a cert", now=NOW, renew_before=timedelta(days=1))


# ---- a real TLS handshake over loopback ----


@pytest.fixture(scope="module")
def handshake_chain() -> tuple[KeyPair, KeyPair]:
    ca = generate_ca(common_name="handshake-ca", now=HANDSHAKE_NOW, valid_for=HANDSHAKE_VALIDITY)
    leaf = issue_serving_cert(
        ca,
        dns_names=NAMES,
        ip_addresses=["127.0.0.1"],
        now=HANDSHAKE_NOW,
        valid_for=HANDSHAKE_VALIDITY,
    )
    return ca, leaf


@pytest.fixture(scope="module")
def tls_server(
    handshake_chain: tuple[KeyPair, KeyPair], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """A TLS server on 127.0.0.1 that completes handshakes with the issued certificate and closes."""
    _, leaf = handshake_chain
    folder = tmp_path_factory.mktemp("tls")
    (folder / "tls.crt").write_bytes(leaf.cert_pem)
    (folder / "tls.key").write_bytes(leaf.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(folder / "tls.crt", folder / "tls.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _connect(port: int, ca_pem: bytes, server_hostname: str, tmp_path: Path) -> bytes:
    bundle = tmp_path / "ca.crt"
    bundle.write_bytes(ca_pem)
    context = ssl.create_default_context(cafile=str(bundle))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return tls.recv(2)


@pytest.mark.parametrize("hostname", [*NAMES, "127.0.0.1"], ids=[*NAMES, "ip-san"])
def test_tls_client_trusting_the_ca_accepts_every_san(
    tls_server: int, handshake_chain: tuple[KeyPair, KeyPair], hostname: str, tmp_path: Path
) -> None:
    ca, _ = handshake_chain
    assert _connect(tls_server, ca.cert_pem, hostname, tmp_path) == b"ok"


@pytest.mark.parametrize(
    "hostname", ["other.extproc-guard-system.svc", "127.0.0.2"], ids=["foreign-dns", "foreign-ip"]
)
def test_tls_client_rejects_a_name_outside_the_san(
    tls_server: int, handshake_chain: tuple[KeyPair, KeyPair], hostname: str, tmp_path: Path
) -> None:
    ca, _ = handshake_chain
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _connect(tls_server, ca.cert_pem, hostname, tmp_path)


def test_tls_client_trusting_another_ca_rejects_the_server(tls_server: int, tmp_path: Path) -> None:
    other = generate_ca(common_name="other", now=HANDSHAKE_NOW, valid_for=HANDSHAKE_VALIDITY)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _connect(tls_server, other.cert_pem, NAMES[2], tmp_path)
