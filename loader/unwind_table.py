"""The .eh_frame_hdr search table: read the baseline's, and build one that also covers the package's FDEs.

libgcc (GCC 12, glibc 2.35+) finds the FDE of a PC through `_dl_find_object`: the object whose mapped
range holds the PC, then that object's PT_GNU_EH_FRAME, an .eh_frame_hdr with a table of
(initial location, FDE address) pairs sorted by location, both datarel sdata4 (relative to the
header). A merged header — the baseline's entries plus one per package FDE — makes exceptions
unwind through package code, as long as the package lies inside the object's mapped range.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hpkg.builder.ehframe import (
    DW_EH_PE_DATAREL,
    DW_EH_PE_PCREL_SDATA4,
    DW_EH_PE_SDATA4,
    DW_EH_PE_UDATA4,
    parse_eh_frame_records,
)

EH_FRAME_HDR_VERSION = 1
DW_EH_PE_DATAREL_SDATA4 = DW_EH_PE_DATAREL | DW_EH_PE_SDATA4
_HEADER = struct.Struct("<BBBBiI")  # version, three encodings, eh_frame_ptr, fde_count
_ENTRY = struct.Struct("<ii")
_INT32 = (-(1 << 31), (1 << 31) - 1)


class UnwindTableError(ValueError):
    """A search table this loader does not read, or entries a merged table cannot hold."""


@dataclass(frozen=True)
class EhFrameHdr:
    """An .eh_frame_hdr: where it is, the .eh_frame it names, and its table in absolute addresses."""

    address: int
    eh_frame: int
    table: tuple[tuple[int, int], ...]  # (initial location, FDE address), sorted


def read_eh_frame_hdr(blob: bytes, address: int) -> EhFrameHdr:
    """Parse the header at `address`; only the layout every GNU linker writes (a sorted datarel table)."""
    if len(blob) < _HEADER.size:
        raise UnwindTableError(f".eh_frame_hdr of {len(blob)} bytes is truncated")
    version, frame_encoding, count_encoding, table_encoding, frame, count = _HEADER.unpack_from(blob)
    if version != EH_FRAME_HDR_VERSION:
        raise UnwindTableError(f".eh_frame_hdr version {version} is not 1")
    if (frame_encoding, count_encoding, table_encoding) != (
        DW_EH_PE_PCREL_SDATA4, DW_EH_PE_UDATA4, DW_EH_PE_DATAREL_SDATA4
    ):
        encodings = f"{frame_encoding:#x}/{count_encoding:#x}/{table_encoding:#x}"
        raise UnwindTableError(f".eh_frame_hdr encodings {encodings} are not the linker's sorted table")
    if _HEADER.size + count * _ENTRY.size > len(blob):
        raise UnwindTableError(f".eh_frame_hdr declares {count} entries beyond its size")
    table = tuple(
        (address + location, address + fde)
        for location, fde in _ENTRY.iter_unpack(blob[_HEADER.size : _HEADER.size + count * _ENTRY.size])
    )
    return EhFrameHdr(address, address + 4 + frame, table)


def count_fdes(unwind: bytes) -> int:
    """The number of FDE records in an unwind area (CIE id != 0), up to its zero terminator."""
    records = position = 0
    while position + 8 <= len(unwind):
        length = struct.unpack_from("<I", unwind, position)[0]
        if length == 0:
            break
        records += struct.unpack_from("<I", unwind, position + 4)[0] != 0
        position += 4 + length
    return records


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
        _HEADER.pack(
            EH_FRAME_HDR_VERSION, DW_EH_PE_PCREL_SDATA4, DW_EH_PE_UDATA4, DW_EH_PE_DATAREL_SDATA4,
            _int32(baseline.eh_frame - (address + 4)), len(table),
        )
    )
    for location, fde in table:
        out += _ENTRY.pack(_int32(location - address), _int32(fde - address))
    return bytes(out)


def _int32(value: int) -> int:
    if not _INT32[0] <= value <= _INT32[1]:
        raise UnwindTableError(f"offset {value:#x} does not fit the table's 32-bit fields")
    return value
