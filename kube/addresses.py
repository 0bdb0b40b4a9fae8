"""The one Service decoder: a Service object -> the address a STATIC cluster can pin, or why there is none.

Both ways the `kubernetes` client hands a Service over are accepted: a `V1Service` model (the resolver's
GET) and plain JSON (the cache's list and watch). A model is first turned into the JSON it stands for, so
there is one set of rules:

- ClusterIP, NodePort, LoadBalancer: `spec.clusterIP` and the `spec.ports[].port` numbers.
- Headless (`clusterIP: None`, or none at all): `ServiceNotFound`, nothing to pin.
- ExternalName: `ServiceNotFound`, it is a DNS name (`spec.externalName`), not an IP.
- No spec: `ServiceNotFound`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policies import ServiceAddress, ServiceLookupError, ServiceNotFound, ServiceRef


def address_of(ref: ServiceRef, service: Any) -> ServiceAddress | ServiceLookupError:
    """A Service (`V1Service` or plain JSON) -> its ClusterIP and ports, or why STATIC cannot use it."""
    document = plain_json(service)
    spec = document.get("spec") if isinstance(document, Mapping) else None
    if not isinstance(spec, Mapping):
        return ServiceNotFound(ref, "has no spec")
    if spec.get("type") == "ExternalName":
        target = spec.get("externalName")
        named = f" (it names {target})" if isinstance(target, str) and target else ""
        return ServiceNotFound(ref, f"is an ExternalName Service{named}, so it has no ClusterIP to pin")
    cluster_ip = spec.get("clusterIP")
    if not isinstance(cluster_ip, str) or not cluster_ip or cluster_ip == "None":
        return ServiceNotFound(ref, "is headless (no ClusterIP), so no STATIC address can point at it")
    ports = tuple(
        port["port"]
        for port in spec.get("ports") or ()
        if isinstance(port, Mapping) and isinstance(port.get("port"), int) and port["port"] > 0
    )
    return ServiceAddress(cluster_ip=cluster_ip, ports=ports)


def ref_of(service: Any) -> ServiceRef | None:
    """The namespace/name a Service object (model or plain JSON) carries, or None when it lacks one."""
    document = plain_json(service)
    metadata = document.get("metadata") if isinstance(document, Mapping) else None
    if not isinstance(metadata, Mapping):
        return None
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str):
        return None
    return ServiceRef(namespace, name)


def plain_json(value: Any) -> Any:
    """A `kubernetes` model (anything with the generated `attribute_map`) as the JSON it stands for, with
    the API's camelCase keys and unset fields left out; plain JSON is returned as it is."""
    attribute_map = getattr(value, "attribute_map", None)
    if isinstance(attribute_map, Mapping) and not isinstance(value, Mapping):
        return {
            key: plain_json(field)
            for attribute, key in attribute_map.items()
            if (field := getattr(value, attribute, None)) is not None
        }
    if isinstance(value, list | tuple):
        return [plain_json(item) for item in value]
    return value
