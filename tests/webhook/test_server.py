"""Admission round trips over real HTTPS on loopback: `make_app`'s server, an aiohttp client, real certs."""

from __future__ import annotations

import json
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest

from policies.engine import evaluate
from policies.policy import default_policy
from policies.resolver import StaticResolver
from tests.documents import load_document
from tests.webhook.serverkit import metric_value, static_server
from tests.webhook.webhookrig import (
    STATIC_SERVICES,
    Pki,
    ServerThread,
    client_context,
    decode_patch,
    review_of,
)
from webhook.settings import ServeSettings

BODY_TIMEOUT_SECONDS = 0.5


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tls = pki.write_serving(tmp_path_factory.mktemp("tls"))
    with static_server(tls, body_timeout_seconds=BODY_TIMEOUT_SECONDS) as running:
        yield running


def engine_result(document: dict[str, Any]) -> Any:
    return evaluate(document, policy=default_policy(), resolver=StaticResolver(STATIC_SERVICES))


async def post_review(
    session: aiohttp.ClientSession, server: ServerThread, path: str, review: dict[str, Any]
) -> dict[str, Any]:
    async with session.post(server.url + path, json=review) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["apiVersion"] == "admission.k8s.io/v1"
    assert body["kind"] == "AdmissionReview"
    assert body["response"]["uid"] == review["request"]["uid"]
    return dict(body["response"])


async def test_the_seed_filter_is_mutated_to_the_corrected_form(
    session: aiohttp.ClientSession, server: ServerThread
) -> None:
    bad = load_document("seed-bad.yaml")
    response = await post_review(session, server, "/mutate", review_of(bad))
    assert response["allowed"] is True
    patched = jsonpatch.apply_patch(bad, decode_patch(response))
    assert patched == engine_result(bad).fixed
    assert patched == load_document("seed-corrected.yaml")
    assert patched["metadata"]["annotations"]["extproc-guard.io/epp-service"] == (
        "llm-d-inference-scheduler/gaie-inference-scheduling-epp"
    )
    assert any(w.startswith("extproc-guard fixed EPX001") for w in response["warnings"])


async def test_the_mutated_seed_passes_validation_with_only_warnings(
    session: aiohttp.ClientSession, server: ServerThread
) -> None:
    corrected = load_document("seed-corrected.yaml")
    response = await post_review(session, server, "/validate", review_of(corrected))
    assert response["allowed"] is True
    assert "status" not in response
    assert [w.split()[0] for w in response.get("warnings", [])] == [
        f.rule for f in engine_result(corrected).findings
    ]


async def test_a_second_mutation_of_the_corrected_form_changes_nothing(
    session: aiohttp.ClientSession, server: ServerThread
) -> None:
    response = await post_review(session, server, "/mutate", review_of(load_document("seed-corrected.yaml")))
    assert response["allowed"] is True
    assert "patch" not in response


async def test_an_unfixable_filter_is_denied_with_rule_ids_paths_and_fixes(
    session: aiohttp.ClientSession, server: ServerThread
) -> None:
    unfixable = load_document("unfixable.yaml")
    mutated = jsonpatch.apply_patch(
        unfixable, decode_patch(await post_review(session, server, "/mutate", review_of(unfixable)))
    )
    response = await post_review(session, server, "/validate", review_of(mutated))
    assert response["allowed"] is False
    status = response["status"]
    assert status["code"] == 403
    assert status["reason"] == "Forbidden"
    (epx007,) = [f for f in engine_result(mutated).findings if f.rule == "EPX007"]
    assert "EPX007" in status["message"]
    assert epx007.path in status["message"]
    assert " ".join(epx007.fix.split()) in status["message"]


async def test_warn_rules_become_warnings_of_at_most_256_characters_with_rule_path_and_fix(
    session: aiohttp.ClientSession, server: ServerThread
) -> None:
    response = await post_review(
        session, server, "/validate", review_of(load_document("warn-failure-mode-allow.yaml"))
    )
    assert response["allowed"] is True
    warnings = response["warnings"]
    assert any(w.startswith("EPX009 failure-mode-allow") for w in warnings)
    assert all(len(w) <= 256 for w in warnings)
    assert any("Fix: " in w and " at /spec/" in w for w in warnings)


async def test_the_uid_is_echoed_for_every_webhook_and_outcome(
    session: aiohttp.ClientSession, server: ServerThread
) -> None:
    for path in ("/mutate", "/validate"):
        for name in ("seed-bad.yaml", "unfixable.yaml", "lua-filter.yaml"):
            review = review_of(load_document(name), uid=f"uid-{path[1:]}-{name}")
            await post_review(session, server, path, review)  # asserts the echo


async def test_a_dry_run_gets_the_same_answer_and_counts_no_applied_patch(
    session: aiohttp.ClientSession, server: ServerThread
) -> None:
    bad = load_document("seed-bad.yaml")
    before = await metric_value(session, server, "extproc_guard_patches_applied_total")
    dry = await post_review(session, server, "/mutate", review_of(bad, dry_run=True))
    assert await metric_value(session, server, "extproc_guard_patches_applied_total") == before
    real = await post_review(session, server, "/mutate", review_of(bad))
    assert await metric_value(session, server, "extproc_guard_patches_applied_total") == before + 1
    assert decode_patch(dry) == decode_patch(real)


UNTOUCHED = [
    pytest.param(
        review_of(load_document("seed-bad.yaml"), operation="DELETE") | {}, id="delete-of-a-bad-filter"
    ),
    pytest.param(
        review_of(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}},
            kind={"group": "", "version": "v1", "kind": "ConfigMap"},
        ),
        id="configmap",
    ),
    pytest.param(review_of(load_document("lua-filter.yaml")), id="envoyfilter-without-ext-proc"),
]


@pytest.mark.parametrize("review", UNTOUCHED)
@pytest.mark.parametrize("path", ["/mutate", "/validate"])
async def test_out_of_scope_reviews_are_allowed_untouched(
    session: aiohttp.ClientSession, server: ServerThread, review: dict[str, Any], path: str
) -> None:
    response = await post_review(session, server, path, review)
    assert response == {"uid": review["request"]["uid"], "allowed": True}


def _opted_out() -> dict[str, Any]:
    bad = load_document("seed-bad.yaml")
    bad["metadata"]["annotations"] = {"extproc-guard.io/ignore": "true"}
    return bad


async def test_the_opt_out_annotation_is_honoured(
    session: aiohttp.ClientSession, server: ServerThread
) -> None:
    for path in ("/mutate", "/validate"):
        review = review_of(_opted_out())
        assert await post_review(session, server, path, review) == {
            "uid": review["request"]["uid"],
            "allowed": True,
        }


def _review_bytes(**request: Any) -> bytes:
    review = review_of(load_document("seed-bad.yaml"))
    review["request"].update(request)
    return json.dumps(review).encode()


MALFORMED = [
    pytest.param(b"{not json", "application/json", "not JSON", id="not-json"),
    pytest.param(
        _review_bytes(), "text/plain", "Content-Type must be application/json", id="wrong-content-type"
    ),
    pytest.param(
        json.dumps(
            {**review_of(None, operation="DELETE"), "apiVersion": "admission.k8s.io/v1beta1"}
        ).encode(),
        "application/json",
        "apiVersion",
        id="wrong-api-version",
    ),
    pytest.param(
        json.dumps({**review_of(None, operation="DELETE"), "kind": "Status"}).encode(),
        "application/json",
        "kind must be",
        id="wrong-kind",
    ),
    pytest.param(_review_bytes(uid=None), "application/json", "request.uid", id="no-uid"),
    pytest.param(
        json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
        "application/json",
        "request",
        id="no-request",
    ),
    pytest.param(b"", "application/json", "empty", id="empty-body"),
    pytest.param(
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": ' + b"[" * 300,
        "application/json",
        "not JSON",
        id="deep-nesting",
    ),
]


@pytest.mark.parametrize(("body", "content_type", "reason"), MALFORMED)
@pytest.mark.parametrize("path", ["/mutate", "/validate"])
async def test_malformed_reviews_get_400_with_a_plain_reason(
    session: aiohttp.ClientSession,
    server: ServerThread,
    body: bytes,
    content_type: str,
    reason: str,
    path: str,
) -> None:
    async with session.post(server.url + path, data=body, headers={"Content-Type": content_type}) as response:
        assert response.status == 400
        text = await response.text()
    assert reason in text
    assert text.count("\n") == 1


async def test_a_body_over_3_mib_is_refused_from_its_length(
    session: aiohttp.ClientSession, server: ServerThread
) -> None:
    body = b" " * (3 * 1024 * 1024 + 1)
    async with session.post(
        server.url + "/validate", data=body, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        assert "larger than" in await response.text()


async def test_a_chunked_body_over_3_mib_is_refused_too(
    session: aiohttp.ClientSession, server: ServerThread
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * (1024 * 1024)

    async with session.post(
        server.url + "/mutate", data=chunks(), headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        assert "larger than" in await response.text()


def test_a_body_that_never_arrives_is_refused_not_hung(pki: Pki, server: ServerThread) -> None:
    context = client_context(pki)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(
            b"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"apiVersion":'
        )
        answer = tls.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"not received within" in answer


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/nope", 404, id="unknown-path"),
        pytest.param("POST", "/mutate/extra", 404, id="unknown-subpath"),
        pytest.param("GET", "/mutate", 405, id="get-on-mutate"),
        pytest.param("PUT", "/validate", 405, id="put-on-validate"),
    ],
)
async def test_unknown_paths_and_methods_are_plain_4xx(
    session: aiohttp.ClientSession, server: ServerThread, method: str, path: str, status: int
) -> None:
    async with session.request(method, server.url + path) as response:
        assert response.status == status
        assert response.content_type == "text/plain"


async def test_health_and_readiness_with_static_services(
    session: aiohttp.ClientSession, server: ServerThread
) -> None:
    async with session.get(server.url + "/healthz") as response:
        assert response.status == 200
    async with session.get(server.url + "/readyz") as response:
        assert response.status == 200
        state = await response.json()
    assert state["ready"] is True
    assert state["services"] == {"source": "static --service map", "count": 1}


async def test_metrics_count_reviews_by_operation_result_and_rule(
    session: aiohttp.ClientSession, server: ServerThread
) -> None:
    unfixable = load_document("unfixable.yaml")
    await post_review(session, server, "/validate", review_of(unfixable))
    async with session.get(server.url + "/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    assert re.search(
        r'^extproc_guard_reviews_total\{operation="CREATE",result="denied",webhook="validate"\} [1-9]',
        text,
        re.M,
    )
    assert re.search(
        r'^extproc_guard_review_rules_total\{rule="EPX007",webhook="validate"\} [1-9]', text, re.M
    )
    assert re.search(r'^extproc_guard_review_duration_seconds_count\{webhook="validate"\} [1-9]', text, re.M)
    assert re.search(
        r'^extproc_guard_review_duration_seconds_bucket\{le="\+Inf",webhook="validate"\} [1-9]', text, re.M
    )
    assert re.search(r'^extproc_guard_review_duration_seconds_sum\{webhook="validate"\} \d', text, re.M)
    assert "extproc_guard_patches_applied_total" in text


def test_tls_below_1_2_is_refused(pki: Pki, server: ServerThread) -> None:
    context = client_context(pki)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
        context.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass


def test_tls_1_2_is_accepted(pki: Pki, server: ServerThread) -> None:
    context = client_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.2"


def test_bad_certificate_files_fail_before_listening(tmp_path: Path, pki: Pki) -> None:
    from webhook.server import make_app
    from webhook.tlsreload import TLSFilesError

    tls = pki.write_serving(tmp_path)
    tls.key_file.write_bytes(pki.serving().key_pem)  # a key that does not belong to the certificate
    with pytest.raises(TLSFilesError, match="not a usable certificate and key"):
        make_app(ServeSettings(tls=tls))
