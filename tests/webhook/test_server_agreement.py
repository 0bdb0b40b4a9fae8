"""The CLI and the webhook agree: `check`/`fix` and `/validate`/`/mutate` are one engine call, translated.

For every example and test filter the expectation is computed once with `policies.engine.evaluate`; the real
CLI (`extproc-guard check -o json`, `fix`) and the real server over HTTPS must both match it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest
import yaml

from cli.main import main
from policies.engine import Evaluation, evaluate
from policies.findings import Level
from policies.policy import default_policy
from policies.resolver import StaticResolver
from tests.documents import DATA, EXAMPLES
from tests.webhook.webhookrig import (
    STATIC_SERVICES,
    ServerThread,
    decode_patch,
    review_of,
)

SERVICE_FLAG = "--service=llm-d-inference-scheduler/gaie-inference-scheduling-epp=10.96.45.12:9002"
FILES = sorted(DATA.glob("*.yaml")) + sorted(EXAMPLES.glob("*.yaml"))


def documents_of(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


CASES = [
    pytest.param(path, index, id=f"{path.parent.name}/{path.name}#{index}")
    for path in FILES
    for index in range(len(documents_of(path)))
]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out


async def review(session: aiohttp.ClientSession, server: ServerThread, path: str, obj: Any) -> dict[str, Any]:
    async with session.post(server.url + path, json=review_of(obj)) as response:
        assert response.status == 200
        body = await response.json()
    return dict(body["response"])


def test_there_are_filters_to_compare() -> None:
    names = {path.name for path in FILES}
    assert {"seed-bad.yaml", "unfixable.yaml", "failure-mode-allow.yaml", "lua-filter.yaml"} <= names


@pytest.mark.parametrize(("source", "index"), CASES)
async def test_check_fix_and_both_webhooks_match_one_engine_call(
    source: Path,
    index: int,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    server: ServerThread,
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = documents_of(source)[index]
    path = tmp_path / "filter.yaml"
    path.write_text(yaml.safe_dump(document))
    expected: Evaluation = evaluate(
        document, policy=default_policy(), resolver=StaticResolver(STATIC_SERVICES)
    )
    enforced = sorted({f.rule for f in expected.findings if f.level is Level.ENFORCE})

    code, out = run_cli(capsys, "check", "-o", "json", SERVICE_FLAG, str(path))
    printed = [(f["rule"], f["path"], f["level"]) for f in json.loads(out)["findings"]]
    assert printed == [(f.rule, f.path, f.level.value) for f in expected.findings]
    assert code == (1 if enforced else 0)

    validated = await review(session, server, "/validate", document)
    assert validated["allowed"] is not bool(enforced)
    if enforced:
        header = validated["status"]["message"].splitlines()[0]
        assert header.endswith(f"({', '.join(enforced)})")
    warned = [f.rule for f in expected.findings if f.level is Level.WARN]
    assert [w.split()[0] for w in validated.get("warnings", [])] == warned

    mutated = await review(session, server, "/mutate", document)
    patch = decode_patch(mutated) if "patch" in mutated else []
    assert patch == [op.to_json() for op in expected.patch]

    code, out = run_cli(capsys, "fix", SERVICE_FLAG, str(path))
    (fixed,) = [d for d in yaml.safe_load_all(out) if d]
    assert fixed == jsonpatch.apply_patch(document, patch) == expected.fixed
