"""`fix` over the shared corpus of real EnvoyFilters changes only the lines of rule-owned paths.

The corpus sits beside the repository (`../shared/corpus`); it is read, never copied. Without it these
tests skip, unless CI (or EXTPROC_GUARD_REQUIRE_E2E=1) asks for every real part, when they fail.

- A file whose filters install no ext_proc comes out of `fix` byte for byte: printed, and in place.
- For every other file that parses, each line a diff of `fix --in-place` removes lies inside a node of
  the original at a path one of the engine's patch operations names, and each line it adds lies inside
  such a node of the fixed text. Everything else (other documents, separators, comments, blank lines,
  trailing spaces) is unchanged.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cli.commands.check import build_scan_settings
from cli.main import build_parser, main
from cli.scan import iter_checked, parse_source, with_context
from cli.sources import InputError, Source, read_source
from policies.patch import split_pointer

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus"


@dataclass(frozen=True)
class Entry:
    name: str
    ext_proc: str
    form: str
    services: tuple[str, ...]

    @property
    def path(self) -> Path:
        return CORPUS / self.name

    @property
    def service_args(self) -> list[str]:
        return [arg for service in self.services for arg in ("--service", service)]


def corpus_entries() -> list[Entry]:
    if not CORPUS.is_dir():
        return []
    services: dict[str, set[str]] = {}
    with (CORPUS / "ROLES.tsv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["service"]:
                services.setdefault(row["file"], set()).add(row["service"])
    with (CORPUS / "SOURCES.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return sorted(
        (
            Entry(row["file"], row["ext_proc"], row["form"], tuple(sorted(services.get(row["file"], ()))))
            for row in rows
            if row["form"] != "helm-template"
        ),
        key=lambda entry: entry.name,
    )


ENTRIES = corpus_entries()
WITHOUT = [entry for entry in ENTRIES if entry.ext_proc == "no"]
WITH = [entry for entry in ENTRIES if entry.ext_proc == "yes"]


def short(entry: Entry) -> str:
    return entry.name.split("__")[0] + "/" + entry.name.split("__")[-1]


@pytest.fixture(autouse=True)
def corpus_present() -> None:
    if CORPUS.is_dir():
        return
    reason = f"the shared corpus of real EnvoyFilters is not at {CORPUS.name!r} beside the repository"
    if os.environ.get("CI") == "true" or os.environ.get("EXTPROC_GUARD_REQUIRE_E2E") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_corpus_has_files_of_both_kinds() -> None:
    assert len(WITHOUT) >= 40
    assert len(WITH) >= 20


@pytest.mark.parametrize("entry", WITHOUT, ids=[short(entry) for entry in WITHOUT])
def test_fix_gives_a_file_without_ext_proc_back_byte_for_byte(
    entry: Entry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = entry.path.read_bytes()
    code, out, err = run(["fix", str(entry.path)], capsys)
    if code == 2:
        assert out == "", "an unreadable file prints nothing"
        return
    assert out.encode() == original.removeprefix(b"\xef\xbb\xbf"), err
    target = tmp_path / entry.name
    shutil.copyfile(entry.path, target)
    run(["fix", "--in-place", str(target)], capsys)
    assert target.read_bytes() == original


def owned_ranges(text: str, paths: dict[int, list[str]]) -> set[int]:
    """0-based lines of the nodes at `paths` (per stream document), from a member's key line to the last
    line of its value's own text."""
    lines: set[int] = set()
    for index, root in enumerate(yaml.compose_all(text, Loader=yaml.CSafeLoader)):
        for path in paths.get(index, []):
            found = _node_lines(root, split_pointer(path))
            if found is not None:
                lines.update(range(found[0], found[1] + 1))
    return lines


def _node_lines(root: yaml.Node, tokens: list[str]) -> tuple[int, int] | None:
    node, first = root, int(root.start_mark.line)
    for token in tokens:
        if isinstance(node, yaml.MappingNode):
            match = [(key, value) for key, value in node.value if getattr(key, "value", None) == token]
            if not match:
                return None
            key, node = match[-1]
            first = int(key.start_mark.line)
        elif isinstance(node, yaml.SequenceNode) and token.isdigit() and int(token) < len(node.value):
            node = node.value[int(token)]
            first = int(node.start_mark.line)
        else:
            return None
    last = node
    while isinstance(last, yaml.CollectionNode) and not last.flow_style and last.value:
        tail = last.value[-1]
        last = tail[1] if isinstance(last, yaml.MappingNode) else tail
    return first, int(last.end_mark.line)


def patch_paths(entry: Entry) -> dict[int, list[str]]:
    """The paths the engine's fix writes, per stream document, with the whole file as context."""
    args = build_parser().parse_args(["fix", str(entry.path), *entry.service_args])
    settings = build_scan_settings(args)
    source = Source(str(entry.path), entry.path)
    parsed = parse_source(source, read_source(source, max_bytes=settings.max_bytes, stdin=io.BytesIO()))
    settings = with_context(settings, [parsed])
    paths: dict[int, list[str]] = {}
    for item in iter_checked(parsed, settings):
        if isinstance(item, InputError) or item.evaluation is None:
            continue
        for op in item.evaluation.patch:
            paths.setdefault(item.document.index, []).append(item.document.prefix + op.path)
    return paths


@pytest.mark.parametrize("entry", WITH, ids=[short(entry) for entry in WITH])
def test_fix_changes_only_lines_inside_rule_owned_paths(
    entry: Entry, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / entry.name
    shutil.copyfile(entry.path, target)
    before = target.read_text(encoding="utf-8-sig")
    with caplog.at_level(logging.INFO, logger="cli"):
        code, _, err = run(["fix", "--in-place", str(target), *entry.service_args], capsys)
    assert "text edit not possible" not in caplog.text, "every corpus fix is a text edit"
    if code == 2:
        assert target.read_bytes() == entry.path.read_bytes(), "a file with an input error is left alone"
        return
    assert "comments could not be kept" not in err
    after = target.read_text(encoding="utf-8-sig")
    if after == before:
        return
    paths = patch_paths(entry)
    assert paths, "the file changed, so the engine had operations for it"
    old_owned, new_owned = owned_ranges(before, paths), owned_ranges(after, paths)
    old_lines, new_lines = before.splitlines(keepends=True), after.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        outside_old = [old_lines[i] for i in range(i1, i2) if i not in old_owned]
        outside_new = [new_lines[j] for j in range(j1, j2) if j not in new_owned]
        assert not outside_old, f"removed outside rule-owned paths: {outside_old}"
        assert not outside_new, f"added outside rule-owned paths: {outside_new}"


def test_the_fix_test_sees_real_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Guard against the test above passing because nothing changed."""
    changed = 0
    for entry in WITH:
        target = tmp_path / entry.name
        shutil.copyfile(entry.path, target)
        run(["fix", "--in-place", str(target), *entry.service_args], capsys)
        changed += target.read_bytes() != entry.path.read_bytes()
    assert changed >= 10
