"""The control plane for a test session or module: started with the real CRDs, or the tests skip.

Without the control plane binaries or CRD files (build them with `tests/e2e/controlplane/build.sh`) the
tests skip with one line; with EXTPROC_GUARD_REQUIRE_E2E=1 (as CI sets it) they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.e2e.cluster import (
    BUILD_SCRIPT,
    REQUIRE_ENV,
    ControlPlane,
    ControlPlaneError,
    ControlPlaneInfo,
    find_bin_dir,
    install_crds,
    missing_binaries,
    missing_crd_files,
)
from tests.polling import WaitFailed


def skip_or_fail(reason: str) -> None:
    """Skip the e2e tests, or fail them when the environment requires them to run."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 requires the e2e tests to run)", pytrace=False)
    pytest.skip(reason)


@contextmanager
def running_control_plane() -> Iterator[ControlPlaneInfo]:
    """etcd + kube-apiserver on loopback with the CRDs the tests use Established; torn down on exit."""
    bin_dir = find_bin_dir()
    missing = missing_binaries(bin_dir) + missing_crd_files(bin_dir)
    if missing:
        skip_or_fail(f"control plane build outputs missing ({', '.join(missing)}): run {BUILD_SCRIPT.name}")
    plane = ControlPlane(bin_dir)
    try:
        info = plane.start()
        try:
            install_crds(info.kubectl, bin_dir / "crds")
        except (ControlPlaneError, WaitFailed) as error:
            raise ControlPlaneError(f"{error}\n{plane.log_tails()}") from error
        yield info
    finally:
        plane.stop()
