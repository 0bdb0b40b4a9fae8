"""The admission webhook end to end: `extproc-guard serve` on loopback, registered with a real
kube-apiserver, exercised through the real kubectl."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.documents import load_document, renamed
from tests.e2e.cluster import ControlPlaneInfo, Kubectl, cli_help, find_cli
from tests.e2e.objects import EppService
from tests.e2e.seeds import dump, pinned_to
from tests.e2e.webhook_server import (
    MUTATING_WEBHOOK,
    VALIDATING_WEBHOOK,
    WebhookServer,
    register_webhooks,
    unregister_webhooks,
)

pytestmark = pytest.mark.e2e

PROVENANCE_ANNOTATION = "extproc-guard.io/epp-service"
DENIED = re.compile(
    r'admission webhook "(?:'
    + re.escape(MUTATING_WEBHOOK)
    + "|"
    + re.escape(VALIDATING_WEBHOOK)
    + r')" denied the request:'
)


@pytest.fixture(scope="module")
def webhook(
    control_plane: ControlPlaneInfo, kubectl: Kubectl, epp_service: EppService
) -> Iterator[WebhookServer]:
    """`serve` running and registered (mutating + validating) for this module; unregistered after."""
    server = WebhookServer.create(find_cli(), control_plane.kubeconfig, cli_help("serve"))
    try:
        server.start()
        probe = renamed(load_document("seed-bad.yaml"), "webhook-probe")
        register_webhooks(kubectl, server, probe)
        yield server
    finally:
        unregister_webhooks(kubectl)
        server.remove()


def corrected_for(epp_service: EppService, name: str) -> dict[str, Any]:
    return renamed(pinned_to(load_document("seed-corrected.yaml"), epp_service.cluster_ip), name)


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Warning: ")]


def test_the_seed_bad_filter_is_stored_in_the_corrected_form_pinned_to_the_allocated_cluster_ip(
    webhook: WebhookServer, kubectl: Kubectl, epp_service: EppService
) -> None:
    bad = load_document("seed-bad.yaml")
    result = kubectl.apply(dump(bad), check=False)
    assert result.returncode == 0, f"{result.stderr}\n{webhook.log_tail()}"

    stored = kubectl.get_json("envoyfilter", bad["metadata"]["name"], "-n", epp_service.namespace)
    expected = corrected_for(epp_service, bad["metadata"]["name"])
    assert stored["spec"] == expected["spec"]
    assert stored["metadata"]["annotations"][PROVENANCE_ANNOTATION] == epp_service.ref


def test_an_unfixable_filter_is_denied_with_the_rule_id_and_not_stored(
    webhook: WebhookServer, kubectl: Kubectl, epp_service: EppService
) -> None:
    unfixable = load_document("unfixable.yaml")
    result = kubectl.apply(dump(unfixable), check=False)
    assert result.returncode != 0
    assert DENIED.search(result.stderr), result.stderr
    assert "EPX007" in result.stderr
    missing = kubectl.run(
        "get", "envoyfilter", unfixable["metadata"]["name"], "-n", epp_service.namespace, check=False
    )
    assert "NotFound" in missing.stderr


def test_a_warn_rule_reaches_kubectl_as_a_warning_line_and_the_filter_is_stored(
    webhook: WebhookServer, kubectl: Kubectl, epp_service: EppService
) -> None:
    fail_open = pinned_to(load_document("warn-failure-mode-allow.yaml"), epp_service.cluster_ip)
    result = kubectl.apply(dump(fail_open), check=False)
    assert result.returncode == 0, result.stderr
    assert any("EPX009" in line for line in warning_lines(result.stderr)), result.stderr
    stored = kubectl.get_json("envoyfilter", fail_open["metadata"]["name"], "-n", epp_service.namespace)
    assert stored["spec"] == fail_open["spec"]


def test_a_server_dry_run_returns_the_corrected_form_and_stores_nothing(
    webhook: WebhookServer, kubectl: Kubectl, epp_service: EppService
) -> None:
    bad = renamed(load_document("seed-bad.yaml"), "epp-ext-proc-dry-run")
    result = kubectl.apply(dump(bad), "--dry-run=server", "-o", "yaml", check=False)
    assert result.returncode == 0, result.stderr
    returned = yaml.safe_load(result.stdout)
    assert returned["spec"] == corrected_for(epp_service, "epp-ext-proc-dry-run")["spec"]
    missing = kubectl.run(
        "get", "envoyfilter", "epp-ext-proc-dry-run", "-n", epp_service.namespace, check=False
    )
    assert "NotFound" in missing.stderr


def test_a_server_dry_run_leaves_an_existing_filter_unchanged(
    webhook: WebhookServer, kubectl: Kubectl, epp_service: EppService
) -> None:
    existing = corrected_for(epp_service, "epp-ext-proc-existing")
    kubectl.apply(dump(existing))
    before = kubectl.get_json("envoyfilter", "epp-ext-proc-existing", "-n", epp_service.namespace)

    changed = renamed(load_document("seed-bad.yaml"), "epp-ext-proc-existing")
    changed["metadata"]["labels"] = {"changed-by": "dry-run"}
    result = kubectl.apply(dump(changed), "--dry-run=server", check=False)
    assert result.returncode == 0, result.stderr

    after = kubectl.get_json("envoyfilter", "epp-ext-proc-existing", "-n", epp_service.namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert "labels" not in after["metadata"]
    assert after["spec"] == before["spec"]


def test_delete_is_never_blocked_even_with_the_webhook_down(
    webhook: WebhookServer, kubectl: Kubectl, epp_service: EppService
) -> None:
    kubectl.apply(dump(corrected_for(epp_service, "epp-ext-proc-to-delete")))
    webhook.stop()
    try:
        result = kubectl.run(
            "delete", "envoyfilter", "epp-ext-proc-to-delete", "-n", epp_service.namespace, check=False
        )
        assert result.returncode == 0, result.stderr
    finally:
        webhook.start()
    missing = kubectl.run(
        "get", "envoyfilter", "epp-ext-proc-to-delete", "-n", epp_service.namespace, check=False
    )
    assert "NotFound" in missing.stderr


def test_writes_are_refused_while_the_webhook_is_down_and_pass_once_it_is_back(
    webhook: WebhookServer, kubectl: Kubectl, epp_service: EppService
) -> None:
    filter_doc = corrected_for(epp_service, "epp-ext-proc-outage")
    webhook.stop()
    try:
        refused = kubectl.apply(dump(filter_doc), check=False)
    finally:
        webhook.start()
    assert refused.returncode != 0
    assert "failed calling webhook" in refused.stderr, refused.stderr
    assert MUTATING_WEBHOOK in refused.stderr

    accepted = kubectl.apply(dump(filter_doc), check=False)
    assert accepted.returncode == 0, accepted.stderr
    stored = kubectl.get_json("envoyfilter", "epp-ext-proc-outage", "-n", epp_service.namespace)
    assert stored["spec"] == filter_doc["spec"]
