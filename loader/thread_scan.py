"""What the safety check reads of every held thread, in as few system calls as the kernel allows.

Inside the stop-the-world window the loader reads, per thread, its registers (one PTRACE_GETREGS
into one reused buffer: the kernel has no call for several threads) and the stack from rsp to the
end of its mapping. The stacks of all threads come in one process_vm_readv with an iovec per thread
(IOV_MAX per call) into one buffer; the stack mappings come from one read of /proc/PID/maps, parsed
again only when its text changed since the last read.

The words of that buffer are searched in C, not word by word in Python: every address of
[low, high) shares its upper five bytes with one of a few prefixes, so `bytes.find` of each prefix
yields the few candidate words, and only those are compared with the ranges.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import os
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hpkg.errors import TargetError
from hpkg.loader import ptrace as pt
from hpkg.loader.process import IOVec, StoppedThreads, libc

IOV_MAX = 1024  # the kernel's limit of iovecs per process_vm_readv side
WORD = 8
_PREFIX_SHIFTS = (8, 16, 24, 32, 64)  # a word's upper bytes from byte 1, 2, 3, 4 (none: word by word)
_MAX_PREFIXES = 8  # the fewest bytes shared by every word of the range in at most this many prefixes


@dataclass(frozen=True)
class StackMaps:
    """The mappings of a process as the stack lookup needs them: sorted starts, ends and readability,
    with the raw /proc/PID/maps text they were parsed from."""

    raw: bytes
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    readable: tuple[bool, ...]

    @staticmethod
    def read(pid: int, previous: StackMaps | None = None) -> StackMaps:
        """Read /proc/PID/maps; reuse `previous` when the text is the same (the common case)."""
        raw = _read_all(f"/proc/{pid}/maps")
        if previous is not None and previous.raw == raw:
            return previous
        starts, ends, readable = [], [], []
        for line in raw.splitlines():
            span, _, rest = line.partition(b" ")
            low, _, high = span.partition(b"-")
            starts.append(int(low, 16))
            ends.append(int(high, 16))
            readable.append(rest[:1] == b"r")
        return StackMaps(raw, tuple(starts), tuple(ends), tuple(readable))

    def stack_span(self, rsp: int, limit: int) -> tuple[int, int] | None:
        """[rsp & ~7, min(end of rsp's mapping, start + limit)); None when rsp is in no readable mapping."""
        index = bisect.bisect_right(self.starts, rsp) - 1
        if index < 0 or rsp >= self.ends[index] or not self.readable[index]:
            return None
        start = rsp & ~(WORD - 1)
        return start, min(self.ends[index], start + limit)


def _read_all(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise TargetError(f"cannot read {path}: {exc.strerror}") from None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ThreadStack:
    """One held thread as read in the window: its registers and where its stack words are in the buffer.

    `stack` is None when the stack cannot be read (rsp in no readable mapping, or the read failed):
    such a stack cannot be shown to be safe.
    """

    tid: int
    rip: int
    rsp: int
    registers: tuple[int, ...]  # the general registers, when the check looks at them
    stack: tuple[int, int] | None  # [offset, end) of its words in the snapshot's buffer


@dataclass(frozen=True)
class Snapshot:
    """Every held thread's registers and stack words, read once in the window."""

    threads: tuple[ThreadStack, ...]
    buffer: bytearray  # the stack words of all threads, each thread's words 8-aligned

    def words_in(self, low: int, high: int) -> Iterator[tuple[int, int]]:
        """(buffer offset, word) of every aligned word in [low, high), in buffer order."""
        buffer = self.buffer
        if high <= low:
            return
        # The shared upper bytes of the range's words, as long as a few prefixes cover the range, without
        # their high zero bytes: stacks are mostly zeros, and a pattern ending in a zero byte defeats the
        # skip of the C search (measured: 4x slower on a 75 kB stack buffer); longer patterns skip more.
        shift = next(s for s in _PREFIX_SHIFTS if ((high - 1) >> s) - (low >> s) < _MAX_PREFIXES)
        skip = shift // 8
        patterns = [
            p.to_bytes(WORD - skip, "little").rstrip(b"\0")
            for p in range(low >> shift, ((high - 1) >> shift) + 1)
        ]
        if any(len(p) < 2 for p in patterns):
            view = memoryview(buffer).cast("Q")
            for index, word in enumerate(view):
                if low <= word < high:
                    yield index * WORD, word
            return
        hits = []
        for pattern in patterns:
            position = buffer.find(pattern, skip)
            while position >= 0:
                offset = position - skip
                if offset % WORD == 0:
                    word = int.from_bytes(buffer[offset : offset + WORD], "little")
                    if low <= word < high:
                        hits.append((offset, word))
                position = buffer.find(pattern, position + 1)
        hits.sort()
        yield from hits


_GENERAL_REGISTERS = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip


class RegisterLog:
    """Registers of held threads, read as each thread reaches its stop (`StoppedThreads.on_held`), so
    that reading them overlaps with the wait for the other threads' stops."""

    def __init__(self, with_registers: bool) -> None:
        self._reader = pt.RegisterReader()
        self._with_registers = with_registers
        self.values: dict[int, tuple[int, int, int, tuple[int, ...]]] = {}

    def record(self, tid: int) -> tuple[int, int, int, tuple[int, ...]]:
        """Read one held thread's rip, rsp (and general registers) and keep them."""
        raw = self._reader.read(tid)
        general = tuple(getattr(raw, name) for name in _GENERAL_REGISTERS) if self._with_registers else ()
        self.values[tid] = value = (tid, raw.rip, raw.rsp, general)
        return value


def take_snapshot(
    stopped: StoppedThreads,
    maps: StackMaps,
    stack_limit: int,
    with_registers: bool,
    with_stacks: bool,
    log: RegisterLog | None = None,
) -> Snapshot:
    """Read every held thread's rip, rsp (and general registers) and, with `with_stacks`, its stack.

    Registers already in `log` (read at the thread's stop, unchanged since) are not read again.
    """
    log = log if log is not None else RegisterLog(with_registers)
    values = log.values
    regs = [values[tid] if tid in values else log.record(tid) for tid in stopped.tids]
    spans: list[tuple[int, int] | None] = []
    total = 0
    for _tid, _rip, rsp, _general in regs:
        span = maps.stack_span(rsp, stack_limit) if with_stacks else None
        spans.append(span)
        if span is not None:
            total += span[1] - span[0]
    buffer = bytearray(total)
    placed = _read_stacks(stopped, spans, buffer) if with_stacks else [None] * len(spans)
    threads = tuple(
        ThreadStack(tid, rip, rsp, general, where)
        for (tid, rip, rsp, general), where in zip(regs, placed, strict=True)
    )
    return Snapshot(threads, buffer)


def _read_stacks(
    stopped: StoppedThreads, spans: Sequence[tuple[int, int] | None], buffer: bytearray
) -> list[tuple[int, int] | None]:
    """Fill `buffer` with every span, one process_vm_readv per IOV_MAX spans; where a span fails, that
    thread's stack is read on its own (through /proc/PID/mem for pages process_vm_readv refuses)."""
    places: list[tuple[int, int] | None] = []
    offset = 0
    for span in spans:
        places.append(None if span is None else (offset, offset + span[1] - span[0]))
        if span is not None:
            offset += span[1] - span[0]
    base = ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer)) if buffer else 0
    todo = [i for i, span in enumerate(spans) if span is not None]
    while todo:
        batch = todo[:IOV_MAX]
        # Both iovec arrays at once from flat (base, length) pairs: no ctypes field access per thread.
        local_words, remote_words = array("Q"), array("Q")
        size = 0
        for index in batch:
            start, end = spans[index]  # type: ignore[misc]
            length = end - start
            local_words.extend((base + places[index][0], length))  # type: ignore[index]
            remote_words.extend((start, length))
            size += length
        local = (IOVec * len(batch)).from_buffer(local_words)
        remote = (IOVec * len(batch)).from_buffer(remote_words)
        got = libc.process_vm_readv(stopped.process.pid, local, len(batch), remote, len(batch), 0)
        if got == size:
            todo = todo[IOV_MAX:]
            continue
        if got < 0 and ctypes.get_errno() == errno.ESRCH:
            raise TargetError(f"no such process: {stopped.process.pid}")
        # The read stopped inside one span: the ones before it are in; that one is read alone.
        done, failed = max(got, 0), len(batch) - 1
        for slot, index in enumerate(batch):
            start, end = spans[index]  # type: ignore[misc]
            if done < end - start:
                failed = slot
                break
            done -= end - start
        index = batch[failed]
        start, end = spans[index]  # type: ignore[misc]
        place = places[index]
        assert place is not None
        try:
            buffer[place[0] : place[1]] = stopped.process.read(start, end - start)
        except TargetError:
            places[index] = None
        todo = todo[failed + 1 :]
    return places
