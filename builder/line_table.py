"""The DWARF line table (`.debug_line`) of a build: which source line each instruction came from.

Read only for the line-number proof (line_numbers.py) and only when a function needs it: a large
library's line program is megabytes, decoded here by its state machine (DWARF 2–5, §6.2), keeping
for each row the address, the file index and the line. File names are not needed: a function's own
file is the file of the row at its entry, and the proof compares rows of that file only.
"""

from __future__ import annotations

import bisect
import struct
import zlib
from array import array
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from hpkg.elf.ehframe import read_sleb128 as _sleb
from hpkg.elf.ehframe import read_uleb128 as _uleb
from hpkg.elf.file import ElfFile
from hpkg.errors import ImageError
from hpkg.pe.headers import file_section, looks_like_pe

SHF_COMPRESSED = 0x800
ELFCOMPRESS_ZLIB, ELFCOMPRESS_ZSTD = 1, 2
_CHDR = struct.Struct("<IIQQ")  # Elf64_Chdr: ch_type, ch_reserved, ch_size, ch_addralign

# Standard opcodes (DWARF 5 §6.2.5.2) and extended ones (§6.2.5.3).
DW_LNS_COPY, DW_LNS_ADVANCE_PC, DW_LNS_ADVANCE_LINE, DW_LNS_SET_FILE = 1, 2, 3, 4
DW_LNS_CONST_ADD_PC, DW_LNS_FIXED_ADVANCE_PC = 8, 9
DW_LNE_END_SEQUENCE, DW_LNE_SET_ADDRESS = 1, 2


class LineTableError(ValueError):
    """A line program this reader cannot follow: the proof then simply does not use it."""


@dataclass(frozen=True)
class Sequence:
    """One DWARF line sequence: a contiguous address range (a function, with -ffunction-sections)
    and its rows, as columns. `file` is an index into the unit's file table; `unit` tells units apart."""

    unit: int
    end: int  # the address after the last instruction
    addresses: array
    files: array
    lines: array

    @property
    def start(self) -> int:
        return self.addresses[0]


def _unit_sequences(data: bytes, start: int) -> tuple[list[Sequence], int]:
    """Decode the line program of the unit at `start`; returns its sequences and the next unit's offset."""
    (length,) = struct.unpack_from("<I", data, start)
    offset_size, i = 4, start + 4
    if length == 0xFFFFFFFF:
        (length,) = struct.unpack_from("<Q", data, i)
        offset_size, i = 8, i + 8
    end = i + length
    if end > len(data):
        raise LineTableError("a line-table unit runs past its section")
    (version,) = struct.unpack_from("<H", data, i)
    i += 2
    if not 2 <= version <= 5:
        raise LineTableError(f"DWARF line table version {version}")
    if version >= 5:
        i += 2  # address_size, segment_selector_size
    header_length = int.from_bytes(data[i : i + offset_size], "little")
    i += offset_size
    program = i + header_length
    min_length = data[i]
    i += 1
    if version >= 4:
        i += 1  # maximum_operations_per_instruction: 1 on x86-64 (no VLIW)
    default_is_stmt = data[i]
    line_base = struct.unpack_from("<b", data, i + 1)[0]
    line_range, opcode_base = data[i + 2], data[i + 3]
    lengths = data[i + 4 : i + 4 + opcode_base - 1]
    if line_range == 0:
        raise LineTableError("line_range 0")
    del default_is_stmt  # every row counts: is_stmt only hints where a debugger stops
    sequences: list[Sequence] = []
    addresses, files, lines = array("Q"), array("l"), array("l")
    address, file, line = 0, 1, 1

    def row() -> None:
        addresses.append(address)
        files.append(file)
        lines.append(line)

    i = program
    while i < end:
        op = data[i]
        i += 1
        if op >= opcode_base:
            adjusted = op - opcode_base
            address += (adjusted // line_range) * min_length
            line += line_base + adjusted % line_range
            row()
        elif op == 0:
            size, i = _uleb(data, i)
            sub, body = data[i] if size else 0, i + 1
            if sub == DW_LNE_END_SEQUENCE:
                if addresses:
                    sequences.append(Sequence(start, address, addresses, files, lines))
                addresses, files, lines = array("Q"), array("l"), array("l")
                address, file, line = 0, 1, 1
            elif sub == DW_LNE_SET_ADDRESS:
                address = int.from_bytes(data[body : i + size], "little")
            i += size
        elif op == DW_LNS_COPY:
            row()
        elif op == DW_LNS_ADVANCE_PC:
            step, i = _uleb(data, i)
            address += step * min_length
        elif op == DW_LNS_ADVANCE_LINE:
            step, i = _sleb(data, i)
            line += step
        elif op == DW_LNS_SET_FILE:
            file, i = _uleb(data, i)
        elif op == DW_LNS_CONST_ADD_PC:
            address += ((255 - opcode_base) // line_range) * min_length
        elif op == DW_LNS_FIXED_ADVANCE_PC:
            address += struct.unpack_from("<H", data, i)[0]
            i += 2
        else:
            for _ in range(lengths[op - 1] if op - 1 < len(lengths) else 0):
                _, i = _uleb(data, i)
    return sequences, end


def _section(elf: ElfFile, name: str) -> bytes | None:
    """A section's contents, decompressed if SHF_COMPRESSED (Debian's debug files are)."""
    header = elf.section_header(name)
    if header is None or header.type == 8:  # SHT_NOBITS: a stripped binary keeps the header only
        return None
    data = bytes(elf.section_contents(header))
    if not header.flags & SHF_COMPRESSED:
        return data
    kind, _, size, _ = _CHDR.unpack_from(data)
    body = data[_CHDR.size :]
    if kind == ELFCOMPRESS_ZLIB:
        out = zlib.decompress(body)
    elif kind == ELFCOMPRESS_ZSTD:
        import zstandard

        out = zstandard.ZstdDecompressor().decompress(body, max_output_size=size)
    else:
        raise LineTableError(f"compression type {kind}")
    if len(out) != size:
        raise LineTableError("compressed section has another size than its header says")
    return out


def _debug_line(path: Path) -> bytes | None:
    """`.debug_line` of an ELF file, or of a PE file (mingw's `-g` keeps DWARF in named sections).

    The ELF file is mapped, not read: only the section is copied (reading libxul whole for one
    function's line proof took 175 MiB for a moment, the peak of the whole diff)."""
    with open(path, "rb") as f:
        if looks_like_pe(f.read(2)):
            return file_section(path.read_bytes(), ".debug_line")
    with ElfFile.mapped(path) as elf:
        return _section(elf, ".debug_line")


class LineTable:
    """The sequences of a file's `.debug_line`, by start address, decoded on first use."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @cached_property
    def _sequences(self) -> tuple[list[int], list[Sequence]]:
        try:
            data = _debug_line(self.path)
        except (OSError, ValueError, struct.error, zlib.error, ImageError):
            return [], []
        sequences: list[Sequence] = []
        offset = 0
        try:
            while data is not None and offset + 4 <= len(data):
                unit, offset = _unit_sequences(data, offset)
                sequences.extend(unit)
        except (LineTableError, struct.error, IndexError):
            return [], []
        # A discarded function's sequence starts at 0 (its relocation resolved to nothing): skip those.
        sequences = sorted((q for q in sequences if q.start), key=lambda q: q.start)
        return [q.start for q in sequences], sequences

    def function_lines(self, start: int, size: int) -> list[tuple[int, int]] | None:
        """(offset in the function, line) of each row of the function's own file inside it, or None
        when the table says nothing certain about the function (no sequence starts a row at its entry)."""
        starts, sequences = self._sequences
        k = bisect.bisect_right(starts, start) - 1
        if k < 0 or sequences[k].end <= start:
            return None
        q = sequences[k]
        first = bisect.bisect_left(q.addresses, start)
        last = bisect.bisect_left(q.addresses, start + size)
        if first >= len(q.addresses) or q.addresses[first] != start:
            return None
        own = q.files[first]
        return [(q.addresses[j] - start, q.lines[j]) for j in range(first, last) if q.files[j] == own]
