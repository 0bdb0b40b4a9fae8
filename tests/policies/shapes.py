"""The real shapes of ext_proc EnvoyFilters (ours, written after the public ones), and how to judge a set
of documents together the way `check` and `fix` do: one context from every document given.

Fixtures live in `data/shapes/`; a test that needs a variant loads one with a text substitution or edits
the parsed document, so each variant says what it changes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from policies.context import Context, collect_context
from policies.engine import Evaluation, evaluate
from policies.findings import Finding
from policies.model import EnvoyFilter
from policies.pieces import locate_ext_proc
from policies.policy import Policy, default_policy
from policies.resolver import (
    ChainResolver,
    ServiceAddress,
    ServiceNotFound,
    ServiceRef,
    ServiceUnknown,
    StaticResolver,
)
from policies.role import ROLE_ANNOTATION, RoleDecision
from policies.subject import Subject
from policies.workload import workload_of

SHAPES = Path(__file__).parent / "data" / "shapes"
EXT_PROC = "envoy.filters.http.ext_proc"

# The Services of the shapes, with made-up ClusterIPs (what `--service` would say).
BBR = ServiceRef("chat-gateway", "body-based-router")
ACTIVATOR = ServiceRef("serving", "mistral-7b-activator")
SEMANTIC = ServiceRef("intent-system", "semantic-router")
MERGE_EPP = ServiceRef("models", "tinyllama-epp")
SPLIT_EPP = ServiceRef("llm-serving", "granite-picker")
GIE_EPP = ServiceRef("gie-demo", "vicuna-pool-picker")
UNMARKED = ServiceRef("edge", "hook")
SPLIT_EPP_IP = "10.96.61.9"


def shape_text(name: str, replace: Mapping[str, str] | None = None) -> str:
    text = (SHAPES / f"{name}.yaml").read_text(encoding="utf-8")
    for old, new in (replace or {}).items():
        assert old in text, f"{old!r} is not in {name}.yaml"
        text = text.replace(old, new)
    return text


def load_shape(name: str, replace: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The documents of one fixture (`replace`: text substitutions made before parsing)."""
    return [document for document in yaml.safe_load_all(shape_text(name, replace)) if document is not None]


def envoy_filters(documents: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [document for document in documents if document.get("kind") == "EnvoyFilter"]


def annotate(document: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    """A copy of the document with one more annotation."""
    changed = copy.deepcopy(document)
    changed["metadata"].setdefault("annotations", {})[key] = value
    return changed


def mark(document: dict[str, Any], role: str) -> dict[str, Any]:
    return annotate(document, ROLE_ANNOTATION, role)


def service_document(ref: ServiceRef, cluster_ip: str, ports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": ref.name, "namespace": ref.namespace},
        "spec": {"clusterIP": cluster_ip, "ports": [dict(port) for port in ports]},
    }


def destination_rule(ref: ServiceRef, mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": f"{ref.name}-tls", "namespace": ref.namespace},
        "spec": {
            "host": f"{ref.name}.{ref.namespace}.svc.cluster.local",
            "trafficPolicy": {"tls": {"mode": mode}},
        },
    }


def inference_pool(ref: ServiceRef, *, name: str = "pool", port: int = 9002) -> dict[str, Any]:
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": ref.namespace},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": ref.name, "port": {"number": port}},
        },
    }


class AbsentServices:
    """An authoritative source (like the live informer) that knows these Services do not exist."""

    def __init__(self, absent: Iterable[ServiceRef]) -> None:
        self._absent = frozenset(absent)

    def lookup(self, ref: ServiceRef) -> ServiceAddress:
        if ref in self._absent:
            raise ServiceNotFound(ref, "does not exist in the cluster")
        raise ServiceUnknown(ref, "not in this test's cluster")


@dataclass(frozen=True)
class Inputs:
    """Documents given together, and what a run adds: `--service` answers and the policy."""

    documents: list[dict[str, Any]]
    declared: Mapping[ServiceRef, ServiceAddress]
    policy: Policy
    settled: bool = True
    absent: frozenset[ServiceRef] = frozenset()

    def context(self) -> Context:
        objects = collect_context(self.documents)
        return Context(
            envoy_filters=objects.envoy_filters,
            inference_pools=objects.inference_pools,
            destination_rules=objects.destination_rules,
            declared=self.declared,
            root_namespace=self.policy.root_namespace,
            cluster_domain=self.policy.cluster_domain,
            settled=self.settled,
        )

    def resolver(self) -> ChainResolver:
        services = collect_context(self.documents).services
        return ChainResolver(
            (StaticResolver(self.declared), StaticResolver(services), AbsentServices(self.absent))
        )

    def evaluate(self, document: Mapping[str, Any]) -> Evaluation:
        return evaluate(document, policy=self.policy, resolver=self.resolver(), context=self.context())

    def subject(self, document: Mapping[str, Any]) -> Subject:
        """What the rules see of one EnvoyFilter of the inputs (it must have ext_proc pieces)."""
        context = self.context()
        envoy_filter = EnvoyFilter.of(document)
        workload = workload_of(context, envoy_filter, self.policy.filter_name)
        pieces = locate_ext_proc(
            envoy_filter, self.policy.filter_name, used_clusters=workload.used_cluster_names()
        )
        assert pieces is not None, f"envoyfilter/{envoy_filter.name} has no ext_proc pieces"
        return Subject(pieces, self.policy, self.resolver(), context, _workload=workload)

    def roles(self, document: Mapping[str, Any]) -> list[RoleDecision]:
        """The role of every ext_proc filter, then every per-route entry, of one document."""
        subject = self.subject(document)
        filters = [subject.role_of(piece) for piece in subject.pieces.filters]
        return filters + [subject.role_of(route) for route in subject.pieces.routes]


def inputs(
    documents: Iterable[dict[str, Any]],
    *,
    declared: Mapping[ServiceRef, str | ServiceAddress] | None = None,
    policy: Policy | None = None,
    settled: bool = True,
    absent: Iterable[ServiceRef] = (),
) -> Inputs:
    """`declared` maps a Service to `IP[:PORT]` (as `--service` says it) or to an address; `absent` are
    Services an authoritative source says do not exist."""
    answers: dict[ServiceRef, ServiceAddress] = {}
    for ref, value in (declared or {}).items():
        if isinstance(value, ServiceAddress):
            answers[ref] = value
        else:
            ip, _, port = value.partition(":")
            answers[ref] = ServiceAddress(ip, (int(port),) if port else ())
    return Inputs(list(documents), answers, policy or default_policy(), settled, frozenset(absent))


def rules_of(findings: Iterable[Finding]) -> list[str]:
    return [finding.rule for finding in findings]


def only(findings: Iterable[Finding], rule: str) -> list[Finding]:
    return [finding for finding in findings if finding.rule == rule]
