"""The compiled build of the engine (docs/compiled.md): what mypyc compiles differently stays out of it, and
it passes the engine's own tests, the corpus tests and the webhook's review tests.

The first part reads the sources only. The second needs `make compiled` (which `make test` runs first):
without its output, or with output older than the sources, those tests skip with one line; with
EXTPROC_GUARD_REQUIRE_E2E=1 (as CI sets it) they fail instead.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests import compiled
from tests.compiled import COMPILED, ROOT, compiled_build_problem, compiled_modules
from tests.e2e.harness import skip_or_fail

# Run against the compiled build: the engine's tests, the corpus tests of check and fix, check's forked
# workers (their findings come back pickled), and the webhook's reviews (malformed ones and fuzzed bodies
# included) in one process.
SUITES = (
    "tests/policies",
    "tests/cli/test_corpus.py",
    "tests/cli/test_corpus_exact.py",
    "tests/cli/test_parallel_check.py",
    "tests/webhook/test_admission.py",
    "tests/webhook/test_admission_reviewer.py",
    "tests/webhook/test_server_agreement.py",
    "tests/webhook/test_server_fuzz.py",
)


def hazards(source: str) -> list[str]:
    """What mypyc would compile into something else: a cached property (a plain property: it recomputes
    on every read), a module `__getattr__` (its lazy attributes crash the module's import), and
    `reversed()` over a list of tuples (mypyc 1.x fails on it)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name == "cached_property":
                found.append(f"line {node.lineno}: functools.cached_property")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "reversed":
            found.append(f"line {node.lineno}: reversed()")
    tree = ast.parse(source)
    for statement in tree.body:
        if isinstance(statement, ast.FunctionDef) and statement.name == "__getattr__":
            found.append(f"line {statement.lineno}: a module __getattr__")
    return found


def test_the_compiled_modules_exist_and_hold_nothing_mypyc_compiles_differently() -> None:
    modules = compiled_modules()
    assert modules == sorted(modules, key=lambda m: (m.count("/"), m))
    problems = {}
    for module in modules:
        path = ROOT / module
        assert path.is_file(), f"{module} is in [tool.extproc-guard] compiled but does not exist"
        found = hazards(path.read_text(encoding="utf-8"))
        if found:
            problems[module] = found
    assert problems == {}


def test_the_hazard_check_finds_what_it_looks_for() -> None:
    source = (
        "from functools import cached_property\n"
        "class A:\n    @cached_property\n    def x(self) -> int:\n        return 1\n"
        "def f(xs: list[tuple[int, int]]) -> None:\n    for a, b in reversed(xs):\n        pass\n"
        "def __getattr__(name: str) -> object:\n    raise AttributeError(name)\n"
    )
    assert hazards(source) == [
        "line 3: functools.cached_property",
        "line 7: reversed()",
        "line 9: a module __getattr__",
    ]
    assert hazards("def f() -> None:\n    def __getattr__() -> None: ...\n") == []


def test_the_engines_review_path_is_compiled() -> None:
    """The modules a review goes through from the document to the patch are all in the list."""
    listed = {module.removesuffix(".py").replace("/", ".") for module in compiled_modules()}
    needed = {"policies.engine", "policies.subject", "policies.pieces", "policies.patch", "policies.diff"}
    assert needed <= listed


@pytest.fixture(scope="module")
def compiled_env() -> dict[str, str]:
    problem = compiled_build_problem()
    if problem is not None:
        skip_or_fail(problem)
    return compiled.compiled_env()


def test_the_compiled_build_loads_compiled_modules(compiled_env: dict[str, str]) -> None:
    modules = [module.removesuffix(".py").replace("/", ".") for module in compiled_modules()]
    probe = (
        "import importlib, sys\n"
        "from policies.build import engine_build\n"
        f"files = [importlib.import_module(m).__file__ for m in {modules!r}]\n"
        "print(engine_build()); print('\\n'.join(files))\n"
    )
    result = subprocess.run(
        [sys.executable, "-P", "-c", probe], env=compiled_env, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    build, *files = result.stdout.splitlines()
    assert build == "compiled"
    assert len(files) == len(modules)
    assert all(file.startswith(str(COMPILED)) and file.endswith(".so") for file in files), files


def test_the_compiled_engine_passes_the_engine_corpus_and_review_tests(compiled_env: dict[str, str]) -> None:
    command = [
        sys.executable, "-P", "-m", "pytest", *SUITES, "-q", "-p", "no:cacheprovider",
        "-o", "pythonpath=", "--rootdir", str(ROOT),
        "--override-ini", "addopts=--strict-markers --import-mode=importlib",
    ]  # fmt: skip
    probe = "from policies.build import engine_build; assert engine_build() == 'compiled'"
    checked = subprocess.run([sys.executable, "-P", "-c", probe], env=compiled_env, cwd=ROOT)
    assert checked.returncode == 0
    result = subprocess.run(command, env=compiled_env, cwd=ROOT, capture_output=True, text=True)
    tail = "\n".join(result.stdout.splitlines()[-30:])
    assert result.returncode == 0, tail
    assert " passed" in tail.splitlines()[-1], tail
