"""The Kustomize manifests: schema-valid, least-privilege RBAC, correct webhook wiring, hardened Pods.

Kustomizations are built in Python (`tests/manifests/kustomize.py`) so these checks need no binary; one
test compares that build with `kubectl kustomize` where kubectl is installed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import pytest
import yaml

from cli.main import _Parser
from policies.policy import load_policy
from tests.manifests.kustomize import (
    KustomizeError,
    Manifest,
    build_kustomization,
    iter_containers,
    load_documents,
    pod_spec,
)

ROOT = Path(__file__).resolve().parents[2] / "manifests"
NAMESPACE = "extproc-guard-system"
K8S_VERSIONS = ["1.30", "1.34"]

MANIFEST_FILES = sorted(
    path
    for path in ROOT.rglob("*.yaml")
    if "examples" not in path.relative_to(ROOT).parts and path.name != "kustomization.yaml"
)
KUSTOMIZATIONS = sorted(
    path.parent for path in ROOT.rglob("kustomization.yaml") if "examples" not in path.relative_to(ROOT).parts
)
WORKLOAD_KINDS = {"Deployment", "Job", "CronJob", "StatefulSet", "DaemonSet"}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.fixture(scope="module")
def builds() -> dict[str, list[Manifest]]:
    return {_rel(folder): build_kustomization(folder) for folder in KUSTOMIZATIONS}


@pytest.fixture(scope="module")
def base(builds: dict[str, list[Manifest]]) -> list[Manifest]:
    return builds["base"]


def find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def validate_object(obj: Manifest, version: str, crds: list[Manifest]) -> None:
    """Against the Kubernetes schema; a custom resource against the schema of its CRD in the same build."""
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        group, _, api_version = obj["apiVersion"].rpartition("/")
        for crd in crds:
            spec = crd["spec"]
            if spec["group"] == group and spec["names"]["kind"] == obj["kind"]:
                served = {v["name"]: v for v in spec["versions"]}
                jsonschema.validate(obj, served[api_version]["schema"]["openAPIV3Schema"])
                return
        pytest.fail(f"{obj['kind']} ({obj['apiVersion']}) has no Kubernetes schema and no CRD in this build")


# ---- schemas ----


def test_there_are_manifests_and_kustomizations_to_check() -> None:
    assert len(MANIFEST_FILES) >= 10
    assert {_rel(folder) for folder in KUSTOMIZATIONS} >= {
        "base",
        "base/crds",
        "overlays/dev",
        "overlays/gie-epp",
        "epp",
    }


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFEST_FILES, ids=[_rel(path) for path in MANIFEST_FILES])
def test_every_manifest_file_validates_against_the_kubernetes_schema(path: Path, version: str) -> None:
    documents = load_documents(path)
    assert documents, f"{path} is empty"
    crds = [doc for doc in documents if doc["kind"] == "CustomResourceDefinition"]
    for document in documents:
        validate_object(document, version, crds)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=[_rel(folder) for folder in KUSTOMIZATIONS])
def test_every_kustomization_builds_to_schema_valid_objects_with_unique_names(
    folder: Path, version: str, builds: dict[str, list[Manifest]]
) -> None:
    objects = builds[_rel(folder)]
    crds = [obj for obj in objects if obj["kind"] == "CustomResourceDefinition"]
    for obj in objects:
        validate_object(obj, version, crds)
    keys = [(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]) for obj in objects]
    assert len(keys) == len(set(keys))


def test_namespaced_objects_name_their_namespace_explicitly(builds: dict[str, list[Manifest]]) -> None:
    cluster_scoped = {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "CustomResourceDefinition",
    }
    for objects in builds.values():
        for obj in objects:
            has_namespace = "namespace" in obj["metadata"]
            assert has_namespace == (obj["kind"] not in cluster_scoped), (
                f"{obj['kind']}/{obj['metadata']['name']}"
            )


def test_the_python_build_rejects_kustomize_features_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        build_kustomization(tmp_path)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=[_rel(folder) for folder in KUSTOMIZATIONS])
def test_the_python_build_matches_kubectl_kustomize(folder: Path, builds: dict[str, list[Manifest]]) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    result = subprocess.run(
        [kubectl, "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )

    def index(objects: list[Manifest]) -> dict[tuple[str, str | None, str], Manifest]:
        return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}

    assert index(list(yaml.safe_load_all(result.stdout))) == index(builds[_rel(folder)])


# ---- RBAC ----

Rule = tuple[str, str, tuple[str, ...], tuple[str, ...]]


def rules_of(role: Manifest) -> set[Rule]:
    """(apiGroup, resource, resourceNames, verbs) per group x resource, so rule layout does not matter."""
    flat: set[Rule] = set()
    for rule in role.get("rules") or []:
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                names = tuple(sorted(rule.get("resourceNames") or ()))
                flat.add((group, resource, names, tuple(sorted(rule["verbs"]))))
    return flat


EXPECTED_RBAC: dict[tuple[str, str], set[Rule]] = {
    ("ClusterRole", "extproc-guard-webhook"): {
        ("", "services", (), ("get", "list", "watch")),
        ("networking.istio.io", "envoyfilters", (), ("list", "watch")),
        ("networking.istio.io", "destinationrules", (), ("list", "watch")),
        ("inference.networking.k8s.io", "inferencepools", (), ("list", "watch")),
        ("inference.networking.x-k8s.io", "inferencepools", (), ("list", "watch")),
    },
    ("ClusterRole", "extproc-guard-reconciler"): {
        ("", "services", (), ("get", "list", "watch")),
        ("networking.istio.io", "envoyfilters", (), ("get", "list", "patch", "watch")),
        ("networking.istio.io", "destinationrules", (), ("list", "watch")),
        ("inference.networking.k8s.io", "inferencepools", (), ("list", "watch")),
        ("inference.networking.x-k8s.io", "inferencepools", (), ("list", "watch")),
        ("", "events", (), ("create", "patch")),
        ("events.k8s.io", "events", (), ("create", "patch")),
        ("wgpolicyk8s.io", "policyreports", (), ("create", "get", "list", "patch", "update")),
    },
    ("Role", "extproc-guard-reconciler-leader-election"): {
        ("coordination.k8s.io", "leases", ("extproc-guard-reconciler",), ("get", "update")),
        ("coordination.k8s.io", "leases", (), ("create",)),
    },
    ("Role", "extproc-guard-certs"): {
        ("", "secrets", ("extproc-guard-tls", "extproc-guard-tls-ca"), ("get", "update")),
        ("", "secrets", (), ("create",)),
    },
    ("ClusterRole", "extproc-guard-certs"): {
        (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            ("extproc-guard",),
            ("get", "patch"),
        ),
        (
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            ("extproc-guard",),
            ("get", "patch"),
        ),
    },
}

EXPECTED_BINDINGS = {
    "extproc-guard-webhook": {("ClusterRole", "extproc-guard-webhook")},
    "extproc-guard-reconciler": {
        ("ClusterRole", "extproc-guard-reconciler"),
        ("Role", "extproc-guard-reconciler-leader-election"),
    },
    "extproc-guard-certs": {("ClusterRole", "extproc-guard-certs"), ("Role", "extproc-guard-certs")},
}


@pytest.mark.parametrize("build", ["base", "overlays/dev", "overlays/gie-epp"])
def test_rbac_grants_exactly_the_listed_permissions(build: str, builds: dict[str, list[Manifest]]) -> None:
    roles = {
        (obj["kind"], obj["metadata"]["name"]): rules_of(obj)
        for obj in builds[build]
        if obj["kind"] in {"Role", "ClusterRole"}
    }
    assert roles == EXPECTED_RBAC


def test_rbac_has_no_wildcards_anywhere(builds: dict[str, list[Manifest]]) -> None:
    for objects in builds.values():
        for obj in objects:
            for rule in obj.get("rules") or []:
                values = [*rule.get("apiGroups", []), *rule.get("resources", []), *rule.get("verbs", [])]
                assert "*" not in values, f"{obj['kind']}/{obj['metadata']['name']}: {rule}"
                assert all("*" not in value for value in rule.get("resources", []))


def test_each_service_account_is_bound_to_its_own_roles_only(base: list[Manifest]) -> None:
    bound: dict[str, set[tuple[str, str]]] = {}
    for obj in base:
        if obj["kind"] not in {"RoleBinding", "ClusterRoleBinding"}:
            continue
        ref = obj["roleRef"]
        find(base, ref["kind"], ref["name"])
        if obj["kind"] == "RoleBinding":
            assert obj["metadata"]["namespace"] == NAMESPACE
        for subject in obj["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            assert subject["namespace"] == NAMESPACE
            find(base, "ServiceAccount", subject["name"])
            bound.setdefault(subject["name"], set()).add((ref["kind"], ref["name"]))
    assert bound == EXPECTED_BINDINGS


def test_every_workload_runs_as_a_service_account_of_the_manifests(builds: dict[str, list[Manifest]]) -> None:
    for objects in builds.values():
        accounts = {
            (o["metadata"]["namespace"], o["metadata"]["name"])
            for o in objects
            if o["kind"] == "ServiceAccount"
        }
        for obj in objects:
            spec = pod_spec(obj)
            if spec is not None:
                assert (obj["metadata"]["namespace"], spec["serviceAccountName"]) in accounts


# ---- webhook configurations ----


@pytest.mark.parametrize(
    ("kind", "path"),
    [("MutatingWebhookConfiguration", "/mutate"), ("ValidatingWebhookConfiguration", "/validate")],
    ids=["mutating", "validating"],
)
def test_webhook_configuration_has_the_required_fields(kind: str, path: str, base: list[Manifest]) -> None:
    configuration = find(base, kind, "extproc-guard")
    service = find(base, "Service", "extproc-guard-webhook")
    assert len(configuration["webhooks"]) == 1
    for webhook in configuration["webhooks"]:
        assert webhook["rules"] == [
            {
                "apiGroups": ["networking.istio.io"],
                "apiVersions": ["v1alpha3", "v1beta1", "v1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["envoyfilters"],
                "scope": "Namespaced",
            }
        ]
        assert webhook["failurePolicy"] == "Fail"
        assert webhook["sideEffects"] == "None"
        assert webhook["timeoutSeconds"] == 5
        assert webhook["matchPolicy"] == "Equivalent"
        assert webhook["admissionReviewVersions"] == ["v1"]
        assert webhook["namespaceSelector"] == {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": ["kube-system", NAMESPACE],
                }
            ]
        }
        assert "objectSelector" not in webhook
        client_config = webhook["clientConfig"]
        assert "caBundle" not in client_config, "the certs Job owns caBundle; a re-apply must not clear it"
        assert "url" not in client_config
        assert client_config["service"] == {
            "name": service["metadata"]["name"],
            "namespace": service["metadata"]["namespace"],
            "path": path,
            "port": 443,
        }
        if kind == "MutatingWebhookConfiguration":
            assert webhook["reinvocationPolicy"] == "IfNeeded"


def test_webhook_service_sends_443_to_the_https_container_port(base: list[Manifest]) -> None:
    service = find(base, "Service", "extproc-guard-webhook")
    deployment = find(base, "Deployment", "extproc-guard-webhook")
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "https", "containerPort": 8443, "protocol": "TCP"} in container["ports"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_the_certs_jobs_patch_exactly_the_webhook_configurations_and_the_mounted_secret(
    base: list[Manifest],
) -> None:
    deployment = find(base, "Deployment", "extproc-guard-webhook")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    configurations = {
        obj["metadata"]["name"]
        for obj in base
        if obj["kind"] in {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
    }
    for kind, name in [("Job", "extproc-guard-certs"), ("CronJob", "extproc-guard-certs-renew")]:
        (container,) = iter_containers(find(base, kind, name))
        args = parse_command_args(container["args"])
        assert args.command == "certs"
        assert set(args.patch_webhooks) == configurations
        assert args.secret == volumes["tls"]["secret"]["secretName"]
        assert (args.service, args.namespace) == ("extproc-guard-webhook", NAMESPACE)
        role = find(base, "Role", "extproc-guard-certs")
        names = {n for rule in role["rules"] for n in rule.get("resourceNames", [])}
        assert names == {args.secret, f"{args.secret}-ca"}


# ---- workloads ----


def workloads(objects: list[Manifest]) -> Iterator[Manifest]:
    return (obj for obj in objects if obj["kind"] in WORKLOAD_KINDS)


def test_every_workload_pod_is_hardened(builds: dict[str, list[Manifest]]) -> None:
    checked = 0
    for objects in builds.values():
        for obj in workloads(objects):
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            spec = pod_spec(obj)
            assert spec is not None
            pod_security = spec["securityContext"]
            assert pod_security["runAsNonRoot"] is True, where
            assert pod_security["runAsUser"] > 0, where
            assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for key in ("hostNetwork", "hostPID", "hostIPC"):
                assert not spec.get(key), where
            assert all("hostPath" not in volume for volume in spec.get("volumes") or []), where
            for container in iter_containers(obj):
                security = container["securityContext"]
                assert security["allowPrivilegeEscalation"] is False, where
                assert security["readOnlyRootFilesystem"] is True, where
                assert security["runAsNonRoot"] is True, where
                assert security.get("privileged", False) is False, where
                assert security["capabilities"] == {"drop": ["ALL"]}, where
                assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
                resources = container["resources"]
                assert set(resources["requests"]) == {"cpu", "memory"}, where
                assert set(resources["limits"]) == {"cpu", "memory"}, where
                assert container["image"] == "extproc-guard:0.1.0", where
                # A read-only root still needs somewhere for temporary files.
                tmp = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}.get("/tmp")
                volumes = {v["name"]: v for v in spec.get("volumes") or []}
                assert tmp is not None, where
                assert "emptyDir" in volumes[tmp], where
                checked += 1
    assert checked >= 4


def test_webhook_deployment_is_highly_available_and_probed_over_https(base: list[Manifest]) -> None:
    deployment = find(base, "Deployment", "extproc-guard-webhook")
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    (container,) = spec["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
    pdb = find(base, "PodDisruptionBudget", "extproc-guard-webhook")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_webhook_serves_the_mounted_secret_and_policy(base: list[Manifest]) -> None:
    deployment = find(base, "Deployment", "extproc-guard-webhook")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = parse_command_args(container["args"])
    assert args.command == "serve"
    assert args.port == 8443
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in (args.tls_cert, args.tls_key):
        assert "secret" in volumes[mounts[str(path.parent)]]
    assert {args.tls_cert.name, args.tls_key.name} == {"tls.crt", "tls.key"}
    policy_volume = volumes[mounts[str(args.policy.parent)]]
    assert policy_volume["configMap"]["name"] == "extproc-guard-policy"


def test_reconciler_elects_a_leader_with_the_lease_its_role_allows(base: list[Manifest]) -> None:
    deployment = find(base, "Deployment", "extproc-guard-reconciler")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = parse_command_args(expand_env(container, deployment))
    assert deployment["spec"]["replicas"] == 2
    assert args.lease_name is not None
    assert args.lease_namespace == NAMESPACE
    assert args.identity == "extproc-guard-reconciler-0"
    role = find(base, "Role", "extproc-guard-reconciler-leader-election")
    assert {n for rule in role["rules"] for n in rule.get("resourceNames", [])} == {args.lease_name}
    probe_port = container["livenessProbe"]["httpGet"]["port"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports[probe_port] == args.metrics_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_reconciler_uses_the_same_image_and_policy(base: list[Manifest]) -> None:
    deployment = find(base, "Deployment", "extproc-guard-reconciler")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][0] == "reconcile"
    assert pod["serviceAccountName"] == "extproc-guard-reconciler"
    index = container["args"].index("--policy")
    policy = Path(container["args"][index + 1])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[str(policy.parent)]]["configMap"]["name"] == "extproc-guard-policy"
    assert policy.name in find(base, "ConfigMap", "extproc-guard-policy")["data"]


def expand_env(container: dict[str, Any], workload: Manifest) -> list[str]:
    """Expand `$(VAR)` in args as the kubelet does, for a Pod WORKLOAD-0 in the workload's namespace."""
    pod_fields = {
        "metadata.name": f"{workload['metadata']['name']}-0",
        "metadata.namespace": workload["metadata"]["namespace"],
    }
    values: dict[str, str] = {}
    for env in container.get("env") or []:
        if "value" in env:
            values[env["name"]] = env["value"]
        else:
            values[env["name"]] = pod_fields[env["valueFrom"]["fieldRef"]["fieldPath"]]
    expanded = [re.sub(r"\$\((\w+)\)", lambda m: values[m[1]], arg) for arg in container["args"]]
    assert all("$(" not in arg for arg in expanded)
    return expanded


def parse_command_args(argv: list[str]) -> argparse.Namespace:
    """Parse container args with the real sub-command parser (only that command registered)."""
    name = argv[0].replace("-", "_")
    try:
        module = importlib.import_module(f"cli.commands.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"cli.commands.{name}":
            raise
        pytest.skip(f"the `{argv[0]}` command does not exist yet")
    parser = _Parser(prog="extproc-guard")
    module.register(parser.add_subparsers(dest="command", parser_class=_Parser))
    return parser.parse_args(argv)


def container_args(builds: dict[str, list[Manifest]]) -> Iterator[tuple[str, list[str]]]:
    for build, objects in builds.items():
        for obj in workloads(objects):
            for container in iter_containers(obj):
                yield f"{build}:{obj['kind']}/{obj['metadata']['name']}", expand_env(container, obj)


@pytest.mark.parametrize("command", ["serve", "reconcile", "certs", "epp"])
def test_container_args_parse_with_the_real_command_line(
    command: str, builds: dict[str, list[Manifest]]
) -> None:
    found = [(where, args) for where, args in container_args(builds) if args[0] == command]
    assert found, f"no workload runs `{command}`"
    for where, args in found:
        try:
            parse_command_args(args)
        except SystemExit as exc:
            pytest.fail(f"{where}: `extproc-guard {' '.join(args)}` does not parse (exit {exc.code})")


# ---- policy and overlays ----


@pytest.mark.parametrize(
    ("build", "profile"),
    [("base", "headers-epp"), ("overlays/dev", "headers-epp"), ("overlays/gie-epp", "gie-epp")],
)
def test_policy_configmap_is_a_valid_policy_with_the_overlays_profile(
    build: str, profile: str, builds: dict[str, list[Manifest]]
) -> None:
    policy = load_policy(find(builds[build], "ConfigMap", "extproc-guard-policy")["data"]["policy.yaml"])
    assert policy.profile.value == profile
    assert set(policy.exclusions.namespaces) >= {"kube-system", NAMESPACE}


def test_dev_overlay_runs_one_replica_of_each_and_lets_drains_through(
    builds: dict[str, list[Manifest]],
) -> None:
    dev = builds["overlays/dev"]
    for name in ("extproc-guard-webhook", "extproc-guard-reconciler"):
        assert find(dev, "Deployment", name)["spec"]["replicas"] == 1
    assert find(dev, "PodDisruptionBudget", "extproc-guard-webhook")["spec"]["minAvailable"] == 0


def test_overlays_install_the_policyreport_crd_and_the_base_does_not(
    builds: dict[str, list[Manifest]],
) -> None:
    def crds(build: str) -> list[str]:
        return [o["metadata"]["name"] for o in builds[build] if o["kind"] == "CustomResourceDefinition"]

    assert crds("base") == []
    assert crds("overlays/dev") == crds("overlays/gie-epp") == ["policyreports.wgpolicyk8s.io"]


# ---- the PolicyReport CRD ----


@pytest.fixture(scope="module")
def policyreport_schema() -> dict[str, Any]:
    (crd,) = load_documents(ROOT / "base" / "crds" / "policyreports.yaml")
    (version,) = crd["spec"]["versions"]
    assert (crd["spec"]["group"], version["name"], crd["spec"]["scope"]) == (
        "wgpolicyk8s.io",
        "v1alpha2",
        "Namespaced",
    )
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _report(result: str) -> Manifest:
    return {
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "PolicyReport",
        "metadata": {"name": "extproc-guard", "namespace": "team-a"},
        "summary": {"pass": 0, "fail": 1, "warn": 0, "error": 0, "skip": 0},
        "results": [
            {
                "source": "extproc-guard",
                "policy": "EPX007",
                "rule": "grpc-cluster-ref",
                "result": result,
                "severity": "high",
                "message": "grpc_service names cluster epp-missing that no patch defines",
                "timestamp": {"seconds": 1780000000, "nanos": 0},
                "resources": [
                    {
                        "apiVersion": "networking.istio.io/v1alpha3",
                        "kind": "EnvoyFilter",
                        "name": "f",
                        "namespace": "team-a",
                    }
                ],
                "properties": {"path": "/spec/configPatches/0"},
            }
        ],
    }


def test_a_report_the_reconciler_would_write_fits_the_crd_schema(policyreport_schema: dict[str, Any]) -> None:
    jsonschema.validate(_report("fail"), policyreport_schema)


def test_the_crd_schema_rejects_an_unknown_result(policyreport_schema: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError, match="bogus"):
        jsonschema.validate(_report("bogus"), policyreport_schema)
