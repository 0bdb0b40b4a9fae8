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
from policies.context import service_address


def address_of(ref: ServiceRef, service: Any) -> ServiceAddress | ServiceLookupError:
    """A Service (`V1Service` or plain JSON) -> its ClusterIP and ports, or why STATIC cannot use it
    (the engine's one decoder, `policies.context.service_address`, on the object's JSON)."""
    document = plain_json(service)
    if not isinstance(document, Mapping):
        return ServiceNotFound(ref, "has no spec")
    return service_address(ref, document)


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
