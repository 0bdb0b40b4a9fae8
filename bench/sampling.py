"""Where a running Python service spends its busy time, from py-spy's sampled stacks.

`Sampler` attaches py-spy to a process for one measured round (non-blocking, so the process is never
paused) and keeps each round's collapsed stacks; `summarize` turns them into two short tables: the
functions the samples were in (own time) and the functions on the stack (inclusive). Samples whose
innermost frame is the event loop waiting in `select` are idle, not work, and are counted apart.

Not a test and not part of the services: a tool for the benchmarks. Needs `py-spy` beside the running
Python or on PATH (the `dev` extra installs it) and permission to read the process's memory (ptrace).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

IDLE_LEAVES = ("select (selectors.py", "EpollSelector.select (selectors.py", "BaseSelector.select (")


@dataclass
class Profile:
    busy: int = 0
    idle: int = 0
    own: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)


def is_idle(leaf: str) -> bool:
    return leaf.startswith(IDLE_LEAVES)


def add_collapsed(profile: Profile, text: str) -> None:
    """Add py-spy's raw output (`frame;frame;...;leaf COUNT` per line) to `profile`."""
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if is_idle(frames[-1]):
            profile.idle += count
            continue
        profile.busy += count
        profile.own[frames[-1]] += count
        for frame in set(frames):
            profile.inclusive[frame] += count


def summarize(profile: Profile, *, top: int = 15, within: tuple[str, ...] = ("epp/", "asyncio/")) -> str:
    """The busiest functions by own and inclusive samples; inclusive lists only frames from `within`."""
    if not profile.busy:
        return "no busy samples (py-spy saw only idle or nothing)"
    total = profile.busy
    lines = [
        f"{profile.busy} busy samples, {profile.idle} idle in the event loop's select "
        f"({profile.busy / (profile.busy + profile.idle):.0%} busy)",
        "own time (the function the sample was in):",
    ]
    lines += [f"  {count / total:6.1%}  {frame}" for frame, count in profile.own.most_common(top)]
    lines.append("inclusive (the function was on the stack; the loop's own frames left out):")
    ours = [
        (f, count)
        for f, count in profile.inclusive.most_common()
        if any(w in f for w in within) and count < 0.95 * total
    ]
    lines += [f"  {count / total:6.1%}  {frame}" for frame, count in ours[:top]]
    return "\n".join(lines)


def find_py_spy() -> str | None:
    """py-spy from this Python's environment first (a venv not on PATH), then from PATH."""
    return shutil.which(
        "py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )


class Sampler:
    """py-spy on one process, one recording per `record` call, all kept in one `Profile`."""

    def __init__(self, pid: int, workdir: Path, *, rate: int = 200) -> None:
        self._pid = pid
        self._workdir = workdir
        self._rate = rate
        self._rounds = 0
        self._running: tuple[subprocess.Popen[bytes], Path] | None = None
        self.profile = Profile()
        self._binary = find_py_spy()
        self.problem: str | None = (
            None if self._binary else "py-spy is neither beside this Python nor on PATH"
        )

    def start(self, seconds: float) -> None:
        """Sample for `seconds` (returns at once; `finish` collects the round)."""
        if self.problem is not None:
            return
        self._rounds += 1
        out = self._workdir / f"py-spy-{self._rounds}.txt"
        argv = [str(self._binary), "record", "--pid", str(self._pid), "--duration", str(max(1, int(seconds))),
                "--rate", str(self._rate), "--format", "raw", "--function", "--nonblocking",
                "--output", str(out)]  # fmt: skip
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._running = (process, out)

    def finish(self) -> None:
        if self._running is None:
            return
        process, out = self._running
        self._running = None
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            self.problem = "py-spy did not finish within 30 s"
            return
        if process.returncode != 0 or not out.exists():
            detail = stderr.decode(errors="replace").strip().splitlines()
            self.problem = f"py-spy failed: {detail[-1] if detail else f'exit {process.returncode}'}"
            return
        add_collapsed(self.profile, out.read_text())
