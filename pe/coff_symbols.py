"""RVAs of named symbols in a PE file's COFF symbol table, static ones included.

IMAGE_SYMBOL (18 bytes): Name (8 bytes: the name, or 4 zero bytes and an offset in the string table
that follows the symbol table), Value (u32, the offset in its section), SectionNumber (i16, 1-based),
Type (u16), StorageClass (u8), NumberOfAuxSymbols (u8, records to skip). Only the file holds the
table; the loader maps none of it. Wine's own DLLs keep theirs in Debian's packages, which is how the
live loader finds ntdll's static list of dynamic function tables (loader/wine_unwind.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from hpkg.pe.headers import COFF_SYMBOL_SIZE, PeHeaders

IMAGE_SYMBOL = struct.Struct("<8sIhHBB")


def symbol_rvas(headers: PeHeaders, data: bytes, names: Iterable[str]) -> dict[str, int]:
    """`name` → RVA of each of `names` the symbol table defines in a section (the first definition)."""
    wanted = {n.encode() for n in names}
    start, count = headers.symbol_table_offset, headers.symbol_count
    strings_at = start + COFF_SYMBOL_SIZE * count
    if not start or strings_at > len(data):
        return {}
    found: dict[str, int] = {}
    index = 0
    while index < count:
        raw_name, value, section, _, _, aux = IMAGE_SYMBOL.unpack_from(data, start + COFF_SYMBOL_SIZE * index)
        index += 1 + aux
        if raw_name[:4] == b"\0\0\0\0":
            (offset,) = struct.unpack_from("<I", raw_name, 4)
            name = data[strings_at + offset : strings_at + offset + 256].partition(b"\0")[0]
        else:
            name = raw_name.rstrip(b"\0")
        if name in wanted and 1 <= section <= len(headers.sections):
            found.setdefault(name.decode(), headers.sections[section - 1].virtual_address + value)
    return found
