"""The serving certificate: an SSLContext from files, TLS 1.2+, reloaded when the files change.

Mounted Secrets change by a symlink swap and send no file events, so `CertReloader` polls a hash of the
certificate, key and client-CA files. A change builds a complete new context first (a half-written pair fails
there and the old one keeps serving); new handshakes switch to it through the SNI callback of the context the
listening socket was created with, so the server never restarts. Connections already open keep their cert.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from webhook.settings import TLSSettings

logger = logging.getLogger(__name__)

READ_LIMIT = 1024 * 1024


class TLSFilesError(Exception):
    """The certificate, key or client CA cannot be read or do not make a usable TLS context."""


@dataclass(frozen=True, slots=True)
class CertMaterial:
    """The bytes of the files a context is built from, and their digest."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None

    @property
    def digest(self) -> str:
        hasher = hashlib.sha256()
        for part in (self.cert_pem, self.key_pem, self.client_ca_pem or b""):
            hasher.update(hashlib.sha256(part).digest())
        return hasher.hexdigest()


def _read(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(READ_LIMIT + 1)
    except OSError as error:
        raise TLSFilesError(f"{path}: cannot read the {what}: {error.strerror or error}") from None
    if len(data) > READ_LIMIT:
        raise TLSFilesError(f"{path}: the {what} is larger than {READ_LIMIT} bytes")
    return data


def read_material(settings: TLSSettings) -> CertMaterial:
    client_ca = settings.client_ca_file
    return CertMaterial(
        cert_pem=_read(settings.cert_file, "certificate"),
        key_pem=_read(settings.key_file, "private key"),
        client_ca_pem=_read(client_ca, "client CA") if client_ca is not None else None,
    )


def build_context(material: CertMaterial, *, settings: TLSSettings) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer, the pair loaded, client certs required when a CA is given.

    The pair is loaded from the files (the ssl module takes paths only); `material` is what was read just
    before, so a file that changes in between is seen as changed again at the next poll.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file)
        if material.client_ca_pem is not None:
            context.load_verify_locations(cadata=material.client_ca_pem.decode("ascii", "replace"))
            context.verify_mode = ssl.CERT_REQUIRED
    except (ssl.SSLError, ValueError, OSError) as error:
        where = f"{settings.cert_file}, {settings.key_file}"
        reason = getattr(error, "reason", None) or str(error)
        raise TLSFilesError(f"{where}: not a usable certificate and key: {reason}") from None
    return context


_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def certificate_fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the first certificate's DER, hex: what a client computes from `getpeercert(True)`."""
    match = _PEM_BLOCK.search(cert_pem)
    if match is None:
        raise TLSFilesError("no PEM certificate found")
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(match.group(0).decode("ascii"))).hexdigest()


class CertReloader:
    """Owns the listening context and swaps in a new certificate when the files change.

    `context` is what the server listens with; `reload_if_changed` (called by `run`, or by hand) re-reads
    the files and, if their digest moved and they make a valid context, serves them to new handshakes.
    """

    def __init__(self, settings: TLSSettings, *, on_reload: Callable[[bool], None] | None = None) -> None:
        self._settings = settings
        self._on_reload = on_reload
        material = read_material(settings)
        self._current = build_context(material, settings=settings)
        self._digest = material.digest
        self._fingerprint = certificate_fingerprint(material.cert_pem)
        self.context = self._current
        self.context.sni_callback = self._select_context

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate new handshakes get."""
        return self._fingerprint

    def _select_context(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        current = self._current
        if connection.context is not current:
            connection.context = current

    def reload_if_changed(self) -> bool:
        """Re-read the files; return True when a new certificate is now served."""
        try:
            material = read_material(self._settings)
        except TLSFilesError as error:
            logger.warning("tls reload skipped: %s", error)
            return False
        if material.digest == self._digest:
            return False
        try:
            context = build_context(material, settings=self._settings)
        except TLSFilesError as error:
            # Mid-rotation (new cert, old key) or a bad Secret: keep serving the last good pair.
            logger.warning("tls reload failed, still serving fingerprint=%s: %s", self._fingerprint, error)
            if self._on_reload is not None:
                self._on_reload(False)
            return False
        try:
            fingerprint = certificate_fingerprint(material.cert_pem)
        except TLSFilesError:
            fingerprint = "unknown"
        self._current = context
        self._digest = material.digest
        self._fingerprint = fingerprint
        logger.info("tls certificate reloaded fingerprint=%s", self._fingerprint)
        if self._on_reload is not None:
            self._on_reload(True)
        return True

    async def run(self) -> None:
        """Poll until cancelled."""
        interval = max(self._settings.poll_seconds, 0.05)
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.reload_if_changed)
