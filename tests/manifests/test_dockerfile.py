"""The Dockerfile, read as text: multi-stage, a wheel built in the builder, a numeric non-root user, one
entrypoint for every role, no Envoy in the runtime image.

The image is not built here: no container engine runs in the test environment. These checks parse the
instructions instead, and cross-check them with the project files the build copies and with the UID the
Kubernetes manifests expect.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions grouped by stage; comments dropped, `\\` continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "a continuation line runs off the end of the file"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", arguments.strip(), flags=re.IGNORECASE)
            assert match, f"cannot read FROM {arguments}"
            stages.append(Stage(base=match[1], name=match[2], instructions=[]))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(Instruction(keyword, arguments.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_the_build_is_multi_stage_with_a_slim_python_311_runtime(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    assert stages[-1].base == "python:3.11-slim"
    assert all(stage.base.startswith("python:3.11") for stage in stages)


def test_the_builder_makes_a_wheel_of_the_project(stages: list[Stage]) -> None:
    runs = " ".join(stages[0].all("RUN"))
    assert re.search(r"pip wheel .*--wheel-dir /wheels \.(\s|$)", runs)


def test_the_builder_compiles_the_engine_into_the_wheel_it_ships(stages: list[Stage]) -> None:
    """The project's wheel in /wheels is the compiled build (as `make compiled` builds it): the pure one
    is removed, and the compiled one built with mypy and a C compiler present."""
    runs = " && ".join(stages[0].all("RUN"))
    steps = [step.strip() for step in runs.split("&&")]
    compile_step = next(i for i, step in enumerate(steps) if "EXTPROC_GUARD_COMPILE=1" in step)
    assert re.fullmatch(
        r"EXTPROC_GUARD_COMPILE=1 pip wheel --no-deps --no-build-isolation --wheel-dir /wheels \.",
        steps[compile_step],
    )
    before = " ".join(steps[:compile_step])
    assert "rm /wheels/extproc_guard-*.whl" in before
    assert "mypy" in before
    assert "gcc" in before
    make = (ROOT / "Makefile").read_text()
    assert "EXTPROC_GUARD_COMPILE=1 $(BIN)/pip wheel --quiet --no-deps --no-build-isolation" in make


def test_the_runtime_installs_the_wheel_from_the_builder_only(runtime: Stage) -> None:
    runs = " ".join(runtime.all("RUN"))
    assert "from=builder" in runs
    assert re.search(r"pip install --no-index --find-links=/wheels extproc-guard(\s|$)", runs)
    assert runtime.all("COPY") == []


def test_the_runtime_image_has_no_envoy(runtime: Stage) -> None:
    text = " ".join(i.arguments for i in runtime.instructions)
    assert "envoy" not in text.lower()
    assert "[" not in " ".join(runtime.all("RUN")), "no extras are installed"


def test_the_process_runs_as_a_numeric_non_root_user(runtime: Stage) -> None:
    users = runtime.all("USER")
    assert users, "the runtime stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit()
    assert int(uid) > 0
    assert gid.isdigit()
    assert int(gid) > 0
    after = runtime.instructions[[i.arguments for i in runtime.instructions].index(users[-1]) :]
    assert not [i for i in after if i.keyword == "RUN"], "nothing runs as root after USER"


def test_the_user_matches_the_uid_the_manifests_run_as(runtime: Stage) -> None:
    uid = int(runtime.all("USER")[-1].partition(":")[0])
    useradd = " ".join(runtime.all("RUN"))
    assert f"--uid {uid}" in useradd
    run_as: set[int] = set()
    for path in (ROOT / "manifests").rglob("*.yaml"):
        if "examples" in path.parts:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            for match in re.finditer(r"'runAsUser': (\d+)", repr(doc)):
                run_as.add(int(match[1]))
    assert run_as == {uid}


def test_one_entrypoint_serves_every_role(runtime: Stage) -> None:
    (entrypoint,) = runtime.all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["extproc-guard"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "extproc-guard" in pyproject["project"]["scripts"]


def test_every_package_of_the_wheel_is_copied_and_not_ignored(stages: list[Stage]) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {name.rstrip("*") for name in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied: set[str] = set()
    for copy in stages[0].all("COPY"):
        sources = copy.split()[:-1]
        copied.update(source for source in sources if not source.startswith("--"))
    assert packages <= copied
    assert {"pyproject.toml", "setup.py"} <= copied
    for source in copied:
        assert any(ROOT.glob(source)) or source == "README.m[d]", f"COPY {source}: not in the repository"
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    for source in packages | {"pyproject.toml", "setup.py"}:
        assert _included(source, ignore), f".dockerignore leaves {source} out of the build context"
    for heavy in (".venv", ".git", "tests", "bench"):
        assert not _included(heavy, ignore), f".dockerignore lets {heavy} into the build context"


def _included(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        if fnmatch.fnmatch(path, body.rstrip("/")):
            included = negate
    return included


def test_the_parser_joins_continuations_and_drops_comments() -> None:
    stages = parse_dockerfile("# c\nFROM a AS b\nRUN x \\\n  # inner\n  y\nFROM c\nUSER 1:1\n")
    assert [(s.base, s.name) for s in stages] == [("a", "b"), ("c", None)]
    assert stages[0].all("RUN") == ["x y"]
    assert stages[1].all("USER") == ["1:1"]
