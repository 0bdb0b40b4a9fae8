"""`fix` edits the text itself: only rule-owned lines change, every other byte of the file stays.

The fixtures in `data/` are shaped like real repositories' files: an EPP filter whose match names no
listener, beside an unrelated DestinationRule indented its own way, with trailing spaces, a leading blank
line, a blank line after `processing_mode` and a trailing `---`; a Lua filter in flow style with a
`...` end marker; a filter whose `match:` is left empty.
"""

from __future__ import annotations

import base64
import difflib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import main
from policies import default_policy
from policies.patch import PatchOp, apply_patch
from policies.render import RenderOptions, render_gateway
from policies.resolver import ServiceAddress, ServiceRef, StaticResolver
from webhook.admission import Webhook
from webhook.reviewer import Answer, Reviewer

DATA = Path(__file__).parent / "data"
NEIGHBOURS = DATA / "epp-with-neighbours.yaml"
LUA = DATA / "lua-no-ext-proc.yaml"
EMPTY_MATCH = DATA / "empty-match.yaml"
SERVICE = ["--service", "llm-d/llm-d-epp=10.96.0.20:9002"]
HCM = "envoy.filters.network.http_connection_manager"
EXT_PROC = "envoy.filters.http.ext_proc"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
ISTIO_SHAPE = {
    "context": "GATEWAY",
    "listener": {"filterChain": {"filter": {"name": HCM, "subFilter": {"name": EXT_PROC}}}},
}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def changed_lines(before: str, after: str) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), lineterm="", n=0
        )
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def copy_to(tmp_path: Path, source: Path) -> Path:
    target = tmp_path / source.name
    shutil.copyfile(source, target)
    return target


def test_fix_in_place_changes_only_rule_owned_lines_and_keeps_every_other_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = copy_to(tmp_path, NEIGHBOURS)
    before = target.read_text()
    code, out, err = run(["fix", "--in-place", str(target), *SERVICE], capsys)
    assert (code, out) == (0, ""), err
    assert "comments could not be kept" not in err
    after = target.read_text()
    assert changed_lines(before, after) == [
        "+      listener:\n",
        "+        filterChain:\n",
        "+          filter:\n",
        f"+            name: {HCM}\n",
        "+            subFilter:\n",
        f"+              name: {EXT_PROC}\n",
        "-      operation: INSERT_BEFORE\n",
        "+      operation: REPLACE\n",
        "-            request_header_mode: SEND\n",
        "+            request_header_mode: SKIP\n",
        "+            request_body_mode: NONE\n",
        "+            response_body_mode: NONE\n",
        "+            request_trailer_mode: SKIP\n",
        "+            response_trailer_mode: SKIP\n",
        "+  - applyTo: HTTP_ROUTE\n",
        "+    match:\n",
        "+      context: GATEWAY\n",
        "+    patch:\n",
        "+      operation: MERGE\n",
        "+      value:\n",
        "+        typed_per_filter_config:\n",
        f"+          {EXT_PROC}:\n",
        f'+            "@type": {PER_ROUTE_TYPE}\n',
        "+            overrides:\n",
        "+              processing_mode:\n",
        "+                request_header_mode: SEND\n",
        "+                request_body_mode: NONE\n",
        "+                response_header_mode: SKIP\n",
        "+                response_body_mode: NONE\n",
        "+                request_trailer_mode: SKIP\n",
        "+                response_trailer_mode: SKIP\n",
    ]
    # what the issue saw change: all of it is byte for byte where it was
    assert after.startswith("\n# EPP filter")
    assert after.endswith("---\n")
    assert "  name: epp-ext-proc   \n" in after
    assert after.split("\n---\n", 1)[1] == before.split("\n---\n", 1)[1]
    assert "\n      tls:\n        mode: DISABLE\n" in after
    assert "            response_trailer_mode: SKIP\n\n---\n" in after, "new keys go before the blank line"


def test_fix_prints_an_untouched_file_exactly_as_it_reads(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["fix", str(LUA), *SERVICE], capsys)
    assert code == 0, err
    assert out == LUA.read_text()


def test_fix_in_place_leaves_a_file_without_ext_proc_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = copy_to(tmp_path, LUA)
    before = target.read_bytes()
    stamp = target.stat().st_mtime_ns
    code, _, err = run(["fix", "--in-place", str(target), *SERVICE], capsys)
    assert code == 0
    assert "fixed" not in err
    assert target.read_bytes() == before
    assert target.stat().st_mtime_ns == stamp


def test_a_match_without_a_listener_is_fixed_to_the_shape_istio_applies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(["fix", str(NEIGHBOURS), *SERVICE], capsys)
    assert code == 0, err
    fixed = next(doc for doc in yaml.safe_load_all(out) if doc and doc["kind"] == "EnvoyFilter")
    patch = fixed["spec"]["configPatches"][0]
    assert patch["match"] == ISTIO_SHAPE
    assert patch["patch"]["operation"] == "REPLACE"
    rendering = render_gateway(fixed, options=RenderOptions())
    assert not [skip for skip in rendering.skipped if skip.index == 0], rendering.skipped


def test_the_webhook_json_patch_nests_the_sub_filter_under_the_connection_manager() -> None:
    document = next(doc for doc in yaml.safe_load_all(NEIGHBOURS.read_text()) if doc)
    reviewer = Reviewer(
        default_policy(),
        StaticResolver({ServiceRef("llm-d", "llm-d-epp"): ServiceAddress("10.96.0.20", (9002,))}),
        generation=lambda: 0,
    )
    body = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3d2c1b0a",
            "kind": {"group": "networking.istio.io", "version": "v1alpha3", "kind": "EnvoyFilter"},
            "resource": {"group": "networking.istio.io", "version": "v1alpha3", "resource": "envoyfilters"},
            "namespace": "llm-d",
            "name": "epp-ext-proc",
            "operation": "CREATE",
            "object": document,
        },
    }
    reply = reviewer.review(json.dumps(body).encode(), webhook=Webhook.MUTATE)
    assert isinstance(reply, Answer)
    response = json.loads(reply.payload)["response"]
    operations: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"]))
    patched = apply_patch(document, [PatchOp(op["op"], op["path"], op.get("value")) for op in operations])
    assert patched["spec"]["configPatches"][0]["match"] == ISTIO_SHAPE
    assert not any("listener/filterChain/name" in op["path"] for op in operations)


@pytest.mark.parametrize("command", ["check", "fix"])
def test_an_empty_match_is_an_empty_match_not_an_input_error(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([command, str(EMPTY_MATCH), *SERVICE], capsys)
    assert code in (0, 1), err
    assert "error" not in err
    if command == "fix":
        fixed = yaml.safe_load(out)
        assert fixed["spec"]["configPatches"][0]["match"] == {
            key: value for key, value in ISTIO_SHAPE.items() if key != "context"
        }


def test_epx004_on_a_global_send_filter_without_an_override_does_not_contradict_itself(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["check", "-o", "json", str(EMPTY_MATCH), *SERVICE], capsys)
    assert code == 1
    messages = [f["message"] for f in json.loads(out)["findings"] if f["rule"] == "EPX004"]
    assert len(messages) == 2, messages
    global_mode, override = messages
    assert "global request_header_mode is SEND" in global_mode
    assert "once the global mode is SKIP" in override
    assert not any("with the global mode SKIP" in message for message in messages)
