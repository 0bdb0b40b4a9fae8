"""The benchmarks' py-spy sampler: collapsed stacks are split into busy and idle samples and summarized,
and a real py-spy attached to a real busy process finds the function that burns the time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from bench.sampling import Profile, Sampler, add_collapsed, find_py_spy, summarize

LOOP = "BaseEventLoop._run_once (asyncio/base_events.py:1845)"
SELECT = "EpollSelector.select (selectors.py:451)"
CONSUME = "GrpcH2Protocol._consume (epp/h2server.py:475)"
DECIDE = "Processor._decide (epp/processor.py:254)"


def test_idle_samples_are_counted_apart_and_busy_ones_by_own_and_inclusive_frame() -> None:
    profile = Profile()
    add_collapsed(
        profile,
        f"{LOOP};{SELECT} 60\n{LOOP};{CONSUME};{DECIDE} 30\n{LOOP};{CONSUME} 10\nnot a sample line\n",
    )
    assert (profile.busy, profile.idle) == (40, 60)
    assert profile.own == {DECIDE: 30, CONSUME: 10}
    assert profile.inclusive[CONSUME] == 40
    assert profile.inclusive[DECIDE] == 30


def test_the_summary_gives_shares_of_busy_samples_and_leaves_out_the_loop_itself() -> None:
    profile = Profile()
    add_collapsed(profile, f"{LOOP};{SELECT} 60\n{LOOP};{CONSUME};{DECIDE} 30\n{LOOP};{CONSUME} 10\n")
    text = summarize(profile)
    assert text.splitlines()[0] == "40 busy samples, 60 idle in the event loop's select (40% busy)"
    assert f"75.0%  {DECIDE}" in text
    assert f"25.0%  {CONSUME}" in text.split("inclusive")[0]
    inclusive = text.split("inclusive")[1]
    assert f"100.0%  {CONSUME}" not in inclusive  # on every busy stack: no information
    assert f"75.0%  {DECIDE}" in inclusive


def test_a_profile_without_busy_samples_says_so() -> None:
    profile = Profile()
    add_collapsed(profile, f"{LOOP};{SELECT} 5\n")
    assert summarize(profile) == "no busy samples (py-spy saw only idle or nothing)"


def test_real_py_spy_finds_the_function_a_real_process_spends_its_time_in(tmp_path: Path) -> None:
    assert find_py_spy() is not None, "py-spy is in the dev extra"
    program = textwrap.dedent(
        """
        import time
        def burn_the_cpu():
            end = time.monotonic() + 20
            total = 0
            while time.monotonic() < end:
                total += sum(range(200))
        print("ready", flush=True)
        burn_the_cpu()
        """
    )
    busy = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout is not None
        assert busy.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        sampler = Sampler(busy.pid, tmp_path, rate=100)
        sampler.start(2)
        sampler.finish()
    finally:
        busy.kill()
        busy.wait()
    assert sampler.problem is None
    assert sampler.profile.busy > 0
    (top, _), *_ = sampler.profile.own.most_common(1)
    assert top.startswith("burn_the_cpu (")


def test_a_process_that_is_gone_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    sampler = Sampler(gone.pid, tmp_path)
    sampler.start(1)
    sampler.finish()
    assert sampler.problem is not None
    assert sampler.problem.startswith("py-spy failed")
    assert sampler.profile.busy == 0
