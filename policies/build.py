"""Which build of the engine is running: the compiled one (its modules are C extensions built by mypyc,
docs/compiled.md) or the interpreted one (the Python sources). Both give the same results; the compiled
one reviews about twice as fast. Services print it at start-up and `--version` names it."""

from __future__ import annotations

import importlib
from typing import Final, Literal

EngineBuild = Literal["compiled", "interpreted"]

# The module that reviews go through first: compiled together with the others or not at all.
PROBE: Final = "policies.engine"


def engine_build() -> EngineBuild:
    """ "compiled" when the engine was loaded from the compiled build's extension modules."""
    path = getattr(importlib.import_module(PROBE), "__file__", None) or ""
    return "interpreted" if path.endswith((".py", ".pyc")) else "compiled"
