"""Base relocations (`.reloc`): the places the Windows loader adds (actual base − ImageBase) to.

Blocks of (PageRVA, SizeOfBlock) each followed by 16-bit entries `type << 12 | offset in page`.
In a PE32+ image every pointer word the loader must fix is an IMAGE_REL_BASED_DIR64 entry: the
counterpart of an ELF R_X86_64_RELATIVE relocation, its word in the file holding the target's
address at the preferred ImageBase.
"""

from __future__ import annotations

import struct

from hpkg.pe.constants import IMAGE_REL_BASED_ABSOLUTE, IMAGE_REL_BASED_DIR64
from hpkg.pe.headers import RvaReader

BLOCK_HEADER = struct.Struct("<II")


def base_relocations(read: RvaReader, rva: int, size: int) -> list[tuple[int, int]]:
    """(RVA, type) of every base relocation (ABSOLUTE padding entries left out), in table order."""
    data = read(rva, size) if rva and size else b""
    out: list[tuple[int, int]] = []
    at = 0
    while at + BLOCK_HEADER.size <= len(data):
        page, block_size = BLOCK_HEADER.unpack_from(data, at)
        if block_size < BLOCK_HEADER.size or at + block_size > len(data):
            break  # a damaged block: nothing after it can be trusted
        for (entry,) in struct.iter_unpack(
            "<H", data[at + BLOCK_HEADER.size : at + block_size - block_size % 2]
        ):
            kind = entry >> 12
            if kind != IMAGE_REL_BASED_ABSOLUTE:
                out.append((page + (entry & 0xFFF), kind))
        at += block_size
    return out


def pointer_words(read: RvaReader, rva: int, size: int) -> list[int]:
    """RVAs of the 64-bit pointer words (DIR64) the loader relocates."""
    return [where for where, kind in base_relocations(read, rva, size) if kind == IMAGE_REL_BASED_DIR64]
