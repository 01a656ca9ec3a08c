"""The safety check: threads inside replaced code are found by ip or stack; idle code passes."""

from __future__ import annotations

import random
import time
from array import array

import pytest

from hpkg.errors import TargetError, UnsafeNow
from hpkg.loader import ptrace as pt
from hpkg.loader import safety, thread_scan, window_native
from hpkg.loader.process import Process
from hpkg.loader.thread_scan import ThreadScan


@pytest.fixture(params=["helper", "helper-maps-text", "helper-two-threads", "python"])
def window_path(request, built_helper, monkeypatch) -> str:
    """Run the test with the window's C helper (each stack's mapping asked of the kernel, and through
    `stop_when_safe` the whole check as one call; or found in the maps text read in the window, as before
    Linux 6.11, step by step; or with that text and the stacks read on a second thread, as it does for many
    threads, whatever their number here) and with the Python path."""
    monkeypatch.setattr(thread_scan, "HELPER", None if request.param == "python" else built_helper)
    monkeypatch.setattr(thread_scan, "QUERY_MAPPINGS", request.param == "helper")
    if request.param == "helper-two-threads":
        monkeypatch.setattr(thread_scan, "PARALLEL_THREADS", 1)
        monkeypatch.setattr(thread_scan, "PARALLEL_BYTES", 1)
    return request.param


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


def test_always_active_function_is_refused_with_the_thread_named(start_target, window_path):
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


def test_function_called_now_and_then_becomes_safe_by_retrying(start_target, window_path):
    target = start_target("threads")
    process = Process(target.pid)
    answer = code_range(process, target, "answer")
    window = safety.CodeRange("answer", answer.start, answer.start + 5)
    with safety.stop_when_safe(process, [answer], [window], timeout=10) as stopped:
        assert safety.check_threads(stopped, [answer], [window]).safe
    target.assert_running_untraced()


def _reference_offenders(process: Process, stopped, replaced, pointer_ranges) -> set[tuple]:
    """The check as a word-by-word loop over each stack read on its own: what the batched check must equal."""
    maps = process.maps()
    found = set()
    for tid in stopped.tids:
        regs = stopped.regs(tid)
        found |= {(tid, r.name, "instruction pointer", regs.rip) for r in replaced if r.contains(regs.rip)}
        for memory in pointer_ranges:
            values = [getattr(regs, n) for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9",
                                                 "r10", "r11", "r12", "r13", "r14", "r15")]  # fmt: skip
            hit = next((v for v in values if memory.contains(v)), None)
            if hit is not None:
                found.add((tid, memory.name, "register", hit))
        stack = next(m for m in maps if m.contains(regs.rsp))
        start = regs.rsp & ~7
        data = process.read(start, min(stack.end, start + (1 << 20)) - start)
        words = [int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data) - 7, 8)]
        for r in replaced:
            hit = next((w for w in words if r.contains(w)), None)
            if hit is not None:
                found.add((tid, r.name, "return address", hit))
        for memory in pointer_ranges:
            hit = next((w for w in words if memory.contains(w)), None)
            if hit is not None:
                found.add((tid, memory.name, "stack word", hit))
    return found


def test_batched_check_finds_what_a_word_by_word_scan_of_each_stack_finds(start_target, window_path):
    """One process_vm_readv for every stack and a search in C: the same offenders as reading each stack
    on its own and comparing every word, for code ranges and for memory about to be freed (the image)."""
    target = start_target("threads")
    process = Process(target.pid)
    names = ("hold_here", "sleeper_wait", "spin_work", "answer")
    ranges = [code_range(process, target, name) for name in names]
    image = next(i for i in process.images() if i.path == str(target.binary.path))
    memory = [safety.CodeRange("image", image.start, image.end)]
    with process.stop_all_threads() as stopped:
        report = safety.check_threads(stopped, ranges, [], pointer_ranges=memory)
        expected = _reference_offenders(process, stopped, ranges, memory)
    found = {(o.tid, o.range_name, o.kind, o.address) for o in report.offenders}
    assert found == expected
    assert {o.range_name for o in report.offenders} >= {"hold_here", "sleeper_wait", "spin_work", "image"}


def test_a_thread_created_after_the_seize_is_stopped_and_checked(start_target):
    """Seized while running (PTRACE_O_TRACECLONE), a thread created before the stop is attached by the
    kernel: the stop holds it with the others, the check counts it, and the release lets it run."""
    target = start_target("threads")
    process = Process(target.pid)
    hold = code_range(process, target, "hold_here")
    with process.seize_all_threads() as seized:
        before = set(target.tids())
        assert not seized.held  # seized, nothing stopped: the threads run on
        target.send("spawn\n")
        deadline = time.monotonic() + 20
        while not set(target.tids()) - before:
            assert time.monotonic() < deadline, "the target never created its thread"
            time.sleep(0.001)
        [new] = set(target.tids()) - before
        seized.stop(5.0)
        assert new in seized.tids and len(seized.tids) == 9
        assert set(target.states().values()) == {"t"}
        report = safety.check_threads(seized, [hold])
        assert report.threads_checked == 9
    target.assert_running_untraced()
    # Released, it runs into hold_here like the holder: found there by a later check.
    deadline = time.monotonic() + 20
    while True:
        with process.stop_all_threads() as stopped:
            busy = {o.tid for o in safety.check_threads(stopped, [hold]).offenders}
        if new in busy:
            break
        assert time.monotonic() < deadline, "the new thread never reached hold_here"
        time.sleep(0.01)
    target.assert_running_untraced()


def test_a_busy_refusal_counts_the_attempts_and_where_threads_were(start_target, window_path):
    """The refusal says how often and where threads were found inside, and the stopped time spent."""
    target = start_target("threads")
    process = Process(target.pid)
    hold = code_range(process, target, "hold_here")
    with pytest.raises(safety.ThreadsBusy) as caught, safety.stop_when_safe(
        process, [hold], [], timeout=0.3, retry_interval=0.05
    ):
        raise AssertionError("the switch must not run while a thread is inside hold_here")
    busy = caught.value
    assert busy.attempts >= 2
    assert busy.found == (("hold_here", "return address", busy.attempts),)
    assert busy.stopped_seconds > 0
    where = f"{busy.attempts} attempts found threads inside: hold_here (return address) on {busy.attempts}"
    assert where in busy.tally()
    target.assert_running_untraced()


@pytest.mark.parametrize(
    "budget", [thread_scan.CANDIDATE_BUDGET, -(10**9)], ids=["byte-search", "pattern-search"]
)
def test_both_word_searches_find_what_a_word_by_word_scan_finds(start_target, monkeypatch, budget):
    """The one-byte search hands over to the pattern search when its byte is common: either way, every
    offender a word-by-word scan of each stack finds (a budget below zero hands over at once)."""
    monkeypatch.setattr(thread_scan, "CANDIDATE_BUDGET", budget)
    monkeypatch.setattr(thread_scan, "HELPER", None)  # the Python searches; the helper's is compared below
    target = start_target("threads")
    process = Process(target.pid)
    ranges = [code_range(process, target, name) for name in ("hold_here", "sleeper_wait", "spin_work")]
    image = next(i for i in process.images() if i.path == str(target.binary.path))
    memory = [safety.CodeRange("image", image.start, image.end)]
    with process.stop_all_threads() as stopped:
        report = safety.check_threads(stopped, ranges, [], pointer_ranges=memory)
        expected = _reference_offenders(process, stopped, ranges, memory)
    assert {(o.tid, o.range_name, o.kind, o.address) for o in report.offenders} == expected
    assert {o.range_name for o in report.offenders} >= {"hold_here", "image"}


def test_a_stack_mapped_after_the_scan_was_set_up_is_read_in_the_window(start_target, window_path):
    """The scan opens and reads /proc/PID/maps before the stop; a thread whose stack was mapped since
    (here: a thread created afterwards, sitting in hold_here) is still found by its return address,
    because the window reads the mappings again."""
    target = start_target("threads")
    process = Process(target.pid)
    hold = code_range(process, target, "hold_here")
    scan = ThreadScan(process.pid, 8)
    before = set(target.tids())
    target.send("spawn\n")
    deadline = time.monotonic() + 20
    while True:
        new = set(target.tids()) - before
        if new:
            with process.stop_all_threads() as stopped:
                report = safety.check_threads(stopped, [hold], scan=scan)
            found = {(o.tid, o.range_name, o.kind) for o in report.offenders}
            if (*new, "hold_here", "return address") in found:
                break
        assert time.monotonic() < deadline, "the new thread was never found in hold_here"
        time.sleep(0.01)
    scan.close()
    assert report.threads_checked == 9
    target.assert_running_untraced()


def test_the_helper_reads_every_held_threads_registers_as_ptrace_getregs_does(start_target, built_helper):
    """One call for every held thread: the same registers, in the same slots, as one PTRACE_GETREGS each."""
    target = start_target("threads")
    process = Process(target.pid)
    with process.stop_all_threads() as stopped:
        registers = pt.RegisterFile(2)  # grows while reading
        tids = list(stopped.held)
        registers.record_all(tids, built_helper.read_registers)
        words = registers.words()
        size = registers.SLOT_WORDS
        one_by_one = [stopped.regs(tid) for tid in tids]
    assert registers.tids == tids and len(tids) == 8
    assert [words[slot * size + registers.RIP] for slot in range(len(tids))] == [r.rip for r in one_by_one]
    assert [words[slot * size + registers.RSP] for slot in range(len(tids))] == [r.rsp for r in one_by_one]
    assert [words[slot * size + 10] for slot in range(len(tids))] == [r.rax for r in one_by_one]
    target.assert_running_untraced()


def test_a_thread_gone_while_held_is_reported_by_the_helpers_register_read(start_target, built_helper):
    """A tid that is not held (here: not a thread of ours at all) stops the batch; its error is ptrace's."""
    target = start_target("threads")
    process = Process(target.pid)
    with process.stop_all_threads() as stopped:
        registers = pt.RegisterFile(16)
        tids = list(stopped.held)
        with pytest.raises(TargetError, match="read registers of thread 1:"):
            not_ours = [*tids[:3], 1, *tids[3:]]  # pid 1 is not traced by us
            registers.record_all(not_ours, built_helper.read_registers)
        assert registers.tids == tids[:3]
    target.assert_running_untraced()


def test_the_helpers_word_search_finds_what_a_word_by_word_scan_finds(built_helper, monkeypatch):
    """Every aligned word in [low, high) and nothing else, at the range's edges too, on words around it."""
    rng = random.Random(15)
    low, high = 0x5600_0000_1230, 0x5600_0000_1290
    near = [low - 1, low, low + 1, high - 1, high, high + 1, 0, 2**64 - 1]
    values = [rng.choice(near) if rng.random() < 0.2 else rng.randrange(low - 512, high + 512)
              for _ in range(4099)]  # fmt: skip
    buffer = bytearray(array("Q", values).tobytes()) + b"\x30\x12"  # a tail shorter than a word
    expected = [(8 * i, v) for i, v in enumerate(values) if low <= v < high]
    monkeypatch.setattr(thread_scan, "HELPER", built_helper)
    for end in (len(buffer), 8 * 4096 + 5, 8 * 3 + 4, 0):
        assert thread_scan.find_words(buffer, end, low, high) == [h for h in expected if h[0] + 8 <= end]
    assert thread_scan.find_words(buffer, len(buffer), high, low) == []


def test_the_loader_uses_the_helper_only_when_built_and_not_disabled(helper_library, tmp_path, monkeypatch):
    """No file, a file that is not the helper, or HPKG_NO_WINDOW_HELPER=1: the Python path (None)."""
    library = helper_library
    assert window_native.load(library) is not None
    assert window_native.load(tmp_path / "absent.so") is None
    foreign = tmp_path / "foreign.so"
    foreign.write_bytes(b"not a shared object")
    assert window_native.load(foreign) is None
    monkeypatch.setenv(window_native.DISABLE_VARIABLE, "1")
    assert window_native.load(library) is None


def test_a_thread_whose_stack_pointer_is_in_no_mapping_is_never_safe(start_target, window_path):
    """rsp in no mapping: the stack cannot be read, so the thread is an offender whatever it runs."""
    target = start_target("threads")
    process = Process(target.pid)
    hold = code_range(process, target, "hold_here")
    before = set(target.tids())
    target.send("lose\n")
    deadline = time.monotonic() + 20
    while True:
        with process.stop_all_threads() as stopped:
            report = safety.check_threads(stopped, [hold])
        lost = [o for o in report.offenders if o.range_name == "(unreadable stack)"]
        if lost:
            break
        assert time.monotonic() < deadline, "the lost thread was never found"
        time.sleep(0.01)
    [new] = set(target.tids()) - before
    assert [(o.tid, o.kind, o.address) for o in lost] == [(new, "stack pointer", 0)]
    assert {o.range_name for o in report.offenders} == {"hold_here", "(unreadable stack)"}
    target.assert_running_untraced()


def test_maps_longer_than_the_helpers_buffer_are_read_again_whole(start_target, built_helper, monkeypatch):
    """The helper's second thread reads /proc/PID/maps into a buffer of fixed size; text that does not fit
    is read again by the loader, which grows the buffer: the holder is still found by its return address."""
    monkeypatch.setattr(thread_scan, "HELPER", built_helper)
    monkeypatch.setattr(thread_scan, "PARALLEL_THREADS", 1)
    monkeypatch.setattr(thread_scan, "QUERY_MAPPINGS", False)  # the text path (before Linux 6.11)
    target = start_target("threads")
    process = Process(target.pid)
    hold = code_range(process, target, "hold_here")
    scan = ThreadScan(process.pid, 8)
    scan.maps_reader._buffer = bytearray(64)  # far shorter than the text
    with process.stop_all_threads() as stopped:
        report = safety.check_threads(stopped, [hold], scan=scan)
    scan.close()
    assert len(scan.maps_reader._buffer) > 64 and len(scan.maps_reader.maps.starts) > 8
    assert ("hold_here", "return address") in {(o.range_name, o.kind) for o in report.offenders}
    target.assert_running_untraced()


def test_a_scan_used_for_a_second_stop_reads_the_registers_of_that_stop(start_target, window_path):
    """Registers read in an earlier stop are stale (the spinners have moved on): a scan used again without
    `start_attempt` reads every thread again, and the check sees where each thread is now."""
    target = start_target("threads")
    process = Process(target.pid)
    scan = ThreadScan(process.pid, 8)
    for _ in range(3):
        with process.stop_all_threads() as stopped:
            snapshot = scan.snapshot(stopped, safety.DEFAULT_STACK_SCAN_LIMIT, with_stacks=True)
            now = {tid: stopped.regs(tid) for tid in snapshot.tids}
        assert snapshot.rips == [now[tid].rip for tid in snapshot.tids]
        assert snapshot.rsps == [now[tid].rsp for tid in snapshot.tids]
        time.sleep(0.01)
    scan.close()
    target.assert_running_untraced()


def _places(helper, scan: ThreadScan, rsps: list[int], query: bool) -> tuple[list, list, list, int]:
    """Where the helper places stacks at `rsps`: by PROCMAP_QUERY, or by the maps text read now."""
    count = len(rsps)
    words = array("Q", rsps)
    starts, ends = array("q", bytes(8 * count)), array("q", bytes(8 * count))
    remote = array("Q", bytes(16 * count))
    if query:
        total = helper.stack_places_query(scan.maps_reader.fd, words.buffer_info()[0], count, 1, 1 << 20,
                                          starts, ends, remote)  # fmt: skip
    else:
        columns = scan.maps_reader.refresh().columns
        total = helper.stack_places(words.buffer_info()[0], count, 1, columns, 1 << 20, starts, ends, remote)
    return starts.tolist(), ends.tolist(), remote.tolist(), total


def test_the_kernels_mapping_answer_places_every_stack_where_the_maps_text_does(start_target, built_helper):
    """PROCMAP_QUERY per rsp gives the same places as the maps text: for every held thread, and for
    addresses at the edges that matter (a mapping's first and last word, a guard page, no mapping)."""
    target = start_target("threads")
    process = Process(target.pid)
    scan = ThreadScan(process.pid, 8)
    maps = process.maps()
    guard = next(m for m in maps if not m.perms.startswith("r"))
    edges = [m.start for m in maps] + [m.end - 8 for m in maps] + [guard.start + 8, 0, 8, maps[-1].end]
    with process.stop_all_threads() as stopped:
        rsps = [stopped.regs(tid).rsp for tid in stopped.tids] + edges
        by_query = _places(built_helper, scan, rsps, query=True)
        by_text = _places(built_helper, scan, rsps, query=False)
    scan.close()
    assert by_query[3] > 0 and by_query == by_text
    located = by_query[0][: len(stopped.tids)]
    assert -1 not in located  # every thread's stack is readable
    assert by_query[0][-4:-1] == [-1, -1, -1]  # a guard page, and two addresses in no mapping
    target.assert_running_untraced()


def test_a_kernel_without_the_mapping_query_falls_back_to_the_maps_text(start_target, built_helper,
                                                                        monkeypatch):
    """Before Linux 6.11 the ioctl fails (ENOTTY, made real here by asking it of /proc/PID/status): the
    helper answers -1, the scan reads the maps text instead from then on, and still finds the holder."""
    target = start_target("threads")
    process = Process(target.pid)
    hold = code_range(process, target, "hold_here")
    status = open(f"/proc/{process.pid}/status", "rb")  # noqa: SIM115 - closed below
    query = built_helper.stack_places_query

    def without_query(maps_fd, *args):
        return query(status.fileno(), *args)

    monkeypatch.setattr(thread_scan, "HELPER", built_helper)
    monkeypatch.setattr(built_helper, "stack_places_query", without_query)
    scan = ThreadScan(process.pid, 8)
    try:
        assert scan.maps_reader.queryable
        with process.stop_all_threads() as stopped:
            report = safety.check_threads(stopped, [hold], scan=scan)
    finally:
        scan.close()
        status.close()
    assert not scan.maps_reader.queryable
    assert ("hold_here", "return address") in {(o.range_name, o.kind) for o in report.offenders}
    target.assert_running_untraced()
