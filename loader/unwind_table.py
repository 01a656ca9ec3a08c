"""A search table (.eh_frame_hdr) that covers the baseline's FDEs and the package's.

libgcc (GCC 12, glibc 2.35+) finds the FDE of a PC through `_dl_find_object`: the object whose mapped
range holds the PC, then that object's PT_GNU_EH_FRAME, an .eh_frame_hdr with a table of
(initial location, FDE address) pairs sorted by location, both datarel sdata4 (relative to the
header). A merged header — the baseline's entries plus one per package FDE — makes exceptions
unwind through package code, as long as the package lies inside the object's mapped range.
The header's layout and reader are `hpkg.elf.ehframe`'s.
"""

from __future__ import annotations

from hpkg.arch.x86_64 import INT32_RANGE
from hpkg.elf.ehframe import (
    DW_EH_PE_DATAREL_SDATA4,
    DW_EH_PE_PCREL_SDATA4,
    DW_EH_PE_UDATA4,
    EH_FRAME_HDR,
    EH_FRAME_HDR_ENTRY,
    EH_FRAME_HDR_VERSION,
    EhFrameHdr,
    UnwindTableError,
    count_fdes,
    parse_eh_frame_records,
)


def package_fdes(unwind: bytes, base: int, code: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """(initial location, FDE address) of every FDE of a relocated unwind area at `base`.

    Every FDE must be read (pc-relative sdata4 pointers) and cover code inside `code` = [start, end).
    """
    _, fdes = parse_eh_frame_records(unwind, base)
    records = count_fdes(unwind)
    if records != len(fdes):
        raise UnwindTableError(f"the package's unwind area has {records} FDEs, {len(fdes)} readable")
    for fde in fdes:
        if fde.cie.fde_encoding != DW_EH_PE_PCREL_SDATA4:
            raise UnwindTableError(f"a package FDE uses pointer encoding {fde.cie.fde_encoding:#x}")
        if not (code[0] <= fde.start and fde.start + fde.length <= code[1]):
            raise UnwindTableError(f"a package FDE covers {fde.start:#x}, outside the package's code")
    return tuple((f.start, base + f.offset) for f in fdes)


def merged_eh_frame_hdr(baseline: EhFrameHdr, extra: tuple[tuple[int, int], ...], address: int) -> bytes:
    """A new .eh_frame_hdr at `address`: the baseline's .eh_frame and table plus `extra`, sorted."""
    table = sorted(set(baseline.table) | set(extra))
    locations = [location for location, _ in table]
    if len(set(locations)) != len(locations):
        raise UnwindTableError("two FDEs start at the same address")
    out = bytearray(
        EH_FRAME_HDR.pack(
            EH_FRAME_HDR_VERSION, DW_EH_PE_PCREL_SDATA4, DW_EH_PE_UDATA4, DW_EH_PE_DATAREL_SDATA4,
            _int32(baseline.eh_frame - (address + 4)), len(table),
        )
    )
    for location, fde in table:
        out += EH_FRAME_HDR_ENTRY.pack(_int32(location - address), _int32(fde - address))
    return bytes(out)


def _int32(value: int) -> int:
    if not INT32_RANGE[0] <= value <= INT32_RANGE[1]:
        raise UnwindTableError(f"offset {value:#x} does not fit the table's 32-bit fields")
    return value
