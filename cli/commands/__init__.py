"""One module per `extproc-guard` sub-command.

Each module defines ``register(subparsers)``: it adds its parser and sets ``handler`` (a callable taking the
parsed ``argparse.Namespace`` and returning the exit code) with ``parser.set_defaults(handler=...)``.
Modules are found by name, so adding a command never edits a shared file.

Listing the commands imports every module, so a module imports only what `register` needs (argparse and
light settings helpers) at the top; what its handler needs (the engine, pydantic, protobuf, the Kubernetes
client, aiohttp, gRPC, cryptography) is imported inside the handler. `extproc-guard --help` and a
pre-commit run of `check` then pay only for the command that runs; a command line that names its command
(`extproc-guard check ...`) imports and registers that command's module only (`cli.main`).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def command_names() -> list[str]:
    """The command modules' names, from the package folder (no import; `pkgutil` would load `inspect`)."""
    names = {
        entry.name.removesuffix(".py")
        for folder in __path__
        for entry in os.scandir(folder)
        if entry.name.endswith(".py") and not entry.name.startswith("_")
    }
    return sorted(names)


def command_modules() -> list[ModuleType]:
    return [command_module(name) for name in command_names()]


def command_module(name: str) -> ModuleType:
    """The module of one command (`sim_model` for `sim-model`)."""
    return importlib.import_module(f"{__name__}.{name}")
