"""Where the compiled build of the engine is (`make compiled`, docs/compiled.md), whether it is as new as
the sources, and how to run a Python child against it. Used by its tests and by the benchmarks."""

from __future__ import annotations

import filecmp
import os
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ROOT / "build" / "compiled"
_PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGES = tuple(name.rstrip("*") for name in _PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"])
"""The project's packages, as the wheel (and so the compiled build's install) holds them."""


def compiled_modules() -> list[str]:
    """The modules the compiled build compiles (`[tool.extproc-guard] compiled`, as setup.py reads it)."""
    modules: list[str] = _PYPROJECT["tool"]["extproc-guard"]["compiled"]
    return modules


def stale_files() -> list[str]:
    """The project's Python files that differ between the compiled build's install and the sources."""
    stale = []
    for package in PACKAGES:
        for source in sorted((ROOT / package).rglob("*.py")):
            relative = source.relative_to(ROOT)
            installed = COMPILED / relative
            if not installed.is_file() or not filecmp.cmp(source, installed, shallow=False):
                stale.append(str(relative))
    return stale


def compiled_build_problem() -> str | None:
    """Why the compiled build cannot be used now (missing, or older than the sources), or None."""
    if not (COMPILED / ".built").is_file():
        return "the compiled build is missing: run `make compiled`"
    stale = stale_files()
    if stale:
        return f"the compiled build is older than {stale[0]}: run `make compiled`"
    return None


def compiled_env() -> dict[str, str]:
    """The environment of a child that runs the compiled build: its install first, then the repository (for
    the tests and benchmarks themselves). Start the child with `python -P` (or from another working
    directory) so that the working directory's sources do not come first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(COMPILED), str(ROOT)])}
