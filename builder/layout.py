"""Lay out a package section from ranges of the fix (NEW link addresses) and map those addresses to offsets.

Every byte a package carries is a copy of a byte of the fix, so package content is named by its
NEW link address until this module gives it an offset; relocations are resolved through the same map.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from hpkg.arch.x86_64 import INT3
from hpkg.builder.model import Function
from hpkg.formats.model import TargetSpace

# Package section bases are page-aligned by the loader, so keeping an object's address modulo this
# value keeps every alignment the compiler relied on (movaps needs 16, AVX 32, cache-line tables 64).
DATA_ALIGNMENT = 64
# x86-64 functions start 16-byte aligned at -O2; the package keeps that.
CODE_ALIGNMENT = 16
# Functions this close in the fix keep their distance in the package (a rel8 jump reaches 127 bytes).
NEAR_GAP = 128


@dataclass(frozen=True)
class Span:
    """A range of the fix [new_start, new_end) copied to `offset` in a package section."""

    new_start: int
    new_end: int
    offset: int


@dataclass(frozen=True)
class SectionLayout:
    """One package section: its spans (sorted by NEW address), size, and bytes (empty for bss)."""

    spans: tuple[Span, ...]
    size: int
    content: bytes

    @cached_property
    def _starts(self) -> list[int]:
        return [s.new_start for s in self.spans]

    def offset_of(self, new_address: int) -> int | None:
        """The section offset of a NEW address (a span's end counts: a reference may point there)."""
        i = bisect.bisect_right(self._starts, new_address) - 1
        if i >= 0 and new_address <= self.spans[i].new_end:
            span = self.spans[i]
            return span.offset + (new_address - span.new_start)
        return None


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching ranges joined, sorted: bytes next to each other in the fix stay together."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def lay_out(
    ranges: list[tuple[int, int]],
    read: Callable[[int, int], bytes] | None,
    keep_alignment: bool,
    merge: bool = True,
) -> SectionLayout:
    """Place ranges one after another: code at 16-byte boundaries, data at its NEW address modulo 64.

    `read` gives the fix's bytes (None for bss, which has a size only); fill between ranges is int3
    in code (a stray jump traps) and zero in data.
    """
    ordered = merge_ranges(ranges) if merge else sorted(ranges)
    spans: list[Span] = []
    cursor = 0
    for start, end in ordered:
        if keep_alignment:
            offset = cursor + (start - cursor) % DATA_ALIGNMENT
        elif spans and 0 <= start - spans[-1].new_end <= NEAR_GAP:
            # Neighbours in the fix stay at the same distance, so a short jump between them still lands.
            offset = spans[-1].offset + (start - spans[-1].new_start)
        else:
            offset = -(-cursor // CODE_ALIGNMENT) * CODE_ALIGNMENT
        spans.append(Span(start, end, offset))
        cursor = offset + (end - start)
    if read is None:
        return SectionLayout(tuple(spans), cursor, b"")
    filler = b"\x00" if keep_alignment else bytes([INT3])
    out = bytearray(filler * cursor)
    for span in spans:
        data = read(span.new_start, span.new_end - span.new_start)
        out[span.offset : span.offset + len(data)] = data
    return SectionLayout(tuple(spans), cursor, bytes(out))


def lay_out_package(
    functions: dict[int, Function],
    ranges: dict[TargetSpace, list[tuple[int, int]]],
    read: Callable[[int, int], bytes],
) -> dict[TargetSpace, SectionLayout]:
    """The package's sections: its functions (each from its own copy of the fix's bytes, as the diff
    read them), then the copied read-only data, data and bss ranges (`read` gives the fix's bytes)."""

    def read_code(address: int, size: int) -> bytes:
        return functions[address].code[:size]

    code = lay_out([(f.address, f.end) for f in functions.values()], read_code, False, merge=False)
    return {
        TargetSpace.CODE: code,
        TargetSpace.RODATA: lay_out(ranges.get(TargetSpace.RODATA, []), read, True),
        TargetSpace.DATA: lay_out(ranges.get(TargetSpace.DATA, []), read, True),
        TargetSpace.BSS: lay_out(ranges.get(TargetSpace.BSS, []), None, True),
    }
