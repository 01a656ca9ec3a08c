"""Is it safe to switch now? No stopped thread may be executing, or about to return into, replaced code.

A thread is unsafe when its instruction pointer is inside a patch-site window (the bytes the jump
overwrites) or inside a function being replaced, or when a word on its stack points into a
function being replaced: it may be a return address, and returning into a half-replaced body
would run old code against new state. The stack scan is conservative — any 8-byte word from rsp
to the end of the thread's stack mapping counts — so it can only err towards waiting.

`stop_when_safe()` retries until a deadline, resuming the process between attempts; a function
that the same thread is inside on every attempt is reported as always active, since waiting
cannot help (a main loop that never returns). Each attempt seizes the threads while they run and
stops them only for the check (and, when it passes, the caller's switch); between attempts the
process runs at least RUN_PER_STOP times as long as it was stopped, so the stopped time summed over
every attempt stays bounded, and a refusal reports it with how often each function was found busy.

Memory about to be freed (a package's code, rodata and data on revert) is checked further through
`pointer_ranges`: any general register or stack word pointing into it makes the moment unsafe,
since a thread blocked in a library call may still hold a pointer to a package string or buffer.
With `keep_pointed` (a Wine process), such words do not make the moment unsafe: they are reported in
`SafetyReport.pointed`, every word of every Windows stack included, and the caller keeps the memory
they point into mapped instead of freeing it. A Windows stack's live frames keep stale words in their
uninitialised buffers (a package string's old address in main's line buffer), which waiting cannot
clear and which may as well be live: only keeping the memory is safe for both.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from hpkg.errors import UnsafeNow
from hpkg.loader import thread_scan
from hpkg.loader.interrupts import raise_if_interrupted
from hpkg.loader.process import DEFAULT_STOP_TIMEOUT, Process, StoppedThreads
from hpkg.loader.ptrace import RegisterFile
from hpkg.loader.thread_scan import Snapshot, ThreadScan, find_words
from hpkg.loader.window_check import SAFE, STEP_BY_STEP, UNSAFE, OneCallCheck, SpanSwitch
from hpkg.loader.window_native import VERDICT_INSTRUCTION, VERDICT_REGISTER, VERDICT_UNREADABLE
from hpkg.loader.wine_threads import MAX_WINDOWS_STACK, Kind, WindowsThreads

DEFAULT_STACK_SCAN_LIMIT = 1 << 20  # bytes scanned above rsp per thread
# Between two attempts the process runs at least this many times as long as the last attempt held it
# stopped: over all retries, threads are stopped at most 1/(1+RUN_PER_STOP) of the time waited.
RUN_PER_STOP = 4
# Whether the check is one call of the window's helper when it can be (loader/window_check.py); the
# bench turns it off to compare with the step-by-step check on the same process.
ONE_CALL = True


@dataclass(frozen=True)
class CodeRange:
    """A named runtime range [start, end): a replaced function or a patch-site window."""

    name: str
    start: int
    end: int

    def contains(self, runtime_address: int) -> bool:
        return self.start <= runtime_address < self.end


@dataclass(frozen=True)
class Offender:
    """One reason a thread makes the switch unsafe."""

    tid: int
    range_name: str
    kind: str  # "instruction pointer", "patch site", "return address", "register", "stack word",
    # or "stack pointer" (unreadable)
    address: int  # the instruction pointer or the stack word
    why: str = ""  # a thread whose Windows frames could not be followed: what stopped the walk

    def describe(self) -> str:
        if self.why:
            return f"thread {self.tid}: {self.range_name[1:-1]} (pc {self.address:#x}): {self.why}"
        return f"thread {self.tid}: {self.kind} {self.address:#x} in {self.range_name}"


@dataclass(frozen=True)
class PointerWord:
    """A word of a stopped thread pointing into memory about to be freed: in a register (`at` None) or on
    a stack at `at` (`where`: "register rax", "stack", "Windows stack")."""

    tid: int
    memory: CodeRange
    where: str
    word: int
    at: int | None = None

    def describe(self) -> str:
        place = f" at {self.at:#x}" if self.at is not None else ""
        return f"thread {self.tid}'s {self.where} word {self.word:#x}{place}"


@dataclass(frozen=True)
class SafetyReport:
    """The outcome of one check over all stopped threads; `pointed`, with `keep_pointed`: the first word
    per thread, range and place pointing into memory about to be freed (none makes the moment unsafe)."""

    offenders: tuple[Offender, ...]
    threads_checked: int
    pointed: tuple[PointerWord, ...] = ()

    @property
    def safe(self) -> bool:
        return not self.offenders

    def keys(self) -> frozenset[tuple[int, str]]:
        """(tid, range name) of every offender, to compare attempts."""
        return frozenset((o.tid, o.range_name) for o in self.offenders)


class ThreadsBusy(UnsafeNow):
    """Threads stayed inside replaced code until the deadline; `always_active` never left it.

    `attempts` stops were made, holding the threads `stopped_seconds` in all; `found` counts, per
    (function, what pointed into it), the attempts that found a thread there.
    """

    def __init__(
        self,
        message: str,
        offenders: tuple[Offender, ...],
        always_active: tuple[Offender, ...],
        attempts: int = 1,
        stopped_seconds: float = 0.0,
        found: tuple[tuple[str, str, int], ...] = (),
    ) -> None:
        reasons = tuple(
            o.describe() + (" (always active: waiting cannot help)" if o in always_active else "")
            for o in offenders
        )
        super().__init__(message, reasons)
        self.offenders = offenders
        self.always_active = always_active
        self.attempts = attempts
        self.stopped_seconds = stopped_seconds
        self.found = found

    def tally(self) -> str:
        """How often and where threads were found, and the stopped time spent: one line for the refusal."""
        where = ", ".join(f"{name} ({kind}) on {count}" for name, kind, count in self.found)
        return (
            f"{self.attempts} attempt{'s' if self.attempts != 1 else ''} found threads inside: {where};"
            f" threads stopped {self.stopped_seconds * 1000:.1f} ms in all"
        )


def check_threads(
    stopped: StoppedThreads,
    replaced: Sequence[CodeRange],
    patch_windows: Sequence[CodeRange] = (),
    stack_scan_limit: int = DEFAULT_STACK_SCAN_LIMIT,
    pointer_ranges: Sequence[CodeRange] = (),
    scan: ThreadScan | None = None,
    wine: WindowsThreads | None = None,
    keep_pointed: bool = False,
) -> SafetyReport:
    """Check every held thread's instruction pointer and stack against the replaced code.

    With `pointer_ranges`, also every general register and stack word against memory about to be freed.
    `scan` was set up before the stop (its maps read, registers read as the threads stopped); without
    one, a scan is set up now. With `wine` (a Windows program under Wine), a thread with a TEB of its own
    is checked by its Windows frames instead of the words of its stack (loader/wine_threads.py). With
    `keep_pointed`, the words pointing into `pointer_ranges` (every Windows stack's too) are reported in
    `pointed` instead of making the moment unsafe.
    """
    if scan is None:
        with contextlib.closing(ThreadScan(stopped.process.pid, len(stopped.held))) as own:
            return check_threads(
                stopped, replaced, patch_windows, stack_scan_limit, pointer_ranges, own, wine, keep_pointed
            )
    scan_stacks = bool(replaced or pointer_ranges)
    snapshot = scan.snapshot(stopped, stack_scan_limit, scan_stacks)
    stopped.mark("stacks")
    frames = None
    if scan_stacks and wine is not None:

        def frames(
            per_thread: dict[int, list[Offender]], pointed: list[PointerWord] | None
        ) -> tuple[set[int], set[int]]:
            found = _check_windows_frames(snapshot, wine, stack_scan_limit, replaced, patch_windows,
                                          per_thread, pointer_ranges, pointed)  # fmt: skip
            stopped.mark("windows frames")
            return found

    report = analyse(snapshot, replaced, patch_windows, pointer_ranges, scan_stacks, frames, keep_pointed)
    stopped.mark("check")
    return report


def analyse(
    snapshot: Snapshot,
    replaced: Sequence[CodeRange],
    patch_windows: Sequence[CodeRange],
    pointer_ranges: Sequence[CodeRange],
    scan_stacks: bool,
    frames: Callable[[dict[int, list[Offender]], list[PointerWord] | None], tuple[set[int], set[int]]]
    | None = None,
    keep_pointed: bool = False,
) -> SafetyReport:
    """The offenders among the threads of a snapshot: the check's verdict from what it read. `frames`
    checks the Windows threads' frames (adding their offenders, and with `keep_pointed` the words pointing
    into `pointer_ranges`) and answers which threads it walked and which of them are on their Windows
    stack. Reads nothing from the process: the one-call check's snapshot is analysed after the threads
    run again."""
    per_thread: dict[int, list[Offender]] = {}
    pointed: list[PointerWord] | None = [] if keep_pointed and pointer_ranges else None
    tids, rips = snapshot.tids, snapshot.rips
    # Per range, the threads whose rip is inside it (a comparison per thread, no object unless found).
    for kind, ranges in (("patch site", patch_windows), ("instruction pointer", replaced)):
        for code in ranges:
            low, high = code.start, code.end
            for index in [i for i, rip in enumerate(rips) if low <= rip < high]:
                per_thread.setdefault(index, []).append(Offender(tids[index], code.name, kind, rips[index]))
    if pointer_ranges:
        _check_registers(snapshot, pointer_ranges, per_thread, pointed)
    if pointed is not None:  # a thread running code in the memory (a call through a kept word) keeps it
        for memory in pointer_ranges:
            for index in [i for i, rip in enumerate(rips) if memory.contains(rip)]:
                pointed.append(PointerWord(tids[index], memory, "instruction pointer", rips[index]))
    walked: set[int] = set()
    on_windows_stack: set[int] = set()
    if frames is not None:
        walked, on_windows_stack = frames(per_thread, pointed)
    if scan_stacks:
        for index in snapshot.unreadable():
            offender = Offender(tids[index], "(unreadable stack)", "stack pointer", snapshot.rsps[index])
            per_thread.setdefault(index, []).append(offender)
        _check_stacks(snapshot, replaced, pointer_ranges, per_thread, walked, on_windows_stack, pointed)
    offenders = tuple(o for index in sorted(per_thread) for o in per_thread[index])
    return SafetyReport(offenders, len(tids), tuple(pointed or ()))


# The general registers in the order a register offender is reported (the first found), as indexes of
# their words in struct user_regs_struct.
_GENERAL_ORDER = {
    word: rank  # rax rbx rcx rdx rsi rdi rbp r8 .. r15
    for rank, word in enumerate((10, 5, 11, 12, 13, 14, 4, 9, 8, 7, 6, 3, 2, 1, 0))
}
_GENERAL_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", *(f"r{n}" for n in range(8, 16)))


def _check_registers(
    snapshot: Snapshot,
    pointer_ranges: Sequence[CodeRange],
    per_thread: dict[int, list[Offender]],
    pointed: list[PointerWord] | None = None,
) -> None:
    """The first general register (rax, rbx, ... r15) of each thread pointing into memory about to be
    freed, searched in C over the register array as the stacks are; an offender, or into `pointed`."""
    index_of: dict[int, int] | None = None  # slot -> thread index, built on the first word found
    slot_bytes = RegisterFile.SLOT_WORDS * 8
    buffer = snapshot.registers.buffer()
    for memory in pointer_ranges:
        first: dict[int, tuple[int, int]] = {}  # thread index -> (rank, value)
        found = find_words(buffer, len(buffer), memory.start, memory.end, snapshot.registers.address)
        if found and index_of is None:
            index_of = {slot: index for index, slot in enumerate(snapshot.slots)}
        for offset, value in found:
            slot, word = divmod(offset, slot_bytes)
            rank = _GENERAL_ORDER.get(word // 8)
            index = index_of.get(slot) if index_of is not None else None
            if rank is not None and index is not None and rank < first.get(index, (99, 0))[0]:
                first[index] = (rank, value)
        for index, (rank, value) in first.items():
            if pointed is not None:
                where = f"register {_GENERAL_NAMES[rank]}"
                pointed.append(PointerWord(snapshot.tids[index], memory, where, value))
                continue
            offender = Offender(snapshot.tids[index], memory.name, "register", value)
            per_thread.setdefault(index, []).append(offender)


def _check_windows_frames(
    snapshot: Snapshot,
    wine: WindowsThreads,
    stack_limit: int,
    replaced: Sequence[CodeRange],
    patch_windows: Sequence[CodeRange],
    per_thread: dict[int, list[Offender]],
    pointer_ranges: Sequence[CodeRange] = (),
    pointed: list[PointerWord] | None = None,
) -> tuple[set[int], set[int]]:
    """Every frame of each Windows thread against the replaced code (the pc Wine saved at a system call
    as an instruction pointer, the others as return addresses); a thread whose frames cannot be followed
    to its first is an offender. Returns the threads so checked, whose stack words are not taken for
    return addresses, and those of them stopped on their Windows stack, whose stack words are not taken
    for pointers either: a Windows stack's live frames keep stale words in their uninitialised buffers
    (seen: a revert refused on every attempt for a package string's old address in main's line buffer).
    A thread stopped on the Unix side keeps its stack scanned for pointers: the arguments of the system
    call it waits in (a buffer in package memory being written) are there. With `pointed`, every word of
    each walked thread's Windows stack, from its Windows rsp to its StackBase, is searched for pointers
    into `pointer_ranges` (the whole used stack is read then, however deep)."""
    words = snapshot.registers.words()
    size = snapshot.registers.SLOT_WORDS
    registers = [words[slot * size : (slot + 1) * size] for slot in snapshot.slots]
    walked, on_windows_stack = set(), set()
    whole = pointed is not None  # every word up to StackBase (a TEB's stack bounds are at most 1 GiB apart)
    for index, frames in enumerate(wine.frames(registers, MAX_WINDOWS_STACK if whole else stack_limit)):
        if frames.kind is Kind.UNIX:
            continue
        walked.add(index)
        if pointed is not None and frames.kind is Kind.WALKED and frames.stack is not None:
            pointed += _windows_stack_words(snapshot.tids[index], frames.stack, pointer_ranges)
            for pc in frames.pcs[: 1 if frames.saved else 0]:  # the pc Wine saved, in no stack searched
                pointed += [PointerWord(snapshot.tids[index], m, "saved instruction pointer", pc)
                            for m in pointer_ranges if m.contains(pc)]  # fmt: skip
        if not frames.saved:
            on_windows_stack.add(index)
        tid, found = snapshot.tids[index], []
        named: set[str] = set()
        for position, pc in enumerate(frames.pcs):
            if position == 0 and not frames.saved:
                continue  # the thread's own rip, checked with every thread's
            kind = "saved instruction pointer" if position == 0 else "return address"
            for code in (*(patch_windows if position == 0 else ()), *replaced):
                if code.contains(pc) and code.name not in named:
                    named.add(code.name)
                    found.append(Offender(tid, code.name, kind, pc))
        if frames.kind is Kind.UNPROVEN:
            pc = frames.pcs[-1] if frames.pcs else snapshot.rips[index]
            found.append(Offender(tid, "(Windows frames not proven)", "unproven", pc, frames.problem))
        if found:
            per_thread.setdefault(index, []).extend(found)
    return walked, on_windows_stack


def _windows_stack_words(
    tid: int, stack: tuple[int, bytes], pointer_ranges: Sequence[CodeRange]
) -> list[PointerWord]:
    """The first word per range of one Windows stack (its address and bytes) pointing into a range."""
    low, data = stack
    buffer = bytearray(data)
    found: dict[str, PointerWord] = {}
    for start, end in _covering(pointer_ranges):
        for offset, word in find_words(buffer, len(buffer), start, end):
            memory = next(m for m in pointer_ranges if m.contains(word))
            if memory.name not in found:
                found[memory.name] = PointerWord(tid, memory, "Windows stack", word, low + offset)
    return list(found.values())


def _check_stacks(
    snapshot: Snapshot,
    replaced: Sequence[CodeRange],
    pointer_ranges: Sequence[CodeRange],
    per_thread: dict[int, list[Offender]],
    walked: set[int] | frozenset[int] = frozenset(),
    skipped: set[int] | frozenset[int] = frozenset(),
    pointed: list[PointerWord] | None = None,
) -> None:
    """Stack words into replaced code (a return address, once per function and thread; not for the
    `walked` threads, whose frames are known) and into memory about to be freed (the first word per range
    and thread; not for the `skipped` threads), in stack order per thread; with `pointed`, the latter go
    there with the stack address holding them, instead of making the moment unsafe."""
    # One search per stretch of address space the ranges cover together (on revert, the package's code
    # lies inside the memory to be freed: one search finds both kinds of word).
    returns: dict[int, list[Offender]] = {}
    words: dict[int, list[Offender]] = {}
    seen: set[tuple[int, str]] = set()
    tids = snapshot.tids
    owner = None
    for low, high in _covering(list(replaced) + list(pointer_ranges)):
        for offset, word in find_words(snapshot.buffer, snapshot.used, low, high, snapshot.buffer_address):
            owner = owner or snapshot.owner()  # built on the first word found
            index = owner(offset)
            if index is None or index in skipped:
                continue
            for code in replaced if index not in walked else ():
                if code.contains(word) and (index, code.name) not in seen:
                    seen.add((index, code.name))
                    offender = Offender(tids[index], code.name, "return address", word)
                    returns.setdefault(index, []).append(offender)
            for memory in pointer_ranges:
                if memory.contains(word) and (index, memory.name) not in seen:
                    seen.add((index, memory.name))
                    if pointed is not None:
                        at = (snapshot.rsps[index] & ~7) + offset - snapshot.place_starts[index]
                        pointed.append(PointerWord(tids[index], memory, "stack", word, at))
                        continue
                    offender = Offender(tids[index], memory.name, "stack word", word)
                    words.setdefault(index, []).append(offender)
    for index in sorted(set(returns) | set(words)):
        found = per_thread.setdefault(index, [])
        found += returns.get(index, ())
        found += words.get(index, ())


def _covering(ranges: Sequence[CodeRange]) -> list[tuple[int, int]]:
    """The ranges merged into disjoint [low, high) stretches, in address order."""
    merged: list[tuple[int, int]] = []
    for r in sorted(ranges, key=lambda r: r.start):
        if merged and r.start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], r.end))
        else:
            merged.append((r.start, r.end))
    return merged


@contextlib.contextmanager
def stop_when_safe(
    process: Process,
    replaced: Sequence[CodeRange],
    patch_windows: Sequence[CodeRange] = (),
    timeout: float = 10.0,
    retry_interval: float = 0.05,
    stack_scan_limit: int = DEFAULT_STACK_SCAN_LIMIT,
    pointer_ranges: Sequence[CodeRange] = (),
    wine: WindowsThreads | None = None,
    fused: SpanSwitch | None = None,
    pointed: list[PointerWord] | None = None,
) -> Iterator[StoppedThreads]:
    """Stop all threads at a moment when the check passes and hold them for the caller's switch.

    With `pointed` (a list, filled with the safe attempt's words), words pointing into `pointer_ranges`
    do not make a moment unsafe: the caller learns of them there and keeps that memory.

    Each attempt seizes every thread while it runs, then stops them all at once for the check alone.
    Between attempts the process runs for `retry_interval` seconds, or RUN_PER_STOP times the last
    stop when longer. At the deadline it raises ThreadsBusy naming each offending thread and function,
    marking those present in every attempt, with the count of attempts and the stopped time in all.
    The held threads carry `attempts` and `stopped_before` (seconds stopped by the failed attempts).

    With the window's helper, the check is one call (loader/window_check.py) and `fused`, the caller's
    one-page switch when it has nothing else to write in the window, is made by that call when every
    thread passes (its outcome in the held threads' `switched`, which the switch's `run` reports).
    """
    deadline = time.monotonic() + timeout
    # Set up while the process runs: maps opened and read, register array and stack buffer allocated.
    scan = ThreadScan(process.pid, len(process.threads()))
    with contextlib.closing(scan):
        # The one call makes any word into `pointer_ranges` an offender: a caller keeping the memory such
        # words point into (`pointed`) takes the step-by-step path, which lists them.
        one_call = one_call_check(scan, replaced, patch_windows, pointer_ranges, stack_scan_limit, fused,
                                  wine) if pointed is None else None  # fmt: skip
        yield from _stop_when_safe(process, scan, replaced, patch_windows, deadline, retry_interval,
                                   stack_scan_limit, pointer_ranges, wine, one_call, pointed)


def _stop_when_safe(
    process: Process,
    scan: ThreadScan,
    replaced: Sequence[CodeRange],
    patch_windows: Sequence[CodeRange],
    deadline: float,
    retry_interval: float,
    stack_scan_limit: int,
    pointer_ranges: Sequence[CodeRange],
    wine: WindowsThreads | None,
    one_call: OneCallCheck | None,
    pointed: list[PointerWord] | None,
) -> Iterator[StoppedThreads]:
    persistent: frozenset[tuple[int, str]] | None = None
    found: dict[tuple[str, str], int] = {}
    attempts = 0
    stopped_seconds = 0.0
    while True:
        attempts += 1
        raise_if_interrupted()  # every thread runs and nothing is switched yet: Ctrl-C may end it here
        if wine is not None:
            wine.prepare()  # while the process runs: its Windows code as mapped now
        with process.seize_all_threads() as threads:
            scan.start_attempt()
            threads.on_held = scan.hand_over
            if one_call is not None:  # the threads about to be stopped, their stacks read once meanwhile
                one_call.warm(threads.seized)
                threads.on_held, threads.on_idle = one_call.on_held, one_call.on_idle
            threads.stop(DEFAULT_STOP_TIMEOUT)
            threads.on_held = threads.on_idle = None
            verdict = one_call.run(threads) if one_call is not None else STEP_BY_STEP
            if verdict == STEP_BY_STEP:
                report = check_threads(threads, replaced, patch_windows, stack_scan_limit, pointer_ranges,
                                       scan, wine, pointed is not None)  # fmt: skip
            if verdict == SAFE or (verdict == STEP_BY_STEP and report.safe):
                if pointed is not None and verdict == STEP_BY_STEP:
                    pointed[:] = report.pointed
                threads.attempts = attempts
                threads.stopped_before = stopped_seconds
                yield threads
                return
        if verdict == UNSAFE:  # decoded now that the threads run again
            assert one_call is not None
            report = _decoded(one_call, replaced, patch_windows, pointer_ranges)
        stopped_seconds += threads.pause
        for key in {(o.range_name, o.kind) for o in report.offenders}:
            found[key] = found.get(key, 0) + 1
        persistent = report.keys() if persistent is None else persistent & report.keys()
        wait = max(retry_interval, RUN_PER_STOP * threads.pause)
        if time.monotonic() + wait > deadline:
            always = tuple(
                o for o in report.offenders if attempts > 1 and (o.tid, o.range_name) in persistent
            )
            names = sorted({o.range_name for o in report.offenders})
            raise ThreadsBusy(
                f"unsafe to switch after {attempts} attempts: threads inside {', '.join(names)}",
                report.offenders,
                always,
                attempts,
                stopped_seconds,
                tuple((name, kind, count) for (name, kind), count in sorted(found.items())),
            )
        time.sleep(wait)


def one_call_check(
    scan: ThreadScan,
    replaced: Sequence[CodeRange],
    patch_windows: Sequence[CodeRange],
    pointer_ranges: Sequence[CodeRange],
    stack_limit: int,
    fused: SpanSwitch | None,
    wine: WindowsThreads | None,
) -> OneCallCheck | None:
    """The one-call check of these ranges, when the helper is built and the kernel answers PROCMAP_QUERY;
    None for the step-by-step path (also for Windows threads, whose frames are walked in Python, and for
    a check with no range, which reads no stack)."""
    helper = thread_scan.HELPER
    if helper is None or not ONE_CALL or wine is not None or not scan.maps_reader.queryable:
        return None
    if not (replaced or pointer_ranges):
        return None
    ip = [(c.start, c.end) for c in (*patch_windows, *replaced) if c.start < c.end]
    registers = [(c.start, c.end) for c in pointer_ranges if c.start < c.end]
    words = [(low, high) for low, high in _covering([*replaced, *pointer_ranges]) if low < high]
    return OneCallCheck(helper, scan, ip, registers, words, stack_limit, fused)


def _decoded(
    one_call: OneCallCheck,
    replaced: Sequence[CodeRange],
    patch_windows: Sequence[CodeRange],
    pointer_ranges: Sequence[CodeRange],
) -> SafetyReport:
    """The offenders of an unsafe one-call check, from what it read: the step-by-step analysis of its
    snapshot. A thread the call found unsafe stays an offender even if the analysis named nothing (they
    test the same things; never take a disagreement for safety)."""
    snapshot = one_call.snapshot()
    report = analyse(snapshot, replaced, patch_windows, pointer_ranges, scan_stacks=True)
    named = {o.tid for o in report.offenders}
    extra = []
    verdicts = one_call.verdicts()
    for index, tid in enumerate(snapshot.tids):
        bits = verdicts[tid]
        if bits and tid not in named:
            kind = "stack word"
            for bit, name in ((VERDICT_UNREADABLE, "stack pointer"), (VERDICT_REGISTER, "register"),
                              (VERDICT_INSTRUCTION, "instruction pointer")):  # fmt: skip
                kind = name if bits & bit else kind
            extra.append(Offender(tid, "(found by the window's check)", kind, snapshot.rips[index]))
    return SafetyReport(report.offenders + tuple(extra), report.threads_checked) if extra else report
