"""Give freed heap memory back to the system between the diff's stages (glibc's `malloc_trim`).

glibc keeps freed blocks for reuse, and a stage's scratch on a large library (the relocation tables
read at load, match's callee lists) is tens of MiB that the next stage may not need: counted in the
process's resident memory all the same. `malloc_trim(0)` returns the free pages in the middle of the
heap as well as at its top. A no-op where the C library has no such call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpkg.builder.model import Image

# Every this many bytes of file pages made resident (code decoded, data read), they leave the
# resident set: each function is decoded once, so a large library's code would otherwise all stay counted.
RELEASE_BYTES = 4 << 20


@cache
def _malloc_trim():  # noqa: ANN202
    name = ctypes.util.find_library("c")
    try:
        library = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    trim = getattr(library, "malloc_trim", None)
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    return trim


def release_freed_memory() -> None:
    """Return the heap's free pages to the system (glibc); elsewhere, nothing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def resident_file_bytes() -> int:
    """Bytes of this process's resident set that are file pages (shared and mapped: the third field
    of /proc/self/statm), or 0 where that is not readable. Reading a mapped image's code or data
    makes its pages resident; this tells when to hand them back."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class ResidentPages:
    """Hands the file pages of mapped images back (`Image.release_pages`) each time reading them has
    made `every` more bytes resident: a stage that reads each byte once (the data objects and
    sections of both images) would otherwise keep them all counted in its resident set."""

    def __init__(self, images: tuple[Image, ...], every: int = RELEASE_BYTES) -> None:
        self.images = images
        self.every = every
        self.mark = resident_file_bytes()

    def check(self) -> None:
        """Release the images' pages if enough became resident since the last release."""
        if resident_file_bytes() - self.mark >= self.every:
            for image in self.images:
                image.release_pages()
            self.mark = resident_file_bytes()
