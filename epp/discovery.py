"""Live endpoints from Kubernetes: the EndpointSlices of a Service, or Pods by label selector.

The Kubernetes client is synchronous, so list+watch runs in a daemon thread that hands each new endpoint
set to the event loop. Watches are bounded (`timeout_seconds`), a 410 or any error leads to a fresh list
after a short back-off, and the thread stops at its next event or watch timeout once asked to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from epp.endpoints import Endpoint, EndpointSyntaxError, parse_endpoint

logger = logging.getLogger(__name__)

Publish = Callable[[tuple[Endpoint, ...]], None]


@dataclass(frozen=True, slots=True)
class KubeDiscoverySettings:
    namespace: str
    service: str | None = None  # EndpointSlices labelled kubernetes.io/service-name=SERVICE
    selector: str | None = None  # Pods matching this label selector (as an InferencePool selects them)
    target_port: int | None = None  # required with `selector`; with `service`, picks the slice port
    port_name: str | None = None  # with `service`: the slice port of this name
    kubeconfig: str | None = None  # None: in-cluster config, then the default kubeconfig
    watch_timeout: int = 30  # seconds a watch may stay open before it is renewed
    backoff: float = 1.0


def endpoints_from_slices(
    slices: Iterable[Mapping[str, Any]], settings: KubeDiscoverySettings
) -> set[Endpoint]:
    """Ready addresses of the given EndpointSlice objects (plain dicts), with the matching port."""
    found: set[Endpoint] = set()
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
                    found.add(endpoint)
    return found


def endpoints_from_pods(pods: Iterable[Mapping[str, Any]], settings: KubeDiscoverySettings) -> set[Endpoint]:
    """Running, ready Pods' IPs with the target port."""
    found: set[Endpoint] = set()
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
            found.add(endpoint)
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
    """Owns one watch thread; `run()` keeps it going until cancelled."""

    def __init__(self, settings: KubeDiscoverySettings, publish: Publish) -> None:
        if (settings.service is None) == (settings.selector is None):
            raise ValueError("give exactly one of a Service name or a Pod label selector")
        if settings.selector is not None and settings.target_port is None:
            raise ValueError("a Pod label selector needs a target port")
        self._settings = settings
        self._publish = publish
        self._stop = threading.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        api = await asyncio.to_thread(self._load_client)

        def publish(found: set[Endpoint]) -> None:
            loop.call_soon_threadsafe(self._publish, tuple(sorted(found)))

        thread = threading.Thread(target=self._loop, args=(api, publish), name="epp-kube-watch", daemon=True)
        thread.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()

    def _load_client(self) -> Any:
        from kubernetes import client
        from kubernetes import config as kube_config

        config: Any = kube_config
        if self._settings.kubeconfig:
            return config.new_client_from_config(config_file=self._settings.kubeconfig)
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return client.ApiClient()

    def _loop(self, api: Any, publish: Callable[[set[Endpoint]], None]) -> None:
        from kubernetes import client, watch
        from kubernetes.client.exceptions import ApiException

        settings = self._settings
        lister: Any
        convert: Callable[[Iterable[Mapping[str, Any]], KubeDiscoverySettings], set[Endpoint]]
        if settings.service is not None:
            lister = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice
            selector = f"kubernetes.io/service-name={settings.service}"
            convert = endpoints_from_slices
            what = f"endpointslices of service {settings.namespace}/{settings.service}"
        else:
            lister = client.CoreV1Api(api).list_namespaced_pod
            selector = settings.selector or ""
            convert = endpoints_from_pods
            what = f"pods {selector!r} in namespace {settings.namespace}"
        while not self._stop.is_set():
            try:
                response = lister(settings.namespace, label_selector=selector, _preload_content=False)
                listed = json.loads(response.data)
                objects = {_key(o): o for o in listed.get("items") or []}
                version = (listed.get("metadata") or {}).get("resourceVersion")
                current = convert(objects.values(), settings)
                logger.info("discovery listed source=%r endpoints=%d", what, len(current))
                publish(current)
                while not self._stop.is_set():
                    watcher: Any = watch.Watch()  # type: ignore[no-untyped-call]
                    for event in watcher.stream(
                        lister,
                        settings.namespace,
                        label_selector=selector,
                        resource_version=version,
                        timeout_seconds=settings.watch_timeout,
                        allow_watch_bookmarks=True,
                        _request_timeout=settings.watch_timeout + 5,
                    ):
                        if self._stop.is_set():
                            watcher.stop()
                            break
                        obj = event["raw_object"]
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if event["type"] == "ERROR":
                            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                        if event["type"] == "BOOKMARK":
                            continue
                        if event["type"] == "DELETED":
                            objects.pop(_key(obj), None)
                        else:
                            objects[_key(obj)] = obj
                        found = convert(objects.values(), settings)
                        if found != current:
                            current = found
                            publish(current)
            except ApiException as exc:
                level = logging.INFO if exc.status == 410 else logging.WARNING
                logger.log(
                    level, "discovery relist source=%r status=%s reason=%s", what, exc.status, exc.reason
                )
            except Exception as exc:
                logger.warning("discovery relist source=%r error=%r", what, exc)
            self._stop.wait(settings.backoff)


def _key(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name"))
