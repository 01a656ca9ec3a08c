"""The kernel's process connector reports the exec, fork and exit of real processes."""

from __future__ import annotations

import subprocess
import time

from hpkg.loader.exec_events import EventKind, ExecEvents, Overrun, ProcessEvent

WAIT = 20.0  # a deadline for an event that must come, not a timing assertion


def _collect(watch: ExecEvents, until) -> list[ProcessEvent]:
    seen: list[ProcessEvent] = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and not until(seen):
        for event in watch.events(timeout=0.2):
            if not isinstance(event, Overrun):
                seen.append(event)
            if until(seen):
                break
    return seen


def test_the_exec_of_a_new_process_is_reported_with_its_pid() -> None:
    with ExecEvents() as watch:
        child = subprocess.Popen(["/bin/sleep", "0.2"])
        seen = _collect(watch, lambda s: any(e.kind is EventKind.EXEC and e.tgid == child.pid for e in s))
        child.wait()
    assert any(e.kind is EventKind.EXEC and e.tgid == child.pid for e in seen)


def test_fork_and_exit_name_the_child_and_its_parent() -> None:
    with ExecEvents() as watch:
        shell = subprocess.Popen(["/bin/sh", "-c", "/bin/true & wait"])
        seen = _collect(watch, lambda s: any(e.kind is EventKind.EXIT and e.tgid == shell.pid for e in s))
        shell.wait()
    forks = [e for e in seen if e.kind is EventKind.FORK and e.parent_tgid == shell.pid]
    assert forks, "the shell's child was not reported"
    exits = {e.tgid for e in seen if e.kind is EventKind.EXIT}
    assert forks[0].tgid in exits and shell.pid in exits


def test_a_closed_subscription_can_be_closed_again() -> None:
    watch = ExecEvents()
    watch.close()
    watch.close()
