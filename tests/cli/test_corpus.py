"""`check` and `fix` over real EnvoyFilters from public repositories (the shared corpus), doing no harm.

The corpus sits beside the repository (`../shared/corpus`, with `SOURCES.tsv` and `ROLES.tsv`); it is read,
never copied. Without it these tests skip with a reason, unless CI (or EXTPROC_GUARD_REQUIRE_E2E=1) asks
for every real part, in which case its absence fails them.

What is checked, per file, with the Services `ROLES.tsv` names for that file:
- no crash: a file is checked or reported as unreadable input (one line, exit 2), never a traceback;
- no enforce finding on a document without ext_proc (unless it adds a cluster an ext_proc filter uses);
- `fix` changes no document whose role is `other`;
- rendered on a gateway that runs the EPP's ext_proc filter and the router, the fixed EnvoyFilter keeps
  every other HTTP filter, in order, with its config, and the EPP's ext_proc filter runs before the router;
- an EPP document whose Service is known fixes to no enforce finding;
- every rendered fix passes `envoy --mode validate`.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import main
from policies.render import RenderError, RenderOptions, render_gateway
from tests.envoy_rig import EnvoyStartError, find_envoy

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus"
ROUTER = "envoy.filters.http.router"
EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
VALIDATE_TIMEOUT = 120.0


def _require_corpus() -> None:
    if CORPUS.is_dir():
        return
    reason = f"the shared corpus of real EnvoyFilters is not at {CORPUS.name!r} beside the repository"
    if os.environ.get("CI") == "true" or os.environ.get("EXTPROC_GUARD_REQUIRE_E2E") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class CorpusFile:
    name: str
    ext_proc: bool
    form: str
    roles: dict[int, str] = field(default_factory=dict)
    services: set[str] = field(default_factory=set)

    @property
    def path(self) -> Path:
        return CORPUS / self.name

    @property
    def service_args(self) -> list[str]:
        return [arg for service in sorted(self.services) for arg in ("--service", service)]


def corpus_files() -> list[CorpusFile]:
    if not CORPUS.is_dir():
        return []
    with (CORPUS / "SOURCES.tsv").open(encoding="utf-8") as handle:
        files = {
            row["file"]: CorpusFile(row["file"], row["ext_proc"] == "yes", row["form"])
            for row in csv.DictReader(handle, delimiter="\t")
        }
    with (CORPUS / "ROLES.tsv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            entry = files[row["file"]]
            entry.roles[int(row["doc_index"])] = row["role"]
            if row["service"]:
                entry.services.add(row["service"])
    return sorted(files.values(), key=lambda entry: entry.name)


FILES = corpus_files()
IDS = [entry.name.split("__")[0] + "/" + entry.name.split("__")[-1] for entry in FILES]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def load_documents(text: str) -> list[Any]:
    return [document for document in yaml.safe_load_all(text) if document is not None]


def is_envoy_filter(document: Any) -> bool:
    return isinstance(document, dict) and document.get("kind") == "EnvoyFilter"


def has_ext_proc(document: Any) -> bool:
    text = json.dumps(document)
    return "ext_proc.v3.ExternalProcessor" in text or "ext_proc.v3.ExtProcPerRoute" in text


def check_json(
    entry: CorpusFile, capsys: pytest.CaptureFixture[str], path: Path | None = None
) -> dict[str, Any]:
    code, out, err = run(["check", "-o", "json", str(path or entry.path), *entry.service_args], capsys)
    assert code in (0, 1), f"check exited {code}: {err}"
    data: dict[str, Any] = json.loads(out)
    return data


def fixed_documents(entry: CorpusFile, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[Any]]:
    code, out, err = run(["fix", str(entry.path), *entry.service_args], capsys)
    assert code in (0, 1), f"fix exited {code}: {err}"
    return code, load_documents(out)


def parses_as_yaml(entry: CorpusFile) -> bool:
    try:
        load_documents(entry.path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return False
    return True


@pytest.fixture(autouse=True)
def corpus_present() -> None:
    _require_corpus()


def test_the_corpus_is_the_one_its_readme_describes() -> None:
    assert len(FILES) >= 90
    assert sum(1 for entry in FILES if "epp" in entry.roles.values()) >= 10
    assert sum(1 for entry in FILES if "other" in entry.roles.values()) >= 10


@pytest.mark.parametrize("entry", FILES, ids=IDS)
def test_every_file_is_checked_or_reported_as_unreadable_without_a_traceback(
    entry: CorpusFile, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["check", "-o", "json", str(entry.path), *entry.service_args], capsys)
    assert "Traceback" not in err
    data = json.loads(out)
    assert {"findings", "summary"} <= set(data)
    if parses_as_yaml(entry):
        assert code in (0, 1), err
    elif entry.form == "helm-template":
        # a chart's template is not YAML: skipped with one line, the exit code unaffected
        assert code == 0, err
        assert err.count("\n") == 1, err
        assert err.startswith(f"extproc-guard: skipped {entry.path}: a Helm template"), err
    else:
        assert code == 2
        assert err.count("\n") == 1, err
        assert err.startswith("extproc-guard: error: "), err


def _documents_by_name(entry: CorpusFile) -> dict[tuple[str | None, str | None], int]:
    names: dict[tuple[str | None, str | None], int] = {}
    for index, document in enumerate(load_documents(entry.path.read_text(encoding="utf-8"))):
        metadata = document.get("metadata") or {} if isinstance(document, dict) else {}
        names[(metadata.get("namespace"), metadata.get("name"))] = index
    return names


def _used_clusters(documents: list[Any]) -> set[str]:
    """Cluster names that ext_proc filters or overrides of these documents point at."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("cluster_name", "clusterName") and isinstance(value, str):
                    found.add(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for document in documents:
        if has_ext_proc(document):
            walk(document)
    return found


def _adds_a_used_cluster(document: Any, used: set[str]) -> bool:
    for patch in (document.get("spec") or {}).get("configPatches") or []:
        value = ((patch or {}).get("patch") or {}).get("value") or {}
        if (
            (patch or {}).get("applyTo") == "CLUSTER"
            and isinstance(value, dict)
            and value.get("name") in used
        ):
            return True
    return False


PARSED = [entry for entry in FILES if entry.form != "helm-template"]
PARSED_IDS = [IDS[FILES.index(entry)] for entry in PARSED]


@pytest.mark.parametrize("entry", PARSED, ids=PARSED_IDS)
def test_no_enforce_finding_on_a_document_without_ext_proc(
    entry: CorpusFile, capsys: pytest.CaptureFixture[str]
) -> None:
    if not parses_as_yaml(entry):
        pytest.skip("not YAML (covered by the unreadable-input test)")
    documents = load_documents(entry.path.read_text(encoding="utf-8"))
    used = _used_clusters(documents)
    data = check_json(entry, capsys)
    names = _documents_by_name(entry)
    for finding in data["findings"]:
        if finding["level"] != "enforce":
            continue
        index = names[(finding["namespace"], finding["name"])]
        document = documents[index]
        assert has_ext_proc(document) or _adds_a_used_cluster(document, used), finding


@pytest.mark.parametrize("entry", PARSED, ids=PARSED_IDS)
def test_fix_changes_no_document_of_another_ext_proc_user(
    entry: CorpusFile, capsys: pytest.CaptureFixture[str]
) -> None:
    if not parses_as_yaml(entry):
        pytest.skip("not YAML (covered by the unreadable-input test)")
    before = load_documents(entry.path.read_text(encoding="utf-8"))
    used = _used_clusters([d for i, d in enumerate(before) if entry.roles.get(i) == "epp"])
    _, after = fixed_documents(entry, capsys)
    assert len(after) == len(before)
    for index, document in enumerate(before):
        role = entry.roles.get(index)
        if role == "epp" or (role is None and _adds_a_used_cluster(document, used)):
            continue  # the EPP's filter, or a document that adds the EPP's cluster
        assert after[index] == document, f"document {index} (role {role or 'no ext_proc'}) was changed"


EPP_FILES = [entry for entry in FILES if "epp" in entry.roles.values()]
EPP_IDS = [IDS[FILES.index(entry)] for entry in EPP_FILES]


def _reference_options() -> RenderOptions:
    return RenderOptions(listen_address="127.0.0.1", listen_port=0, admin_port=0)


def _chain(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The HTTP filters of the reference gateway (EPP ext_proc placeholder + router) with this filter."""
    rendering = render_gateway(document, options=_reference_options())
    listener = rendering.bootstrap["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters: list[dict[str, Any]] = manager["http_filters"]
    return filters


def _is_epp_ext_proc(http_filter: dict[str, Any], epp_names: set[str]) -> bool:
    return http_filter.get("name") in epp_names


def _epp_filter_names(document: dict[str, Any]) -> set[str]:
    names = {"envoy.filters.http.ext_proc"}
    for patch in (document.get("spec") or {}).get("configPatches") or []:
        value = ((patch or {}).get("patch") or {}).get("value") or {}
        if (patch or {}).get("applyTo") == "HTTP_FILTER" and isinstance(value, dict) and value.get("name"):
            names.add(value["name"])
    return names


def _envoy() -> str:
    try:
        return find_envoy()
    except EnvoyStartError as error:
        pytest.skip(str(error))


def _epp_documents(entry: CorpusFile, documents: list[Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    for index, role in sorted(entry.roles.items()):
        if role == "epp" and is_envoy_filter(documents[index]):
            yield index, documents[index]


@pytest.mark.envoy
@pytest.mark.parametrize("entry", EPP_FILES, ids=EPP_IDS)
def test_a_fixed_epp_filter_keeps_every_other_http_filter_and_runs_before_the_router(
    entry: CorpusFile, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    before = load_documents(entry.path.read_text(encoding="utf-8"))
    _, after = fixed_documents(entry, capsys)
    envoy = _envoy()
    for index, original in _epp_documents(entry, before):
        fixed = after[index]
        try:
            old_chain = _chain(original)
        except RenderError:
            old_chain = None
        new_chain = _chain(fixed)
        epp_names = _epp_filter_names(original) | _epp_filter_names(fixed)
        kept = [f for f in new_chain if not _is_epp_ext_proc(f, epp_names)]
        if old_chain is not None:
            assert kept == [f for f in old_chain if not _is_epp_ext_proc(f, epp_names)]
        names = [f["name"] for f in new_chain]
        assert ROUTER in names
        ext_proc = [
            i for i, f in enumerate(new_chain) if f.get("typed_config", {}).get("@type") == EXT_PROC_TYPE
        ]
        assert ext_proc, names
        assert min(ext_proc) < names.index(ROUTER), names
        config = tmp_path / f"fixed-{index}.json"
        config.write_text(json.dumps(render_gateway(fixed, options=_reference_options()).bootstrap), "utf-8")
        result = subprocess.run(
            [envoy, "--mode", "validate", "-c", str(config), "--disable-hot-restart", "-l", "error"],
            capture_output=True,
            text=True,
            timeout=VALIDATE_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


KNOWN = [entry for entry in EPP_FILES if entry.services]
KNOWN_IDS = [IDS[FILES.index(entry)] for entry in KNOWN]


@pytest.mark.parametrize("entry", KNOWN, ids=KNOWN_IDS)
def test_an_epp_filter_whose_service_is_known_fixes_to_no_enforce_finding(
    entry: CorpusFile, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, after = fixed_documents(entry, capsys)
    fixed_file = tmp_path / "fixed.yaml"
    fixed_file.write_text(yaml.safe_dump_all(after, sort_keys=False), "utf-8")
    data = check_json(entry, capsys, fixed_file)
    epp_names = {
        (document.get("metadata") or {}).get("name")
        for index, document in enumerate(after)
        if entry.roles.get(index) == "epp"
    }
    left = [f for f in data["findings"] if f["level"] == "enforce" and f["name"] in epp_names]
    assert not left, left


def test_the_roles_the_engine_decides_match_the_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    """Every ext_proc document's findings carry its role; `other` documents are never judged as the EPP's."""
    wrong: dict[str, list[str]] = defaultdict(list)
    for entry in PARSED:
        if not entry.roles or not parses_as_yaml(entry):
            continue
        data = check_json(entry, capsys)
        documents = load_documents(entry.path.read_text(encoding="utf-8"))
        names = {
            ((d.get("metadata") or {}).get("name")): i for i, d in enumerate(documents) if isinstance(d, dict)
        }
        for finding in data["findings"]:
            index = names.get(finding["name"])
            expected = entry.roles.get(index) if index is not None else None
            if expected == "other" and finding["role"] == "epp":
                wrong[entry.name].append(f"{finding['rule']} judged as the EPP's: {finding['role_why']}")
            if expected == "epp" and finding["role"] not in ("epp", None):
                wrong[entry.name].append(f"{finding['rule']} role {finding['role']}: {finding['role_why']}")
    assert not wrong, dict(wrong)
