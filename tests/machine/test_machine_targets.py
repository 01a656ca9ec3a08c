"""Targets that do not hold still: a baseline replaced on disk after the process started (`(deleted)`),
and a process that exits while `apply --all` works on it — "gone", never a traceback, a hang or a
refusal of the others, and never left stopped or traced."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from live_helpers import assert_running_untraced, hpkg, hpkg_mappings
from sample_corpus import Conversation, Sample
from terminal_signals import sigint_as_at_a_terminal

from hpkg.formats import read_package
from hpkg.loader.machine import Outcome, apply_to_pid
from hpkg.loader.procfs import thread_state

WAIT = 30.0  # a safety net for a condition that must come true, not a timing assertion


def _replace_on_disk(path: Path, new: Path) -> None:
    """What a package manager does: the new file written beside the old one, then renamed over it."""
    staged = path.with_name(f".{path.name}.new")
    shutil.copy2(new, staged)
    os.rename(staged, path)


def test_a_baseline_replaced_on_disk_after_start_is_patched_in_the_running_processes(
    own_samples: dict[str, Sample],
    packages: dict[str, tuple[Path, str]],
    public_key: Path,
    start: Callable[..., Conversation],
    tmp_path: Path,
) -> None:
    talks: dict[str, Conversation] = {}
    for name, sample in own_samples.items():
        copy = tmp_path / name
        shutil.copytree(sample.out, copy / "out")
        moved = dataclasses.replace(sample, directory=copy)
        talks[name] = start(moved)
        assert talks[name].ask(sample.steps[0].request) == sample.steps[0].baseline
        # `apt upgrade`: the fixed build takes the baseline's place on disk; the process keeps the old file.
        _replace_on_disk(moved.binary("baseline", "ready"), sample.binary("fixed", "ready"))
    for name, sample in own_samples.items():
        run = hpkg("apply", packages[name][0], "--all", "--key", public_key, "--json")
        assert run.returncode == 0, run.stderr
        [process] = run.json()["processes"]
        assert (process["pid"], process["outcome"]) == (talks[name].pid, "applied")
        assert process["image"].endswith(" (deleted)"), process["image"]
        second = sample.steps[1]
        assert talks[name].ask(second.request) == second.fixed
        assert_running_untraced(talks[name].pid)


def _wait_for_package_memory(pid: int) -> None:
    deadline = time.monotonic() + WAIT
    while not hpkg_mappings(pid):
        assert time.monotonic() < deadline, f"hpkg never placed its package in process {pid}"
        time.sleep(0.002)


def _start_lingering(baseline: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen([str(baseline)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def test_a_process_killed_during_apply_all_is_gone_and_the_others_are_still_handled(
    lingering: tuple[Path, Path], public_key: Path
) -> None:
    """Both processes keep a thread inside linger(), so apply waits for a safe moment (--timeout); one is
    SIGKILLed while it waits, its package memory already placed. That one is "gone"; the other is
    refused for its busy thread (exit 4), untraced, its package memory freed."""
    baseline, package = lingering
    victim, survivor = _start_lingering(baseline), _start_lingering(baseline)
    try:
        argv = [sys.executable, "-m", "hpkg", "apply", str(package), "--all", "--key", str(public_key),
                "--timeout", "2", "--json"]  # fmt: skip
        loader = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for_package_memory(victim.pid)
        victim.send_signal(signal.SIGKILL)  # left a zombie: this test is its parent and reaps it later
        out, err = loader.communicate(timeout=WAIT * 2)
        assert loader.returncode == 4, err
        assert "Traceback" not in err
        assert err.startswith("error: 1 of 2 processes refused the package"), err
        outcomes = {p["pid"]: p for p in json.loads(out)["processes"]}
        assert outcomes[victim.pid]["outcome"] == "gone"
        assert outcomes[survivor.pid]["outcome"] == "refused"
        assert "linger" in outcomes[survivor.pid]["reason"]
        assert_running_untraced(survivor.pid)
        assert hpkg_mappings(survivor.pid) == []
        assert survivor.stdin is not None and survivor.stdout is not None
        survivor.stdin.write("ping\n")
        survivor.stdin.flush()
        assert survivor.stdout.readline().startswith("pong ")
    finally:
        for process in (victim, survivor):
            process.kill()
            process.wait()


def test_a_process_that_died_before_its_turn_is_gone_not_refused(lingering: tuple[Path, Path]) -> None:
    """Killed between the scan and its apply, a process is a zombie with no maps: its build-id lookup
    fails ("runs no image with build-id …"), which is its death, not another build."""
    baseline, package_path = lingering
    package = read_package(package_path.read_bytes()).package
    process = _start_lingering(baseline)
    try:
        process.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + WAIT
        while thread_state(process.pid, process.pid) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.005)
        outcome = apply_to_pid(package, process.pid, 1.0)
        assert (outcome.pid, outcome.outcome, outcome.changed) == (process.pid, Outcome.GONE, False)
        assert outcome.command == "lingering.basel"  # /proc/PID/comm: 15 characters
    finally:
        process.kill()
        process.wait()


def test_ctrl_c_during_apply_all_stops_the_run_and_leaves_every_target_as_it_was(
    lingering: tuple[Path, Path], public_key: Path
) -> None:
    """SIGINT while the first process is waited for: the wait stops at its safe point, the package memory
    is freed, the processes not yet started are not touched, exit 130 with one error line."""
    baseline, package = lingering
    targets = [_start_lingering(baseline) for _ in range(3)]
    try:
        argv = [sys.executable, "-m", "hpkg", "apply", str(package), "--all", "--key", str(public_key),
                "--timeout", "20", "--jobs", "1"]  # fmt: skip
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        loader = subprocess.Popen(argv, **pipes, text=True, preexec_fn=sigint_as_at_a_terminal)
        deadline = time.monotonic() + WAIT
        while not any(hpkg_mappings(t.pid) for t in targets):
            assert time.monotonic() < deadline, "hpkg never placed its package"
            time.sleep(0.002)
        loader.send_signal(signal.SIGINT)
        out, err = loader.communicate(timeout=WAIT)  # long before the 20 s --timeout
        assert loader.returncode == 130, err
        assert [line for line in err.splitlines() if line.startswith("error:")] == ["error: interrupted"]
        assert "Traceback" not in err and out == ""
        for target in targets:
            assert_running_untraced(target.pid)
            assert hpkg_mappings(target.pid) == []
    finally:
        for target in targets:
            target.kill()
            target.wait()
