"""Is it safe to switch now? No stopped thread may be executing, or about to return into, replaced code.

A thread is unsafe when its instruction pointer is inside a patch-site window (the bytes the jump
overwrites) or inside a function being replaced, or when a word on its stack points into a
function being replaced: it may be a return address, and returning into a half-replaced body
would run old code against new state. The stack scan is conservative — any 8-byte word from rsp
to the end of the thread's stack mapping counts — so it can only err towards waiting.

`stop_when_safe()` retries until a deadline, resuming the process between attempts; a function
that the same thread is inside on every attempt is reported as always active, since waiting
cannot help (a main loop that never returns).

Memory about to be freed (a package's code, rodata and data on revert) is checked further through
`pointer_ranges`: any general register or stack word pointing into it makes the moment unsafe,
since a thread blocked in a library call may still hold a pointer to a package string or buffer.
"""

from __future__ import annotations

import contextlib
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hpkg.errors import TargetError, UnsafeNow
from hpkg.loader.interrupts import raise_if_interrupted
from hpkg.loader.process import Process, StoppedThreads
from hpkg.loader.procfs import Mapping

DEFAULT_STACK_SCAN_LIMIT = 1 << 20  # bytes scanned above rsp per thread
_GENERAL_REGISTERS = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip


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

    @property
    def safe(self) -> bool:
        return not self.offenders

    def keys(self) -> frozenset[tuple[int, str]]:
        """(tid, range name) of every offender, to compare attempts."""
        return frozenset((o.tid, o.range_name) for o in self.offenders)


class ThreadsBusy(UnsafeNow):
    """Threads stayed inside replaced code until the deadline; `always_active` never left it."""

    def __init__(
        self, message: str, offenders: tuple[Offender, ...], always_active: tuple[Offender, ...]
    ) -> None:
        reasons = tuple(
            o.describe() + (" (always active: waiting cannot help)" if o in always_active else "")
            for o in offenders
        )
        super().__init__(message, reasons)
        self.offenders = offenders
        self.always_active = always_active


def _stack_mapping(maps: Sequence[Mapping], rsp: int) -> Mapping | None:
    for mapping in maps:
        if mapping.contains(rsp):
            return mapping
    return None


def _stack_words(stopped: StoppedThreads, maps: Sequence[Mapping], rsp: int, limit: int) -> array | None:
    """The aligned 8-byte words from rsp up to the end of its stack mapping (at most `limit` bytes).

    None when rsp is not in a readable mapping: such a stack cannot be shown to be safe.
    """
    mapping = _stack_mapping(maps, rsp)
    if mapping is None or not mapping.readable:
        return None
    start = rsp & ~7
    end = min(mapping.end, start + limit)
    try:
        data = stopped.process.read(start, end - start)
    except TargetError:
        return None
    words = array("Q")
    words.frombytes(data[: len(data) - len(data) % 8])
    return words


def check_threads(
    stopped: StoppedThreads,
    replaced: Sequence[CodeRange],
    patch_windows: Sequence[CodeRange] = (),
    stack_scan_limit: int = DEFAULT_STACK_SCAN_LIMIT,
    pointer_ranges: Sequence[CodeRange] = (),
) -> SafetyReport:
    """Check every held thread's instruction pointer and stack against the replaced code.

    With `pointer_ranges`, also every general register and stack word against memory about to be freed.
    """
    maps = stopped.process.maps()
    offenders: list[Offender] = []
    low = min((r.start for r in replaced), default=0)
    high = max((r.end for r in replaced), default=0)
    for tid in stopped.tids:
        regs = stopped.regs(tid)
        for window in patch_windows:
            if window.contains(regs.rip):
                offenders.append(Offender(tid, window.name, "patch site", regs.rip))
        for code in replaced:
            if code.contains(regs.rip):
                offenders.append(Offender(tid, code.name, "instruction pointer", regs.rip))
        for memory in pointer_ranges:
            for name in _GENERAL_REGISTERS:
                if memory.contains(getattr(regs, name)):
                    offenders.append(Offender(tid, memory.name, "register", getattr(regs, name)))
                    break
        if not replaced and not pointer_ranges:
            continue
        words = _stack_words(stopped, maps, regs.rsp, stack_scan_limit)
        if words is None:
            offenders.append(Offender(tid, "(unreadable stack)", "stack pointer", regs.rsp))
            continue
        seen: set[str] = set()
        for word in (w for w in words if low <= w < high):
            for code in replaced:
                if code.contains(word) and code.name not in seen:
                    seen.add(code.name)
                    offenders.append(Offender(tid, code.name, "return address", word))
        for memory in pointer_ranges:
            word = next((w for w in words if memory.start <= w < memory.end), None)
            if word is not None:
                offenders.append(Offender(tid, memory.name, "stack word", word))
    return SafetyReport(tuple(offenders), len(stopped.tids))


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

    Between attempts the process runs for `retry_interval` seconds. At the deadline it raises
    ThreadsBusy naming each offending thread and function, marking those present in every attempt.
    """
    deadline = time.monotonic() + timeout
    persistent: frozenset[tuple[int, str]] | None = None
    attempts = 0
    while True:
        attempts += 1
        raise_if_interrupted()  # every thread runs and nothing is switched yet: Ctrl-C may end it here
        with process.stop_all_threads() as stopped:
            report = check_threads(stopped, replaced, patch_windows, stack_scan_limit, pointer_ranges)
            if report.safe:
                yield stopped
                return
        persistent = report.keys() if persistent is None else persistent & report.keys()
        if time.monotonic() + retry_interval > deadline:
            always = tuple(
                o for o in report.offenders if attempts > 1 and (o.tid, o.range_name) in persistent
            )
            names = sorted({o.range_name for o in report.offenders})
            raise ThreadsBusy(
                f"unsafe to switch after {attempts} attempts: threads inside {', '.join(names)}",
                report.offenders,
                always,
            )
        time.sleep(retry_interval)
