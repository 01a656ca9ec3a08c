"""stop_all_threads: every thread stopped inside, none stopped or traced after, even on errors."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from hpkg.errors import TargetError
from hpkg.loader import ptrace as pt
from hpkg.loader.process import Process


def assert_all_traced_stopped(target, stopped) -> None:
    states = target.states()
    assert set(states) == set(stopped.tids)
    assert set(states.values()) == {"t"}, states
    assert set(target.tracers().values()) == {os.getpid()}


def test_stops_every_thread_and_releases_them(start_target):
    target = start_target("threads")
    with Process(target.pid).stop_all_threads() as stopped:
        assert len(stopped.tids) == 8
        assert_all_traced_stopped(target, stopped)
        mark = target.mark()
    target.assert_running_untraced()
    # Still working: ticks go on, and both blocked readers get a line sent after the stop.
    ticks = target.ticks_after(mark)
    assert int(ticks[0].group(1)) < int(ticks[-1].group(1))
    target.send("after-stop\n")
    target.wait_for(lambda line: line == "main got after-stop", mark)
    target.wait_for(lambda line: line == "reader got after-stop", mark)


def test_exception_inside_releases_threads_and_undoes_writes(start_target):
    target = start_target("single", "loop")
    process = Process(target.pid)
    image = process.images()[0]
    answer = image.runtime_address(target.binary.symbol("answer")[0])
    original = process.read(answer, 5)
    with pytest.raises(RuntimeError, match="boom"), process.stop_all_threads() as stopped:
        stopped.write(answer, b"\xcc" * 5)
        assert process.read(answer, 5) == b"\xcc" * 5
        raise RuntimeError("boom")
    assert process.read(answer, 5) == original
    target.assert_running_untraced()
    mark = target.mark()
    assert all(m.group(2) == "1" for m in target.ticks_after(mark))


def test_changed_registers_are_restored_on_release(start_target):
    target = start_target("single", "read")
    target.wait_blocked_in(0)  # read(2)
    process = Process(target.pid)
    with process.stop_all_threads() as stopped:
        before = stopped.regs(target.pid)
        stopped.set_regs(target.pid, pt.Registers(**{**before.__dict__, "rip": 0, "rax": 12345}))
    with process.stop_all_threads() as stopped:
        assert stopped.regs(target.pid) == before
    target.assert_running_untraced()
    target.send("still reading\n")
    target.wait_for(lambda line: line == "got still reading")


def test_threads_created_and_exiting_during_the_stop(start_target):
    target = start_target("threads", "churn")
    process = Process(target.pid)
    for _ in range(20):
        with process.stop_all_threads() as stopped:
            # No thread of the process runs: every task listed now is held stopped by us.
            states = target.states()
            assert set(states.values()) == {"t"}, states
            assert set(states) == set(stopped.tids)
    time.sleep(0.05)
    states = target.states()
    assert not [s for s in states.values() if s in "tT"], states
    assert set(target.tracers().values()) == {0}
    mark = target.mark()
    target.ticks_after(mark)


def test_signal_arriving_during_the_stop_is_delivered_after(start_target):
    target = start_target("single", "loop")
    process = Process(target.pid)
    with process.stop_all_threads():
        os.kill(target.pid, signal.SIGUSR1)
        mark = target.mark()
    line = target.wait_for(lambda text: text.endswith("usr1 1 rt 0"), mark)
    assert line.startswith("tick")
    target.assert_running_untraced()


def test_queued_signals_racing_with_repeated_stops_are_all_delivered(start_target):
    target = start_target("single", "loop")
    process = Process(target.pid)
    sent = 0

    def send_signals() -> None:
        nonlocal sent
        for _ in range(300):
            os.kill(target.pid, signal.SIGRTMIN)  # real-time signals queue: none may be lost
            sent += 1
            time.sleep(0.0002)

    sender = threading.Thread(target=send_signals)
    sender.start()
    stops = 0
    while sender.is_alive():
        with process.stop_all_threads() as stopped:
            assert stopped.tids == (target.pid,)
        stops += 1
    sender.join()
    assert stops > 1
    target.wait_for(lambda text: text.endswith(f"rt {sent}"))
    target.assert_running_untraced()


def test_job_control_stop_during_the_stop_is_kept(start_target):
    target = start_target("single", "loop")
    process = Process(target.pid)
    with process.stop_all_threads():
        os.kill(target.pid, signal.SIGSTOP)
        time.sleep(0.05)
    # The user asked for a job-control stop: after we detach the process is stopped, untraced.
    deadline = time.monotonic() + 10
    while target.status()["State"][:1] != "T" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert target.status()["State"][:1] == "T"
    assert target.status()["TracerPid"] == "0"
    os.kill(target.pid, signal.SIGCONT)
    mark = target.mark()
    target.ticks_after(mark)
    target.assert_running_untraced()


def test_stopping_an_already_stopped_process_keeps_it_stopped(start_target):
    target = start_target("single", "loop")
    os.kill(target.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while target.status()["State"][:1] != "T" and time.monotonic() < deadline:
        time.sleep(0.01)
    with Process(target.pid).stop_all_threads() as stopped:
        assert stopped.tids == (target.pid,)
    time.sleep(0.05)
    assert target.status()["State"][:1] == "T"
    assert target.status()["TracerPid"] == "0"
    os.kill(target.pid, signal.SIGCONT)
    target.ticks_after(target.mark())


def test_already_traced_process_names_the_tracer(start_target):
    target = start_target("single", "loop")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from hpkg.loader import ptrace as pt; pt.seize(int(sys.argv[1])); "
            "print('seized', flush=True); time.sleep(60)",
            str(target.pid),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "seized"
        with pytest.raises(TargetError, match=rf"already traced by process {holder.pid}"), Process(
            target.pid
        ).stop_all_threads():
            pass
    finally:
        holder.kill()
        holder.wait()
    target.assert_running_untraced()


def test_missing_thread_is_a_target_error():
    with pytest.raises(TargetError, match="no such process"):
        pt.seize(2**22 + 4321)


def test_the_loader_runs_first_in_line_only_while_it_holds_threads(start_target):
    """SCHED_FIFO from the seize to the release (as root), sharing the CPU while threads reach their
    stops, and the loader's own policy back afterwards, also when the hold ends in an exception."""
    target = start_target("threads")
    process = Process(target.pid)
    before = os.sched_getscheduler(0)
    with process.seize_all_threads() as seized:
        assert os.sched_getscheduler(0) == os.SCHED_FIFO
        seized.stop(5.0)
        assert os.sched_getscheduler(0) == os.SCHED_FIFO and len(seized.tids) == 8
    assert os.sched_getscheduler(0) == before
    with pytest.raises(RuntimeError, match="boom"), process.stop_all_threads():
        raise RuntimeError("boom")
    assert os.sched_getscheduler(0) == before
    with process.stop_thread():  # one thread held for an injection: the loader's policy is left alone
        assert os.sched_getscheduler(0) == before
    target.assert_running_untraced()


@pytest.mark.parametrize("leave", ["normally", "by an exception"])
def test_a_target_killed_while_held_is_reaped_by_its_parent(start_target, leave):
    """SIGKILL wakes a held thread: it cannot be detached, it exits. The release waits for each such exit,
    or the thread would stay a zombie traced by the loader that its parent could never reap (seen: an
    agent holding a killed target's zombie, and the target's parent waiting for it for good)."""
    for _ in range(4):  # the release races the threads' exits: a few tries make a miss show
        target = start_target("threads")
        with contextlib.suppress(RuntimeError), Process(target.pid).stop_all_threads():
            os.kill(target.pid, signal.SIGKILL)
            if leave == "by an exception":
                raise RuntimeError("the check failed")
        assert not any(pt.tracer_of(int(tid)) == threading.get_native_id() for tid in _tasks(target.pid))
        # Here the loader is the target's parent too: its reap may take the status first (Popen: 0).
        assert target.popen.wait(timeout=20) in (-signal.SIGKILL, 0)


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
