"""`extproc-guard doctor` as people and scripts use it: flags, output shapes, exit codes.

Inputs are admin text recorded from a real Envoy (tests/doctor/data). The `--admin` tests serve that text
from a real aiohttp server on loopback, so the HTTP reading and `--watch` deltas run for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from tests.doctor.loopback import serving
from tests.doctor.runner import DoctorRun, run_doctor

DATA = Path(__file__).parent / "data"
CORRECTED = Path(__file__).parents[2] / "manifests" / "examples" / "seed-corrected.yaml"
ISTIO_CLUSTER = "outbound|9002||gaie-epp.llm-d.svc.cluster.local"


def stats(case: str) -> str:
    return str(DATA / f"{case}.stats.txt")


def clusters(case: str) -> str:
    return str(DATA / f"{case}.clusters.txt")


def assert_one_line_error(run: DoctorRun) -> None:
    assert run.code == 2
    assert run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1
    assert "Traceback" not in run.stderr


def test_healthy_recording_exits_0_and_shows_its_evidence() -> None:
    run = run_doctor(["--stats", stats("healthy"), "--clusters", clusters("healthy")])
    assert run.code == 0
    assert "verdict: healthy" in run.stdout
    assert "http.outbound_0.0.0.0_80.ext_proc.streams_started = 5" in run.stdout


def test_broken_recording_exits_1_with_the_exact_json_shape() -> None:
    run = run_doctor(["--stats", stats("no-http2"), "-o", "json"])
    assert run.code == 1
    document = json.loads(run.stdout)
    assert set(document) == {"verdict", "causes"}
    assert document["verdict"] == "broken"
    first = document["causes"][0]
    assert set(first) == {"rule", "cause", "evidence", "fix"}
    assert first["rule"] == "EPX005"
    assert first["evidence"]["cluster.epp-cluster.upstream_cx_protocol_error"] == 5


def test_text_output_numbers_causes_best_first_with_evidence_and_fix() -> None:
    run = run_doctor(["--stats", stats("failure-mode-allow-epp-down")])
    assert run.code == 1
    lines = run.stdout.splitlines()
    numbered = [line for line in lines if line[:2] in ("1.", "2.")]
    assert [line.split(":")[0] for line in numbered] == [
        "1. EPX009 failure-mode-allow",
        "2. EPX006 epp-clusterip-stale",
    ]
    assert any(line.strip().startswith("fix: set failure_mode_allow: false") for line in lines)


def test_two_identical_snapshots_are_a_window_without_traffic_and_exit_3() -> None:
    run = run_doctor(["--stats", stats("no-http2"), "--stats", stats("no-http2"), "-o", "json"])
    assert run.code == 3
    assert json.loads(run.stdout) == {"verdict": "unknown", "causes": []}


def test_stats_from_stdin() -> None:
    text = (DATA / "no-http2.stats.txt").read_text()
    run = run_doctor(["--stats", "-", "-o", "json"], stdin=text)
    assert run.code == 1
    assert json.loads(run.stdout)["causes"][0]["rule"] == "EPX005"


def test_filter_file_names_the_istio_cluster(tmp_path: Path) -> None:
    original = CORRECTED.read_text()
    envoy_filter = tmp_path / "filter.yaml"
    envoy_filter.write_text(original.replace("epp-cluster", ISTIO_CLUSTER))
    run = run_doctor(["--stats", stats("istio-names-no-http2"), "--filter", str(envoy_filter), "-o", "json"])
    assert run.code == 1
    first = json.loads(run.stdout)["causes"][0]
    assert first["rule"] == "EPX005"
    assert f"cluster.{ISTIO_CLUSTER}.upstream_cx_protocol_error" in first["evidence"]


def test_epp_cluster_flag_wins_over_the_filter() -> None:
    run = run_doctor(
        [
            "--stats",
            stats("istio-names-no-http2"),
            "--filter",
            str(CORRECTED),
            "--epp-cluster",
            ISTIO_CLUSTER,
            "-o",
            "json",
        ]
    )
    assert json.loads(run.stdout)["causes"][0]["rule"] == "EPX005"


def test_help_documents_every_exit_code() -> None:
    run = run_doctor(["--help"])
    assert run.code == 0
    for line in ("0  healthy", "1  broken", "2  usage error or unreadable input", "3  unknown"):
        assert line in run.stdout


def _write(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


MakeArgv = Callable[[Path], list[str]]

BAD_INPUTS: dict[str, MakeArgv] = {
    "garbage-stats": lambda tmp: ["--stats", _write(tmp, "g.txt", b"hello\nworld\n")],
    "missing-file": lambda tmp: ["--stats", str(tmp / "absent.txt")],
    "binary-file": lambda tmp: ["--stats", _write(tmp, "b.bin", b"\xff\xfe\x00\x01")],
    "clusters-as-stats": lambda tmp: ["--stats", clusters("healthy")],
    "stats-as-clusters": lambda tmp: ["--stats", stats("healthy"), "--clusters", stats("healthy")],
    "three-snapshots": lambda tmp: ["--stats", stats("healthy")] * 3,
    "watch-without-live-source": lambda tmp: ["--stats", stats("healthy"), "--watch", "1"],
    "filter-not-yaml": lambda tmp: [
        "--stats",
        stats("healthy"),
        "--filter",
        _write(tmp, "f.yaml", b"a: [\n"),
    ],
    "filter-without-ext-proc": lambda tmp: [
        "--stats",
        stats("healthy"),
        "--filter",
        _write(tmp, "f.yaml", b"kind: Service\n"),
    ],
    "admin-not-a-url": lambda tmp: ["--admin", "localhost:15000"],
    "zero-timeout": lambda tmp: ["--admin", "http://127.0.0.1:15000", "--timeout", "0"],
    "watch-too-long": lambda tmp: ["--admin", "http://127.0.0.1:15000", "--watch", "86400"],
    "pod-without-namespace": lambda tmp: ["--pod", "gateway-pod"],
    "no-source": lambda tmp: [],
    "two-sources": lambda tmp: ["--stats", stats("healthy"), "--admin", "http://127.0.0.1:1"],
}


@pytest.mark.parametrize("make_argv", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_unreadable_input_exits_2_with_one_line(make_argv: MakeArgv, tmp_path: Path) -> None:
    assert_one_line_error(run_doctor(make_argv(tmp_path)))


def test_unreachable_admin_exits_2_with_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = run_doctor(["--admin", f"http://127.0.0.1:{port}", "--timeout", "5"])
    assert_one_line_error(run)
    assert "cannot read" in run.stderr


class _Admin:
    """A stand-in admin endpoint serving recorded Envoy text: each /stats read gets the next snapshot."""

    def __init__(self, snapshots: list[str], clusters_text: str) -> None:
        self.snapshots = snapshots
        self.clusters_text = clusters_text
        self.reads = 0

    async def stats(self, request: web.Request) -> web.Response:
        text = self.snapshots[min(self.reads, len(self.snapshots) - 1)]
        self.reads += 1
        return web.Response(text=text)

    async def clusters(self, request: web.Request) -> web.Response:
        return web.Response(text=self.clusters_text)


@contextlib.asynccontextmanager
async def _serve(admin: _Admin) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/stats", admin.stats)
    app.router.add_get("/clusters", admin.clusters)
    async with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


def _bumped(text: str, increments: dict[str, int]) -> str:
    lines = []
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and name in increments and value.isdigit():
            line = f"{name}: {int(value) + increments[name]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


async def test_admin_watch_diagnoses_the_delta_not_the_old_failures() -> None:
    before = (DATA / "no-http2.stats.txt").read_text()
    after = _bumped(
        before,
        {
            "http.outbound_0.0.0.0_80.downstream_rq_total": 3,
            "http.outbound_0.0.0.0_80.ext_proc.streams_started": 3,
            "cluster.epp-cluster.upstream_rq_total": 3,
        },
    )
    admin = _Admin([before, before, after], (DATA / "no-http2.clusters.txt").read_text())
    async with _serve(admin) as url:
        single = await asyncio.to_thread(run_doctor, ["--admin", url, "-o", "json"])
        watched = await asyncio.to_thread(run_doctor, ["--admin", url, "--watch", "0.1", "-o", "json"])
    assert (single.code, json.loads(single.stdout)["causes"][0]["rule"]) == (1, "EPX005")
    assert (watched.code, json.loads(watched.stdout)) == (0, {"verdict": "healthy", "causes": []})
    assert admin.reads == 3


async def test_admin_serving_garbage_exits_2() -> None:
    admin = _Admin(["<html>not envoy</html>"], "")
    async with _serve(admin) as url:
        run = await asyncio.to_thread(run_doctor, ["--admin", url])
    assert_one_line_error(run)


def test_policy_file_gives_the_epp_cluster_and_the_profile(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"profile: gie-epp\nepp_cluster: '{ISTIO_CLUSTER}'\n")
    broken = run_doctor(["--stats", stats("istio-names-no-http2"), "--policy", str(policy), "-o", "json"])
    assert json.loads(broken.stdout)["causes"][0]["rule"] == "EPX005"
    waiting = run_doctor(["--stats", stats("body-none-epp-waits"), "--policy", str(policy), "-o", "json"])
    assert json.loads(waiting.stdout)["causes"][0]["fix"].startswith(
        "set request_body_mode: FULL_DUPLEX_STREAMED"
    )


def test_profile_flag_wins_over_the_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("profile: gie-epp\n")
    run = run_doctor(
        ["--stats", stats("body-none-epp-waits"), "--policy", str(policy), "--profile", "headers-epp"]
    )
    assert "profile headers-epp" in run.stdout


def test_unusable_policy_file_exits_2_with_one_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("profile: no-such-profile\n")
    assert_one_line_error(run_doctor(["--stats", stats("healthy"), "--policy", str(policy)]))
