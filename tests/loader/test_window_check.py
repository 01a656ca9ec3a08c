"""The whole in-window check as one helper call (loader/window_check.py): the same verdicts as the
step-by-step check on real stopped processes, the switch made only when every thread passes, and the
step-by-step path taken for whatever is off the usual path."""

from __future__ import annotations

import time
from array import array

import pytest

from hpkg.errors import IncompatibleTarget
from hpkg.loader import safety, thread_scan, window_check, window_native
from hpkg.loader.process import Process
from hpkg.loader.switch import SiteWrite, StateWrite, prepare_switch
from hpkg.loader.thread_scan import ThreadScan

LIMIT = safety.DEFAULT_STACK_SCAN_LIMIT
JUMP = b"\xe9\x01\x02\x03\x04"


@pytest.fixture
def helper(built_helper, monkeypatch):
    """The helper in use, each stack's mapping asked of the kernel (the one-call check's conditions)."""
    monkeypatch.setattr(thread_scan, "HELPER", built_helper)
    monkeypatch.setattr(thread_scan, "QUERY_MAPPINGS", True)
    return built_helper


def code_range(process: Process, target, name: str, size: int | None = None) -> safety.CodeRange:
    image = next(i for i in process.images() if i.path == str(target.binary.path))
    link_address, length = target.binary.symbol(name)
    start = image.runtime_address(link_address)
    return safety.CodeRange(name, start, start + (length if size is None else size))


def _key(report: safety.SafetyReport) -> list[tuple[int, str, str, int]]:
    return sorted((o.tid, o.range_name, o.kind, o.address) for o in report.offenders)


def _both(stopped, replaced, windows, pointers, monkeypatch):
    """One stop checked both ways: the one-call verdict and its decoded report, then the step-by-step
    check with the helper and without it (a scan of their own each)."""
    scan = ThreadScan(stopped.process.pid, len(stopped.held))
    one_call = safety.one_call_check(scan, replaced, windows, pointers, LIMIT, None, None)
    assert one_call is not None
    verdict = one_call.run(stopped)
    decoded = None
    if verdict == window_check.UNSAFE:
        decoded = safety._decoded(one_call, replaced, windows, pointers)
    step = safety.check_threads(stopped, replaced, windows, LIMIT, pointers)
    monkeypatch.setattr(thread_scan, "HELPER", None)
    python = safety.check_threads(stopped, replaced, windows, LIMIT, pointers)
    monkeypatch.setattr(thread_scan, "HELPER", one_call._helper)
    scan.close()
    return verdict, decoded, one_call.verdicts(), step, python


def test_the_one_call_check_finds_every_thread_the_step_by_step_check_finds(
    start_target, helper, monkeypatch
):
    """Threads inside three functions (a holder by its return address, sleepers and spinners by rip or
    stack): the one call says unsafe, flags exactly the offending threads, and its decoded report is the
    step-by-step check's, with and without the helper, in the same stop."""
    target = start_target("threads")
    process = Process(target.pid)
    replaced = [code_range(process, target, name) for name in ("hold_here", "sleeper_wait", "spin_work")]
    windows = [code_range(process, target, name, 5) for name in ("hold_here", "sleeper_wait", "spin_work")]
    with process.stop_all_threads() as stopped:
        verdict, decoded, bits, step, python = _both(stopped, replaced, windows, [], monkeypatch)
    assert verdict == window_check.UNSAFE and decoded is not None
    assert _key(decoded) == _key(step) == _key(python)
    busy = set(target.tid_named("holder") + target.tid_named("sleeper") + target.tid_named("spinner"))
    assert {o.tid for o in decoded.offenders} == busy
    assert {tid for tid, bit in bits.items() if bit} == busy and len(bits) == 8
    target.assert_running_untraced()


def test_the_one_call_check_finds_registers_and_stack_words_into_freed_memory_as_the_step_by_step(
    start_target, helper, monkeypatch
):
    """A revert's check: every general register and stack word against memory about to be freed (here the
    program's own image, which every thread's stack returns into, and an empty range): the same offenders
    both ways, registers included."""
    target = start_target("threads")
    process = Process(target.pid)
    image = next(i for i in process.images() if i.path == str(target.binary.path))
    freed = [safety.CodeRange("memory of the image", image.start, image.end), safety.CodeRange("empty", 8, 8)]
    replaced = [code_range(process, target, "answer_fixed")]
    with process.stop_all_threads() as stopped:
        verdict, decoded, bits, step, python = _both(stopped, replaced, [], freed, monkeypatch)
    assert verdict == window_check.UNSAFE and decoded is not None
    assert _key(decoded) == _key(step) == _key(python)
    assert {o.kind for o in decoded.offenders} >= {"stack word"}
    assert any(bit & window_native.VERDICT_STACK_WORD for bit in bits.values())
    target.assert_running_untraced()


def test_a_register_into_freed_memory_is_flagged_by_the_one_call(start_target, helper, monkeypatch):
    """A range holding one general register's value of one thread (and nothing the stacks hold): that
    thread, and only as a register, both ways."""
    target = start_target("single", "hold")
    target.wait_for(lambda line: line == "holding")
    process = Process(target.pid)
    with process.stop_all_threads() as stopped:
        regs = stopped.regs(target.pid)
        value = next(v for v in (regs.rbx, regs.rbp, regs.r12, regs.r13, regs.rdi, regs.rsi) if v > 4096)
        freed = [safety.CodeRange("freed", value, value + 1)]
        verdict, decoded, bits, step, python = _both(stopped, [], [], freed, monkeypatch)
    assert verdict == window_check.UNSAFE and decoded is not None
    assert _key(decoded) == _key(step) == _key(python)
    assert (target.pid, "register", value) in {(o.tid, o.kind, o.address) for o in decoded.offenders}
    assert bits[target.pid] & window_native.VERDICT_REGISTER
    target.assert_running_untraced()


def test_a_thread_with_its_stack_pointer_in_no_mapping_is_unsafe_in_the_one_call(
    start_target, helper, monkeypatch
):
    """rsp 0 (the "lost" thread): the one call flags its stack unreadable; decoded as the step by step."""
    target = start_target("threads")
    process = Process(target.pid)
    idle = [code_range(process, target, "answer_fixed")]
    before = set(target.tids())
    target.send("lose\n")
    deadline = time.monotonic() + 20
    while True:
        with process.stop_all_threads() as stopped:
            verdict, decoded, bits, step, python = _both(stopped, idle, [], [], monkeypatch)
        if decoded is not None and decoded.offenders:
            break
        assert time.monotonic() < deadline, "the lost thread was never found"
        time.sleep(0.01)
    [lost] = set(target.tids()) - before
    assert [(o.tid, o.range_name, o.kind, o.address) for o in decoded.offenders] == [
        (lost, "(unreadable stack)", "stack pointer", 0)
    ]
    assert _key(decoded) == _key(step) == _key(python)
    assert {tid: bit for tid, bit in bits.items() if bit} == {lost: window_native.VERDICT_UNREADABLE}
    target.assert_running_untraced()


def _switch(process: Process, target, site_name: str, state_name: str):
    image = next(i for i in process.images() if i.path == str(target.binary.path))
    site = code_range(process, target, site_name).start
    switch = prepare_switch(process, [SiteWrite(site, JUMP)], [(site, 5)], None, image)
    state_at = code_range(process, target, state_name).start + 8
    state = StateWrite(state_at, b"\xaa\xbb\xcc", process.read(state_at, 3))
    return site, switch, state


def test_the_one_call_makes_the_switch_only_when_every_thread_passes_and_an_exception_undoes_it(
    start_target, helper
):
    """Nobody in answer_fixed: the call passes, writes the site and then the state word; the switch's run
    reports it made; leaving the hold on an exception undoes both. With the holder in hold_here: refused
    at the deadline with nothing written."""
    target = start_target("threads")
    process = Process(target.pid)
    site, switch, state = _switch(process, target, "answer_fixed", "answer")
    before = process.read(site, 5)
    idle = code_range(process, target, "answer_fixed")
    fused = switch.fused(process, state)
    assert fused is not None
    with (
        pytest.raises(RuntimeError, match="undo"),
        safety.stop_when_safe(process, [idle], [], timeout=10, fused=fused) as stopped,
    ):
        assert stopped.switched is not None and stopped.switched[1] == window_native.SWITCH_DONE
        assert process.read(site, 5) == JUMP and process.read(state.address, 3) == state.data
        assert switch.run(stopped, "changed", state) == switch.method
        raise RuntimeError("undo")
    assert process.read(site, 5) == before and process.read(state.address, 3) == state.before
    hold = code_range(process, target, "hold_here")
    with (
        pytest.raises(safety.ThreadsBusy) as caught,
        safety.stop_when_safe(process, [hold], [], timeout=0.3, fused=fused),
    ):
        raise AssertionError("not safe: the holder is inside")
    assert [o.tid for o in caught.value.offenders] == target.tid_named("holder")
    assert process.read(site, 5) == before and process.read(state.address, 3) == state.before
    target.assert_running_untraced()


def test_a_site_changed_since_the_stop_was_prepared_is_refused_by_the_one_call_with_nothing_written(
    start_target, helper
):
    """The site's bytes changed after prepare_switch read them (another tool): the call passes the check
    but writes nothing, and the switch's run raises what the step-by-step switch raises."""
    target = start_target("threads")
    process = Process(target.pid)
    site, switch, state = _switch(process, target, "answer_fixed", "answer")
    before = process.read(site, 5)
    other = b"\xcc" + before[1:]
    process.write(site, other)
    idle = code_range(process, target, "answer_fixed")
    fused = switch.fused(process, state)
    with (
        pytest.raises(IncompatibleTarget, match="changed"),
        safety.stop_when_safe(process, [idle], [], timeout=10, fused=fused) as held,
    ):
        assert held.switched is not None and held.switched[1] == window_native.SWITCH_CHANGED
        switch.run(held, "changed while waiting", state)
    assert process.read(site, 5) == other and process.read(state.address, 3) == state.before
    process.write(site, before)
    target.assert_running_untraced()


def test_off_the_usual_path_the_one_call_writes_nothing_and_hands_over_to_the_step_by_step_check(
    start_target, helper
):
    """A kernel without PROCMAP_QUERY (the ioctl asked of /proc/PID/status answers ENOTTY), found in the
    window or before the stop: STEP_BY_STEP, nothing written, the scan told (no query from now on). A stack
    buffer too small: the call makes room and decides (here: safe, the switch made)."""
    target = start_target("threads")
    process = Process(target.pid)
    site, switch, state = _switch(process, target, "answer_fixed", "answer")
    before = process.read(site, 5)
    idle = code_range(process, target, "answer_fixed")
    scan = ThreadScan(process.pid, 8)
    one_call = safety.one_call_check(scan, [idle], [], [], LIMIT, switch.fused(process, state), None)
    assert one_call is not None
    status = open(f"/proc/{process.pid}/status", "rb")  # noqa: SIM115 - closed below
    try:
        with process.stop_all_threads() as stopped:
            one_call.block.maps_fd = status.fileno()
            no_query = one_call.run(stopped)
            written = process.read(site, 5)
            told = scan.maps_reader.queryable
            scan.maps_reader.queryable = True
            one_call.block.maps_fd = scan.maps_reader.fd
            one_call.block.buffer_size = 64
            no_room = one_call.run(stopped)
            switched = process.read(site, 5), stopped.switched
            process.write(site, before)
            process.write(state.address, state.before)
            stopped.switched = None
        one_call.block.maps_fd = status.fileno()
        one_call.warm(list(range(1)))  # the probe before the stop: the kernel does not answer
        probed = scan.maps_reader.queryable
        with process.stop_all_threads() as stopped:
            not_tried = one_call.run(stopped), process.read(site, 5), stopped.switched
    finally:
        status.close()
        scan.close()
    assert (no_query, written, told) == (window_check.STEP_BY_STEP, before, False)
    assert not probed and not_tried == (window_check.STEP_BY_STEP, before, None)
    assert no_room == window_check.SAFE and one_call.block.buffer_size >= one_call.block.used > 64
    assert switched[0] == JUMP and switched[1] is not None and switched[1][1] == window_native.SWITCH_DONE
    target.assert_running_untraced()


def test_a_register_read_that_fails_stops_the_one_call_at_that_thread(start_target, helper):
    """A tid that is not ours (pid 1) among the held ones: the call stops there (WINDOW_REGISTERS, its
    index) without reading any stack."""
    target = start_target("threads")
    process = Process(target.pid)
    scan = ThreadScan(process.pid, 8)
    one_call = safety.one_call_check(scan, [code_range(process, target, "answer_fixed")], [], [], LIMIT, None,
                                     None)  # fmt: skip
    assert one_call is not None
    with process.stop_all_threads() as stopped:
        tids = array("i", [*list(stopped.held)[:3], 1, *list(stopped.held)[3:]])
        block = one_call.block
        block.tids, block.count, block.slots = tids.buffer_info()[0], len(tids), scan.registers.address
        block.used = -1
        outcome = helper.window_check(block)
    scan.close()
    assert (outcome, block.failed, block.used) == (window_native.WINDOW_REGISTERS, 3, -1)
    target.assert_running_untraced()


def test_a_stack_read_that_falls_short_hands_over_with_nothing_written(start_target, helper):
    """The stacks read from another process (pid 1, where these addresses hold nothing of the target's
    stacks): the read falls short, the call answers STEP_BY_STEP before any test or write."""
    target = start_target("threads")
    process = Process(target.pid)
    site, switch, state = _switch(process, target, "answer_fixed", "answer")
    before = process.read(site, 5)
    scan = ThreadScan(process.pid, 8)
    idle = [code_range(process, target, "answer_fixed")]
    one_call = safety.one_call_check(scan, idle, [], [], LIMIT, switch.fused(process, state), None)
    assert one_call is not None
    one_call.block.pid = 1
    with process.stop_all_threads() as stopped:
        outcome = one_call.run(stopped)
        after = process.read(site, 5), process.read(state.address, 3), stopped.switched
    scan.close()
    assert outcome == window_check.STEP_BY_STEP and after == (before, state.before, None)
    target.assert_running_untraced()


def test_the_stack_buffer_is_sized_before_the_stop_for_threads_running_with_deep_stacks(
    start_target, helper
):
    """Threads that never block show no stack pointer before the stop, and theirs (20 kB frames) are
    deeper than an idle thread's allowance: `warm` still leaves room for them, so the window's check is
    one call — not a call that finds too little room, allocates and reads every thread again inside."""
    target = start_target("deep-spinners")
    process = Process(target.pid)
    scan = ThreadScan(process.pid, len(target.tids()))
    initial = len(scan.stack_buffer()[0])
    one_call = safety.one_call_check(scan, [code_range(process, target, "never_called")], [], [], LIMIT, None,
                                     None)  # fmt: skip
    assert one_call is not None
    calls = []
    check = one_call._check
    one_call._check = lambda block: calls.append(check(block)) or calls[-1]
    with process.seize_all_threads() as threads:
        one_call.warm(threads.seized)
        warmed = one_call.block.buffer_size
        threads.stop(5.0)
        verdict = one_call.run(threads)
    scan.close()
    assert verdict == window_check.SAFE and calls == [window_native.WINDOW_SAFE]
    assert one_call.block.used > initial and warmed == one_call.block.buffer_size >= one_call.block.used
    target.assert_running_untraced()


def test_a_call_again_after_too_little_room_reads_no_register_a_second_time(start_target, helper):
    """The first call answers WINDOW_ROOM having read every register; the second one, with room, reads
    none again: here every tid is replaced by one no register read can succeed on (pid 1), and it still
    decides."""
    target = start_target("threads")
    process = Process(target.pid)
    scan = ThreadScan(process.pid, 8)
    one_call = safety.one_call_check(scan, [code_range(process, target, "answer_fixed")], [], [], LIMIT, None,
                                     None)  # fmt: skip
    assert one_call is not None
    with process.stop_all_threads() as stopped:
        one_call._target(list(stopped.held))
        block = one_call.block
        block.buffer_size = 64
        first = helper.window_check(block)
        have = list(one_call._have[: block.count])
        foreign = array("i", [1] * block.count)
        block.tids = foreign.buffer_info()[0]
        one_call._reserve_buffer(2 * block.used)
        second = helper.window_check(block)
    scan.close()
    assert (first, have) == (window_native.WINDOW_ROOM, [1] * len(have))
    assert second == window_native.WINDOW_SAFE
    target.assert_running_untraced()
