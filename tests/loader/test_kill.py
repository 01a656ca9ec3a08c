"""SIGKILL of the loader at any moment leaves the target running, untraced, and behaving."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

KILL_INJECTOR = Path(__file__).parent / "kill_injector.py"


def check_reader_behaves(target, k: int) -> None:
    mark = target.mark()
    target.send(f"after kill {k}\n")
    target.wait_for(lambda line: line == f"got after kill {k}", mark)


def check_loop_behaves(target, _k: int) -> None:
    ticks = target.ticks_after(target.mark(), 2)
    assert int(ticks[1].group(1)) == int(ticks[0].group(1)) + 1
    assert ticks[1].group(2) == "1"


@pytest.mark.parametrize(
    ("mode", "check"),
    [("read", check_reader_behaves), ("loop", check_loop_behaves)],
    ids=["blocked-in-read", "sleeping-in-nanosleep"],
)
def test_sigkill_after_every_ptrace_request_of_an_injection(start_target, mode, check):
    target = start_target("single", mode)
    driver = subprocess.Popen(
        [sys.executable, str(KILL_INJECTOR), str(target.pid), "each-call"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    kills = 0
    try:
        while True:
            line = driver.stdout.readline().strip()
            if line.startswith("complete"):
                break
            assert line == f"killed {kills + 1}", line
            kills += 1
            target.assert_running_untraced()
            check(target, kills)
            driver.stdin.write("next\n")
            driver.stdin.flush()
    finally:
        driver.kill()
        driver.wait()
    # Every window of an injection was hit: seize, interrupt, registers, syscall stops, restore.
    assert kills == int(line.split()[1]) and kills >= 10
    target.assert_running_untraced()
    check(target, kills + 1)


def test_sigkill_at_random_moments_in_a_multithreaded_target(start_target):
    target = start_target("threads")
    rng = random.Random(5)
    injected_tids = [target.pid, *target.tids()[1:4]]  # main (read), reader (read), two sleepers
    for round_number, tid in enumerate(injected_tids * 3):
        driver = subprocess.Popen(
            [sys.executable, str(KILL_INJECTOR), str(target.pid), str(tid), "loop"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert driver.stdout.readline().strip() == "injecting"
            time.sleep(rng.uniform(0.0, 0.03))
            os.kill(driver.pid, signal.SIGKILL)
        finally:
            driver.wait()
        assert driver.returncode == -signal.SIGKILL
        target.assert_running_untraced()
        mark = target.mark()
        target.send(f"round {round_number}\n")
        target.wait_for(lambda line, n=round_number: line == f"main got round {n}", mark)
        target.wait_for(lambda line, n=round_number: line == f"reader got round {n}", mark)
        target.ticks_after(mark, 2)
