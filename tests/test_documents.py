"""The shared test documents: one copy each, found by file name without ambiguity."""

from __future__ import annotations

from tests.documents import DATA, EXAMPLES, SEED_BAD, SEED_CORRECTED, document_path, load_document, renamed


def test_the_examples_and_the_test_data_share_no_file_name() -> None:
    examples = {path.name for path in EXAMPLES.glob("*.yaml")}
    test_only = {path.name for path in DATA.glob("*.yaml")}
    assert examples, "the shipped examples are there"
    assert test_only, "the test-only documents are there"
    assert examples.isdisjoint(test_only)


def test_the_seed_is_read_from_the_shipped_examples() -> None:
    assert document_path("seed-bad.yaml") == SEED_BAD
    assert document_path("seed-corrected.yaml") == SEED_CORRECTED
    assert load_document("seed-bad.yaml")["metadata"]["name"] == "epp-ext-proc"


def test_a_test_only_document_is_read_from_the_test_data() -> None:
    assert document_path("unfixable.yaml") == DATA / "unfixable.yaml"


def test_renamed_copies_and_leaves_the_original_alone() -> None:
    document = load_document("seed-bad.yaml")
    copied = renamed(document, "other", "elsewhere")
    assert copied["metadata"]["name"] == "other"
    assert copied["metadata"]["namespace"] == "elsewhere"
    assert document == load_document("seed-bad.yaml")


def test_the_repository_tracks_no_symbolic_links() -> None:
    """A build output linked in by hand (the control plane's bin/) must never be committed."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-s"], capture_output=True, text=True, check=False
    )
    if listing.returncode != 0:
        import pytest

        pytest.skip("not a git checkout")
    links = [line.split("\t", 1)[1] for line in listing.stdout.splitlines() if line.startswith("120000 ")]
    assert links == []
