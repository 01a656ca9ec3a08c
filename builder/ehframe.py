"""Read function bounds from .eh_frame: every FDE says where a function starts and how long it is.

Stripped binaries keep .eh_frame (unwinding needs it), so FDEs give every compiled function's
bounds even without a symbol table. Only CIE augmentation and FDE pc_begin/pc_range are decoded.
"""

from __future__ import annotations

import struct

# DW_EH_PE_* pointer encodings: the low nibble is the format, the high nibble how it is applied.
DW_EH_PE_OMIT = 0xFF
DW_EH_PE_PCREL = 0x10
_FIXED_FORMATS = {0x00: "<Q", 0x02: "<H", 0x03: "<I", 0x04: "<Q", 0x0A: "<h", 0x0B: "<i", 0x0C: "<q"}


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _sleb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if byte & 0x40:
                value -= 1 << shift
            return value, pos


def _read_encoded(data: bytes, pos: int, encoding: int, section_address: int) -> tuple[int, int]:
    """One DW_EH_PE-encoded value at pos; returns (value, next pos)."""
    fmt = encoding & 0x0F
    start = pos
    if fmt == 0x01:
        value, pos = _uleb(data, pos)
    elif fmt == 0x09:
        value, pos = _sleb(data, pos)
    else:
        code = _FIXED_FORMATS.get(fmt)
        if code is None:
            raise ValueError(f"unsupported pointer encoding {encoding:#x}")
        value = struct.unpack_from(code, data, pos)[0]
        pos += struct.calcsize(code)
    if (encoding & 0x70) == DW_EH_PE_PCREL:
        value += section_address + start
    return value & 0xFFFFFFFFFFFFFFFF, pos


def _parse_cie(data: bytes, pos: int, end: int, section_address: int) -> int:
    """The FDE pointer encoding a CIE declares ('R' augmentation), absptr when it says none."""
    version = data[pos]
    pos += 1
    nul = data.index(b"\0", pos)
    augmentation = data[pos:nul].decode("ascii", "replace")
    pos = nul + 1
    _, pos = _uleb(data, pos)  # code alignment
    _, pos = _sleb(data, pos)  # data alignment
    if version == 1:
        pos += 1
    else:
        _, pos = _uleb(data, pos)
    encoding = 0x00
    if not augmentation.startswith("z"):
        return encoding
    _, pos = _uleb(data, pos)
    for char in augmentation[1:]:
        if char == "R":
            encoding = data[pos]
            pos += 1
        elif char == "L":
            pos += 1
        elif char == "P":
            personality_encoding = data[pos]
            _, pos = _read_encoded(data, pos + 1, personality_encoding, section_address)
        elif char in "SB":
            continue
        else:
            break  # unknown augmentation: the encoding read so far still applies
    return encoding


def parse_eh_frame(data: bytes, section_address: int) -> tuple[tuple[int, int], ...]:
    """(start link address, size) of every FDE in an .eh_frame section, in section order."""
    ranges: list[tuple[int, int]] = []
    cie_encodings: dict[int, int] = {}
    pos = 0
    while pos + 4 <= len(data):
        length = struct.unpack_from("<I", data, pos)[0]
        if length == 0:
            break
        header = 4
        if length == 0xFFFFFFFF:
            length = struct.unpack_from("<Q", data, pos + 4)[0]
            header = 12
        record = pos + header
        end = record + length
        if end > len(data):
            break
        cie_id = struct.unpack_from("<I", data, record)[0]
        if cie_id == 0:
            try:
                cie_encodings[pos] = _parse_cie(data, record + 4, end, section_address)
            except (ValueError, IndexError):
                cie_encodings[pos] = DW_EH_PE_OMIT
        else:
            cie_offset = record - cie_id
            encoding = cie_encodings.get(cie_offset, DW_EH_PE_OMIT)
            if encoding != DW_EH_PE_OMIT:
                try:
                    start, after = _read_encoded(data, record + 4, encoding, section_address)
                    size, _ = _read_encoded(data, after, encoding & 0x0F, section_address)
                except (ValueError, IndexError, struct.error):
                    start = size = 0
                if start and size:
                    ranges.append((start, size))
        pos = end
    return tuple(ranges)
