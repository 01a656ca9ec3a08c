"""The safety check and the one-page switch inside the window as one call of the C helper.

Everything the call needs is laid out before the stop (`OneCallCheck`): the ranges to test as arrays
of 64-bit words, the register slots, stack buffer and iovec arrays, the switch's bytes, all pointed to
by one `WindowBlock`. Inside the window Python only writes the held tids into it and makes the call:
every thread's registers, each stack's mapping (PROCMAP_QUERY), one process_vm_readv of every stack,
the same tests as loader/safety.py's check (instruction pointer, general registers, every stack word,
an unreadable stack) and, only when every thread passes, the switch — no Python between the system
calls, where the step-by-step path ran about eight ctypes calls and the Python between them cold at
every stop (bench/RESULTS.md, issue 15, fifth round).

The call answers with a compact verdict: safe (the switch made, its outcome kept for
`PreparedSwitch.run`), or unsafe with a bit per thread saying what it found. The offenders' names,
addresses and kinds are then decoded in Python from the registers and stacks the call read, after
the threads run again (`snapshot`, analysed by loader/safety.py's own code). Anything off the usual
path (a register read failing, a kernel without PROCMAP_QUERY, stacks larger than the buffer, a stack
read falling short) makes the call return before writing anything, and the step-by-step path does
the check, since it knows how to recover from or report each of those.
"""

from __future__ import annotations

import ctypes
from array import array
from dataclasses import dataclass

from hpkg.loader import thread_scan
from hpkg.loader.process import StoppedThreads
from hpkg.loader.ptrace import RegisterFile, read_registers
from hpkg.loader.thread_scan import STACK_ESTIMATE, Snapshot, ThreadScan
from hpkg.loader.window_native import (
    SWITCH_CHANGED,
    SWITCH_DONE,
    SWITCH_STATE_FAILED,
    SWITCH_UNREAD,
    WINDOW_NO_QUERY,
    WINDOW_ROOM,
    WINDOW_SAFE,
    WINDOW_UNSAFE,
    WindowBlock,
    WindowHelper,
)

# What `OneCallCheck.run` answers.
SAFE, UNSAFE, STEP_BY_STEP = "safe", "unsafe", "step by step"
# The call's steps, as its `ended` times mark them (CLOCK_MONOTONIC, which time.perf_counter reads on
# Linux): "call" is the Python from the end of the stop to the call's first instruction.
STEPS = ("call", "registers", "maps", "stacks", "check")
SLOT_BYTES = RegisterFile.SLOT_WORDS * 8
# The stacks read before the stop are those of at most this many threads: about 0.6 MB of idle glibc
# stacks, what a core's 1 MB L2 keeps while the stop runs; more would evict themselves and only lengthen
# the time the loader, first in line with the threads seized, keeps its CPU from them (8 µs a thread).
WARM_THREADS = 128
# The stack bytes the window's buffer allows a thread that is running before the stop (whose stack pointer
# /proc does not show): a request-serving worker's stack ran to 13 kB (bench/RESULTS.md, issue 15).
RUNNING_STACK = 16 << 10


@dataclass(frozen=True)
class SpanSwitch:
    """The one-page switch the call makes when every thread passes (switch.PreparedSwitch.fused): the span
    [address, address + len(before)) compared with `before` and written with `after`, then `state` written
    at `state_address` (when not empty) over `state_before`. `owner` is the PreparedSwitch, whose `run`
    then reports the outcome instead of switching again."""

    owner: object
    mem_fd: int
    address: int
    before: bytes
    after: bytes
    state_address: int = 0
    state: bytes = b""
    state_before: bytes = b""


def journal_switch(stopped: StoppedThreads, outcome: int, switch: SpanSwitch) -> None:
    """Journal what a helper's switch (may have) overwritten, so that leaving the hold on an exception
    undoes it: nothing when the span was found changed or unreadable (nothing written), the span
    otherwise, and the state word when it was written or its write failed."""
    if outcome in (SWITCH_CHANGED, SWITCH_UNREAD):
        return
    stopped.remember(switch.address, switch.before)
    if switch.state and outcome in (SWITCH_DONE, SWITCH_STATE_FAILED):
        stopped.remember(switch.state_address, switch.state_before)


def _words(pairs: list[tuple[int, int]]) -> array:
    """[start, end) pairs as consecutive 64-bit words (an empty array holds one word, so that its address
    is valid)."""
    return array("Q", [word for pair in pairs for word in pair] or [0])


class OneCallCheck:
    """The block of one `stop_when_safe`, reused by every attempt: ranges, arrays and switch set up once.

    `ip_ranges` are tested against each instruction pointer, `register_ranges` against the general
    registers, `word_ranges` (sorted, disjoint) against every stack word.
    """

    def __init__(
        self,
        helper: WindowHelper,
        scan: ThreadScan,
        ip_ranges: list[tuple[int, int]],
        register_ranges: list[tuple[int, int]],
        word_ranges: list[tuple[int, int]],
        stack_limit: int,
        switch: SpanSwitch | None = None,
    ) -> None:
        self._helper, self._scan, self.switch = helper, scan, switch
        self._ranges = (_words(ip_ranges), _words(register_ranges), _words(word_ranges))
        block = self.block = WindowBlock()
        block.pid, block.maps_fd = scan.pid, scan.maps_reader.fd
        block.stack_limit, block.parallel_bytes = stack_limit, thread_scan.PARALLEL_BYTES
        block.ip_ranges, block.ip_count = self._ranges[0].buffer_info()[0], len(ip_ranges)
        block.register_ranges, block.register_count = self._ranges[1].buffer_info()[0], len(register_ranges)
        block.word_ranges, block.word_count = self._ranges[2].buffer_info()[0], len(word_ranges)
        if switch is not None:
            self._scratch = ctypes.create_string_buffer(len(switch.before))
            block.mem_fd, block.span_address = switch.mem_fd, switch.address
            block.span_length = len(switch.before)
            block.before, block.after = _address_of_bytes(switch.before), _address_of_bytes(switch.after)
            block.state_address, block.state_length = switch.state_address, len(switch.state)
            block.state = _address_of_bytes(switch.state) if switch.state else None
            block.scratch = ctypes.addressof(self._scratch)
        self._pointer = ctypes.byref(block)
        self._check = helper.window_check
        self._capacity = 0
        self._tids = array("i")
        self._index: dict[int, int] = {}  # tid -> its index in `_tids`
        self._stopped: list[int] = []  # indexes of threads stopped whose registers are not read yet
        self._reserve(max(len(scan.registers.tids), 1))
        self._reserve_buffer()

    def _reserve(self, count: int) -> None:
        """Room for `count` threads in every per-thread array (and the register file)."""
        if count <= self._capacity:
            return
        capacity = max(count, 2 * self._capacity, 16)
        self._scan.registers.reserve(capacity)
        self._places = (array("q", bytes(8 * capacity)), array("q", bytes(8 * capacity)))
        self._iovecs = (array("Q", bytes(16 * capacity)), array("Q", bytes(16 * capacity)))
        self._verdict = (ctypes.c_uint8 * capacity)()
        self._have = (ctypes.c_uint8 * capacity)()
        block = self.block
        block.place_start, block.place_end = (a.buffer_info()[0] for a in self._places)
        block.remote, block.local = (a.buffer_info()[0] for a in self._iovecs)
        block.verdict, block.have = ctypes.addressof(self._verdict), ctypes.addressof(self._have)
        block.slots = self._scan.registers.address
        self._capacity = capacity

    def _reserve_buffer(self, size: int = 0) -> None:
        buffer, address = self._scan.stack_buffer(size)
        self.block.buffer, self.block.buffer_size = address, len(buffer)

    def _target(self, tids: list[int]) -> None:
        """The threads the next call checks, none of their registers read yet."""
        self._reserve(len(tids))
        self._tids = array("i", tids)
        self._index = {tid: index for index, tid in enumerate(tids)}
        self._stopped.clear()
        ctypes.memset(self._have, 0, len(tids))
        self.block.tids, self.block.count = self._tids.buffer_info()[0], len(tids)

    def warm(self, seized: list[int]) -> None:
        """Just before the stop, while the process runs: the threads about to be stopped set as the next
        call's, and the block's memory and the stacks of the threads blocked in a system call (whose stack
        pointer /proc/PID/task/TID/syscall shows) read once, so that the check inside the window finds them
        in this CPU's caches."""
        self._target(seized)
        sps = array("Q")
        running = 0
        for tid in seized[:WARM_THREADS]:
            try:
                with open(f"/proc/{self._scan.pid}/task/{tid}/syscall", "rb") as source:
                    fields = source.read().split()
            except OSError:
                continue
            if len(fields) == 9:  # number, six arguments, sp, pc ("running" otherwise)
                sps.append(int(fields[7], 16))
            else:
                running += 1
        needed = self._helper.window_warm(self._pointer, sps)
        if needed == -2:  # no PROCMAP_QUERY (before Linux 6.11): the step-by-step check, with the maps text
            self._scan.maps_reader.queryable = False
            return
        # Room for the window's read of every stack, now: a call finding too little room allocates (zeroing
        # and faulting the pages) and reads every register and mapping again, inside the window (about
        # 90 µs of a 0.3 ms floor on the 9-thread server). A running thread shows no stack pointer: it is
        # allowed RUNNING_STACK; a thread not looked at, the blocked ones' mean; the whole is doubled.
        unseen = max(len(seized) - WARM_THREADS, 0)
        mean = needed // len(sps) if sps else STACK_ESTIMATE
        room = 2 * (needed + running * RUNNING_STACK + unseen * mean)
        if room > self.block.buffer_size:
            self._reserve_buffer(room)
            self._helper.window_warm(self._pointer, sps)

    def on_held(self, tid: int) -> None:
        """A thread reached its stop (`StoppedThreads.on_held`): its registers can be read while others are
        still on their way (`on_idle`)."""
        index = self._index.get(tid)
        if index is not None:
            self._stopped.append(index)

    def on_idle(self) -> None:
        """The stop polled a thread not stopped yet (`StoppedThreads.on_idle`): one stopped thread's
        registers read into its slot meanwhile, which the call then does not read again (a held thread's
        registers do not change)."""
        if self._stopped:
            index = self._stopped.pop()
            if read_registers(self._tids[index], self.block.slots + index * SLOT_BYTES):
                self._have[index] = 1

    def run(self, stopped: StoppedThreads) -> str:
        """Inside the window: the check of every held thread and, when all pass, the switch. SAFE (the
        switch made, its outcome journaled and left in `stopped.switched` for the switch's `run`), UNSAFE
        (`snapshot` decodes it, best after the release), or STEP_BY_STEP (off the usual path: nothing
        written, the caller checks step by step)."""
        if not self._scan.maps_reader.queryable:  # found before the stop (`warm`) or by an earlier call
            return STEP_BY_STEP
        held = stopped.held
        if held.keys() != self._index.keys():  # a thread exited, or one was created since the seize
            self._target(list(held))
        outcome = self._check(self._pointer)
        block = self.block
        if outcome == WINDOW_ROOM:  # stacks deeper than any seen before the stop: room now, once
            self._reserve_buffer(2 * block.used)
            outcome = self._check(self._pointer)
        if outcome in (WINDOW_SAFE, WINDOW_UNSAFE):
            stopped.later_marks = self.steps  # read after the release: no Python for it in the window
        if outcome == WINDOW_SAFE:
            if self.switch is not None:
                journal_switch(stopped, block.switch_outcome, self.switch)
                stopped.switched = (self.switch.owner, block.switch_outcome, block.switch_errno)
            return SAFE
        if outcome == WINDOW_UNSAFE:
            return UNSAFE
        if outcome == WINDOW_NO_QUERY:
            self._scan.maps_reader.queryable = False
        ctypes.memset(self._have, 0, len(self._tids))  # the step-by-step check reads every thread again
        return STEP_BY_STEP

    def steps(self) -> list[tuple[str, float]]:
        """The last call's steps, as `StoppedThreads.mark` notes them (step, perf_counter at its end)."""
        return [(step, at / 1e9) for step, at in zip(STEPS, self.block.ended, strict=True)]

    def verdicts(self) -> dict[int, int]:
        """The last call's verdict bits, by thread."""
        return dict(zip(self._tids, self._verdict[: len(self._tids)], strict=True))

    def snapshot(self) -> Snapshot:
        """What the last (unsafe) call read, as the step-by-step check's snapshot: valid until the next
        attempt, so it can be decoded once the threads run again."""
        tids = self._tids.tolist()
        count = len(tids)
        registers = self._scan.registers.adopt(tids)
        words = registers.words()
        size = registers.SLOT_WORDS
        starts, ends = array("q", self._places[0][:count]), array("q", self._places[1][:count])
        buffer, address = self._scan.stack_buffer()
        rips, rsps = words[registers.RIP :: size].tolist(), words[registers.RSP :: size].tolist()
        used = self.block.used
        return Snapshot(tids, rips, rsps, list(range(count)), starts, ends, buffer, used, registers, address)


def _address_of_bytes(data: bytes) -> int:
    """The address of an immutable bytes object's data (valid while the object lives)."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
