"""`check` over many documents judges them in forked workers: the report is the one a single process gives.

Same results in the same order, same input errors, same counts, and the same context semantics (every
document judged with all inputs: the per-route override of one file settles a finding of another).
"""

from __future__ import annotations

import copy
import functools
import io
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.report import OutputFormat, render_report
from cli.scan import PARALLEL_MIN_DOCUMENTS, ScanSettings, ScanStats, _fork, check_sources
from cli.sources import expand_paths
from policies import default_policy
from policies.resolver import ServiceAddress, ServiceRef, StaticResolver

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"
EPP = "gaie-inference-scheduling-epp"
NAMESPACES = 7


def shapes() -> list[dict[str, Any]]:
    found = []
    for name in (
        "seed-bad.yaml",
        "seed-corrected.yaml",
        "camelcase-no-http2.yaml",
        "failure-mode-allow.yaml",
    ):
        documents = yaml.safe_load_all((EXAMPLES / name).read_text())
        found.append(next(doc for doc in documents if doc and doc["kind"] == "EnvoyFilter"))
    return found


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    bases = shapes()
    written = 0
    for number in range(PARALLEL_MIN_DOCUMENTS // 100 + 3):
        batch = []
        for _ in range(100):
            document = copy.deepcopy(bases[written % len(bases)])
            document["metadata"]["name"] = f"f-{written}"
            document["metadata"]["namespace"] = f"team-{written % NAMESPACES}"
            batch.append(document)
            written += 1
        text = yaml.safe_dump_all(batch, sort_keys=False).replace("llm-d-inference-scheduler", "team-0")
        if number == 5:
            text += "---\nkind: Service\napiVersion: v1\nmetadata: {name: x, namespace: team-1}\n"
            text += "---\n- not a mapping\n"
        (folder / f"filters-{number:03d}.yaml").write_text(text)
    (folder / "zz-broken.yaml").write_text("kind: [unclosed\n")
    return folder


def run(folder: Path, workers: int, stats: ScanStats | None = None) -> Any:
    services = {
        ServiceRef(f"team-{n}", EPP): ServiceAddress("10.96.45.12", (9002,)) for n in range(NAMESPACES)
    }
    settings = ScanSettings(policy=default_policy(), resolver=StaticResolver(services), workers=workers)
    sources, errors = expand_paths([str(folder)])
    return check_sources(sources, settings, stdin=io.BytesIO(), errors=errors, stats=stats)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_workers_give_the_report_one_process_gives(inputs: Path) -> None:
    stats = ScanStats()
    parallel = run(inputs, workers=2, stats=stats)
    serial = run(inputs, workers=1)
    assert len(stats.worker_cpu) == 1, "one worker beside this process"
    assert parallel.documents == serial.documents > PARALLEL_MIN_DOCUMENTS
    assert parallel.results == serial.results
    assert [str(error) for error in parallel.errors] == [str(error) for error in serial.errors]
    assert len(parallel.errors) == 2
    assert render_report(parallel, OutputFormat.JSON) == render_report(serial, OutputFormat.JSON)


def test_a_worker_that_dies_is_noticed() -> None:
    worker = _fork(functools.partial(os._exit, 3))
    verdicts, cpu = worker.collect()
    assert verdicts is None
    assert cpu >= 0.0
