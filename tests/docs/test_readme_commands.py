"""README.md's "Quick start" and "Using it", copied into one shell script and run in a fresh clone.

Every command of those sections' `sh` blocks runs in order, in one bash, from the clone's folder; each
exit code is compared with the README's promise (a trailing `# exits N` comment, else 0). Two commands
do not run here, for stated reasons (`SET_UP_BY_THE_TEST`): `make demo` and `make test` create `.venv`
and install the package into it, which this test does with the same pip install of the clone (the
dependencies come from this run's installation, to stay fast and offline); `make test` is this suite,
and CI runs it. The demo itself does run: "Using it" runs `extproc-guard demo --keep`.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.docs.conftest import ROOT, VenvFactory
from tests.docs.markdown import Command, section_blocks, shell_commands

pytestmark = pytest.mark.envoy  # "Using it" runs the demo, which boots a real Envoy

README = ROOT / "README.md"
SECTIONS = ("Quick start", "Using it")
SET_UP_BY_THE_TEST = {
    "make demo": "creates .venv and installs the package: the test does that, then runs the demo itself",
    "make test": "creates .venv and runs this test suite: the test creates .venv; CI runs make test",
}


def readme_commands() -> list[Command]:
    commands = [
        command
        for section in SECTIONS
        for block in section_blocks(README, section, "sh")
        for command in shell_commands(block)
    ]
    assert commands, f"README.md has shell blocks under {SECTIONS}"
    return commands


def program(command: Command) -> str:
    """The command without its trailing comment, e.g. `make demo`."""
    return command.text.split("#", 1)[0].strip()


def script_for(commands: list[Command]) -> str:
    """One bash script: each command, then a check of its exit code against the README's promise."""
    lines = ["set -u"]
    for command in commands:
        where = f"README.md line {command.line}"
        lines += [
            f"echo {shlex.quote(f'>>> {where}: {command.text}')}",
            command.text,
            f"status=$?; if [ $status -ne {command.exit_code} ]; then echo {shlex.quote(where)}: "
            f"exit $status, the README promises {command.exit_code} >&2; exit 97; fi",
        ]
    lines.append("echo '>>> every README command kept its promise'")
    return "\n".join(lines) + "\n"


def test_the_readme_names_the_set_up_commands_the_test_stands_in_for() -> None:
    ran_elsewhere = [program(c) for c in readme_commands() if program(c) in SET_UP_BY_THE_TEST]
    assert ran_elsewhere == list(SET_UP_BY_THE_TEST)


def test_every_quick_start_and_using_it_command_runs_in_a_fresh_clone_as_promised(
    clone: Path, make_venv: VenvFactory, user_env: dict[str, str]
) -> None:
    assert shutil.which("extproc-guard", path=user_env["PATH"]) is None, (
        "the test's shell must not find extproc-guard before the README says how"
    )
    # What `make demo` leaves behind: .venv with the clone installed (editable, as the Makefile does).
    venv = make_venv(clone / ".venv")
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(clone)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=user_env,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    commands = [c for c in readme_commands() if program(c) not in SET_UP_BY_THE_TEST]
    script = clone.parent / "readme.sh"
    script.write_text(script_for(commands), encoding="utf-8")
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=user_env,
        cwd=clone,
    )
    transcript = done.stdout[-6000:] + done.stderr[-4000:]
    assert done.returncode == 0, transcript
    assert "every README command kept its promise" in done.stdout
    # What the commands left: the copy was fixed, the shipped example was not, the demo kept its files.
    assert "STRICT_DNS" in (clone / "manifests/examples/seed-bad.yaml").read_text()
    assert "STRICT_DNS" not in (clone / "my-filter.yaml").read_text()
    kept = {path.name for path in (clone / "demo-out").iterdir()}
    assert {"envoyfilter-fixed.yaml", "stats-no-http2.txt", "envoyfilter-no-http2.yaml"} <= kept
    untracked = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=True,
        cwd=clone,
    ).stdout
    assert untracked == "", f"README commands changed tracked files:\n{untracked}"


def test_the_script_stops_at_the_first_broken_promise(tmp_path: Path) -> None:
    commands = [Command("true", 1, 0), Command("false  # exits 0", 2, 0), Command("echo never", 3, 0)]
    (tmp_path / "s.sh").write_text(script_for(commands), encoding="utf-8")
    done = subprocess.run(
        ["bash", str(tmp_path / "s.sh")], capture_output=True, text=True, check=False, timeout=30
    )
    assert done.returncode == 97
    assert "README.md line 2: exit 1, the README promises 0" in done.stderr
    assert "never" not in done.stdout.replace(">>> README.md line 3: echo never", "")
