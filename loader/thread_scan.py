"""What the safety check reads of every held thread, in as few system calls and Python objects as it can.

A `ThreadScan` is set up before the stop, while the process runs: /proc/PID/maps opened and read, the
register array and the stack buffer allocated (and the buffer's pages touched, so that the kernel does
not fault them in while the world is stopped). Inside the window it costs, per thread, one
PTRACE_GETREGS into the thread's slot of one array, read as the thread reaches its stop (the kernel has
no call for several threads), and the stack from rsp to the end of its mapping: every thread's stack
comes in one process_vm_readv with an iovec per thread (IOV_MAX per call) into the one buffer. Where a
stack ends is asked of the kernel with the helper (one PROCMAP_QUERY ioctl per thread on the already open
/proc/PID/maps, Linux 6.11); otherwise the mappings come from one pread of that descriptor into a reused
buffer, parsed again only when its text changed since the last read. No object is made per thread
unless something is found.

The words of a buffer are searched in C, not word by word in Python: every address of [low, high)
shares its upper bytes with one of a few prefixes, so `bytes.find` of each prefix yields the few
candidate words, and only those are compared with the range. The registers are searched the same way.

When the window's C helper is built (loader/window_native.py), the loops over the threads run there
instead: every held thread's registers read in one call once all are stopped (not one ctypes call per
thread as each stops), every stack placed in one call, and every word compared in one pass. The check is
the same either way; tests compare both with a word-by-word scan. `safety.stop_when_safe` goes further
with the helper: the whole check (and the switch) as one call (loader/window_check.py), which reuses this
scan's register file, stack buffer and maps descriptor, and comes back here for whatever is off its path.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

from hpkg.errors import TargetError
from hpkg.loader import ptrace as pt
from hpkg.loader import window_native
from hpkg.loader.process import IOVec, StoppedThreads, libc

IOV_MAX = 1024  # the kernel's limit of iovecs per process_vm_readv side
WORD = 8
_PREFIX_SHIFTS = (8, 16, 24, 32, 64)  # a word's upper bytes from byte 1, 2, 3, 4 (none: word by word)
_MAX_PREFIXES = 8  # the fewest bytes shared by every word of the range in at most this many prefixes
STACK_ESTIMATE = 8 << 10  # bytes per thread the stack buffer starts with (an idle glibc thread: ~4.5 kB)
# Bytes frequent in stacks (zeros, all-ones, the top byte of stack and library addresses): a memchr for
# one of them would stop everywhere.
_COMMON_BYTES = frozenset((0x00, 0xFF, 0x7F))
CANDIDATE_BUDGET = 64  # candidates of the one-byte search allowed beyond one per 256 bytes of data
_MAPS_BUFFER = 64 << 10  # the first size of the maps buffer; doubled when the text fills it
# With the helper, the maps are read by a second thread while the registers are (from this many threads),
# and the stacks in two halves at once (from this many bytes): below, starting a thread costs more than
# it saves (measured in bench/RESULTS.md, issue 15, third round).
PARALLEL_THREADS = 128
PARALLEL_BYTES = 512 << 10
# Whether the helper asks the kernel for each rsp's mapping (PROCMAP_QUERY) instead of reading the maps
# text in the window; tests turn it off to run the text path on kernels that have the query.
QUERY_MAPPINGS = True
# The window's C helper, or None (the Python path); tests set it to compare both.
HELPER: window_native.WindowHelper | None = window_native.load()


@dataclass(frozen=True)
class StackMaps:
    """The mappings of a process as the stack lookup needs them: sorted starts, ends and readability,
    with the raw /proc/PID/maps text they were parsed from."""

    raw: bytes
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    readable: tuple[bool, ...]
    columns: tuple[array, array, bytes]  # starts, ends (64-bit words), readable (bytes): for the helper

    @staticmethod
    def parse(raw: bytes) -> StackMaps:
        """The mappings of a /proc/PID/maps text."""
        starts, ends, readable = [], [], []
        for line in raw.splitlines():
            span, _, rest = line.partition(b" ")
            low, _, high = span.partition(b"-")
            starts.append(int(low, 16))
            ends.append(int(high, 16))
            readable.append(rest[:1] == b"r")
        columns = (array("Q", starts), array("Q", ends), bytes(readable))
        return StackMaps(raw, tuple(starts), tuple(ends), tuple(readable), columns)

    def stack_span(self, rsp: int, limit: int) -> tuple[int, int] | None:
        """[rsp & ~7, min(end of rsp's mapping, start + limit)); None when rsp is in no readable mapping."""
        index = bisect.bisect_right(self.starts, rsp) - 1
        if index < 0 or rsp >= self.ends[index] or not self.readable[index]:
            return None
        start = rsp & ~(WORD - 1)
        return start, min(self.ends[index], start + limit)


class MapsReader:
    """/proc/PID/maps opened once (before the stop), read again with one pread into a reused buffer.

    A pread at offset 0 of a seq_file makes the kernel generate the text anew: it is the mappings now.
    """

    def __init__(self, pid: int) -> None:
        path = f"/proc/{pid}/maps"
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise TargetError(f"cannot read {path}: {exc.strerror}") from None
        self._path = path
        self._buffer = bytearray(_MAPS_BUFFER)
        self._target = (self._fd, 0, 0)
        # Whether the kernel answers PROCMAP_QUERY on the descriptor (Linux 6.11; the helper's
        # `stack_places_query` clears it the first time it does not).
        self.queryable = QUERY_MAPPINGS
        self.maps = StackMaps.parse(self._read())

    def _read(self) -> bytes:
        # A seq_file read returns at most its internal buffer (a page, for maps) at a time: read on until
        # it returns nothing, continuing at the offset reached (a pread at 0 starts the text anew).
        size = 0
        while True:
            if size == len(self._buffer):
                self._buffer += bytes(len(self._buffer))
            try:
                got = os.preadv(self._fd, [memoryview(self._buffer)[size:]], size)
            except OSError as exc:
                if exc.errno == errno.ESRCH:
                    raise TargetError(f"no such process: {self._path.split('/')[2]}") from None
                raise TargetError(f"cannot read {self._path}: {exc.strerror}") from None
            if got == 0:
                return bytes(self._buffer[:size])
            size += got

    def refresh(self, read_length: int = -1) -> StackMaps:
        """The mappings now; the previous parse when the text is the same (the common case). A
        `read_length` of 0 or more says the text was just read into the buffer (by the helper)."""
        raw = bytes(self._buffer[:read_length]) if read_length >= 0 else self._read()
        if raw != self.maps.raw:
            self.maps = StackMaps.parse(raw)
        return self.maps

    def target(self) -> tuple[int, int, int]:
        """(descriptor, buffer address, buffer size): where the helper reads the text into."""
        if self._target[2] != len(self._buffer):  # grown (and maybe moved) by a read of longer text
            self._target = (self._fd, _address_of(self._buffer), len(self._buffer))
        return self._target

    @property
    def fd(self) -> int:
        """The open /proc/PID/maps, for the helper's PROCMAP_QUERY."""
        return self._fd

    def close(self) -> None:
        os.close(self._fd)


def find_words(
    buffer: memoryview | bytearray, end: int, low: int, high: int, address: int = 0
) -> list[tuple[int, int]]:
    """(offset, word) of every 8-aligned word of buffer[:end] in [low, high), in buffer order; `address`
    is the buffer's, when the caller knows it."""
    if high <= low or end <= 0:
        return []
    if HELPER is not None:  # one pass in C over every word
        view = memoryview(buffer)
        offsets = HELPER.find_words(address or _address_of(view), end, low, high)
        return [(offset, int.from_bytes(view[offset : offset + WORD], "little")) for offset in offsets]
    return find_words_python(buffer, end, low, high)


def _address_of(buffer: memoryview | bytearray) -> int:
    """The address of a writable buffer's first byte (valid until a bytearray is resized)."""
    view = memoryview(buffer)
    return ctypes.addressof((ctypes.c_char * view.nbytes).from_buffer(view))


def find_words_python(buffer: memoryview | bytearray, end: int, low: int, high: int) -> list[tuple[int, int]]:
    """`find_words` without the helper: candidates by `bytes.find`, compared in Python."""
    if high <= low or end <= 0:
        return []
    # The shared upper bytes of the range's words, as long as a few prefixes cover the range, without
    # their high zero bytes: stacks are mostly zeros, and a pattern ending in a zero byte defeats the
    # skip of the C search (measured: 4x slower on a 75 kB stack buffer); longer patterns skip more.
    shift = next(s for s in _PREFIX_SHIFTS if ((high - 1) >> s) - (low >> s) < _MAX_PREFIXES)
    skip = shift // 8
    prefixes = range(low >> shift, ((high - 1) >> shift) + 1)
    patterns = [p.to_bytes(WORD - skip, "little").rstrip(b"\0") for p in prefixes]
    view = memoryview(buffer)[:end]
    if any(len(p) < 2 for p in patterns):
        words = view[: end - end % WORD].cast("Q")
        return [(index * WORD, word) for index, word in enumerate(words) if low <= word < high]
    data = view.obj if isinstance(view.obj, bytearray) and view.nbytes == end else bytes(view)
    hits: list[tuple[int, int]] = []
    for pattern in patterns:
        _find_prefix(data, end, pattern, skip, low, high, hits)
    hits.sort()
    return hits


def _find_prefix(
    data: bytes | bytearray,
    end: int,
    pattern: bytes,
    skip: int,
    low: int,
    high: int,
    hits: list[tuple[int, int]],
) -> None:
    """Append (offset, word) for every aligned word of data[:end] in [low, high) whose bytes from `skip`
    on are `pattern`.

    The search looks for one byte of the pattern with memchr (bytes.find of one byte: ~1 µs per 100 kB,
    against ~40 µs for a 5-byte pattern, whose skip loop steps a few bytes at a time) and compares the
    pattern only where that byte sits at the right place in a word: every word sought has that byte
    there, so none is missed. A byte common in the data (more candidates than CANDIDATE_BUDGET allows)
    hands the rest of the buffer over to the pattern search.
    """
    k = next((i for i, b in enumerate(pattern) if b not in _COMMON_BYTES), 0)
    needle, at = pattern[k : k + 1], skip + k
    budget = CANDIDATE_BUDGET + end // 256
    size = len(pattern)
    position = data.find(needle, at, end)
    while position >= 0 and budget > 0:
        budget -= 1
        offset = position - at
        in_word = offset % WORD == 0 and offset + WORD <= end
        if in_word and data[offset + skip : offset + skip + size] == pattern:
            word = int.from_bytes(data[offset : offset + WORD], "little")
            if low <= word < high:
                hits.append((offset, word))
        position = data.find(needle, position + 1, end)
    if position < 0:
        return
    position = data.find(pattern, max(position - k, skip), end)  # the rest, by the pattern itself
    while position >= 0:
        offset = position - skip
        if offset % WORD == 0 and offset + WORD <= end:
            word = int.from_bytes(data[offset : offset + WORD], "little")
            if low <= word < high:
                hits.append((offset, word))
        position = data.find(pattern, position + 1, end)


@dataclass(frozen=True)
class Snapshot:
    """Every held thread's registers and stack words, read once in the window, as parallel lists.

    [place_starts[i], place_ends[i]) are the offsets of thread i's stack words in `buffer`, both -1 when
    its stack cannot be read (rsp in no readable mapping, or the read failed): such a stack cannot be
    shown to be safe. The located stacks lie in `buffer` in thread order. `slots[i]` is thread i's slot
    in the register file.
    """

    tids: list[int]
    rips: list[int]
    rsps: list[int]
    slots: list[int]
    place_starts: array  # of 'q'
    place_ends: array
    buffer: bytearray
    used: int  # bytes of `buffer` holding stack words
    registers: pt.RegisterFile
    buffer_address: int = 0  # of `buffer`'s first byte

    def unreadable(self) -> list[int]:
        """The indexes of the threads whose stack could not be read."""
        return [index for index, start in enumerate(self.place_starts) if start < 0]

    def owner(self) -> Callable[[int], int | None]:
        """A lookup from a buffer offset to the index of the thread whose stack holds it (built on demand:
        only when a search found something)."""
        located = [(start, index) for index, start in enumerate(self.place_starts) if start >= 0]
        starts = [start for start, _index in located]
        ends = self.place_ends

        def owner(offset: int) -> int | None:
            at = bisect.bisect_right(starts, offset) - 1
            if at >= 0 and offset < ends[located[at][1]]:
                return located[at][1]
            return None

        return owner


class ThreadScan:
    """The safety check's reading of held threads, set up before the stop and reused by every attempt."""

    def __init__(self, pid: int, threads: int = 1) -> None:
        self.pid = pid
        self.registers = pt.RegisterFile(threads + 8)
        self._buffer = _touched(max(threads, 1) * STACK_ESTIMATE)
        self._buffer_address = _address_of(self._buffer)
        self.maps_reader = MapsReader(pid)
        self._read_in: float | None = None  # the stop (its stopped_at) the register file was read in

    def on_held(self, tid: int) -> None:
        """A thread reached its stop: read its registers now, while the others are on their way."""
        self.registers.record(tid)

    @property
    def hand_over(self) -> Callable[[int], None] | None:
        """What the stop calls as each thread reaches it: `on_held` on the Python path; nothing with the
        helper, which reads every thread's registers in one call once all are stopped (a held thread's
        registers do not change, so the values are the same)."""
        return self.on_held if HELPER is None else None

    def start_attempt(self) -> None:
        """A new stop: every thread's registers are read again (`on_held` fills the file for it)."""
        self.registers.clear()
        self._read_in = None

    def close(self) -> None:
        self.maps_reader.close()

    def stack_buffer(self, size: int = 0) -> tuple[bytearray, int]:
        """The stack buffer (grown to at least `size` bytes, its pages touched) and its address."""
        if size > len(self._buffer):
            self._buffer = _touched(size)
            self._buffer_address = _address_of(self._buffer)
        return self._buffer, self._buffer_address

    def snapshot(self, stopped: StoppedThreads, stack_limit: int, with_stacks: bool) -> Snapshot:
        """Every held thread's rip and rsp (registers read at its stop, or now) and, with `with_stacks`,
        its stack from rsp to the end of its mapping (at most `stack_limit` bytes)."""
        registers = self.registers
        if self._read_in is not None and self._read_in != stopped.stopped_at:
            registers.clear()  # read in an earlier stop (no `start_attempt` since): stale, read again
        self._read_in = stopped.stopped_at
        slot_of = registers.slot_of
        held = stopped.held
        unread = [tid for tid in held if tid not in slot_of] if slot_of else list(held)
        maps_length = -1
        if HELPER is None:  # the ones stopped before the hand-over of `on_held`
            registers.record_all(unread, None)
        elif with_stacks and len(unread) >= PARALLEL_THREADS:  # the maps by a second thread meanwhile
            fd, address, room = self.maps_reader.target()

            def read(tids: array, slots_address: int) -> int:
                nonlocal maps_length
                done, maps_length = HELPER.read_registers_and_maps(tids, slots_address, fd, address, room)
                return done

            registers.record_all(unread, read)
        elif unread:
            registers.record_all(unread, HELPER.read_registers)
        stopped.mark("registers")
        words = registers.words()
        size = registers.SLOT_WORDS
        contiguous = len(held) == len(registers.tids)  # every thread read is still held: one slice each
        if contiguous:
            tids = list(registers.tids)
            slots = list(range(len(tids)))
            rips = words[registers.RIP :: size].tolist()
            rsps = words[registers.RSP :: size].tolist()
        else:
            tids = [tid for tid in registers.tids if tid in held]
            slots = [slot_of[tid] for tid in tids]
            rips = [words[s * size + registers.RIP] for s in slots]
            rsps = [words[s * size + registers.RSP] for s in slots]
        count = len(tids)
        place_starts, place_ends = array("q", bytes(8 * count)), array("q", bytes(8 * count))
        if not with_stacks:
            place_starts[:] = place_ends[:] = array("q", [-1]) * count
            return Snapshot(tids, rips, rsps, slots, place_starts, place_ends, self._buffer, 0, registers)
        remote = array("Q", bytes(16 * count))
        if HELPER is not None:
            if contiguous:
                rsps_address, stride = registers.address + registers.RSP * WORD, size
            else:
                rsp_words = array("Q", rsps)
                rsps_address, stride = rsp_words.buffer_info()[0], 1
            total = -1
            reader = self.maps_reader
            if reader.queryable and maps_length < 0:  # each rsp's mapping asked of the kernel, no text
                total = HELPER.stack_places_query(reader.fd, rsps_address, count, stride, stack_limit,
                                                  place_starts, place_ends, remote)  # fmt: skip
                reader.queryable = total >= 0  # before Linux 6.11: the text from now on
            if total < 0:
                maps = reader.refresh(maps_length)
                total = HELPER.stack_places(rsps_address, count, stride, maps.columns, stack_limit,
                                            place_starts, place_ends, remote)  # fmt: skip
        else:
            maps = self.maps_reader.refresh(maps_length)
            total = _place_stacks(maps, rsps, stack_limit, place_starts, place_ends, remote)
        stopped.mark("maps")
        if total > len(self._buffer):
            self._buffer = bytearray(2 * total)
            self._buffer_address = _address_of(self._buffer)
        _read_stacks(stopped, remote, place_starts, place_ends, self._buffer, self._buffer_address)
        return Snapshot(tids, rips, rsps, slots, place_starts, place_ends, self._buffer, total, registers,
                        self._buffer_address)  # fmt: skip


def _place_stacks(
    maps: StackMaps, rsps: list[int], stack_limit: int, place_starts: array, place_ends: array, remote: array
) -> int:
    """The Python path of the helper's `stack_places`: each thread's place (or -1) and the located
    stacks' (address, length) pairs in `remote`; the bytes needed in all."""
    starts, ends, readable = maps.starts, maps.ends, maps.readable
    total = located = 0
    find = bisect.bisect_right
    for thread, rsp in enumerate(rsps):
        index = find(starts, rsp) - 1
        if index < 0 or rsp >= ends[index] or not readable[index]:
            place_starts[thread] = place_ends[thread] = -1
            continue
        start = rsp & -WORD
        end = ends[index]
        length = (end if end - start < stack_limit else start + stack_limit) - start
        remote[2 * located], remote[2 * located + 1] = start, length
        place_starts[thread], place_ends[thread] = total, total + length
        total += length
        located += 1
    return total


def _touched(size: int) -> bytearray:
    """A zeroed buffer whose pages are already mapped (written once), so that filling it faults nothing."""
    buffer = bytearray(size)
    if size:
        ctypes.memset((ctypes.c_char * size).from_buffer(buffer), 0, size)
    return buffer


def _read_stacks(
    stopped: StoppedThreads,
    remote: array,
    place_starts: array,
    place_ends: array,
    buffer: bytearray,
    base: int,
) -> None:
    """Fill `buffer` with every located stack, from its (address, length) pair of `remote` (in thread
    order, placed one after the other), one process_vm_readv per IOV_MAX stacks; where a stack fails, it
    is read on its own (through /proc/PID/mem for pages process_vm_readv refuses), and its place becomes
    -1 when that fails too."""
    located = len(place_starts) - place_starts.count(-1)
    if not located:
        return
    local = array("Q", remote[: 2 * located])  # the same lengths, at the buffer's offsets
    local[0 : 2 * located : 2] = array("Q", accumulate(remote[1 : 2 * located - 1 : 2], initial=base))
    total = local[2 * located - 2] + local[2 * located - 1] - base
    pid, parallel = stopped.process.pid, total >= PARALLEL_BYTES
    if HELPER is not None and HELPER.read_stacks(pid, local, remote, located, total, parallel):
        return
    # Without the helper, or again when a stack fell short in it: this finds the one that failed.
    done_pairs = 0
    while done_pairs < located:
        count = min(IOV_MAX, located - done_pairs)
        local_iov = (IOVec * count).from_buffer(local, 16 * done_pairs)
        remote_iov = (IOVec * count).from_buffer(remote, 16 * done_pairs)
        size = sum(remote[2 * done_pairs + 1 : 2 * (done_pairs + count) : 2])
        got = libc.process_vm_readv(stopped.process.pid, local_iov, count, remote_iov, count, 0)
        if got == size:
            done_pairs += count
            continue
        if got < 0 and ctypes.get_errno() == errno.ESRCH:
            raise TargetError(f"no such process: {stopped.process.pid}")
        # The read stopped inside one stack: the ones before it are in; that one is read alone.
        got = max(got, 0)
        failed = done_pairs
        while got >= remote[2 * failed + 1]:
            got -= remote[2 * failed + 1]
            failed += 1
        start, length = remote[2 * failed], remote[2 * failed + 1]
        offset = local[2 * failed] - base
        try:
            buffer[offset : offset + length] = stopped.process.read(start, length)
        except TargetError:
            thread = [index for index, place in enumerate(place_starts) if place == offset][0]
            place_starts[thread] = place_ends[thread] = -1
        done_pairs = failed + 1
