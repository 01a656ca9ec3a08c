"""The import directory: which DLL functions an image binds, and the IAT slot each one lands in.

IMAGE_IMPORT_DESCRIPTOR (20 bytes: OriginalFirstThunk, TimeDateStamp, ForwarderChain, Name,
FirstThunk), one per DLL, ended by an all-zero one. Each thunk list holds 8-byte entries ended by
zero: bit 63 set means an import by ordinal (the low 16 bits), else the RVA of a hint/name entry
(u16 hint, then the name). The loader writes each resolved address into FirstThunk's list (the IAT),
which the code calls through (`call [rip+slot]`, or a `jmp [rip+slot]` stub). Names are spelled as
the builder spells them: `dll!name` or `dll!#ordinal`, the DLL name lower-cased.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hpkg.errors import ImageError
from hpkg.pe.headers import RvaReader

IMPORT_DESCRIPTOR = struct.Struct("<IIIII")
THUNK = struct.Struct("<Q")
IMAGE_ORDINAL_FLAG64 = 1 << 63
MAX_NAME = 4096
MAX_DESCRIPTORS = 4096
MAX_THUNKS = 1 << 16  # per DLL


@dataclass(frozen=True, slots=True)
class ImportSlot:
    """One imported function: its `dll!name` and the RVA of the IAT slot the loader fills."""

    name: str
    slot: int


def import_name(dll: str, function: str | int) -> str:
    """`dll!name`, or `dll!#ordinal` for an import by ordinal; the DLL name lower-cased."""
    what = f"#{function}" if isinstance(function, int) else function
    return f"{dll.lower()}!{what}"


def split_import_name(name: str) -> tuple[str, str | int] | None:
    """(dll, name or ordinal) of a `dll!name` / `dll!#ordinal` import name; None if it is not one."""
    dll, sep, what = name.partition("!")
    if not sep or not dll or not what:
        return None
    if what.startswith("#") and what[1:].isdigit():
        return dll, int(what[1:])
    return dll, what


def _string(read: RvaReader, rva: int, what: str) -> str:
    raw = read(rva, MAX_NAME)
    end = raw.find(b"\0")
    if end <= 0:
        raise ImageError(f"{what}: malformed import directory: an unterminated or empty name")
    return raw[:end].decode("ascii", "backslashreplace")


def import_descriptors(read: RvaReader, rva: int, size: int, what: str) -> list[tuple[int, ...]]:
    """The raw descriptors of the import directory, without the terminator."""
    out = []
    for n in range(MAX_DESCRIPTORS):
        raw = read(rva + n * IMPORT_DESCRIPTOR.size, IMPORT_DESCRIPTOR.size) if rva and size else b""
        if len(raw) < IMPORT_DESCRIPTOR.size:
            if rva and size:
                raise ImageError(f"{what}: malformed import directory: it runs past the image")
            return out
        fields = IMPORT_DESCRIPTOR.unpack(raw)
        if not any(fields):
            return out
        out.append(fields)
    raise ImageError(f"{what}: malformed import directory: more than {MAX_DESCRIPTORS} DLLs")


def import_slots(read: RvaReader, rva: int, size: int, what: str) -> list[ImportSlot]:
    """Every imported function with its IAT slot, in directory order."""
    slots = []
    for lookup, _, _, name_rva, first in import_descriptors(read, rva, size, what):
        dll = _string(read, name_rva, what)
        table = lookup or first  # without an import lookup table, the IAT itself holds the names
        for i in range(MAX_THUNKS):
            raw = read(table + i * THUNK.size, THUNK.size)
            if len(raw) < THUNK.size:
                raise ImageError(f"{what}: malformed import directory: a thunk list runs past the image")
            (entry,) = THUNK.unpack(raw)
            if not entry:
                break
            function: str | int
            if entry & IMAGE_ORDINAL_FLAG64:
                function = entry & 0xFFFF
            else:
                function = _string(read, (entry & 0x7FFF_FFFF) + 2, what)
            slots.append(ImportSlot(import_name(dll, function), first + i * THUNK.size))
    return slots
