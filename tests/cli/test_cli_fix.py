"""`extproc-guard fix` end to end: corrected output, in-place rewrites that keep comments, idempotence."""

from __future__ import annotations

import difflib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cli.main import main
from tests.cli.clirun import SCRIPT, SERVICE, run
from tests.documents import EXAMPLES, SEED_BAD, SEED_CORRECTED

BROKEN = ("seed-bad.yaml", "camelcase-no-http2.yaml", "failure-mode-allow.yaml")


def copy_example(name: str, folder: Path) -> Path:
    target = folder / name
    shutil.copyfile(EXAMPLES / name, target)
    return target


def enforce_findings(path: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    main(["check", "-o", "json", str(path), *SERVICE])
    findings: list[dict[str, object]] = json.loads(capsys.readouterr().out)["findings"]
    return [finding for finding in findings if finding["level"] == "enforce"]


def test_fixing_the_seed_prints_the_corrected_form(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["fix", str(SEED_BAD), *SERVICE], capsys)
    assert code == 0
    assert yaml.safe_load(out) == yaml.safe_load(SEED_CORRECTED.read_text())


@pytest.mark.parametrize("name", BROKEN)
def test_fixed_output_checks_clean(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["fix", str(EXAMPLES / name), *SERVICE], capsys)
    assert code == 0
    fixed = tmp_path / name
    fixed.write_text(out)
    assert enforce_findings(EXAMPLES / name, capsys)
    assert enforce_findings(fixed, capsys) == []


@pytest.mark.parametrize("name", BROKEN)
def test_fix_in_place_keeps_every_comment_and_changes_only_rule_owned_lines(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = copy_example(name, tmp_path)
    before = target.read_text()
    code, out, err = run(["fix", "--in-place", str(target), *SERVICE], capsys)
    assert (code, out) == (0, "")
    assert f"fixed {target}" in err
    after = target.read_text()
    comments = [
        line.split("#", 1)[1] for line in before.splitlines() if "#" in line and '"@type"' not in line
    ]
    assert all(any(comment in line for line in after.splitlines()) for comment in comments)
    removed = [
        line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line.startswith("- ")
    ]
    owned = ("name:", "operation:", "_mode:", "Mode:", "type:", "address:")
    assert after != before, "the example is broken, so something must change"
    assert all(any(key in line for key in owned) for line in removed), removed


def test_fix_leaves_unrelated_documents_byte_for_byte(capsys: pytest.CaptureFixture[str]) -> None:
    source = (EXAMPLES / "failure-mode-allow.yaml").read_text()
    code, out, _ = run(["fix", str(EXAMPLES / "failure-mode-allow.yaml"), *SERVICE], capsys)
    assert code == 0
    assert out.split("\n---\n", 1)[1] == source.split("\n---\n", 1)[1]


def test_fix_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = copy_example("seed-bad.yaml", tmp_path)
    run(["fix", "--in-place", str(target), *SERVICE], capsys)
    once = target.read_text()
    code, _, err = run(["fix", "--in-place", str(target), *SERVICE], capsys)
    assert code == 0
    assert "fixed" not in err
    assert target.read_text() == once


def test_camel_case_documents_are_fixed_in_camel_case(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(["fix", str(EXAMPLES / "camelcase-no-http2.yaml"), *SERVICE], capsys)
    cluster = yaml.safe_load(out)["spec"]["configPatches"][1]["patch"]["value"]
    assert "typedExtensionProtocolOptions" in cluster
    assert "typed_extension_protocol_options" not in cluster


def test_several_files_print_as_one_stream_separated_by_document_markers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["fix", str(SEED_BAD), str(EXAMPLES / "failure-mode-allow.yaml"), *SERVICE], capsys)
    assert code == 0
    kinds = [doc["kind"] for doc in yaml.safe_load_all(out)]
    assert kinds == ["EnvoyFilter", "EnvoyFilter", "Service"]


def test_without_the_service_address_the_cluster_cannot_be_pinned_and_fix_exits_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(["fix", str(SEED_BAD)], capsys)
    assert code == 1
    assert "EPX003 epp-cluster-dns" in err
    assert "--service" in err
    fixed = yaml.safe_load(out)
    assert fixed["spec"]["configPatches"][0]["patch"]["operation"] == "REPLACE"


def test_json_files_stay_json_when_fixed_in_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "seed.json"
    target.write_text(json.dumps(yaml.safe_load(SEED_BAD.read_text()), indent=4) + "\n")
    code, _, _ = run(["fix", "-i", str(target), *SERVICE], capsys)
    assert code == 0
    text = target.read_text()
    assert json.loads(text) == yaml.safe_load(SEED_CORRECTED.read_text())
    assert text.splitlines()[1].startswith('    "apiVersion"')


def test_a_bad_file_is_reported_and_the_good_ones_are_still_fixed_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = copy_example("seed-bad.yaml", tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    code, _, err = run(["fix", "-i", str(bad), str(target), *SERVICE], capsys)
    assert code == 2
    assert f"extproc-guard: error: {bad}: invalid YAML" in err
    assert enforce_findings(target, capsys) == []
    assert bad.read_text() == "kind: [unclosed\n"


def test_in_place_refuses_stdin_through_the_console_script() -> None:
    result = subprocess.run(
        [str(SCRIPT), "fix", "--in-place", "-"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2
    assert result.stderr == "extproc-guard: error: --in-place cannot rewrite stdin; drop '-' or --in-place\n"


def test_stdin_is_fixed_to_stdout_through_the_console_script() -> None:
    result = subprocess.run(
        [str(SCRIPT), "fix", "-", *SERVICE],
        input=SEED_BAD.read_text(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == yaml.safe_load(SEED_CORRECTED.read_text())
    assert "# placed relative to the router" in result.stdout


def test_a_kubectl_list_is_fixed_item_by_item(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = [
        yaml.safe_load(SEED_BAD.read_text()),
        *yaml.safe_load_all((EXAMPLES / "failure-mode-allow.yaml").read_text()),
    ]
    listing = tmp_path / "list.yaml"
    listing.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}, sort_keys=False))
    assert len(enforce_findings(listing, capsys)) > 0
    code, _, _ = run(["fix", "-i", str(listing), *SERVICE], capsys)
    assert code == 0
    assert enforce_findings(listing, capsys) == []
    fixed_items = yaml.safe_load(listing.read_text())["items"]
    assert fixed_items[0] == yaml.safe_load(SEED_CORRECTED.read_text())
    assert fixed_items[2] == items[2]
