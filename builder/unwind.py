"""Which functions of an image a language runtime unwinds through: .eh_frame entries with a personality.

An exception (C++ `throw`, `-fexceptions` cleanups) is carried up the stack by the unwinder, which
finds each frame's rules in the .eh_frame of the object that contains the code. Package code lives
in memory no object describes, so an exception raised in or passing through a replacement finds no
rules there and the process terminates. A CIE whose augmentation names a personality routine ('P')
marks an image whose code takes part in exception handling.
"""

from __future__ import annotations

import struct

from hpkg.builder.model import Image

DW_EH_PE_OMIT = 0xFF
_FIXED = {0x00: "<Q", 0x02: "<H", 0x03: "<I", 0x04: "<Q", 0x0A: "<h", 0x0B: "<i", 0x0C: "<q"}


def _leb(data: bytes, pos: int, signed: bool) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if signed and byte & 0x40:
                value -= 1 << shift
            return value, pos


def _pointer(data: bytes, pos: int, encoding: int, base: int) -> tuple[int, int]:
    """A DW_EH_PE-encoded pointer at `pos` (pc-relative ones made absolute with `base`)."""
    fmt = encoding & 0x0F
    start = pos
    if fmt in (0x01, 0x09):
        value, pos = _leb(data, pos, fmt == 0x09)
    else:
        code = _FIXED[fmt]
        value = struct.unpack_from(code, data, pos)[0]
        pos += struct.calcsize(code)
    if encoding & 0x70 == 0x10:
        value += base + start
    return value & 0xFFFFFFFFFFFFFFFF, pos


def _cie(data: bytes, pos: int) -> tuple[bool, int]:
    """(has a personality routine, FDE pointer encoding) of the CIE whose body starts at `pos`."""
    version = data[pos]
    end = data.index(b"\0", pos + 1)
    augmentation = data[pos + 1 : end].decode("ascii", "replace")
    pos = end + 1
    _, pos = _leb(data, pos, False)  # code alignment
    _, pos = _leb(data, pos, True)  # data alignment
    pos = pos + 1 if version == 1 else _leb(data, pos, False)[1]  # return address register
    encoding = 0x00
    if augmentation.startswith("z"):
        _, pos = _leb(data, pos, False)
        for ch in augmentation[1:]:
            if ch == "P":
                personality_encoding = data[pos]
                _, pos = _pointer(data, pos + 1, personality_encoding & 0x7F, 0)
            elif ch == "L":
                pos += 1
            elif ch == "R":
                encoding = data[pos]
                pos += 1
    return "P" in augmentation, encoding


def exception_frames(image: Image) -> set[int]:
    """Start addresses of the functions whose .eh_frame entry names a personality routine."""
    section = image.section(".eh_frame")
    data = image.section_bytes.get(".eh_frame", b"")
    if section is None or not data:
        return set()
    found: set[int] = set()
    cies: dict[int, tuple[bool, int]] = {}
    pos = 0
    while pos + 4 <= len(data):
        length = struct.unpack_from("<I", data, pos)[0]
        if length == 0:
            break
        body = pos + 4
        if length == 0xFFFFFFFF:  # 64-bit DWARF: not produced by GCC for x86-64 .eh_frame
            break
        identifier = struct.unpack_from("<I", data, body)[0]
        try:
            if identifier == 0:
                cies[pos] = _cie(data, body + 4)
            else:
                personality, encoding = cies.get(body - identifier, (False, 0))
                if personality and encoding != DW_EH_PE_OMIT:
                    start, _ = _pointer(data, body + 4, encoding, section.address)
                    found.add(start)
        except (IndexError, KeyError, ValueError, struct.error):
            pass  # a malformed entry proves nothing either way; the next one is read on its own
        pos = body + length
    return found
