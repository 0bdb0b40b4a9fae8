"""The build. Pure Python by default; with `EXTPROC_GUARD_COMPILE=1` the engine's modules named in
pyproject.toml (`[tool.extproc-guard] compiled`) are compiled to C extensions with mypyc, which ships with
mypy (docs/compiled.md). The compiled build needs mypy, a C compiler and the Python headers at build time,
nothing more at run time, and behaves the same: the engine's tests run against it (`make compiled`)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from setuptools import setup


def compiled_modules() -> list[str]:
    config = tomllib.loads(Path(__file__).with_name("pyproject.toml").read_text(encoding="utf-8"))
    modules: list[str] = config["tool"]["extproc-guard"]["compiled"]
    return modules


def ext_modules() -> list[Any]:
    if os.environ.get("EXTPROC_GUARD_COMPILE", "") != "1":
        return []
    from mypyc.build import mypycify

    # mypyc's C sources go to build/mypyc, beside setuptools' own build/lib.* and build/temp.*.
    return list(mypycify(compiled_modules(), opt_level="3", target_dir="build/mypyc"))


setup(ext_modules=ext_modules())
