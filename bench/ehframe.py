"""Function bounds from `.eh_frame` FDEs, so a byte compare sees every function of a stripped library.

Only what the byte compare needs is decoded: each FDE's pc_begin and pc_range. The call frame
instructions themselves are skipped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# DWARF exception-header pointer encodings (LSB core spec, "DW_EH_PE_*").
_PE_OMIT = 0xFF
_PE_FORMAT_MASK = 0x0F
_PE_APPLICATION_MASK = 0x70
_PE_ABSPTR = 0x00
_PE_ULEB128 = 0x01
_PE_UDATA2 = 0x02
_PE_UDATA4 = 0x03
_PE_UDATA8 = 0x04
_PE_SLEB128 = 0x09
_PE_SDATA2 = 0x0A
_PE_SDATA4 = 0x0B
_PE_SDATA8 = 0x0C
_PE_PCREL = 0x10

_FIXED_FORMATS = {
    _PE_ABSPTR: "<Q",
    _PE_UDATA2: "<H",
    _PE_UDATA4: "<I",
    _PE_UDATA8: "<Q",
    _PE_SDATA2: "<h",
    _PE_SDATA4: "<i",
    _PE_SDATA8: "<q",
}


@dataclass(frozen=True)
class FdeRange:
    """One function's code range as its FDE states it (link addresses)."""

    start: int
    size: int


class EhFrameError(ValueError):
    """The `.eh_frame` section does not decode; the byte compare then falls back to symbols only."""


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def _sleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if byte & 0x40:
                result -= 1 << shift
            return result, pos


def _read_encoded(data: bytes, pos: int, encoding: int, section_address: int) -> tuple[int, int]:
    """Decode one pointer in `encoding` at `pos`; pc-relative values are made absolute."""
    fmt = encoding & _PE_FORMAT_MASK
    field_address = section_address + pos
    if fmt == _PE_ULEB128:
        value, pos = _uleb(data, pos)
    elif fmt == _PE_SLEB128:
        value, pos = _sleb(data, pos)
    elif fmt in _FIXED_FORMATS:
        layout = _FIXED_FORMATS[fmt]
        (value,) = struct.unpack_from(layout, data, pos)
        pos += struct.calcsize(layout)
    else:
        raise EhFrameError(f"unsupported pointer encoding {encoding:#x}")
    if encoding & _PE_APPLICATION_MASK == _PE_PCREL:
        value = (value + field_address) & 0xFFFFFFFFFFFFFFFF
    return value, pos


def _cie_fde_encoding(data: bytes, pos: int, end: int, section_address: int) -> int:
    """Read a CIE (after its id field) and return the pointer encoding its FDEs use."""
    version = data[pos]
    pos += 1
    nul = data.index(b"\0", pos)
    augmentation = data[pos:nul].decode("ascii", "replace")
    pos = nul + 1
    if "eh" in augmentation:
        raise EhFrameError("obsolete 'eh' augmentation")
    _, pos = _uleb(data, pos)  # code alignment factor
    _, pos = _sleb(data, pos)  # data alignment factor
    pos = pos + 1 if version == 1 else _uleb(data, pos)[1]  # return address register
    encoding = _PE_ABSPTR
    if augmentation.startswith("z"):
        _, pos = _uleb(data, pos)  # augmentation data length
        for letter in augmentation[1:]:
            if letter == "R":
                encoding = data[pos]
                pos += 1
            elif letter == "P":
                personality_encoding = data[pos]
                _, pos = _read_encoded(data, pos + 1, personality_encoding & 0x7F, section_address)
            elif letter == "L":
                pos += 1
            elif letter in "SB":
                continue
            else:
                break  # unknown letter: the rest is skipped by the length field, and R came first
    if pos > end:
        raise EhFrameError("CIE overruns its record")
    return encoding


def fde_ranges(data: bytes, section_address: int) -> list[FdeRange]:
    """Every FDE's (start, size) in an `.eh_frame` section's bytes, sorted by start address."""
    ranges: list[FdeRange] = []
    cie_encodings: dict[int, int] = {}
    pos = 0
    try:
        while pos + 4 <= len(data):
            record_start = pos
            (length,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if length == 0:
                break  # zero terminator written by the linker (crtend.o)
            if length == 0xFFFFFFFF:
                (length,) = struct.unpack_from("<Q", data, pos)
                pos += 8
            id_position = pos
            end = pos + length
            if end > len(data):
                raise EhFrameError(f"record at {record_start:#x} runs past the end of .eh_frame")
            (cie_pointer,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if cie_pointer == 0:
                cie_encodings[record_start] = _cie_fde_encoding(data, pos, end, section_address)
            else:
                cie_start = id_position - cie_pointer
                if cie_start not in cie_encodings:
                    raise EhFrameError(f"FDE at {record_start:#x} names no known CIE")
                encoding = cie_encodings[cie_start]
                if encoding != _PE_OMIT:
                    start, pos = _read_encoded(data, pos, encoding, section_address)
                    size, pos = _read_encoded(data, pos, encoding & _PE_FORMAT_MASK, section_address)
                    if size > 0:
                        ranges.append(FdeRange(start, size))
            pos = end
    except (IndexError, struct.error) as exc:
        raise EhFrameError(f"truncated .eh_frame record: {exc}") from exc
    ranges.sort(key=lambda r: r.start)
    return ranges
