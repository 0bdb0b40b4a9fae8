"""The serving certificate: hot reload under load, a bad pair never served, client-certificate checks."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.documents import load_document
from tests.polling import wait_until_async
from tests.webhook.serverkit import metric_value, static_server
from tests.webhook.webhookrig import (
    Pki,
    ServerThread,
    client_context,
    fingerprint,
    replace_file,
    review_of,
    served_fingerprint,
)

POLL_SECONDS = 0.1


@pytest.fixture
def server(pki: Pki, tmp_path: Path) -> Iterator[ServerThread]:
    tls = dataclasses.replace(pki.write_serving(tmp_path / "tls"), poll_seconds=POLL_SECONDS)
    with static_server(tls) as running:
        yield running


async def wait_for_fingerprint(server: ServerThread, pki: Pki, expected: str) -> None:
    context = client_context(pki)

    async def served() -> bool:
        return await asyncio.to_thread(served_fingerprint, server.port, context) == expected

    await wait_until_async(served, "the new certificate is served")


async def reload_count(session: aiohttp.ClientSession, server: ServerThread, result: str) -> float:
    return await metric_value(session, server, f'extproc_guard_tls_reloads_total{{result="{result}"}}')


async def test_a_rotated_certificate_is_served_without_failing_a_request(
    pki: Pki, server: ServerThread
) -> None:
    old = server.settings.tls
    assert served_fingerprint(server.port, client_context(pki)) == fingerprint(old.cert_file.read_bytes())
    review = review_of(load_document("seed-corrected.yaml"))
    outcomes: list[int | str] = []
    rotated = asyncio.Event()
    after_rotation = 0

    async def load(session: aiohttp.ClientSession) -> None:
        nonlocal after_rotation
        while not stop.is_set():
            try:
                async with session.post(server.url + "/validate", json=review) as response:
                    await response.read()
                    outcomes.append(response.status)
            except (aiohttp.ClientError, OSError) as error:
                outcomes.append(f"{type(error).__name__}: {error}")
            if rotated.is_set():
                after_rotation += 1

    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=10)
    # One client keeps its connections (they keep the old certificate), one handshakes on every request.
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(pki)), timeout=timeout
        ) as keep,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(pki), force_close=True), timeout=timeout
        ) as fresh,
    ):
        workers = [asyncio.create_task(load(s)) for s in (keep, keep, fresh, fresh)]
        try:
            await wait_until_async(lambda: len(outcomes) >= 20, "load is flowing")
            new = pki.serving()
            # Two renames with a pause: pollers see a new certificate with the old key for a while.
            replace_file(old.cert_file, new.cert_pem)
            await asyncio.sleep(3 * POLL_SECONDS)
            replace_file(old.key_file, new.key_pem)
            await wait_for_fingerprint(server, pki, fingerprint(new.cert_pem))
            rotated.set()
            await wait_until_async(lambda: after_rotation >= 20, "requests after the rotation")
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*workers), timeout=20)
    failures = [o for o in outcomes if o != 200]
    assert failures == []
    assert len(outcomes) >= 40


async def test_a_broken_pair_is_not_served_and_the_last_good_one_stays(
    pki: Pki, server: ServerThread
) -> None:
    tls = server.settings.tls
    served = fingerprint(tls.cert_file.read_bytes())
    connector = aiohttp.TCPConnector(ssl=client_context(pki), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        failed_before = await reload_count(session, server, "failed")
        replace_file(
            tls.cert_file, b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"
        )

        async def failed_once_more() -> bool:
            return await reload_count(session, server, "failed") > failed_before

        await wait_until_async(failed_once_more, "the broken pair is seen and refused")
        assert served_fingerprint(server.port, client_context(pki)) == served
        review = review_of(load_document("seed-corrected.yaml"))
        async with session.post(server.url + "/validate", json=review) as response:
            assert response.status == 200
        good = pki.serving()
        replace_file(tls.key_file, good.key_pem)
        replace_file(tls.cert_file, good.cert_pem)
        await wait_for_fingerprint(server, pki, fingerprint(good.cert_pem))
        assert await reload_count(session, server, "ok") >= 1


@pytest.fixture
def mtls_server(pki: Pki, tmp_path: Path) -> Iterator[ServerThread]:
    (tmp_path / "client-ca.crt").write_bytes(pki.ca.cert_pem)
    tls = dataclasses.replace(pki.write_serving(tmp_path / "tls"), client_ca_file=tmp_path / "client-ca.crt")
    with static_server(tls) as running:
        yield running


async def post_validate(server: ServerThread, context: object) -> int:
    connector = aiohttp.TCPConnector(ssl=context, force_close=True)  # type: ignore[arg-type]
    async with (
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.post(
            server.url + "/validate", json=review_of(load_document("seed-corrected.yaml"))
        ) as response,
    ):
        await response.read()
        return response.status


async def test_with_a_client_ca_a_client_certificate_from_it_is_accepted(
    pki: Pki, mtls_server: ServerThread, tmp_path: Path
) -> None:
    context = client_context(pki, client=pki.client(), folder=tmp_path / "client")
    assert await post_validate(mtls_server, context) == 200


async def test_with_a_client_ca_a_client_without_a_certificate_is_refused(
    pki: Pki, mtls_server: ServerThread
) -> None:
    with pytest.raises((aiohttp.ClientError, OSError)):
        await post_validate(mtls_server, client_context(pki))


async def test_with_a_client_ca_a_certificate_from_another_ca_is_refused(
    pki: Pki, mtls_server: ServerThread, tmp_path: Path
) -> None:
    stranger = Pki().client()
    context = client_context(pki, client=stranger, folder=tmp_path / "stranger")
    with pytest.raises((aiohttp.ClientError, OSError)):
        await post_validate(mtls_server, context)
