"""`check` over many documents judges them in forked workers: the report is the one a single process gives.

Same results in the same order, same input errors, same counts, and the same context semantics (every
document judged with all inputs: the per-route override of one file settles a finding of another),
whatever the layout of namespaces that decides how the documents are cut into chunks; every document is
judged once. Then the chunks themselves (`chunks_by_namespace`) and the queue that shares them
(`cli.workshare`): every chunk done once, results in chunk order, a dead worker's chunk done here.
"""

from __future__ import annotations

import copy
import io
import json
import os
import select
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import cli.scan
from cli.rapidparse import parse_stream
from cli.report import OutputFormat, render_report
from cli.scan import (
    PARALLEL_MIN_DOCUMENTS,
    ParsedSource,
    ScanSettings,
    ScanStats,
    check_sources,
    chunks_by_namespace,
    parse_all,
    parse_source,
)
from cli.sources import Source, SourceDocument, expand_paths
from cli.workshare import MAX_CHUNKS, run_shared
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


LAYOUTS = {
    "seven namespaces": lambda number: f"team-{number % NAMESPACES}",
    "one namespace": lambda number: "team-0",
    "a namespace each": lambda number: f"team-{number}",
}


@pytest.fixture(scope="module", params=LAYOUTS, ids=LAYOUTS)
def inputs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    namespace_of = LAYOUTS[request.param]
    folder = tmp_path_factory.mktemp("many")
    bases = shapes()
    written = 0
    for number in range(PARALLEL_MIN_DOCUMENTS // 100 + 3):
        batch = []
        for _ in range(100):
            document = copy.deepcopy(bases[written % len(bases)])
            document["metadata"]["name"] = f"f-{written}"
            document["metadata"]["namespace"] = namespace_of(written)
            batch.append(document)
            written += 1
        text = yaml.dump_all(batch, Dumper=yaml.CSafeDumper, sort_keys=False).replace(
            "llm-d-inference-scheduler", "team-0"
        )
        if number == 5:
            text += "---\nkind: Service\napiVersion: v1\nmetadata: {name: x, namespace: team-1}\n"
            text += "---\n- not a mapping\n"
        (folder / f"filters-{number:03d}.yaml").write_text(text)
    (folder / "zz-broken.yaml").write_text("kind: [unclosed\n")
    anchored = copy.deepcopy(bases[0])
    anchored["metadata"].update(name="anchored", namespace="team-0")
    text = yaml.safe_dump(anchored, sort_keys=False) + "x-anchored: &x {a: b}\nx-alias: *x\n"
    assert parse_stream(text) is None, "read by libyaml, whoever parses it"
    (folder / "zz-anchors.yaml").write_text(text)
    listed = {"apiVersion": "v1", "kind": "List", "items": [copy.deepcopy(base) for base in bases]}
    for number, item in enumerate(listed["items"]):
        item["metadata"].update(name=f"listed-{number}", namespace="team-1")
    (folder / "zz-list.json").write_text(json.dumps(listed, indent=1))
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
    assert {name: len(part.workers) for name, part in stats.parts.items()} == {"reading": 1, "judging": 1}
    assert parallel.documents == serial.documents > PARALLEL_MIN_DOCUMENTS
    assert parallel.results == serial.results
    assert [str(error) for error in parallel.errors] == [str(error) for error in serial.errors]
    assert len(parallel.errors) == 2
    assert render_report(parallel, OutputFormat.JSON) == render_report(serial, OutputFormat.JSON)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_every_document_is_judged_once(inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "judged"
    judge = cli.scan.judge_item

    def judge_and_log(item: Any, *args: Any) -> Any:
        if isinstance(item, SourceDocument):
            with log.open("a") as handle:  # one short append per document, from either process
                handle.write(f"{item.file} {item.index} {item.prefix}\n")
        return judge(item, *args)

    monkeypatch.setattr(cli.scan, "judge_item", judge_and_log)
    report = run(inputs, workers=3)
    judged = log.read_text().splitlines()
    assert len(judged) == len(set(judged)) == report.documents


SOURCES = {
    "stream.yaml": "kind: A\nmetadata: {name: a}\n---\n- not a mapping\n---\nkind: List\nitems: [{b: 1}, 3]",
    "object.json": '{"kind": "C", "spec": {"x": [1, 2.5, null, true]}}',
    "anchors.yaml": "kind: D\nbase: &b {x: 1}\nother: *b\n",
    "broken.yaml": "kind: E\n---\nkind: [unclosed\n",
    "chart.yaml": "kind: F\nname: {{ .Values.name }}\n",
    "empty.yaml": "",
    "yes.yaml": "kind: G\nflag: yes\n",
    "float.yaml": "kind: I\nn: 1e3\n",  # JSON rapidyaml writes, whose number PyYAML reads as a string
}


def shape(item: Any) -> Any:
    if not isinstance(item, SourceDocument):
        return str(item)
    lines = {path: item.line_of(path) for path in pointers(item.data)}
    return (item.file, item.index, item.prefix, json.dumps(item.data), lines)


def pointers(value: Any, prefix: str = "") -> Any:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from pointers(item, f"{prefix}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from pointers(item, f"{prefix}/{index}")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_sources_a_worker_parses_are_the_sources_parsed_here(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [
        (Source(f"{n}-{name}", Path(f"{n}-{name}")), text)
        for n in range(40)
        for name, text in SOURCES.items()
    ]
    texts.append((Source("<stdin>", None), '{"kind": "H"}'))
    monkeypatch.setattr(cli.scan, "PARALLEL_MIN_CHARACTERS", 0)
    stats = ScanStats()
    shared = parse_all(texts, workers=3, fast=True, stats=stats)
    alone = parse_all(texts, workers=1, fast=True)
    assert stats.reading is not None
    assert len(stats.reading.workers) == 2
    for one, other in zip(shared, alone, strict=True):
        assert (one.source, one.text, str(one.error), one.skipped) == (
            other.source,
            other.text,
            str(other.error),
            other.skipped,
        )
        assert [shape(item) for item in one.items] == [shape(item) for item in other.items]


def parsed(namespaces: list[str | None]) -> list[ParsedSource]:
    """Sources of up to 10 documents each, the n-th in `namespaces[n]` (None: no namespace, or an input
    error)."""
    sources = []
    for start in range(0, len(namespaces), 10):
        texts = []
        for number, namespace in enumerate(namespaces[start : start + 10], start):
            if namespace is None and number % 2:
                texts.append("- not a mapping\n")
                continue
            where = f", namespace: {namespace}" if namespace is not None else ""
            texts.append(f"kind: ConfigMap\nmetadata: {{name: n{number}{where}}}\n")
        name = f"s{start}.yaml"
        sources.append(parse_source(Source(name, Path(name)), "---\n".join(texts), fast=True))
    return sources


@given(
    namespaces=st.lists(st.one_of(st.none(), st.sampled_from("abcdefg")), min_size=1, max_size=120),
    most=st.integers(min_value=1, max_value=40),
)
def test_chunks_hold_every_document_once_whole_namespaces_first(
    namespaces: list[str | None], most: int
) -> None:
    sources = parsed(namespaces)
    chunks = chunks_by_namespace(sources, most=most)
    positions = [position for chunk in chunks for position in chunk]
    every = [(index, item) for index, source in enumerate(sources) for item in range(len(source.items))]
    assert sorted(positions) == every
    assert all(0 < len(chunk) <= most for chunk in chunks)

    def namespace(position: tuple[int, int]) -> str:
        document = sources[position[0]].items[position[1]]
        return (
            (document.data["metadata"].get("namespace") or "") if isinstance(document, SourceDocument) else ""
        )

    chunks_of: dict[str, set[int]] = {}
    for number, chunk in enumerate(chunks):
        for position in chunk:
            chunks_of.setdefault(namespace(position), set()).add(number)
    for name, numbers in chunks_of.items():
        size = sum(1 for position in every if namespace(position) == name)
        wanted = 1 if size <= most else -(-size // most)
        assert len(numbers) == wanted, f"namespace {name!r} of {size} in {len(numbers)} chunks"


def test_chunks_are_few_enough_for_the_queue_however_many_namespaces() -> None:
    sources = parsed([f"ns{number}" for number in range(3 * MAX_CHUNKS)])
    chunks = chunks_by_namespace(sources, most=1)
    assert len(chunks) <= MAX_CHUNKS
    assert sorted(position for chunk in chunks for position in chunk) == [
        (index, item) for index, source in enumerate(sources) for item in range(len(source.items))
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_every_chunk_is_done_once_and_comes_back_in_order(tmp_path: Path) -> None:
    log = tmp_path / "done"

    def work(number: int) -> tuple[int, int]:
        with log.open("a") as handle:
            handle.write(f"{number}\n")
        return number, number * number

    run = run_shared(300, work, workers=3)
    assert run.results == [(number, number * number) for number in range(300)]
    assert sorted(int(line) for line in log.read_text().split()) == list(range(300))
    assert len(run.cpu.workers) == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_chunk_whose_worker_dies_is_done_here() -> None:
    parent = os.getpid()
    reader, writer = os.pipe()
    lost: list[int] = []

    def work(number: int) -> int:
        if os.getpid() != parent:  # the worker: say which chunk it took, and die with it
            os.write(writer, number.to_bytes(4, "little"))
            os._exit(3)
        if not lost:  # this process's first chunk: wait (bounded) until the worker has taken one
            ready, _, _ = select.select([reader], [], [], 60)
            assert ready, "the worker never took a chunk"
            lost.append(int.from_bytes(os.read(reader, 4), "little"))
        return number + 1

    try:
        run = run_shared(50, work, workers=2)
    finally:
        os.close(reader)
        os.close(writer)
    assert run.results == [number + 1 for number in range(50)]
    assert len(lost) == 1, "the worker took a chunk and died with it: done here all the same (above)"
    assert len(run.cpu.workers) == 1
