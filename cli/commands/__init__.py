"""One module per `extproc-guard` sub-command.

Each module defines ``register(subparsers)``: it adds its parser and sets ``handler`` (a callable taking the
parsed ``argparse.Namespace`` and returning the exit code) with ``parser.set_defaults(handler=...)``.
Modules are found by name, so adding a command never edits a shared file.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def command_modules() -> list[ModuleType]:
    names = sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))
    return [importlib.import_module(f"{__name__}.{name}") for name in names]
