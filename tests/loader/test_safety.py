"""The safety check: threads inside replaced code are found by ip or stack; idle code passes."""

from __future__ import annotations

import pytest

from hpkg.errors import UnsafeNow
from hpkg.loader import safety
from hpkg.loader.process import Process


def code_range(process: Process, target, name: str) -> safety.CodeRange:
    image = next(i for i in process.images() if i.path == str(target.binary.path))
    link_address, size = target.binary.symbol(name)
    start = image.runtime_address(link_address)
    return safety.CodeRange(name, start, start + size)


def test_thread_sleeping_inside_a_function_is_found_by_its_return_address(start_target):
    target = start_target("single", "hold")
    target.wait_for(lambda line: line == "holding")
    process = Process(target.pid)
    hold = code_range(process, target, "hold_here")
    with process.stop_all_threads() as stopped:
        report = safety.check_threads(stopped, [hold], [])
    assert not report.safe
    assert [(o.tid, o.range_name, o.kind) for o in report.offenders] == [
        (target.pid, "hold_here", "return address")
    ]
    assert hold.contains(report.offenders[0].address)
    target.assert_running_untraced()


def test_instruction_pointer_inside_a_patch_site_window_is_found(start_target):
    target = start_target("single", "hold")
    target.wait_for(lambda line: line == "holding")
    target.wait_blocked_in(230)  # clock_nanosleep(2)
    process = Process(target.pid)
    with process.stop_all_threads() as stopped:
        rip = stopped.regs(target.pid).rip  # just after the syscall instruction, inside libc
        window = safety.CodeRange("libc site", rip - 2, rip + 3)
        elsewhere = safety.CodeRange("elsewhere", rip + 3, rip + 8)
        report = safety.check_threads(stopped, [], [window, elsewhere])
    assert [(o.tid, o.range_name, o.kind, o.address) for o in report.offenders] == [
        (target.pid, "libc site", "patch site", rip)
    ]


def test_check_passes_when_no_thread_is_inside(start_target):
    target = start_target("threads")
    process = Process(target.pid)
    idle = code_range(process, target, "answer_fixed")
    with process.stop_all_threads() as stopped:
        window = safety.CodeRange("answer_fixed", idle.start, idle.start + 5)
        report = safety.check_threads(stopped, [idle], [window])
    assert report.safe and report.threads_checked == 8


def test_every_busy_thread_of_the_multithreaded_target_is_named(start_target):
    target = start_target("threads")
    process = Process(target.pid)
    ranges = [code_range(process, target, name) for name in ("hold_here", "sleeper_wait", "spin_work")]
    with process.stop_all_threads() as stopped:
        report = safety.check_threads(stopped, ranges)
    by_function: dict[str, set[int]] = {}
    for offender in report.offenders:
        by_function.setdefault(offender.range_name, set()).add(offender.tid)
    assert by_function == {
        "hold_here": set(target.tid_named("holder")),
        "sleeper_wait": set(target.tid_named("sleeper")),
        "spin_work": set(target.tid_named("spinner")),
    }
    assert len(by_function["sleeper_wait"]) == len(by_function["spin_work"]) == 2


def test_always_active_function_is_refused_with_the_thread_named(start_target):
    target = start_target("threads")
    process = Process(target.pid)
    hold = code_range(process, target, "hold_here")
    [holder_tid] = target.tid_named("holder")
    with pytest.raises(UnsafeNow) as caught, safety.stop_when_safe(
        process, [hold], [], timeout=0.3, retry_interval=0.05
    ):
        raise AssertionError("the switch must not run while a thread is inside hold_here")
    error = caught.value
    assert isinstance(error, safety.ThreadsBusy)
    assert [o.tid for o in error.always_active] == [holder_tid]
    assert "hold_here" in str(error)
    [reason] = error.reasons
    assert f"thread {holder_tid}" in reason and "waiting cannot help" in reason
    target.assert_running_untraced()
    target.ticks_after(target.mark())


def test_function_called_now_and_then_becomes_safe_by_retrying(start_target):
    target = start_target("threads")
    process = Process(target.pid)
    answer = code_range(process, target, "answer")
    window = safety.CodeRange("answer", answer.start, answer.start + 5)
    with safety.stop_when_safe(process, [answer], [window], timeout=10) as stopped:
        assert safety.check_threads(stopped, [answer], [window]).safe
    target.assert_running_untraced()
