"""The unwind section of a PE32+ package (format 1.4): RUNTIME_FUNCTIONs and UNWIND_INFO by offset.

    count (u32) | count × RUNTIME_FUNCTION | UNWIND_INFO … (each 4-aligned)

BeginAddress and EndAddress are offsets in the package's code, UnwindData an offset in this section:
the builder (builder/pe_unwind.py) writes it, a loader adds the RVAs where it placed the two areas
(`hpkg apply --file`: a merged exception directory in the new section). Shared by both sides, so it
lives below them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hpkg.errors import PackageError
from hpkg.pe.pdata import RUNTIME_FUNCTION, UNWIND_INFO_HEADER

COUNT = struct.Struct("<I")
UNWIND_INFO_ALIGN = 4  # UNWIND_INFO is DWORD-aligned (Microsoft's x64 exception-handling documentation)


@dataclass(frozen=True, slots=True)
class PackageRuntimeFunction:
    """One entry: [begin, end) in the package's code, its UNWIND_INFO at `unwind` in the section."""

    begin: int
    end: int
    unwind: int


def _align(value: int) -> int:
    return (value + UNWIND_INFO_ALIGN - 1) & ~(UNWIND_INFO_ALIGN - 1)


def encode_package_pdata(records: list[tuple[int, int, bytes]]) -> bytes:
    """The section for (begin, end, UNWIND_INFO bytes) records, sorted by begin; empty for none."""
    if not records:
        return b""
    records = sorted(records)
    table_end = COUNT.size + RUNTIME_FUNCTION.size * len(records)
    at = _align(table_end)
    table, infos = [COUNT.pack(len(records))], bytearray(at - table_end)
    for begin, end, info in records:
        table.append(RUNTIME_FUNCTION.pack(begin, end, at))
        padded = info + bytes(_align(len(info)) - len(info))
        infos += padded
        at += len(padded)
    return b"".join(table) + bytes(infos)


def decode_package_pdata(section: bytes, code_size: int) -> tuple[PackageRuntimeFunction, ...]:
    """The entries of a PE package's unwind section, each checked against the code and the section."""
    if not section:
        return ()
    if len(section) < COUNT.size:
        raise PackageError("PE unwind section: shorter than its count")
    (count,) = COUNT.unpack_from(section)
    table_end = COUNT.size + RUNTIME_FUNCTION.size * count
    if table_end > len(section):
        raise PackageError(f"PE unwind section: {count} entries do not fit its {len(section)} bytes")
    out = []
    for n, (begin, end, unwind) in enumerate(RUNTIME_FUNCTION.iter_unpack(section[COUNT.size : table_end])):
        if not begin < end <= code_size:
            raise PackageError(f"PE unwind section: entry {n} covers {begin}..{end}, outside the code")
        if not table_end <= unwind <= len(section) - UNWIND_INFO_HEADER.size or unwind % UNWIND_INFO_ALIGN:
            raise PackageError(f"PE unwind section: entry {n} names UNWIND_INFO at {unwind}, outside it")
        version_flags, _, code_count, _ = UNWIND_INFO_HEADER.unpack_from(section, unwind)
        size = UNWIND_INFO_HEADER.size + 2 * ((code_count + 1) & ~1)
        if unwind + size > len(section) or version_flags >> 3:
            # The builder copies only UNWIND_INFO without a handler or a chain (flags 0), whole.
            raise PackageError(f"PE unwind section: entry {n}'s UNWIND_INFO is cut short or has flags")
        if out and begin < out[-1].end:
            raise PackageError(f"PE unwind section: entry {n} overlaps or precedes the one before")
        out.append(PackageRuntimeFunction(begin, end, unwind))
    return tuple(out)
