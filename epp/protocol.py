"""The GIE endpoint-picker protocol's names and the metadata the proxy sends (pure; no I/O).

From the Gateway API Inference Extension's `docs/proposals/004-endpoint-picker-protocol` and the llm-d
router's EPP (`pkg/epp/metadata`):
- the pick: header `x-gateway-destination-endpoint` and the same value in the response's dynamic metadata
  under namespace `envoy.lb`; the value is one `IP:PORT` or a comma list (the proxy uses the first valid
  one and walks the rest on retries);
- the subset hint, request path: filter metadata `envoy.lb.subset_hint` ->
  `x-gateway-destination-endpoint-subset`, a list of `IP:PORT` strings (a comma-joined string too, as
  Envoy's header-to-metadata filter writes it). Set and empty, nothing may be picked: 503;
- the served endpoint, response path: metadata `envoy.lb` -> `x-gateway-destination-endpoint-served`.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2

from epp.endpoints import Endpoint, EndpointSyntaxError, parse_endpoint

DESTINATION_HEADER = "x-gateway-destination-endpoint"
METADATA_NAMESPACE = "envoy.lb"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
SERVED_KEY = "x-gateway-destination-endpoint-served"

_CACHED_SUBSETS = 1024


@dataclass(frozen=True, slots=True)
class Subset:
    """The endpoints a request may go to: exact `IP:PORT` entries, and bare IPs (any port of that address)."""

    endpoints: frozenset[Endpoint]
    hosts: frozenset[str]
    listed: int  # entries the hint carried, valid or not

    def admits(self, endpoint: Endpoint) -> bool:
        return endpoint in self.endpoints or endpoint.host in self.hosts

    def describe(self) -> str:
        names = sorted(map(str, self.endpoints)) + sorted(self.hosts)
        shown = ",".join(names[:4]) + (",..." if len(names) > 4 else "")
        return f"{self.listed} listed ({shown or 'none valid'})"


def parse_subset(entries: tuple[str, ...]) -> Subset:
    """A subset from the hint's entries; entries that are neither `IP:PORT` nor an IP are left out."""
    endpoints: set[Endpoint] = set()
    hosts: set[str] = set()
    for entry in entries:
        text = entry.strip()
        if not text:
            continue
        try:
            endpoints.add(parse_endpoint(text))
            continue
        except EndpointSyntaxError:
            pass
        try:  # a bare address: every port of it
            hosts.add(parse_endpoint(f"[{text.strip('[]')}]:1").host)
        except EndpointSyntaxError:
            continue
    return Subset(frozenset(endpoints), frozenset(hosts), len(entries))


class SubsetReader:
    """Reads the subset hint of a request's metadata; parsed hints are remembered (they repeat)."""

    def __init__(self) -> None:
        self._parsed: dict[tuple[str, ...], Subset] = {}

    def read(self, metadata: base_pb2.Metadata) -> Subset | None:
        """The hint, or None when the request carries none (then every endpoint may be picked)."""
        namespace = metadata.filter_metadata.get(SUBSET_NAMESPACE)
        if namespace is None:
            return None
        value = namespace.fields.get(SUBSET_KEY)
        if value is None:
            return None
        kind = value.WhichOneof("kind")
        if kind == "list_value":
            entries = tuple(v.string_value for v in value.list_value.values if v.HasField("string_value"))
        elif kind == "string_value":
            entries = tuple(part for part in value.string_value.split(",") if part.strip())
        else:
            entries = ()
        subset = self._parsed.get(entries)
        if subset is None:
            if len(self._parsed) >= _CACHED_SUBSETS:
                self._parsed.clear()
            subset = self._parsed[entries] = parse_subset(entries)
        return subset


def read_served(metadata: base_pb2.Metadata) -> str | None:
    """The endpoint the proxy reports it served the request from, or None."""
    namespace = metadata.filter_metadata.get(METADATA_NAMESPACE)
    if namespace is None:
        return None
    value = namespace.fields.get(SERVED_KEY)
    if value is None or not value.HasField("string_value"):
        return None
    return value.string_value or None


def join_endpoints(endpoints: tuple[Endpoint, ...]) -> str:
    """The pick as the header and the metadata carry it: primary first, then the fallbacks."""
    return ",".join(map(str, endpoints))
