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
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hpkg.errors import UnsafeNow
from hpkg.loader.interrupts import raise_if_interrupted
from hpkg.loader.process import DEFAULT_STOP_TIMEOUT, Process, StoppedThreads
from hpkg.loader.thread_scan import RegisterLog, Snapshot, StackMaps, take_snapshot

DEFAULT_STACK_SCAN_LIMIT = 1 << 20  # bytes scanned above rsp per thread
# Between two attempts the process runs at least this many times as long as the last attempt held it
# stopped: over all retries, threads are stopped at most 1/(1+RUN_PER_STOP) of the time waited.
RUN_PER_STOP = 4


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

    def describe(self) -> str:
        return f"thread {self.tid}: {self.kind} {self.address:#x} in {self.range_name}"


@dataclass(frozen=True)
class SafetyReport:
    """The outcome of one check over all stopped threads."""

    offenders: tuple[Offender, ...]
    threads_checked: int
    maps: StackMaps | None = None  # the mappings the check read, for the next attempt to compare with

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
    maps: StackMaps | None = None,
    log: RegisterLog | None = None,
) -> SafetyReport:
    """Check every held thread's instruction pointer and stack against the replaced code.

    With `pointer_ranges`, also every general register and stack word against memory about to be freed.
    `maps` is an earlier read of the mappings, reused when they did not change; `log` holds registers
    read as the threads stopped.
    """
    scan_stacks = bool(replaced or pointer_ranges)
    maps = StackMaps.read(stopped.process.pid, maps) if scan_stacks else maps
    stopped.mark("maps")
    snapshot = take_snapshot(
        stopped, maps or StackMaps(b"", (), (), ()), stack_scan_limit, bool(pointer_ranges), scan_stacks, log
    )
    stopped.mark("stacks")
    per_thread: dict[int, list[Offender]] = {t.tid: [] for t in snapshot.threads}
    for thread in snapshot.threads:
        found = per_thread[thread.tid]
        for window in patch_windows:
            if window.contains(thread.rip):
                found.append(Offender(thread.tid, window.name, "patch site", thread.rip))
        for code in replaced:
            if code.contains(thread.rip):
                found.append(Offender(thread.tid, code.name, "instruction pointer", thread.rip))
        for memory in pointer_ranges:
            value = next((v for v in thread.registers if memory.contains(v)), None)
            if value is not None:
                found.append(Offender(thread.tid, memory.name, "register", value))
        if scan_stacks and thread.stack is None:
            found.append(Offender(thread.tid, "(unreadable stack)", "stack pointer", thread.rsp))
    if scan_stacks:
        _check_stacks(snapshot, replaced, pointer_ranges, per_thread)
    offenders = tuple(o for t in snapshot.threads for o in per_thread[t.tid])
    stopped.mark("check")
    return SafetyReport(offenders, len(snapshot.threads), maps)


def _check_stacks(
    snapshot: Snapshot,
    replaced: Sequence[CodeRange],
    pointer_ranges: Sequence[CodeRange],
    per_thread: dict[int, list[Offender]],
) -> None:
    """Stack words into replaced code (a return address, once per function and thread) and into memory
    about to be freed (the first word per range and thread), in stack order per thread."""
    located = [(t.stack[0], t.stack[1], t.tid) for t in snapshot.threads if t.stack is not None]
    located.sort()
    starts = [start for start, _end, _tid in located]

    def owner(offset: int) -> int | None:
        index = bisect.bisect_right(starts, offset) - 1
        if index >= 0 and offset < located[index][1]:
            return located[index][2]
        return None

    # One search per stretch of address space the ranges cover together (on revert, the package's code
    # lies inside the memory to be freed: one search finds both kinds of word).
    returns: dict[int, list[Offender]] = {}
    words: dict[int, list[Offender]] = {}
    seen: set[tuple[int, str]] = set()
    for low, high in _covering(list(replaced) + list(pointer_ranges)):
        for offset, word in snapshot.words_in(low, high):
            tid = owner(offset)
            if tid is None:
                continue
            for code in replaced:
                if code.contains(word) and (tid, code.name) not in seen:
                    seen.add((tid, code.name))
                    returns.setdefault(tid, []).append(Offender(tid, code.name, "return address", word))
            for memory in pointer_ranges:
                if memory.contains(word) and (tid, memory.name) not in seen:
                    seen.add((tid, memory.name))
                    words.setdefault(tid, []).append(Offender(tid, memory.name, "stack word", word))
    for tid, found in per_thread.items():
        found += returns.get(tid, ())
        found += words.get(tid, ())


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
) -> Iterator[StoppedThreads]:
    """Stop all threads at a moment when the check passes and hold them for the caller's switch.

    Each attempt seizes every thread while it runs, then stops them all at once for the check alone.
    Between attempts the process runs for `retry_interval` seconds, or RUN_PER_STOP times the last
    stop when longer. At the deadline it raises ThreadsBusy naming each offending thread and function,
    marking those present in every attempt, with the count of attempts and the stopped time in all.
    The held threads carry `attempts` and `stopped_before` (seconds stopped by the failed attempts).
    """
    deadline = time.monotonic() + timeout
    maps = StackMaps.read(process.pid)  # read while running: in the window, a compare of its text
    persistent: frozenset[tuple[int, str]] | None = None
    found: dict[tuple[str, str], int] = {}
    attempts = 0
    stopped_seconds = 0.0
    while True:
        attempts += 1
        raise_if_interrupted()  # every thread runs and nothing is switched yet: Ctrl-C may end it here
        with process.seize_all_threads() as threads:
            log = RegisterLog(bool(pointer_ranges))
            threads.on_held = log.record
            threads.stop(DEFAULT_STOP_TIMEOUT)
            threads.on_held = None
            report = check_threads(
                threads, replaced, patch_windows, stack_scan_limit, pointer_ranges, maps, log
            )
            maps = report.maps
            if report.safe:
                threads.attempts = attempts
                threads.stopped_before = stopped_seconds
                yield threads
                return
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
