"""Flags every command shares: `--service`, `--kubeconfig`, `--policy`, and the objects built from them.

`check`, `fix`, `serve` and `reconcile` all answer "what is this Service's ClusterIP" and all run a policy,
so they parse those flags the same way: `add_resolver_arguments` / `add_policy_argument` add them,
`build_resolver` and `load_policy_file` turn the parsed values into the objects the engine is handed.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from policies import (
    ChainResolver,
    ServiceAddress,
    ServiceRef,
    ServiceResolver,
    StaticResolver,
)

if TYPE_CHECKING:
    from policies import Policy

logger = logging.getLogger(__name__)

SERVICE_ARG_FORM = "NAMESPACE/NAME=CLUSTER_IP[:PORT]"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
POLICY_FILE_LIMIT = 1024 * 1024


class SettingsError(Exception):
    """A flag value that cannot be used; the message is one plain sentence for the user."""


class ServiceArgError(SettingsError):
    """A `--service` value that is not NAMESPACE/NAME=CLUSTER_IP[:PORT]."""


def parse_service_arg(text: str) -> tuple[ServiceRef, ServiceAddress]:
    """Parse ``NS/NAME=IP[:PORT]`` (IPv6 as ``[addr]:port`` or bare) into a Service and its address."""
    ref_text, sep, address_text = text.partition("=")
    if not sep:
        raise ServiceArgError(f"{text!r} is not {SERVICE_ARG_FORM} (missing '=')")
    namespace, slash, name = ref_text.strip().partition("/")
    if not slash:
        raise ServiceArgError(f"{text!r} is not {SERVICE_ARG_FORM} (missing '/' between namespace and name)")
    for what, value in (("namespace", namespace), ("name", name)):
        if not _DNS_LABEL.fullmatch(value):
            raise ServiceArgError(f"{text!r}: {what} {value!r} is not a DNS-1123 label")
    ip_text, port = _split_host_port(address_text.strip(), text)
    try:
        ip = ipaddress.ip_address(ip_text)
    except ValueError:
        raise ServiceArgError(f"{text!r}: {ip_text!r} is not an IP address (a ClusterIP is needed)") from None
    ports = (port,) if port is not None else ()
    return ServiceRef(namespace, name), ServiceAddress(cluster_ip=str(ip), ports=ports)


def _split_host_port(address: str, text: str) -> tuple[str, int | None]:
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket:
            raise ServiceArgError(f"{text!r}: missing ']' after the IPv6 address")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ServiceArgError(f"{text!r}: expected ':PORT' after ']'")
        return host, _parse_port(rest[1:], text)
    if address.count(":") == 1:
        host, _, port_text = address.partition(":")
        return host, _parse_port(port_text, text)
    return address, None


def _parse_port(port_text: str, text: str) -> int:
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ServiceArgError(f"{text!r}: port {port_text!r} is not a number from 1 to 65535")
    return int(port_text)


def service_arg_type(text: str) -> tuple[ServiceRef, ServiceAddress]:
    """`argparse` type for `--service`: a bad value becomes a one-line usage error."""
    try:
        return parse_service_arg(text)
    except ServiceArgError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def port_arg_type(text: str) -> int:
    """`argparse` type for a listening port (`serve`, `reconcile`): 0 to 65535, as digits."""
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 0 to 65535")
    return int(text)


def print_error(message: str) -> None:
    sys.stderr.write(f"extproc-guard: error: {message}\n")


def merge_services(
    pairs: Iterable[tuple[ServiceRef, ServiceAddress]],
) -> dict[ServiceRef, ServiceAddress]:
    """Collect repeated `--service` values; the same Service given twice keeps every port, last IP wins."""
    services: dict[ServiceRef, ServiceAddress] = {}
    for ref, address in pairs:
        previous = services.get(ref)
        if previous is not None and previous.cluster_ip == address.cluster_ip:
            ports = tuple(dict.fromkeys(previous.ports + address.ports))
            address = ServiceAddress(cluster_ip=address.cluster_ip, ports=ports)
        services[ref] = address
    return services


@dataclass(frozen=True, slots=True)
class ResolverSettings:
    """Where ClusterIPs come from: static `--service` answers first, then the cluster if configured."""

    services: Mapping[ServiceRef, ServiceAddress]
    kubeconfig: Path | None = None
    context: str | None = None
    in_cluster: bool = False


def add_resolver_arguments(parser: argparse.ArgumentParser, *, live: bool = True) -> None:
    """Add `--service` (repeatable) and, when `live`, `--kubeconfig` / `--context` / `--in-cluster`."""
    parser.add_argument(
        "--service",
        dest="services",
        metavar=SERVICE_ARG_FORM,
        action="append",
        type=service_arg_type,
        default=[],
        help="a Service's ClusterIP (and port) for offline runs; repeatable",
    )
    if not live:
        return
    parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        type=Path,
        help="look up Services not given with --service in this cluster (read-only GET)",
    )
    parser.add_argument("--context", metavar="NAME", help="kubeconfig context to use (default: current)")
    parser.add_argument(
        "--in-cluster",
        action="store_true",
        help="look up Services with the pod's service account (when running inside the cluster)",
    )


def resolver_settings_from_args(args: argparse.Namespace) -> ResolverSettings:
    pairs: list[tuple[ServiceRef, ServiceAddress]] = list(getattr(args, "services", None) or [])
    return ResolverSettings(
        services=merge_services(pairs),
        kubeconfig=getattr(args, "kubeconfig", None),
        context=getattr(args, "context", None),
        in_cluster=bool(getattr(args, "in_cluster", False)),
    )


def build_resolver(settings: ResolverSettings) -> ServiceResolver:
    """The resolver the engine is handed; raises `SettingsError` for an unusable kubeconfig.

    The cluster is asked only with `--kubeconfig` or `--in-cluster`. The client comes from
    `kube.client.build_api_client`: the `--kubeconfig` file, else in-cluster, else `KUBECONFIG`, else
    `~/.kube/config` (so `--in-cluster` outside a pod falls back to the usual kubeconfig)."""
    static = StaticResolver(settings.services)
    if settings.kubeconfig is None and not settings.in_cluster:
        return static
    from kube.client import KubeConfigError
    from kube.resolver import build_kube_resolver

    try:
        live = build_kube_resolver(kubeconfig=settings.kubeconfig, context=settings.context)
    except KubeConfigError as exc:
        raise SettingsError(str(exc)) from None
    return ChainResolver((static, live))


def add_policy_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        metavar="FILE",
        type=Path,
        help="policy file (default: the built-in policy, the headers-epp profile)",
    )


def load_policy_file(path: Path | None) -> Policy:
    """Read `--policy FILE` (or return the built-in policy); raises `SettingsError` with one line."""
    # The policy model (pydantic) loads here, when a command runs, not when the CLI lists its flags.
    from policies import PolicyFileError, default_policy, load_policy

    if path is None:
        return default_policy()
    try:
        with path.open("rb") as handle:
            raw = handle.read(POLICY_FILE_LIMIT + 1)
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the policy file: {exc.strerror or exc}") from None
    if len(raw) > POLICY_FILE_LIMIT:
        raise SettingsError(f"{path}: the policy file is larger than {POLICY_FILE_LIMIT} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: the policy file is not UTF-8 text") from None
    try:
        return load_policy(text, source=str(path))
    except PolicyFileError as exc:
        raise SettingsError(_one_line(str(exc))) from None


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())
