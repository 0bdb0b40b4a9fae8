"""`check` and `fix` build one context from every document given together: over one multi-document file,
over a folder, and over several files (through `cli.main.main`, as a user runs them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import main
from tests.policies.shapes import (
    MERGE_EPP,
    SHAPES,
    SPLIT_EPP,
    SPLIT_EPP_IP,
    load_shape,
    service_document,
    shape_text,
)

SPLIT_SERVICE = ["--service", f"{SPLIT_EPP}={SPLIT_EPP_IP}:9002"]
OTHERS = ("bbr", "activator", "semantic-router", "sidecar", "unmarked")

Key = tuple[str, str, str]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, Any]]]:
    code, out, err = run(["check", "-o", "json", *argv], capsys)
    assert code in (0, 1), err
    findings: list[dict[str, Any]] = json.loads(out)["findings"]
    return code, findings


def by_key(documents: list[Any]) -> dict[Key, dict[str, Any]]:
    keyed: dict[Key, dict[str, Any]] = {}
    for document in documents:
        if isinstance(document, dict):
            metadata = document.get("metadata", {})
            keyed[(document["kind"], metadata.get("namespace", ""), metadata["name"])] = document
    return keyed


def fixed(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[Key, dict[str, Any]]]:
    code, out, err = run(["fix", *argv], capsys)
    assert code in (0, 1), err
    return code, by_key([document for document in yaml.safe_load_all(out) if document is not None])


def split_into_files(folder: Path) -> Path:
    """The split EPP path as three files, one EnvoyFilter each."""
    folder.mkdir()
    for index, document in enumerate(load_shape("epp-split")):
        (folder / f"{index}-{document['metadata']['name']}.yaml").write_text(yaml.safe_dump(document))
    return folder


def rules(findings: list[dict[str, Any]], name: str | None = None) -> set[str]:
    return {finding["rule"] for finding in findings if name is None or finding["name"] == name}


# check ---------------------------------------------------------------------------------------------------


def test_check_over_one_multi_document_file_finds_the_cluster_another_document_adds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, findings = check_json([str(SHAPES / "epp-split.yaml")], capsys)
    assert code == 1
    assert "EPX007" not in rules(findings)
    (dns,) = [finding for finding in findings if finding["rule"] == "EPX003"]
    assert dns["name"] == "granite-picker-cluster"
    assert dns["role"] == "epp"
    assert rules(findings, "granite-picker-routes") == set()


def test_check_over_a_folder_reads_the_path_from_all_its_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = split_into_files(tmp_path / "split")
    code, findings = check_json([str(folder)], capsys)
    assert code == 1
    assert "EPX007" not in rules(findings)
    assert rules(findings, "granite-picker-cluster") == {"EPX003"}
    assert {Path(finding["file"]).name for finding in findings if finding["rule"] == "EPX003"} == {
        "1-granite-picker-cluster.yaml"
    }


def test_check_of_the_filter_file_alone_denies_its_dangling_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = split_into_files(tmp_path / "split")
    code, findings = check_json([str(folder / "0-granite-picker-filter.yaml")], capsys)
    assert code == 1
    (dangling,) = [finding for finding in findings if finding["rule"] == "EPX007"]
    assert dangling["level"] == "enforce"


def test_check_of_several_files_forms_one_context(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = split_into_files(tmp_path / "split")
    files = [str(folder / "0-granite-picker-filter.yaml"), str(folder / "1-granite-picker-cluster.yaml")]
    _, findings = check_json(files, capsys)
    assert "EPX007" not in rules(findings)


def test_a_gie_file_with_its_inference_pool_and_service_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code, findings = check_json([str(SHAPES / "gie-epp.yaml")], capsys)
    assert (code, findings) == (0, [])


@pytest.mark.parametrize(
    ("port", "rule"),
    [
        ({"name": "grpc", "port": 9090}, "EPX007"),
        ({"name": "http", "port": 9002}, "EPX005"),
    ],
    ids=["service lacks the port", "port is plain http"],
)
def test_a_service_document_in_another_file_answers_for_istios_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], port: dict[str, Any], rule: str
) -> None:
    service = tmp_path / "service.yaml"
    service.write_text(yaml.safe_dump(service_document(MERGE_EPP, "10.96.30.7", [port])))
    code, findings = check_json([str(SHAPES / "istio-merge.yaml"), str(service)], capsys)
    assert code == 1
    (finding,) = [finding for finding in findings if finding["rule"] == rule]
    assert finding["level"] == "enforce"
    assert finding["role"] == "epp"


# fix -----------------------------------------------------------------------------------------------------


def test_fix_over_a_folder_fixes_the_epp_path_and_leaves_every_other_document_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = split_into_files(tmp_path / "inputs")
    for shape in OTHERS:
        (folder / f"{shape}.yaml").write_text(shape_text(shape))
    originals = by_key([document for shape in OTHERS for document in load_shape(shape)])
    code, documents = fixed([str(folder), *SPLIT_SERVICE], capsys)
    assert code == 1, "the other users' problems remain, unfixed"
    for key, original in originals.items():
        assert documents[key] == original, key
    filter_document = documents[("EnvoyFilter", "llm-serving", "granite-picker-filter")]
    assert len(filter_document["spec"]["configPatches"]) == 1, "the override in another file counts"
    assert filter_document["spec"]["configPatches"][0]["patch"]["operation"] == "REPLACE"
    cluster = documents[("EnvoyFilter", "llm-serving", "granite-picker-cluster")]
    assert cluster["spec"]["configPatches"][0]["patch"]["value"]["type"] == "STATIC"


def test_fix_of_one_multi_document_file_fixes_to_a_clean_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, documents = fixed([str(SHAPES / "epp-split.yaml"), *SPLIT_SERVICE], capsys)
    assert code == 0
    output = tmp_path / "fixed.yaml"
    output.write_text(yaml.safe_dump_all(list(documents.values())))
    code, findings = check_json([str(output), *SPLIT_SERVICE], capsys)
    assert code == 0
    assert [finding for finding in findings if finding["level"] == "enforce"] == []


def test_fix_leaves_a_gie_path_split_over_files_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "gie"
    folder.mkdir()
    (path, _pool, service) = load_shape("gie-epp")  # without the pool: the path's form alone decides
    for index, patch in enumerate(path["spec"]["configPatches"]):
        part = {**path, "metadata": {**path["metadata"], "name": f"vicuna-part-{index}"}}
        part["spec"] = {**path["spec"], "configPatches": [patch]}
        (folder / f"part-{index}.yaml").write_text(yaml.safe_dump(part))
    (folder / "service.yaml").write_text(yaml.safe_dump(service))
    before = by_key([yaml.safe_load(file.read_text()) for file in sorted(folder.iterdir())])
    code, documents = fixed([str(folder)], capsys)
    assert code == 0
    assert documents == before
