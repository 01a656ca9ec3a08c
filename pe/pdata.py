"""The exception directory (`.pdata`): one RUNTIME_FUNCTION per function body with unwind info.

Each entry is (BeginAddress, EndAddress, UnwindInfoAddress), RVAs, sorted by address. Every x64
function that touches the stack has one (the counterpart of an `.eh_frame` FDE). A function may be
described by several entries: when its UNWIND_INFO carries UNW_FLAG_CHAININFO, a RUNTIME_FUNCTION
after the unwind codes names the entry it continues (the primary). Such a chained entry is a part
of the primary's function: merged with it when adjacent (a body split for shrink-wrapping), kept
as its own range when it lies elsewhere (a hot/cold split), attributed to its primary's start.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hpkg.pe.constants import UNW_FLAG_CHAININFO
from hpkg.pe.headers import RvaReader

RUNTIME_FUNCTION = struct.Struct("<III")
UNWIND_INFO_HEADER = struct.Struct(
    "<BBBB"
)  # Version|Flags<<3, SizeOfProlog, CountOfCodes, FrameRegister|Offset<<4
MAX_CHAIN = 32  # a longer chain is a loop in a crafted file


@dataclass(frozen=True, slots=True)
class RuntimeFunction:
    """One `.pdata` entry, by RVA: [begin, end) and its UNWIND_INFO."""

    begin: int
    end: int
    unwind: int

    @property
    def size(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True, slots=True)
class FunctionRange:
    """A function's code range (RVA) from `.pdata`, after chained entries are attributed.

    `primary` is the begin of the entry that starts the function (itself for a primary entry).
    """

    begin: int
    size: int
    primary: int


def runtime_functions(read: RvaReader, rva: int, size: int) -> list[RuntimeFunction]:
    """The RUNTIME_FUNCTION entries of the exception directory (empty ones and inverted ranges skipped)."""
    data = read(rva, size - size % RUNTIME_FUNCTION.size) if rva and size else b""
    return [
        RuntimeFunction(begin, end, unwind)
        for begin, end, unwind in RUNTIME_FUNCTION.iter_unpack(data[: len(data) // 12 * 12])
        if begin < end
    ]


def chained_parent(read: RvaReader, unwind_rva: int) -> RuntimeFunction | None:
    """The RUNTIME_FUNCTION an UNWIND_INFO chains to (UNW_FLAG_CHAININFO), or None."""
    head = read(unwind_rva, UNWIND_INFO_HEADER.size)
    if len(head) < UNWIND_INFO_HEADER.size:
        return None
    version_flags, _, code_count, _ = UNWIND_INFO_HEADER.unpack(head)
    if not (version_flags >> 3) & UNW_FLAG_CHAININFO:
        return None
    # The unwind codes are 2 bytes each, padded to an even count.
    at = unwind_rva + UNWIND_INFO_HEADER.size + 2 * ((code_count + 1) & ~1)
    raw = read(at, RUNTIME_FUNCTION.size)
    if len(raw) < RUNTIME_FUNCTION.size:
        return None
    return RuntimeFunction(*RUNTIME_FUNCTION.unpack(raw))


def function_ranges(read: RvaReader, rva: int, size: int) -> list[FunctionRange]:
    """Function ranges from `.pdata`: each primary entry, with adjacent chained parts merged into it and
    distant ones kept as ranges of their own that name their primary; sorted by begin."""
    entries = runtime_functions(read, rva, size)
    primary_of: dict[int, int] = {}
    for entry in entries:
        primary, seen = entry, 0
        while seen < MAX_CHAIN:
            parent = chained_parent(read, primary.unwind)
            if parent is None or parent.begin == primary.begin:
                break
            primary, seen = parent, seen + 1
        primary_of[entry.begin] = primary.begin
    ranges: list[FunctionRange] = []
    for entry in sorted(entries, key=lambda e: e.begin):
        primary = primary_of[entry.begin]
        last = ranges[-1] if ranges else None
        if (
            last is not None
            and primary != entry.begin
            and last.primary == primary
            and last.begin + last.size == entry.begin
        ):
            ranges[-1] = FunctionRange(last.begin, last.size + entry.size, primary)
            continue
        ranges.append(FunctionRange(entry.begin, entry.size, primary))
    return ranges
