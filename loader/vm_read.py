"""Many small reads of a stopped process in few system calls: one process_vm_readv per IOV_MAX spans.

process_vm_readv stops at the first span it cannot read (an unmapped or unreadable page) and returns
the bytes read so far; the spans before it are in, that one is marked unread, and the read goes on
after it. A thread's TEB fields, syscall frame and Windows stack are read this way for every thread at
once inside the safety check's stop (loader/wine_threads.py).
"""

from __future__ import annotations

import ctypes
import errno
from array import array
from collections.abc import Sequence
from itertools import accumulate

from hpkg.errors import TargetError
from hpkg.loader.process import IOVec, libc

IOV_MAX = 1024  # the kernel's limit of iovecs per process_vm_readv side


def read_spans(pid: int, spans: Sequence[tuple[int, int]]) -> list[bytes | None]:
    """The bytes of each (address, length) span of process `pid`, None for a span it could not read."""
    out: list[bytes | None] = [None] * len(spans)
    lengths = [max(length, 0) for _, length in spans]
    buffer = ctypes.create_string_buffer(max(sum(lengths), 1))
    base = ctypes.addressof(buffer)
    offsets = list(accumulate(lengths, initial=0))[:-1]
    # The iovecs as (base, length) word pairs: the local side into `buffer`, the remote side at the spans.
    local_words = array("Q", (word for offset, length in zip(offsets, lengths, strict=True)
                              for word in (base + offset, length)))  # fmt: skip
    remote_words = array("Q", (word for (address, _), length in zip(spans, lengths, strict=True)
                               for word in (address, length)))  # fmt: skip
    first = 0
    while first < len(spans):
        count = min(IOV_MAX, len(spans) - first)
        local = (IOVec * count).from_buffer(local_words, 16 * first)
        remote = (IOVec * count).from_buffer(remote_words, 16 * first)
        got = libc.process_vm_readv(pid, local, count, remote, count, 0)
        if got < 0:
            err = ctypes.get_errno()
            if err == errno.ESRCH:
                raise TargetError(f"no such process: {pid}")
            got = 0
        index = first
        while index < first + count and got >= lengths[index]:  # the spans read whole
            got -= lengths[index]
            out[index] = ctypes.string_at(base + offsets[index], lengths[index])
            index += 1
        first = index + 1 if index < first + count else index  # the span at `index` failed: skip it
    return out
