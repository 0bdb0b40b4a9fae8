"""`extproc-guard certs` and the manifests against a real etcd + kube-apiserver (the end-to-end harness).

The manifests' dev overlay is applied with the real kubectl; the `certs` command then runs as the
`extproc-guard-certs` ServiceAccount (a TokenRequest token), so the Role and ClusterRole in the
manifests are proven sufficient by the real RBAC authorizer, and SubjectAccessReviews prove them no
wider than needed. Without the control plane binaries these tests skip, or fail when
EXTPROC_GUARD_REQUIRE_E2E=1, like the rest of the end-to-end suite.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from certs.pki import covers_names, is_issued_by, service_dns_names
from cli.cabundle import build_api_client
from cli.commands import certs as certs_command
from cli.main import _Parser
from tests.e2e.cluster import Kubectl
from tests.e2e.harness import running_control_plane

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "extproc-guard-system"
VALIDATING = "admissionregistration.k8s.io/validatingwebhookconfigurations"
LEASES = "coordination.k8s.io/leases"
CERTS_ARGS = [
    "certs",
    "--service",
    "extproc-guard-webhook",
    "--namespace",
    NAMESPACE,
    "--secret",
    "extproc-guard-tls",
    "--patch-webhooks",
    "extproc-guard",
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A control plane with the dev overlay applied."""
    with running_control_plane() as info:
        kubectl = info.kubectl
        kubectl.run("apply", "-k", str(ROOT / "manifests" / "overlays" / "dev"))
        token = kubectl.run("create", "token", "extproc-guard-certs", "-n", NAMESPACE).stdout.strip()
        config = yaml.safe_load(info.kubeconfig.read_text())
        for user in config["users"]:
            user["user"] = {"token": token}
        as_certs = tmp_path_factory.mktemp("kube") / "kubeconfig-certs-sa"
        as_certs.write_text(yaml.safe_dump(config))
        as_certs.chmod(0o600)
        yield Cluster(kubectl=kubectl, admin=info.kubeconfig, as_certs=as_certs)


@dataclass(frozen=True)
class Cluster:
    kubectl: Kubectl
    admin: Path
    as_certs: Path


def run_certs(capsys: pytest.CaptureFixture[str], kubeconfig: Path, *extra: str) -> tuple[int, str]:
    """The `certs` command in-process, through the CLI's parser class; returns (exit code, stderr)."""
    parser = _Parser(prog="extproc-guard")
    certs_command.register(parser.add_subparsers(dest="command", parser_class=_Parser))
    args = parser.parse_args([*CERTS_ARGS, "--kubeconfig", str(kubeconfig), *extra])
    code: int = args.handler(args)
    return code, capsys.readouterr().err


def resource_versions(kubectl: Kubectl) -> dict[str, str]:
    names = [
        ("secret", "extproc-guard-tls", "-n", NAMESPACE),
        ("secret", "extproc-guard-tls-ca", "-n", NAMESPACE),
        ("mutatingwebhookconfiguration", "extproc-guard"),
        ("validatingwebhookconfiguration", "extproc-guard"),
    ]
    return {args[0] + "/" + args[1]: kubectl.get_json(*args)["metadata"]["resourceVersion"] for args in names}


def test_certs_as_its_service_account_creates_the_secrets_and_sets_every_ca_bundle(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    kubectl = cluster.kubectl
    code, stderr = run_certs(capsys, cluster.as_certs)
    assert code == 0, stderr
    secret = kubectl.get_json("secret", "extproc-guard-tls", "-n", NAMESPACE)
    assert secret["type"] == "kubernetes.io/tls"
    data = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    assert sorted(data) == ["ca.crt", "tls.crt", "tls.key"]
    assert is_issued_by(data["tls.crt"], data["ca.crt"])
    assert covers_names(data["tls.crt"], dns_names=service_dns_names("extproc-guard-webhook", NAMESPACE))
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        webhooks = kubectl.get_json(kind, "extproc-guard")["webhooks"]
        assert [base64.b64decode(w["clientConfig"]["caBundle"]) for w in webhooks] == [data["ca.crt"]]

    before = resource_versions(kubectl)
    code, stderr = run_certs(capsys, cluster.as_certs)
    assert code == 0, stderr
    assert "wrote nothing" in stderr
    assert resource_versions(kubectl) == before

    kubectl.run("apply", "-k", str(ROOT / "manifests" / "overlays" / "dev"))
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        webhooks = kubectl.get_json(kind, "extproc-guard")["webhooks"]
        assert all(w["clientConfig"].get("caBundle") for w in webhooks), "a re-apply cleared the caBundle"


def test_certs_for_a_configuration_the_role_does_not_name_is_refused_with_one_line(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stderr = run_certs(capsys, cluster.as_certs, "--patch-webhooks", "someone-elses")
    assert code == 2
    assert stderr.count("\n") == 1
    assert "HTTP 403" in stderr


@pytest.mark.parametrize(
    ("account", "verb", "resource", "name", "allowed"),
    [
        ("extproc-guard-certs", "get", "secrets", "extproc-guard-tls", True),
        ("extproc-guard-certs", "get", "secrets", "another", False),
        ("extproc-guard-certs", "list", "secrets", "", False),
        ("extproc-guard-certs", "patch", VALIDATING, "other", False),
        ("extproc-guard-certs", "patch", VALIDATING, "extproc-guard", True),
        ("extproc-guard-webhook", "watch", "services", "", True),
        ("extproc-guard-webhook", "get", "secrets", "", False),
        ("extproc-guard-webhook", "patch", "networking.istio.io/envoyfilters", "", False),
        ("extproc-guard-reconciler", "patch", "networking.istio.io/envoyfilters", "", True),
        ("extproc-guard-reconciler", "delete", "networking.istio.io/envoyfilters", "", False),
        ("extproc-guard-reconciler", "update", LEASES, "extproc-guard-reconciler", True),
        ("extproc-guard-reconciler", "update", LEASES, "another", False),
        ("extproc-guard-reconciler", "create", "wgpolicyk8s.io/policyreports", "", True),
        ("extproc-guard-reconciler", "delete", "wgpolicyk8s.io/policyreports", "", False),
    ],
    ids=lambda value: str(value) or "any",
)
def test_the_real_authorizer_grants_what_each_role_needs_and_no_more(
    cluster: Cluster, account: str, verb: str, resource: str, name: str, allowed: bool
) -> None:
    """A SubjectAccessReview per case: the apiserver's own RBAC decision for that ServiceAccount."""
    group, _, plural = resource.rpartition("/")
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{NAMESPACE}:{account}",
            groups=["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"],
            resource_attributes=client.V1ResourceAttributes(
                namespace=NAMESPACE, verb=verb, group=group, resource=plural, name=name or None
            ),
        )
    )
    with build_api_client(cluster.admin) as api:
        answer = client.AuthorizationV1Api(api).create_subject_access_review(review)
    assert answer.status is not None
    assert bool(answer.status.allowed) is allowed, answer.status.reason
