"""What the informer caches keep of each object: the Service cache only an address (or why there is none),
the context cache only an EnvoyFilter's context view, packed, and nothing at all of an unrelated filter."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from kube.context import PackedView, decode_envoy_filter
from kube.services import NoAddress, ServiceDecoder
from policies import ServiceAddress, ServiceNotFound, ServiceRef, ServiceWithoutClusterIP
from policies.resolver import ServicePort
from tests.kube.objects import (
    CLUSTER_MERGE,
    EPP_CLUSTER,
    EXT_PROC,
    EXT_PROC_FILTER,
    LUA,
    server_metadata,
    service,
)


def decoded_afresh(decoder: ServiceDecoder, document: dict[str, Any]) -> tuple[ServiceRef, Any]:
    """Decode a copy that shares no string with earlier ones, as a new page of JSON would."""
    result = decoder(json.loads(json.dumps(document)))
    assert result is not None
    return result


def test_a_service_is_kept_as_its_address_alone() -> None:
    ref, entry = decoded_afresh(ServiceDecoder(), service("epp", "llm-d"))

    assert ref == ServiceRef("llm-d", "epp")
    assert type(entry) is ServiceAddress
    assert entry == ServiceAddress("10.96.45.12", (9002,))
    assert entry.port_specs == (ServicePort(9002, "grpc-ext-proc", ""),)


def test_services_share_their_namespace_name_and_identical_port_lists() -> None:
    decoder = ServiceDecoder()
    first_ref, first = decoded_afresh(decoder, service("epp-a", "llm-d"))
    second_ref, second = decoded_afresh(decoder, service("epp-b", "llm-d", clusterIP="10.96.45.13"))

    assert first_ref.namespace is second_ref.namespace
    assert first.ports is second.ports
    assert first.port_specs is second.port_specs
    assert second.cluster_ip == "10.96.45.13"


def test_a_different_port_list_is_not_shared() -> None:
    decoder = ServiceDecoder()
    _, grpc = decoded_afresh(decoder, service("epp", "llm-d"))
    http = [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP", "appProtocol": "http"}]
    _, web = decoded_afresh(decoder, service("web", "llm-d", ports=http))

    assert web.port_specs == (ServicePort(8080, "http", "http"),)
    assert web.port_specs is not grpc.port_specs


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"clusterIP": "None"}, "headless"),
        ({"type": "ExternalName", "externalName": "epp.example.com"}, "ExternalName"),
    ],
    ids=["headless", "external-name"],
)
def test_a_service_without_an_address_keeps_only_why(spec: dict[str, Any], reason: str) -> None:
    ref, entry = decoded_afresh(ServiceDecoder(), service("epp", "llm-d", **spec))

    assert type(entry) is NoAddress
    assert entry.error is ServiceWithoutClusterIP, "Istio still builds its cluster: the kind of 'no' is kept"
    assert issubclass(entry.error, ServiceNotFound)
    assert reason in entry.reason
    with pytest.raises(ServiceNotFound, match=reason):
        raise entry.error(ref, entry.reason)


def envoy_filter(name: str, patches: list[dict[str, Any]], **annotations: str) -> dict[str, Any]:
    metadata = server_metadata(name, "llm-d")
    metadata["annotations"].update(annotations)
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": metadata,
        "spec": {"workloadSelector": {"labels": {"app": "gateway"}}, "configPatches": patches},
        "status": {"validationMessages": [{"type": {"code": "IST0151"}}]},
    }


@pytest.mark.parametrize(
    "patches", [[LUA], [CLUSTER_MERGE], [LUA, CLUSTER_MERGE]], ids=["lua", "cluster-merge", "both"]
)
def test_a_filter_that_cannot_matter_to_an_ext_proc_path_is_not_cached(patches: list[dict[str, Any]]) -> None:
    assert decode_envoy_filter(EXT_PROC, envoy_filter("unrelated", patches)) is None


def test_an_ext_proc_filter_is_kept_as_its_relevant_patches_name_and_own_annotations_only() -> None:
    document = envoy_filter(
        "epp-ext-proc",
        [LUA, EXT_PROC_FILTER, CLUSTER_MERGE, EPP_CLUSTER],
        **{"extproc-guard.io/epp-service": "llm-d/epp", "other.io/note": "dropped"},
    )

    decoded = decode_envoy_filter(EXT_PROC, copy.deepcopy(document))

    assert decoded is not None
    key, packed = decoded
    assert key == ("llm-d", "epp-ext-proc")
    assert isinstance(packed, PackedView)
    assert (packed.namespace, packed.name) == key
    assert packed.unpack() == {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {
            "name": "epp-ext-proc",
            "namespace": "llm-d",
            "annotations": {"extproc-guard.io/epp-service": "llm-d/epp"},
        },
        "spec": {"configPatches": [EXT_PROC_FILTER, EPP_CLUSTER]},
    }
    assert len(packed.data) < len(json.dumps(packed.unpack(), separators=(",", ":")))


def test_an_unchanged_filter_packs_to_the_same_bytes() -> None:
    """The informer compares the kept values of a relist with what it knew: equal objects must compare
    equal, or every relist would look like a change of every filter."""
    document = envoy_filter("epp-ext-proc", [EXT_PROC_FILTER, EPP_CLUSTER])
    first = decode_envoy_filter(EXT_PROC, json.loads(json.dumps(document)))
    again = decode_envoy_filter(EXT_PROC, json.loads(json.dumps(document)))

    assert first is not None
    assert first == again
