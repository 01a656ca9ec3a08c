"""The window's C helper (loader/window_helper.c), when built: the safety check's per-thread loops in C.

Inside the window the loader reads every held thread's registers, places its stack and searches the
words; in Python each is a loop over the threads (at 256 threads: about 1.9 ms of a 5.3 ms pause, the
floor being 3.1 ms). The helper runs each loop in one ctypes call, asks the kernel where each stack's
mapping ends (PROCMAP_QUERY) instead of reading the maps text, and makes the one-page switch (compare,
write, read back, record state) in one call; `window_check` does all of it, check and switch, in one call
(loader/window_check.py). `make` builds it from source with gcc
(`loader/window_helper.so`); without it (no gcc, a read-only install) `load()` answers None and
loader/thread_scan.py does the same work in Python, word for word the same check.
"""

from __future__ import annotations

import ctypes
import os
from array import array
from pathlib import Path

SOURCE = Path(__file__).with_name("window_helper.c")
LIBRARY = Path(__file__).with_name("window_helper.so")
# Set to 1 to use the Python path even when the helper is built (the bench compares both).
DISABLE_VARIABLE = "HPKG_NO_WINDOW_HELPER"

# The outcomes of `WindowHelper.switch_span` (window_helper.c's enum).
(SWITCH_DONE, SWITCH_CHANGED, SWITCH_UNREAD, SWITCH_WRITE_FAILED, SWITCH_NOT_STUCK,
 SWITCH_STATE_FAILED) = range(6)
# The outcomes of `WindowHelper.window_check` and the bits of its per-thread verdict (window_helper.c).
WINDOW_SAFE, WINDOW_UNSAFE, WINDOW_REGISTERS, WINDOW_NO_QUERY, WINDOW_ROOM, WINDOW_STACKS = range(6)
VERDICT_INSTRUCTION, VERDICT_REGISTER, VERDICT_UNREADABLE, VERDICT_STACK_WORD = 1, 2, 4, 8

_ADDRESS = ctypes.c_void_p
_LONG = ctypes.c_long
_U64 = ctypes.c_uint64


class WindowBlock(ctypes.Structure):
    """struct hpkg_window of window_helper.c: the one-call check's inputs, set before the stop, and its
    outputs. Every field is a 64-bit word or a pointer."""

    _fields_ = [
        ("pid", ctypes.c_int64), ("maps_fd", ctypes.c_int64), ("mem_fd", ctypes.c_int64),
        ("stack_limit", _U64), ("parallel_bytes", ctypes.c_int64),
        ("slots", _ADDRESS), ("place_start", _ADDRESS), ("place_end", _ADDRESS), ("remote", _ADDRESS),
        ("local", _ADDRESS), ("buffer", _ADDRESS), ("buffer_size", ctypes.c_int64),
        ("ip_ranges", _ADDRESS), ("ip_count", ctypes.c_int64),
        ("register_ranges", _ADDRESS), ("register_count", ctypes.c_int64),
        ("word_ranges", _ADDRESS), ("word_count", ctypes.c_int64),
        ("span_address", _U64), ("before", _ADDRESS), ("after", _ADDRESS), ("span_length", ctypes.c_int64),
        ("state_address", _U64), ("state", _ADDRESS), ("state_length", ctypes.c_int64), ("scratch", _ADDRESS),
        ("tids", _ADDRESS), ("count", ctypes.c_int64), ("have", _ADDRESS),
        ("verdict", _ADDRESS), ("used", ctypes.c_int64), ("failed", ctypes.c_int64),
        ("switch_outcome", ctypes.c_int64), ("switch_errno", ctypes.c_int64), ("ended", ctypes.c_int64 * 5),
    ]  # fmt: skip


class WindowHelper:
    """The loaded helper: each call over every thread (or every word) at once; the reads of maps and
    stacks use a second thread, since the machine's other CPUs are idle while the target is stopped."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._read_registers = library.hpkg_read_registers
        self._read_registers.restype = _LONG
        self._read_registers.argtypes = [_ADDRESS, _LONG, _ADDRESS]
        self._stack_places = library.hpkg_stack_places
        self._stack_places.restype = _LONG
        self._stack_places.argtypes = [_ADDRESS, _LONG, _LONG, _ADDRESS, _ADDRESS, _ADDRESS, _LONG, _U64,
                                       _ADDRESS, _ADDRESS, _ADDRESS]  # fmt: skip
        self._registers_and_maps = library.hpkg_read_registers_and_maps
        self._registers_and_maps.restype = _LONG
        self._registers_and_maps.argtypes = [_ADDRESS, _LONG, _ADDRESS, ctypes.c_int, _ADDRESS, _LONG,
                                             _ADDRESS]  # fmt: skip
        self._stack_places_query = library.hpkg_stack_places_query
        self._stack_places_query.restype = _LONG
        self._stack_places_query.argtypes = [ctypes.c_int, _ADDRESS, _LONG, _LONG, _U64, _ADDRESS, _ADDRESS,
                                             _ADDRESS]  # fmt: skip
        self._switch_span = library.hpkg_switch_span
        self._switch_span.restype = _LONG
        self._switch_span.argtypes = [ctypes.c_int, _U64, ctypes.c_char_p, ctypes.c_char_p, _LONG, _U64,
                                      ctypes.c_char_p, _LONG, _ADDRESS]  # fmt: skip
        self._read_stacks = library.hpkg_read_stacks
        self._read_stacks.restype = _LONG
        self._read_stacks.argtypes = [ctypes.c_int, _ADDRESS, _ADDRESS, _LONG, _LONG, ctypes.c_int]
        # Called inside the window as it is (no Python wrapper): the whole in-window check of the block's
        # threads, and its switch when every one passes; one of the WINDOW_* outcomes (window_helper.c says
        # what each leaves in the block). Through PyDLL, which keeps the GIL for the call: released, another
        # thread of the loader's process (the agent's other applies, a bench's clients) takes it and the
        # loader waits for it back while the world is stopped (seen: 45 µs of a 0.44 ms pause).
        self.window_check = ctypes.PyDLL(library._name, use_errno=True).hpkg_window_check
        self.window_check.restype = _LONG
        self.window_check.argtypes = [ctypes.POINTER(WindowBlock)]
        self._window_warm = library.hpkg_window_warm
        self._window_warm.restype = _LONG
        self._window_warm.argtypes = [ctypes.POINTER(WindowBlock), _ADDRESS, _LONG]
        self._find_words = library.hpkg_find_words
        self._find_words.restype = _LONG
        self._find_words.argtypes = [_ADDRESS, _LONG, _U64, _U64, _ADDRESS, _LONG]

    def read_registers(self, tids: array, slots_address: int) -> int:
        """PTRACE_GETREGS of every tid (array of 'i') into consecutive slots; how many were read (fewer:
        that one failed, errno set)."""
        address, count = tids.buffer_info()
        ctypes.set_errno(0)
        return self._read_registers(address, count, slots_address)

    def read_registers_and_maps(
        self, tids: array, slots_address: int, maps_fd: int, maps_address: int, maps_size: int
    ) -> tuple[int, int]:
        """`read_registers`, while a second thread reads /proc/PID/maps (its open descriptor) into the
        buffer at `maps_address`: (registers read, the text's length or -1 when not read)."""
        address, count = tids.buffer_info()
        length = ctypes.c_long(-1)
        done = self._registers_and_maps(address, count, slots_address, maps_fd, maps_address, maps_size,
                                        ctypes.addressof(length))  # fmt: skip
        return done, length.value

    def read_stacks(
        self, pid: int, local: array, remote: array, count: int, total: int, parallel: bool
    ) -> bool:
        """process_vm_readv of `count` (local, remote) iovec pairs, with `parallel` in two halves at once,
        one by a second thread; whether all `total` bytes came in (if not, the caller reads them its own
        way)."""
        local_address, remote_address = local.buffer_info()[0], remote.buffer_info()[0]
        return bool(self._read_stacks(pid, local_address, remote_address, count, total, parallel))

    def stack_places(
        self,
        rsps_address: int,
        count: int,
        stride: int,
        maps: tuple[array, array, bytes],
        limit: int,
        place_starts: array,
        place_ends: array,
        remote: array,
    ) -> int:
        """Each thread's stack place (offsets, -1 when unmapped) and the located stacks' (address, length)
        pairs, `rsps_address` read every `stride` words; the bytes needed in all. The arrays hold `count`
        entries (`remote` 2 * `count`)."""
        starts, ends, readable = maps
        return self._stack_places(
            rsps_address, count, stride, starts.buffer_info()[0], ends.buffer_info()[0],
            ctypes.cast(ctypes.c_char_p(readable), _ADDRESS), len(starts), limit,
            place_starts.buffer_info()[0], place_ends.buffer_info()[0], remote.buffer_info()[0],
        )  # fmt: skip

    def stack_places_query(
        self,
        maps_fd: int,
        rsps_address: int,
        count: int,
        stride: int,
        limit: int,
        place_starts: array,
        place_ends: array,
        remote: array,
    ) -> int:
        """`stack_places` with each thread's mapping asked of the kernel (PROCMAP_QUERY on the open
        /proc/PID/maps) instead of looked up in a maps text; -1 when the kernel cannot answer (before
        Linux 6.11): then read the text and call `stack_places`."""
        return self._stack_places_query(
            maps_fd, rsps_address, count, stride, limit, place_starts.buffer_info()[0],
            place_ends.buffer_info()[0], remote.buffer_info()[0],
        )  # fmt: skip

    def switch_span(
        self, mem_fd: int, address: int, before: bytes, after: bytes, state_address: int, state: bytes,
        scratch: ctypes.Array,
    ) -> tuple[int, int]:
        """The one-page switch in one call: compare the span with `before`, write `after`, read it back,
        then write `state` (when not empty) at `state_address`; (outcome, errno). The outcomes are the
        SWITCH_* constants of window_helper.c, mirrored here."""
        ctypes.set_errno(0)
        outcome = self._switch_span(mem_fd, address, before, after, len(before), state_address, state,
                                    len(state), ctypes.addressof(scratch))  # fmt: skip
        return outcome, ctypes.get_errno()

    def window_warm(self, block: object, sps: array) -> int:
        """Before the stop: `block`'s memory, and the stacks at the stack pointers `sps` (array of 'Q') read
        into its buffer, brought into this CPU's caches; the bytes those stacks need (not read when more
        than the buffer holds), or -2 when the kernel does not answer PROCMAP_QUERY."""
        return self._window_warm(block, sps.buffer_info()[0], len(sps))

    def find_words(self, buffer_address: int, size: int, low: int, high: int) -> array:
        """Byte offsets (array of 'q') of every 8-aligned word of the buffer in [low, high), in order."""
        offsets = array("q", bytes(8 * 64))
        found = self._find_words(buffer_address, size, low, high, offsets.buffer_info()[0], len(offsets))
        if found > len(offsets):
            offsets = array("q", bytes(8 * found))
            found = self._find_words(buffer_address, size, low, high, offsets.buffer_info()[0], found)
        del offsets[found:]
        return offsets


def load(path: Path = LIBRARY) -> WindowHelper | None:
    """The helper at `path`, or None when it is not built, cannot be loaded, or is disabled."""
    if os.environ.get(DISABLE_VARIABLE) == "1" or not path.is_file():
        return None
    try:
        return WindowHelper(ctypes.CDLL(str(path), use_errno=True))
    except (OSError, AttributeError):  # a foreign or stale file: the Python path does the same work
        return None
