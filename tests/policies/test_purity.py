"""The engine is pure: it imports and runs with the network clients and adapters made unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("aiohttp", "grpc", "kubernetes", "prometheus_client", "webhook", "certs", "epp")

PROGRAM = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    BLOCKED = {blocked!r}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {{name}}")
            return None

    sys.meta_path.insert(0, Block())
    import policies
    names = [m.name for m in pkgutil.walk_packages(policies.__path__, "policies.")]
    for name in names:
        if name.startswith(("policies.render.gateway", "policies.doctor.diagnosis")):
            continue
        importlib.import_module(name)
    from policies.engine import evaluate
    from policies.policy import default_policy
    from policies.resolver import StaticResolver
    doc = {{"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter", "metadata": {{}},
           "spec": {{"configPatches": [{{"applyTo": "HTTP_FILTER", "patch": {{"operation": "ADD",
           "value": {{"name": "envoy.filters.http.ext_proc", "typed_config": {{}}}}}}}}]}}}}
    result = evaluate(doc, policy=default_policy(), resolver=StaticResolver({{}}))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(len(names), result.applicable, loaded)
    """
)


def test_policies_imports_and_evaluates_with_adapters_and_network_clients_blocked() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(blocked=BLOCKED)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    count, applicable, loaded = completed.stdout.split(" ", 2)
    assert int(count) >= 10
    assert applicable == "True"
    assert loaded.strip() == "[]"
