"""Benchmark the CLI's start-up: `extproc-guard --help` and `check FILE` beside `python -c pass`.

A pre-commit hook or a CI step starts the CLI once per run, so what it costs before it does anything is
paid every time. Each command runs as a fresh process, N times (default 5); the minimum wall time is
printed (the least disturbed run on a shared machine), with the ratio to the interpreter's own start-up
measured in the same run. The commands are those a user types, through the installed console script
(`extproc-guard` beside this interpreter), so the entry-point shim is counted too. Each command first
runs once unmeasured with bytecode writing on (PYTHONDONTWRITEBYTECODE removed), as on a user's machine
after the first run: otherwise every module would be compiled from source on every start.

Beside the wall time it prints the CPU time (user + system) of the same runs, minimum too: on a machine
that other jobs share, wall time grows with their load, CPU time much less.

Run: `python bench/startup_bench.py [--runs N] [--file PATH]`. Prints numbers; asserts nothing (tests
never depend on timing). `--importtime` also prints the slowest imports of each command
(`python -X importtime`), to see where the time goes.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = ROOT / "manifests" / "examples" / "seed-corrected.yaml"
SERVICE = "llm-d-inference-scheduler/gaie-inference-scheduling-epp=10.96.45.12:9002"
TARGETS_MS = {"--help": 120.0, "check FILE": 200.0}


def console_script() -> str:
    """The `extproc-guard` script next to this interpreter (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / "extproc-guard"
    return str(beside) if beside.exists() else "extproc-guard"


def user_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timings(argv: list[str], runs: int) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds) of each run."""
    env = user_env()

    def run_once() -> tuple[float, float]:
        cpu, started = children_cpu(), time.perf_counter()
        subprocess.run(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, cwd=ROOT
        )
        return time.perf_counter() - started, children_cpu() - cpu

    run_once()  # warm-up: writes the bytecode caches
    measured = [run_once() for _ in range(runs)]
    return [wall for wall, _ in measured], [cpu for _, cpu in measured]


def slowest_imports(argv: list[str], top: int) -> list[tuple[int, str]]:
    """(cumulative microseconds, module) of the slowest top-level imports of one run."""
    env = dict(user_env(), PYTHONPROFILEIMPORTTIME="1")
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT, env=env)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        if not name.startswith("  "):  # a top-level import of this process (not nested in another)
            rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (default 5)")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="the file `check` reads")
    parser.add_argument("--importtime", action="store_true", help="also print the slowest imports")
    args = parser.parse_args()

    script = console_script()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "--help": [script, "--help"],
        "--version": [script, "--version"],
        "check FILE": [script, "check", str(args.file), "--service", SERVICE],
    }
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"start-up, min of {args.runs} runs ({script}; {os.cpu_count()} CPUs; load average {load})")
    print(f"  {'command':<16} {'wall':>9}  {'vs pass':>7}  {'CPU':>9}  target (wall)")
    baseline = None
    for label, argv in commands.items():
        walls, cpus = timings(argv, args.runs)
        best, cpu = min(walls) * 1000, min(cpus) * 1000
        baseline = baseline or best
        target = TARGETS_MS.get(label)
        verdict = ""
        if target is not None:
            verdict = f"<= {target:.0f} ms: {'met' if best <= target else 'MISSED'}"
        print(f"  {label:<16} {best:6.1f} ms  {best / baseline:6.1f}x  {cpu:6.1f} ms  {verdict}")
    if args.importtime:
        for label in ("--help", "check FILE"):
            print(f"\nslowest imports of {label} (cumulative ms):")
            for micros, name in slowest_imports(commands[label], top=8):
                print(f"  {micros / 1000:7.1f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
