"""Model-server endpoints: an IP address and a port, as the gateway's ORIGINAL_DST cluster needs them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


class EndpointSyntaxError(ValueError):
    """An endpoint string is not `IP:PORT`; the message is one plain sentence."""


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self}/metrics"


def parse_endpoint(text: str) -> Endpoint:
    """Parse `IP:PORT` (`[IPv6]:PORT` for IPv6). Host names are refused: the gateway routes to an address."""
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text:
        raise EndpointSyntaxError(f"endpoint {text!r} is not IP:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise EndpointSyntaxError(
            f"endpoint {text!r}: {host!r} is not an IP address (the gateway routes to IP:PORT)"
        ) from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise EndpointSyntaxError(f"endpoint {text!r}: port {port_text!r} is not in 1..65535")
    return Endpoint(str(address), int(port_text))


def parse_endpoints(text: str) -> tuple[Endpoint, ...]:
    """Parse a comma-separated list of endpoints; duplicates are dropped, order is kept."""
    seen: dict[Endpoint, None] = {}
    for item in text.split(","):
        if item.strip():
            seen.setdefault(parse_endpoint(item), None)
    return tuple(seen)
