"""`extproc-guard reconcile` as a process, against a fake Kubernetes API that speaks the real REST protocol
(EnvoyFilters, Services list + watch, Leases; no kube-apiserver runs in these tests)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from functools import partial
from pathlib import Path

import aiohttp
import pytest

from tests.documents import load_document
from tests.polling import wait_until_async
from tests.reconciler.conftest import EPP, EPP_IP, NAMESPACE, OPERATOR, without_server_fields
from tests.reconciler.fakeapi import LEASES, FakeKubeAPI

WAIT_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), WAIT_SECONDS)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


wait_for = partial(wait_until_async, timeout=WAIT_SECONDS, interval=0.05)


@pytest.fixture
def epp_service(fake_api: FakeKubeAPI) -> None:
    fake_api.services.put(EPP.namespace, EPP.name, EPP_IP, (9002,))


@pytest.mark.usefixtures("epp_service")
async def test_once_fixes_the_bad_filter_and_exits_zero(fake_api: FakeKubeAPI, kubeconfig: Path) -> None:
    fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)

    code, _out, err = await run_cli("reconcile", "--once", "--kubeconfig", str(kubeconfig))

    assert code == 0, err
    stored = without_server_fields(fake_api.envoy_filter(NAMESPACE, "epp-ext-proc"))
    assert stored == load_document("seed-corrected.yaml")


@pytest.mark.usefixtures("epp_service")
async def test_once_in_dry_run_exits_one_and_writes_nothing(fake_api: FakeKubeAPI, kubeconfig: Path) -> None:
    fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)

    code, _out, err = await run_cli("-v", "reconcile", "--once", "--dry-run", "--kubeconfig", str(kubeconfig))

    assert code == 1
    assert "would patch envoyfilter llm-d-inference-scheduler/epp-ext-proc" in err
    assert fake_api.writes() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lease-namespace", "ns"], "--lease-namespace needs --lease-name"),
        (["--interval", "0"], "must be from 1 to 86400 seconds"),
        (["--namespace", "Not_A_Namespace"], "is not a namespace name"),
        (["--kubeconfig", "no-such-kubeconfig"], "kubeconfig file not found"),
    ],
    ids=["lease-namespace-alone", "zero-interval", "bad-namespace", "missing-kubeconfig"],
)
async def test_bad_flags_are_one_line_and_exit_two(args: list[str], message: str) -> None:
    code, out, err = await run_cli("reconcile", "--once", *args)

    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert message in err


@pytest.mark.usefixtures("epp_service")
async def test_sigterm_releases_the_lease_after_fixing_and_serving_metrics(
    fake_api: FakeKubeAPI, kubeconfig: Path
) -> None:
    fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "reconcile",
        "--kubeconfig",
        str(kubeconfig),
        "--lease-name",
        "extproc-guard-reconciler",
        "--lease-namespace",
        "extproc-guard-system",
        "--identity",
        "cli-replica",
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        def fixed() -> bool:
            patches = fake_api.envoy_filter(NAMESPACE, "epp-ext-proc")["spec"]["configPatches"]
            return bool(patches[0]["patch"]["operation"] == "REPLACE")

        await wait_for(fixed, "the reconciler fixed the filter")
        (lease,) = fake_api.objects_of(*LEASES)
        assert lease["spec"]["holderIdentity"] == "cli-replica"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            metrics = await response.text()
        assert 'extproc_guard_reconcile_objects_fixed_total{cause="audit"} 1.0' in metrics
        assert "extproc_guard_reconcile_leader 1.0" in metrics

        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), WAIT_SECONDS)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        assert process.stderr is not None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(process.stderr.read(), 2.0)

    assert code == 0
    (lease,) = fake_api.objects_of(*LEASES)
    assert lease["spec"]["holderIdentity"] == ""
