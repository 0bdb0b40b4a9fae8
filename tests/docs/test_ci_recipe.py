"""The CI recipe of docs/cli.md, run: its `run` steps as written, in a fresh virtualenv, against a clone.

The workflow's `env` values are set to this repository's clone (a `file://` git URL) and its HEAD commit,
as a user sets them to the repository's URL and a commit. `uses:` steps are GitHub Actions (checkout,
setup-python, the SARIF upload) and do not run here: the fresh virtualenv stands in for setup-python
and the clone for the checkout of a repository with EnvoyFilters under `manifests/`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

from tests.docs.conftest import ROOT, VenvFactory
from tests.docs.markdown import section_blocks

CLI_DOC = ROOT / "docs" / "cli.md"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def workflow() -> dict[str, Any]:
    found = [b for b in section_blocks(CLI_DOC, "In CI", "yaml") if b.text.startswith("jobs:")]
    assert len(found) == 1, "docs/cli.md's In CI section has one GitHub Actions workflow"
    document: dict[str, Any] = yaml.safe_load(found[0].text)
    return document


def run_step(script: str, *, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """A `run:` step the way GitHub Actions runs it on Linux: `bash -e` with the script."""
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
        cwd=cwd,
    )


def test_the_ci_recipe_installs_from_git_and_checks_into_sarif(
    clone: Path, make_venv: VenvFactory, user_env: dict[str, str], tmp_path: Path
) -> None:
    (job,) = workflow()["jobs"].values()
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=clone
    ).stdout.strip()
    assert set(job["env"]) == {"EXTPROC_GUARD_REPO", "EXTPROC_GUARD_REV"}
    venv = make_venv(tmp_path / "ci-python")
    env = dict(user_env, EXTPROC_GUARD_REPO=clone.as_uri(), EXTPROC_GUARD_REV=commit)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"  # what setup-python does
    steps = [step for step in job["steps"] if "run" in step]
    install, check = steps  # the recipe's two commands

    done = run_step(install["run"], env=env, cwd=clone)
    assert done.returncode == 0, done.stdout + done.stderr
    script = venv / "bin" / "extproc-guard"
    assert script.exists(), "pip install put the extproc-guard command into the virtualenv"
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True, env=env)
    assert version.stdout.startswith(f"extproc-guard {VERSION} ")

    done = run_step(check["run"], env=env, cwd=clone)
    assert done.returncode == 1, done.stderr  # the examples hold the incident's filter: the job fails
    sarif = json.loads((clone / "extproc-guard.sarif").read_text())
    results = sarif["runs"][0]["results"]
    assert {r["ruleId"] for r in results} >= {"EPX001", "EPX003", "EPX005"}
    assert any(
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "manifests/examples/seed-bad.yaml"
        for r in results
    )


def test_the_wheel_commands_build_and_install_a_working_package(
    clone: Path, make_venv: VenvFactory, user_env: dict[str, str], tmp_path: Path
) -> None:
    (block,) = [b for b in section_blocks(CLI_DOC, "In CI", "sh") if "pip wheel" in b.text]
    venv = make_venv(tmp_path / "wheel-python")
    env = dict(user_env, PATH=f"{venv / 'bin'}{os.pathsep}{user_env['PATH']}")
    done = run_step(block.text, env=env, cwd=clone)
    assert done.returncode == 0, done.stdout + done.stderr
    check = subprocess.run(
        [str(venv / "bin" / "extproc-guard"), "check", "manifests/examples/seed-corrected.yaml",
         "--service", "llm-d-inference-scheduler/gaie-inference-scheduling-epp=10.96.45.12:9002"],
        capture_output=True, text=True, check=False, env=env, cwd=clone, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_pre_commit_snippet_names_the_shipped_hook_and_pins_a_commit(clone: Path) -> None:
    (block,) = [b for b in section_blocks(CLI_DOC, "In CI", "yaml") if b.text.startswith("repos:")]
    (repo,) = yaml.safe_load(block.text)["repos"]
    (hook,) = repo["hooks"]
    shipped = {h["id"]: h for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert hook["id"] in shipped
    # No release tag exists to pin: the snippet pins a full commit SHA, which pre-commit accepts.
    tags = subprocess.run(["git", "tag"], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert str(repo["rev"]) in tags.split() or len(str(repo["rev"])) == 40
    # pre-commit runs ENTRY ARGS FILE...: the staged files that match the hook's types.
    entry = shipped[hook["id"]]["entry"].split()
    script = Path(sys.executable).parent / entry[0]

    def run_hook(*files: str) -> int:
        argv = [str(script), *entry[1:], *hook["args"], *files]
        return subprocess.run(argv, capture_output=True, check=False, cwd=clone, timeout=120).returncode

    assert run_hook("manifests/examples/seed-corrected.yaml", "manifests/base/namespace.yaml") == 0
    assert run_hook("manifests/examples/seed-bad.yaml", "manifests/examples/seed-corrected.yaml") == 1
