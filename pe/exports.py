"""The export directory: where a DLL's function of a given name or ordinal starts.

IMAGE_EXPORT_DIRECTORY (40 bytes): Characteristics, TimeDateStamp, Major/MinorVersion, Name (RVA),
Base (the first ordinal), NumberOfFunctions, NumberOfNames, AddressOfFunctions,
AddressOfNames, AddressOfNameOrdinals (RVAs). AddressOfFunctions holds one RVA per ordinal - Base;
AddressOfNames (sorted) and AddressOfNameOrdinals map a name to that index. An RVA that falls inside
the export directory itself is a forwarder: the text `DLL.name` (or `DLL.#ordinal`) naming where the
function really is. Read through an `RvaReader`, so a DLL a process mapped is read from its memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hpkg.errors import ImageError
from hpkg.pe.headers import RvaReader

EXPORT_DIRECTORY = struct.Struct("<IIHHIIIIIII")
MAX_EXPORTS = 1 << 16  # the ordinal is a 16-bit number
MAX_NAME = 512


@dataclass(frozen=True, slots=True)
class Export:
    """Where an export leads: an RVA in the DLL, or (for a forwarder) the `DLL.name` it names."""

    rva: int | None
    forwarder: str | None = None


def _string(read: RvaReader, rva: int) -> bytes:
    raw = read(rva, MAX_NAME)
    end = raw.find(b"\0")
    return raw[:end] if end >= 0 else raw


def find_export(read: RvaReader, rva: int, size: int, function: str | int, what: str) -> Export | None:
    """The export `function` (a name, or an ordinal) of the directory at [rva, rva + size); None if the
    DLL does not export it."""
    raw = read(rva, EXPORT_DIRECTORY.size) if rva and size else b""
    if len(raw) < EXPORT_DIRECTORY.size:
        return None
    fields = EXPORT_DIRECTORY.unpack(raw)
    base, functions, names, functions_rva, names_rva, ordinals_rva = fields[5:]
    if functions > MAX_EXPORTS or names > MAX_EXPORTS:
        raise ImageError(f"{what}: malformed export directory: {functions} functions, {names} names")
    if isinstance(function, int):
        index: int | None = function - base
    else:
        index = _index_by_name(read, names, names_rva, ordinals_rva, function.encode("ascii", "replace"))
    if index is None or not 0 <= index < functions:
        return None
    entry = read(functions_rva + 4 * index, 4)
    if len(entry) < 4:
        raise ImageError(f"{what}: malformed export directory: its address table runs past the image")
    (target,) = struct.unpack("<I", entry)
    if not target:
        return None
    if rva <= target < rva + size:
        return Export(None, _string(read, target).decode("ascii", "backslashreplace"))
    return Export(target)


def _index_by_name(read: RvaReader, count: int, names_rva: int, ordinals_rva: int, name: bytes) -> int | None:
    """Binary search of the sorted name table (as the Windows loader does); the function index, or None."""
    table = read(names_rva, 4 * count)
    ordinals = read(ordinals_rva, 2 * count)
    if len(table) < 4 * count or len(ordinals) < 2 * count:
        return None
    low, high = 0, count - 1
    while low <= high:
        middle = (low + high) // 2
        (name_rva,) = struct.unpack_from("<I", table, 4 * middle)
        found = _string(read, name_rva)
        if found == name:
            return struct.unpack_from("<H", ordinals, 2 * middle)[0]
        if found < name:
            low = middle + 1
        else:
            high = middle - 1
    return None
