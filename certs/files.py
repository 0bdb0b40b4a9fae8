"""A certificate directory: `ca.crt`, `ca.key`, `tls.crt`, `tls.key`.

Files are replaced atomically (write a temporary file beside them, then rename), so a server that polls
their hash never reads half a certificate. Private keys are 0600; certificates 0644. A file whose content
is already right is not rewritten, so running the same command twice changes nothing.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

from certs.rotation import StoredCerts

logger = logging.getLogger(__name__)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"

KEY_MODE = 0o600
CERT_MODE = 0o644


def read_cert_dir(folder: Path) -> StoredCerts:
    """What the directory holds; a missing directory holds nothing."""
    return StoredCerts(
        ca_bundle=_read(folder / CA_CERT),
        ca_key=_read(folder / CA_KEY),
        serving_cert=_read(folder / TLS_CERT),
        serving_key=_read(folder / TLS_KEY),
    )


def write_cert_dir(folder: Path, certs: StoredCerts) -> list[str]:
    """Write every non-None member whose content or mode differs; return the names written.

    Keys are written before their certificates, so a reader never pairs a new certificate with an old key
    for longer than one rename.
    """
    folder.mkdir(parents=True, exist_ok=True)
    plan = [
        (CA_KEY, certs.ca_key, KEY_MODE),
        (CA_CERT, certs.ca_bundle, CERT_MODE),
        (TLS_KEY, certs.serving_key, KEY_MODE),
        (TLS_CERT, certs.serving_cert, CERT_MODE),
    ]
    written = []
    for name, content, mode in plan:
        if content is not None and _write_if_changed(folder / name, content, mode):
            written.append(name)
    return written


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_if_changed(path: Path, content: bytes, mode: int) -> bool:
    try:
        same = path.read_bytes() == content and stat.S_IMODE(path.stat().st_mode) == mode
    except FileNotFoundError:
        same = False
    if same:
        return False
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("wrote %s (mode %o)", path, mode)
    return True
