"""The reconciler's reads and writes on the Kubernetes API, as plain JSON objects.

Every call here blocks (the `kubernetes` client is synchronous): the reconciler runs them with
`asyncio.to_thread`. Lists are read a page at a time (`list_page`), so a caller can finish with one page
before it asks for the next and never holds more than one page of objects. EnvoyFilters, Leases, Events
and PolicyReports all go through `CustomObjectsApi`, which addresses any `/apis/GROUP/VERSION` resource
and keeps objects as plain dicts, the shape the policy engine reads. Errors become three small exceptions:
`ConflictError` (a precondition failed: 409, or a 422 from a JSON Patch `test` op on a resourceVersion
that moved on), `NotFoundError` (404) and `KubeAPIError` (anything else).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kube.client import KubeConfigError as KubeConfigError
from kube.client import build_api_client as build_api_client
from policies import PatchOp

logger = logging.getLogger(__name__)

LIST_PAGE_SIZE = 250
JSON_PATCH = "application/json-patch+json"


@dataclass(frozen=True, slots=True)
class Resource:
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


ENVOY_FILTERS = Resource("networking.istio.io", "v1alpha3", "envoyfilters")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
EVENTS = Resource("events.k8s.io", "v1", "events")
POLICY_REPORTS = Resource("wgpolicyk8s.io", "v1alpha2", "policyreports")


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list: its objects and the token for the next page (None = this was the last)."""

    items: list[dict[str, Any]]
    next_token: str | None


class KubeAPIError(Exception):
    """A request the API refused or could not answer; `status` is the HTTP status (0 = no answer)."""

    def __init__(self, what: str, status: int, reason: str) -> None:
        super().__init__(f"{what}: {reason}" if not status else f"{what}: {status} {reason}")
        self.status = status
        self.reason = reason


class ConflictError(KubeAPIError):
    """A write whose precondition (resourceVersion) no longer holds: someone else wrote first."""


class NotFoundError(KubeAPIError):
    """The object does not exist (404)."""


def _message(error: ApiException) -> str:
    """The Status message the apiserver put in the body, else the HTTP reason."""
    body = getattr(error, "body", None)
    if body:
        try:
            status = json.loads(body)
        except (ValueError, TypeError):
            status = None
        if isinstance(status, Mapping) and isinstance(status.get("message"), str):
            return " ".join(str(status["message"]).split())[:300]
    return str(getattr(error, "reason", "") or "error")


def _translate(what: str, error: Exception) -> KubeAPIError:
    if isinstance(error, ApiException):
        status = int(error.status or 0)
        reason = _message(error)
        if status == 404:
            return NotFoundError(what, status, reason)
        if status == 409:
            return ConflictError(what, status, reason)
        return KubeAPIError(what, status, reason)
    text = " ".join(str(error).split())[:200]
    return KubeAPIError(what, 0, f"the API is unreachable ({type(error).__name__}: {text})")


def _as_object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise KubeAPIError(what, 0, f"the API answered a {type(value).__name__}, not an object")
    return value


def object_ref(obj: Mapping[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def resource_version(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("resourceVersion") or "")


class KubeObjects:
    """Blocking reads and writes of the objects the reconciler touches, on one `ApiClient`."""

    def __init__(
        self, api_client: Any, *, field_manager: str, timeout: float = 15.0, page_size: int = LIST_PAGE_SIZE
    ) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        self._field_manager = field_manager
        self._timeout = timeout
        self._page_size = page_size

    def _request(self, what: str, call: Callable[..., object], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One API call with this client's timeout; its failure or a non-object answer as a `KubeAPIError`."""
        try:
            answer = call(*args, _request_timeout=self._timeout, **kwargs)
        except Exception as error:
            raise _translate(what, error) from None
        return _as_object(answer, what)

    # -- generic -----------------------------------------------------------------------------------
    def list_page(self, resource: Resource, namespace: str | None, token: str | None = None) -> Page:
        """One page of `resource` in `namespace` (None = all namespaces): up to the page size of objects,
        from the start or from the `continue` token of the page before."""
        kwargs: dict[str, Any] = {"limit": self._page_size}
        if token:
            kwargs["_continue"] = token
        if namespace is None:
            page = self._request(
                f"list {resource.plural}",
                self._custom.list_cluster_custom_object,
                resource.group,
                resource.version,
                resource.plural,
                **kwargs,
            )
        else:
            page = self._request(
                f"list {resource.plural} in {namespace}",
                self._custom.list_namespaced_custom_object,
                resource.group,
                resource.version,
                namespace,
                resource.plural,
                **kwargs,
            )
        items = [item for item in page.get("items") or () if isinstance(item, dict)]
        metadata = page.get("metadata")
        following = metadata.get("continue") if isinstance(metadata, Mapping) else None
        return Page(items, following if isinstance(following, str) and following else None)

    def get_object(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        return self._request(
            f"get {resource.plural} {namespace}/{name}",
            self._custom.get_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
        )

    def create_object(self, resource: Resource, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._request(
            f"create {resource.plural} in {namespace}",
            self._custom.create_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            dict(body),
            field_manager=self._field_manager,
        )

    def replace_object(self, resource: Resource, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT with the body's resourceVersion: the API refuses it (409) if the object moved on."""
        namespace, name = object_ref(body)
        return self._request(
            f"replace {resource.plural} {namespace}/{name}",
            self._custom.replace_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
            dict(body),
            field_manager=self._field_manager,
        )

    def patch_object(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        *,
        expected_version: str,
        ops: Sequence[PatchOp],
    ) -> dict[str, Any]:
        """A JSON Patch that applies only to `expected_version`: a leading `test` op on
        /metadata/resourceVersion fails (422) on any other version, so a concurrent write is never
        overwritten. Raises `ConflictError` when that is why the patch was refused."""
        body = [{"op": "test", "path": "/metadata/resourceVersion", "value": expected_version}]
        body.extend(op.to_json() for op in ops)
        what = f"patch {resource.plural} {namespace}/{name}"
        try:
            return self._request(
                what,
                self._custom.patch_namespaced_custom_object,
                resource.group,
                resource.version,
                namespace,
                resource.plural,
                name,
                body,
                field_manager=self._field_manager,
                _content_type=JSON_PATCH,
            )
        except KubeAPIError as error:
            if error.status == 422 and self._moved_on(resource, namespace, name, expected_version):
                raise ConflictError(what, 422, "the object changed since it was read") from None
            raise

    def _moved_on(self, resource: Resource, namespace: str, name: str, expected_version: str) -> bool:
        """After a 422: did the `test` op fail because the object has a newer resourceVersion? (The API
        answers a failed test op with a generic 422, the same code as a schema violation.)"""
        try:
            current = self.get_object(resource, namespace, name)
        except NotFoundError:
            return True
        return resource_version(current) != expected_version
