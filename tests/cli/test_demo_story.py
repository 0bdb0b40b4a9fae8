"""What `extproc-guard demo` prints for a person: the commands it ran (repeatable as printed, with the
same exit codes), the fix as a unified diff, whole lines wrapped to the terminal, and the files it keeps.

The demo runs once for the module (a real Envoy, the EPP and three simulators), through the installed
console script with COLUMNS=80, as a user runs it after `make demo`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.envoy

SCRIPT = Path(sys.executable).parent / "extproc-guard"
WIDTH = 80


@dataclass(frozen=True)
class Demo:
    out: str
    keep: Path
    cwd: Path


@dataclass(frozen=True)
class Printed:
    command: str
    exit_code: int


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    cwd = tmp_path_factory.mktemp("demo")
    done = subprocess.run(
        [str(SCRIPT), "demo", "--requests", "3", "--keep", "kept"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=cwd,
        env=dict(os.environ, COLUMNS=str(WIDTH)),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return Demo(done.stdout, cwd / "kept", cwd)


def printed_commands(out: str) -> list[Printed]:
    """Each `$ ...` command (with its `\\` continuation lines) and the `exit N` the demo printed after it."""
    found: list[Printed] = []
    lines = out.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("   $ "):
            continue
        parts = [line.removeprefix("   $ ")]
        follow = index
        while parts[-1].endswith("\\"):
            follow += 1
            parts.append(lines[follow])
        status = re.match(r"\s*exit (\d+)", lines[follow + 1])
        assert status, f"no exit code printed after {line!r}"
        found.append(Printed("\n".join(parts), int(status.group(1))))
    return found


def test_every_printed_command_runs_again_by_hand_with_the_printed_exit_code(demo: Demo) -> None:
    commands = printed_commands(demo.out)
    assert [c.command.split()[1] for c in commands] == ["check", "fix", "check", "doctor"]
    for printed in commands:
        assert printed.command.startswith(f"{SCRIPT} "), "named as the user invoked the CLI"
        again = subprocess.run(
            ["bash", "-c", printed.command], capture_output=True, text=True, timeout=120, cwd=demo.cwd
        )
        assert again.returncode == printed.exit_code, printed.command


def test_the_no_http2_check_by_hand_finds_what_the_demo_said(demo: Demo) -> None:
    no_http2_check = printed_commands(demo.out)[2]
    again = subprocess.run(
        ["bash", "-c", no_http2_check.command], capture_output=True, text=True, timeout=120, cwd=demo.cwd
    )
    summary = again.stdout.strip().splitlines()[-1]
    assert summary == "1 document, 1 envoyfilter: 1 enforce, 1 warn"
    assert f"     {summary}" in demo.out.splitlines()


def test_the_fix_is_shown_as_a_unified_diff_of_the_kept_files(demo: Demo) -> None:
    assert "     --- kept/envoyfilter-operator.yaml\n     +++ kept/envoyfilter-fixed.yaml\n" in demo.out
    for change in (
        "-      operation: INSERT_BEFORE                      # a second ext_proc next to the gateway's own",
        "+      operation: REPLACE                            # a second ext_proc next to the gateway's own",
        "-        type: STRICT_DNS" + " " * 28 + "# the gateway pod could not resolve it reliably",
        "+              http2_protocol_options: {}",
    ):
        assert f"\n     {change}\n" in demo.out, change


def test_long_lines_are_wrapped_whole_never_cut(demo: Demo) -> None:
    text = " ".join(demo.out.split())  # wrapped lines joined back
    assert "..." not in demo.out
    assert "(Envoy: add http2_protocol_options to the EPP cluster)" in text  # the EPP's hint, whole
    assert "fix: add typed_extension_protocol_options HttpProtocolOptions explicit_http_config" in text
    for line in demo.out.splitlines():
        is_diff_or_command = line.startswith(("     ", "   $ ", "       --")) or line.endswith("\\")
        assert len(line) <= WIDTH or is_diff_or_command, line


def test_the_decision_log_s_missing_model_is_explained(demo: Demo) -> None:
    assert "model=-" in demo.out
    assert "with request_body_mode NONE the EPP decides on the headers alone" in " ".join(demo.out.split())


def test_keep_holds_the_filters_the_stats_and_the_logs(demo: Demo) -> None:
    kept = {path.name for path in demo.keep.iterdir()}
    assert {
        "envoyfilter-operator.yaml",
        "envoyfilter-fixed.yaml",
        "envoyfilter-no-http2.yaml",
        "stats-fixed.txt",
        "stats-no-http2.txt",
        "clusters-no-http2.txt",
        "envoy.json",
        "envoy-no-http2.json",
        "epp.log",
    } <= kept
    assert "ext_proc.streams_started: 3" in (demo.keep / "stats-fixed.txt").read_text()
    replay = subprocess.run(
        [str(SCRIPT), "doctor", "--stats", "kept/stats-fixed.txt", "--filter", "kept/envoyfilter-fixed.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=demo.cwd,
    )
    assert replay.returncode == 0, replay.stdout  # the fixed path's counters: healthy
