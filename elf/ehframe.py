"""Read .eh_frame and .eh_frame_hdr: CIE and FDE records, where every function starts, the search table.

Stripped binaries keep .eh_frame (unwinding needs it), so FDEs give every compiled function's
bounds even without a symbol table (`parse_eh_frame`). The records themselves (pointer encodings,
personality and LSDA pointers: `parse_eh_frame_records`) serve builder/unwind, which copies them
into packages, and the loader's search table. The field readers (LEB128 numbers, DW_EH_PE-encoded
pointers) and the encodings' names are public for every module that reads unwind data.

.eh_frame_hdr (PT_GNU_EH_FRAME) is a version byte, three pointer encodings, the .eh_frame pointer,
the FDE count and a table of (initial location, FDE address) pairs sorted by location; every GNU
linker writes the pointers pc-relative and the table datarel (relative to the header), sdata4.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

# DW_EH_PE_* pointer encodings (LSB Core, "DWARF Extensions"): the low nibble is the value's format,
# bits 4-6 what it is relative to, bit 7 an indirection through a pointer-sized slot.
DW_EH_PE_ABSPTR = 0x00
DW_EH_PE_ULEB128 = 0x01
DW_EH_PE_UDATA2 = 0x02
DW_EH_PE_UDATA4 = 0x03
DW_EH_PE_UDATA8 = 0x04
DW_EH_PE_SLEB128 = 0x09
DW_EH_PE_SDATA2 = 0x0A
DW_EH_PE_SDATA4 = 0x0B
DW_EH_PE_SDATA8 = 0x0C
DW_EH_PE_PCREL = 0x10
DW_EH_PE_DATAREL = 0x30
DW_EH_PE_INDIRECT = 0x80
DW_EH_PE_OMIT = 0xFF
DW_EH_PE_FORMAT_MASK = 0x0F
DW_EH_PE_APPLICATION_MASK = 0x70
# pc-relative signed 4-byte: what GCC emits for FDE, LSDA, personality and type-table pointers on x86-64.
DW_EH_PE_PCREL_SDATA4 = DW_EH_PE_PCREL | DW_EH_PE_SDATA4
DW_EH_PE_DATAREL_SDATA4 = DW_EH_PE_DATAREL | DW_EH_PE_SDATA4
_FIXED_FORMATS = {
    DW_EH_PE_ABSPTR: "<Q", DW_EH_PE_UDATA2: "<H", DW_EH_PE_UDATA4: "<I", DW_EH_PE_UDATA8: "<Q",
    DW_EH_PE_SDATA2: "<h", DW_EH_PE_SDATA4: "<i", DW_EH_PE_SDATA8: "<q",
}


def read_uleb128(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 number at `pos`: (value, position after it)."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def read_sleb128(data: bytes, pos: int) -> tuple[int, int]:
    """A signed LEB128 number at `pos`: (value, position after it)."""
    value, end = read_uleb128(data, pos)
    if data[end - 1] & 0x40:  # the sign is bit 6 of the last byte: extend from 7 bits per byte
        value -= 1 << (7 * (end - pos))
    return value, end


def read_encoded_pointer(data: bytes, pos: int, encoding: int, section_address: int) -> tuple[int, int]:
    """A DW_EH_PE-encoded value at `pos` of a section at `section_address`: (value, position after it).

    Only pc-relative application is applied (the field's own address added); the indirect bit is
    left to the caller, which knows where the slot lives. Raises ValueError for an unknown format.
    """
    fmt = encoding & DW_EH_PE_FORMAT_MASK
    start = pos
    if fmt == DW_EH_PE_ULEB128:
        value, pos = read_uleb128(data, pos)
    elif fmt == DW_EH_PE_SLEB128:
        value, pos = read_sleb128(data, pos)
    else:
        code = _FIXED_FORMATS.get(fmt)
        if code is None:
            raise ValueError(f"unsupported pointer encoding {encoding:#x}")
        value = struct.unpack_from(code, data, pos)[0]
        pos += struct.calcsize(code)
    if (encoding & DW_EH_PE_APPLICATION_MASK) == DW_EH_PE_PCREL:
        value += section_address + start
    return value & 0xFFFFFFFFFFFFFFFF, pos


@dataclass(frozen=True)
class Cie:
    """A CIE record of .eh_frame: where it is and the pointer encodings its FDEs use."""

    offset: int  # of the length field, in the section
    size: int  # the whole record, length field included
    augmentation: str
    fde_encoding: int
    lsda_encoding: int
    personality_encoding: int
    personality_field: int | None  # section offset of the personality pointer


@dataclass(frozen=True)
class Fde:
    """An FDE record: its function's range, its CIE, and where its LSDA pointer is."""

    offset: int
    size: int
    cie: Cie
    start: int  # link address of the function
    length: int
    lsda_field: int | None  # section offset of the LSDA pointer, when the CIE has 'L'
    lsda: int  # link address of the LSDA, 0 when none


def _parse_cie(data: bytes, offset: int, size: int, base: int) -> Cie:
    """The CIE record at `offset`: its augmentation and the pointer encodings its FDEs use."""
    pos = offset + 8
    version = data[pos]
    end = data.index(b"\0", pos + 1)
    augmentation = data[pos + 1 : end].decode("ascii", "replace")
    pos = end + 1
    _, pos = read_uleb128(data, pos)  # code alignment
    _, pos = read_sleb128(data, pos)  # data alignment
    pos = pos + 1 if version == 1 else read_uleb128(data, pos)[1]  # return address register
    fde_encoding, lsda_encoding, personality_encoding = DW_EH_PE_ABSPTR, DW_EH_PE_OMIT, DW_EH_PE_OMIT
    personality_field = None
    if augmentation.startswith("z"):
        _, pos = read_uleb128(data, pos)
        for char in augmentation[1:]:
            if char == "P":
                personality_encoding, personality_field = data[pos], pos + 1
                _, pos = read_encoded_pointer(data, pos + 1, personality_encoding & ~DW_EH_PE_INDIRECT, base)
            elif char == "L":
                lsda_encoding = data[pos]
                pos += 1
            elif char == "R":
                fde_encoding = data[pos]
                pos += 1
            elif char not in "SB":
                raise ValueError(f"CIE augmentation {augmentation!r} is not understood")
    return Cie(
        offset, size, augmentation, fde_encoding, lsda_encoding, personality_encoding, personality_field
    )


def _fde_records(data: bytes, base: int, cies: dict[int, Cie]) -> Iterator[tuple]:
    """(offset, size, cie, start, length, lsda_field, lsda) of every FDE, CIEs collected in `cies`."""
    pos = 0
    while pos + 4 <= len(data):
        length = struct.unpack_from("<I", data, pos)[0]
        if length == 0 or length == 0xFFFFFFFF:  # terminator; 64-bit DWARF is not produced for x86-64
            break
        size = 4 + length
        if pos + size > len(data):
            break
        identifier = struct.unpack_from("<I", data, pos + 4)[0]
        try:
            if identifier == 0:
                cies[pos] = _parse_cie(data, pos, size, base)
            elif pos + 4 - identifier in cies:
                cie = cies[pos + 4 - identifier]
                start, after = read_encoded_pointer(data, pos + 8, cie.fde_encoding, base)
                pc_range = cie.fde_encoding & DW_EH_PE_FORMAT_MASK  # the same format, never pc-relative
                length_, after = read_encoded_pointer(data, after, pc_range, base)
                lsda_field, lsda = None, 0
                if cie.augmentation.startswith("z"):
                    _, after = read_uleb128(data, after)
                    if "L" in cie.augmentation and cie.lsda_encoding != DW_EH_PE_OMIT:
                        sdata4 = cie.lsda_encoding & DW_EH_PE_FORMAT_MASK == DW_EH_PE_SDATA4
                        raw = struct.unpack_from("<i", data, after)[0] if sdata4 else 1
                        lsda_field = after
                        lsda = read_encoded_pointer(data, after, cie.lsda_encoding, base)[0] if raw else 0
                yield pos, size, cie, start, length_, lsda_field, lsda
        except (IndexError, KeyError, ValueError, struct.error):
            pass  # a malformed entry proves nothing either way; the next one is read on its own
        pos += size


def personality_used(data: bytes, base: int) -> bool:
    """Whether a CIE of an .eh_frame names a personality routine, reading the CIEs only (their FDEs,
    tens of thousands in a library, are what `parse_eh_frame_records` would spend its time on)."""
    pos = 0
    while pos + 4 <= len(data):  # the walk of `_fde_records`, stopping where it stops
        length = struct.unpack_from("<I", data, pos)[0]
        if length == 0 or length == 0xFFFFFFFF:
            break
        size = 4 + length
        if pos + size > len(data):
            break
        if struct.unpack_from("<I", data, pos + 4)[0] == 0:
            try:
                if _parse_cie(data, pos, size, base).personality_encoding != DW_EH_PE_OMIT:
                    return True
            except (IndexError, KeyError, ValueError, struct.error):
                pass
        pos += size
    return False


def parse_eh_frame_records(data: bytes, base: int) -> tuple[dict[int, Cie], list[Fde]]:
    """Every CIE (by section offset) and FDE of an .eh_frame at link address `base`."""
    cies: dict[int, Cie] = {}
    fdes = [Fde(*record) for record in _fde_records(data, base, cies)]
    return cies, fdes


def parse_eh_frame(data: bytes, section_address: int) -> tuple[tuple[int, int], ...]:
    """(start link address, size) of every FDE in an .eh_frame section, in section order (without
    making an Fde record each: a large library has hundreds of thousands)."""
    records = _fde_records(data, section_address, {})
    return tuple((start, length) for _, _, _, start, length, _, _ in records if start and length)


def count_fdes(unwind: bytes) -> int:
    """The number of FDE records in an .eh_frame-shaped area (CIE id != 0), up to its zero terminator."""
    records = position = 0
    while position + 8 <= len(unwind):
        length = struct.unpack_from("<I", unwind, position)[0]
        if length == 0:
            break
        records += struct.unpack_from("<I", unwind, position + 4)[0] != 0
        position += 4 + length
    return records


EH_FRAME_HDR_VERSION = 1
EH_FRAME_HDR = struct.Struct("<BBBBiI")  # version, three encodings, eh_frame_ptr, fde_count
EH_FRAME_HDR_ENTRY = struct.Struct("<ii")  # initial location, FDE address (datarel sdata4)


class UnwindTableError(ValueError):
    """A search table this reader does not read, or entries a search table cannot hold."""


@dataclass(frozen=True)
class EhFrameHdr:
    """An .eh_frame_hdr: where it is, the .eh_frame it names, and its table in absolute addresses."""

    address: int
    eh_frame: int
    table: tuple[tuple[int, int], ...]  # (initial location, FDE address), sorted


def eh_frame_hdr_size(prefix: bytes) -> int:
    """The size of a whole .eh_frame_hdr, from its first EH_FRAME_HDR.size bytes (to read it in two steps)."""
    if len(prefix) < EH_FRAME_HDR.size:
        raise UnwindTableError(f".eh_frame_hdr of {len(prefix)} bytes is truncated")
    return EH_FRAME_HDR.size + EH_FRAME_HDR_ENTRY.size * EH_FRAME_HDR.unpack_from(prefix)[5]


def read_eh_frame_hdr(blob: bytes, address: int) -> EhFrameHdr:
    """Parse the header at `address`; only the layout every GNU linker writes (a sorted datarel table)."""
    if len(blob) < EH_FRAME_HDR.size:
        raise UnwindTableError(f".eh_frame_hdr of {len(blob)} bytes is truncated")
    version, frame_encoding, count_encoding, table_encoding, frame, count = EH_FRAME_HDR.unpack_from(blob)
    if version != EH_FRAME_HDR_VERSION:
        raise UnwindTableError(f".eh_frame_hdr version {version} is not 1")
    if (frame_encoding, count_encoding, table_encoding) != (
        DW_EH_PE_PCREL_SDATA4, DW_EH_PE_UDATA4, DW_EH_PE_DATAREL_SDATA4
    ):
        encodings = f"{frame_encoding:#x}/{count_encoding:#x}/{table_encoding:#x}"
        raise UnwindTableError(f".eh_frame_hdr encodings {encodings} are not the linker's sorted table")
    end = EH_FRAME_HDR.size + count * EH_FRAME_HDR_ENTRY.size
    if end > len(blob):
        raise UnwindTableError(f".eh_frame_hdr declares {count} entries beyond its size")
    table = tuple(
        (address + location, address + fde)
        for location, fde in EH_FRAME_HDR_ENTRY.iter_unpack(blob[EH_FRAME_HDR.size : end])
    )
    return EhFrameHdr(address, address + 4 + frame, table)
