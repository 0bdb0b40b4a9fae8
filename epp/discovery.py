"""Live endpoints from Kubernetes: the EndpointSlices of a Service, or Pods by label selector.

The Kubernetes client is synchronous, so list + watch runs in a `kube.informer.Informer` thread that hands
each new endpoint set to the event loop. Watches are bounded (`timeout_seconds`) and resume from the last
resourceVersion; a 410 lists again at once, any other error after a back-off (from `backoff` doubling up to
`backoff_max`). Cancelling `run()` interrupts the open watch and waits (bounded) for the thread. The client
comes from `kube.client.build_api_client`: `kubeconfig`, else in-cluster, else `KUBECONFIG`, else
`~/.kube/config`.

Pods also give each endpoint's engine type, from the label `llm-d.ai/engine-type` (which metric names its
load is read from); EndpointSlices carry no pod labels, so their endpoints use the default engine.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epp.endpoints import Endpoint, EndpointSyntaxError, parse_endpoint
from epp.engines import ENGINE_LABEL
from kube.client import build_api_client
from kube.informer import Change, Informer, InformerLog, InformerSettings

logger = logging.getLogger(__name__)

Targets = dict[Endpoint, str]
"""Endpoints with their engine-type labels ("" when the source gives none)."""
Publish = Callable[[tuple[Endpoint, ...], Targets], None]
Found = frozenset[tuple[Endpoint, str]]
"""The endpoints one EndpointSlice or Pod contributes, each with its engine-type label."""

STOP_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class KubeDiscoverySettings:
    namespace: str
    service: str | None = None  # EndpointSlices labelled kubernetes.io/service-name=SERVICE
    selector: str | None = None  # Pods matching this label selector (as an InferencePool selects them)
    target_port: int | None = None  # required with `selector`; with `service`, picks the slice port
    port_name: str | None = None  # with `service`: the slice port of this name
    kubeconfig: str | None = None  # None: in-cluster config, then KUBECONFIG, then ~/.kube/config
    watch_timeout: int = 30  # seconds a watch may stay open before it is renewed
    backoff: float = 1.0  # first wait before a relist after an error; doubles up to `backoff_max`
    backoff_max: float = 30.0


def endpoints_from_slices(
    slices: Iterable[Mapping[str, Any]], settings: KubeDiscoverySettings
) -> set[Endpoint]:
    """Ready addresses of the given EndpointSlice objects (plain dicts), with the matching port."""
    return set(targets_from_slices(slices, settings))


def targets_from_slices(slices: Iterable[Mapping[str, Any]], settings: KubeDiscoverySettings) -> Targets:
    found: Targets = {}
    for item in slices:
        port = _slice_port(item.get("ports") or [], settings)
        if port is None:
            continue
        for entry in item.get("endpoints") or []:
            if (entry.get("conditions") or {}).get("ready") is False:
                continue
            for address in entry.get("addresses") or []:
                endpoint = _endpoint(address, port)
                if endpoint:
                    found[endpoint] = ""
    return found


def endpoints_from_pods(pods: Iterable[Mapping[str, Any]], settings: KubeDiscoverySettings) -> set[Endpoint]:
    """Running, ready Pods' IPs with the target port."""
    return set(targets_from_pods(pods, settings))


def targets_from_pods(pods: Iterable[Mapping[str, Any]], settings: KubeDiscoverySettings) -> Targets:
    """Running, ready Pods' IPs with the target port, and each pod's engine-type label."""
    found: Targets = {}
    if settings.target_port is None:
        return found
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Running" or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )
        endpoint = _endpoint(status.get("podIP") or "", settings.target_port) if ready else None
        if endpoint:
            engine = ((pod.get("metadata") or {}).get("labels") or {}).get(ENGINE_LABEL)
            found[endpoint] = engine if isinstance(engine, str) else ""
    return found


def _slice_port(ports: list[Mapping[str, Any]], settings: KubeDiscoverySettings) -> int | None:
    for port in ports:
        if settings.port_name is not None and port.get("name") != settings.port_name:
            continue
        if settings.target_port is not None and port.get("port") != settings.target_port:
            continue
        number = port.get("port")
        return number if isinstance(number, int) else None
    return None


def _endpoint(address: str, port: int) -> Endpoint | None:
    try:
        return parse_endpoint(f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
    except EndpointSyntaxError:
        return None


class KubeDiscovery:
    """Owns one `kube.informer.Informer` on the chosen collection; `run()` keeps it going until cancelled."""

    def __init__(self, settings: KubeDiscoverySettings, publish: Publish) -> None:
        if (settings.service is None) == (settings.selector is None):
            raise ValueError("give exactly one of a Service name or a Pod label selector")
        if settings.selector is not None and settings.target_port is None:
            raise ValueError("a Pod label selector needs a target port")
        self._settings = settings
        self._publish = publish

    async def run(self) -> None:
        """Build the client (raises `KubeConfigError`), then follow the collection until cancelled."""
        loop = asyncio.get_running_loop()
        kubeconfig = Path(self._settings.kubeconfig) if self._settings.kubeconfig else None
        api = await asyncio.to_thread(build_api_client, kubeconfig=kubeconfig)

        def publish(found: Found) -> None:
            targets = dict(sorted(found))
            loop.call_soon_threadsafe(self._publish, tuple(targets), targets)

        informer = self._informer(api, publish)
        informer.start()
        try:
            await asyncio.Event().wait()
        finally:
            informer.request_stop()
            await asyncio.to_thread(informer.join, STOP_TIMEOUT_SECONDS)

    def _informer(self, api: Any, publish: Callable[[Found], None]) -> Informer[str, Found]:
        from kubernetes import client

        settings = self._settings
        call: Callable[..., Any]
        convert: Callable[[Iterable[Mapping[str, Any]], KubeDiscoverySettings], Targets]
        if settings.service is not None:
            selector = f"kubernetes.io/service-name={settings.service}"
            call = functools.partial(
                client.DiscoveryV1Api(api).list_namespaced_endpoint_slice,
                settings.namespace,
                label_selector=selector,
            )
            convert = targets_from_slices
            what = f"endpointslices of service {settings.namespace}/{settings.service}"
        else:
            selector = settings.selector or ""
            call = functools.partial(
                client.CoreV1Api(api).list_namespaced_pod, settings.namespace, label_selector=selector
            )
            convert = targets_from_pods
            what = f"pods {selector!r} in namespace {settings.namespace}"

        def decode(obj: Mapping[str, Any]) -> tuple[str, Found] | None:
            # Each object is kept as the endpoints it contributes, nothing more.
            name = (obj.get("metadata") or {}).get("name")
            return (name, frozenset(convert([obj], settings).items())) if isinstance(name, str) else None

        published: Found | None = None

        def publish_if_new(items: Mapping[str, Found]) -> Found:
            nonlocal published
            found: Found = frozenset().union(*items.values())
            if found != published:
                published = found
                publish(found)
            return found

        def on_listed(items: Mapping[str, Found], _changes: Sequence[Change[str, Found]], _: str) -> None:
            found = publish_if_new(items)
            logger.info("discovery listed source=%r endpoints=%d", what, len(found))

        def on_event(_change: Change[str, Found], _version: str) -> None:
            publish_if_new(informer.items())

        label = what.replace("%", "%%")
        informer: Informer[str, Found] = Informer(
            name="epp-kube-watch",
            call=call,
            decode=decode,
            on_listed=on_listed,
            on_event=on_event,
            settings=InformerSettings(
                watch_timeout_seconds=settings.watch_timeout,
                backoff_initial_seconds=settings.backoff,
                backoff_max_seconds=max(settings.backoff, settings.backoff_max),
            ),
            log=InformerLog(
                logger=logger,
                watch_expired=f"discovery watch expired (410 Gone) source={label!r}, listing again",
                list_expired=f"discovery list expired (410 Gone) source={label!r}, listing again",
                retrying=f"discovery source={label!r}: %s; relisting in %.1fs",
            ),
        )
        return informer
