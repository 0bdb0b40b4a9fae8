"""What `--version` prints: the package's version and, for the EPP, the ext_proc protocol it serves."""

from __future__ import annotations

import platform

DISTRIBUTION = "extproc-guard"


def package_version() -> str:
    """The installed distribution's version; `unknown` when run from a source tree that was not installed."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def version_text() -> str:
    """`extproc-guard --version`: the version, the Python, and which build of the engine is loaded."""
    from policies.build import engine_build

    return f"{DISTRIBUTION} {package_version()} (Python {platform.python_version()}, {engine_build()} engine)"


def epp_version_text() -> str:
    """`extproc-guard epp --version`: the version, and the gRPC method Envoy's ext_proc filter calls."""
    from importlib import metadata

    from envoy.service.ext_proc.v3 import external_processor_pb2

    from epp.processor import METHOD_NAME, SERVICE_NAME

    # The method as the proto defines it (from xds-protos), not only as the EPP spells it.
    service = external_processor_pb2.DESCRIPTOR.services_by_name[SERVICE_NAME.rpartition(".")[2]]
    method = service.methods_by_name[METHOD_NAME]
    try:
        protos = f"xds-protos {metadata.version('xds-protos')}"
    except metadata.PackageNotFoundError:
        protos = "xds-protos (version unknown)"
    return (
        f"{DISTRIBUTION} epp {package_version()}\n"
        f"protocol: Envoy ext_proc v3, gRPC {service.full_name}/{method.name} (bidirectional stream), "
        f"plaintext HTTP/2 (h2c) or TLS; health: grpc.health.v1.Health/Check\n"
        f"protos: {protos}"
    )
