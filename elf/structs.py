"""ELF64 little-endian record layouts, each defined once, with a named tuple per record.

The layouts are the gABI's Elf64_* structs (and the GNU version records). A record class reads one
entry with `unpack_from(buffer, offset)` and writes it back with `pack()`; fields keep the C names
without their prefix (`p_vaddr` is `ProgramHeader.vaddr`). Named tuples rather than dataclasses:
they are built straight from `struct.unpack_from`, by the thousand for a library's symbols.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from hpkg.elf.constants import st_bind, st_type

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr
PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr
SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr
SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym
DYN = struct.Struct("<qQ")  # Elf64_Dyn
RELA = struct.Struct("<QQq")  # Elf64_Rela
NHDR = struct.Struct("<III")  # Elf64_Nhdr: the same three 32-bit words as in ELF32
VERSYM = struct.Struct("<H")  # Elf64_Versym
VERDEF = struct.Struct("<HHHHIII")  # Elf64_Verdef
VERDAUX = struct.Struct("<II")  # Elf64_Verdaux
VERNEED = struct.Struct("<HHIII")  # Elf64_Verneed
VERNAUX = struct.Struct("<IHHII")  # Elf64_Vernaux
AUXV = struct.Struct("<QQ")  # Elf64_auxv_t

# Byte offsets of the ELF header fields a writer changes in place.
E_PHOFF, E_SHOFF, E_PHNUM, E_SHNUM = 32, 40, 56, 60


class ElfHeader(NamedTuple):
    """Elf64_Ehdr."""

    ident: bytes
    type: int
    machine: int
    version: int
    entry: int
    phoff: int
    shoff: int
    flags: int
    ehsize: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int

    @classmethod
    def unpack_from(cls, buffer, offset: int = 0) -> ElfHeader:
        return cls._make(EHDR.unpack_from(buffer, offset))

    def pack(self) -> bytes:
        return EHDR.pack(*self)


class ProgramHeader(NamedTuple):
    """Elf64_Phdr: one segment."""

    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int

    @classmethod
    def unpack_from(cls, buffer, offset: int = 0) -> ProgramHeader:
        return cls._make(PHDR.unpack_from(buffer, offset))

    def pack(self) -> bytes:
        return PHDR.pack(*self)


class SectionHeader(NamedTuple):
    """Elf64_Shdr: one section (`name` is an offset into the section-name string table)."""

    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    @classmethod
    def unpack_from(cls, buffer, offset: int = 0) -> SectionHeader:
        return cls._make(SHDR.unpack_from(buffer, offset))

    def pack(self) -> bytes:
        return SHDR.pack(*self)


class SymbolEntry(NamedTuple):
    """Elf64_Sym (`name` is an offset into the linked string table)."""

    name: int
    info: int
    other: int
    shndx: int
    value: int
    size: int

    @classmethod
    def unpack_from(cls, buffer, offset: int = 0) -> SymbolEntry:
        return cls._make(SYM.unpack_from(buffer, offset))

    def pack(self) -> bytes:
        return SYM.pack(*self)

    @property
    def bind(self) -> int:
        return st_bind(self.info)

    @property
    def kind(self) -> int:
        return st_type(self.info)


class DynamicEntry(NamedTuple):
    """Elf64_Dyn: one .dynamic entry."""

    tag: int
    value: int

    @classmethod
    def unpack_from(cls, buffer, offset: int = 0) -> DynamicEntry:
        return cls._make(DYN.unpack_from(buffer, offset))

    def pack(self) -> bytes:
        return DYN.pack(*self)


class RelaEntry(NamedTuple):
    """Elf64_Rela: r_info holds the symbol index in its high 32 bits and the type in the low ones."""

    offset: int
    info: int
    addend: int

    @classmethod
    def unpack_from(cls, buffer, offset: int = 0) -> RelaEntry:
        return cls._make(RELA.unpack_from(buffer, offset))

    @classmethod
    def make(cls, offset: int, symbol: int, kind: int, addend: int) -> RelaEntry:
        return cls(offset, symbol << 32 | kind, addend)

    def pack(self) -> bytes:
        return RELA.pack(*self)

    @property
    def symbol(self) -> int:
        return self.info >> 32

    @property
    def kind(self) -> int:
        return self.info & 0xFFFFFFFF


class NoteHeader(NamedTuple):
    """Elf64_Nhdr: the sizes of a note's name and descriptor, and its type."""

    namesz: int
    descsz: int
    type: int

    @classmethod
    def unpack_from(cls, buffer, offset: int = 0) -> NoteHeader:
        return cls._make(NHDR.unpack_from(buffer, offset))


class VerdefEntry(NamedTuple):
    """Elf64_Verdef: one version the file defines (`aux` and `next` are byte offsets from this entry)."""

    version: int
    flags: int
    ndx: int
    cnt: int
    hash: int
    aux: int
    next: int

    @classmethod
    def unpack_from(cls, buffer, offset: int = 0) -> VerdefEntry:
        return cls._make(VERDEF.unpack_from(buffer, offset))


class VerdauxEntry(NamedTuple):
    """Elf64_Verdaux: a version name of a Verdef."""

    name: int
    next: int

    @classmethod
    def unpack_from(cls, buffer, offset: int = 0) -> VerdauxEntry:
        return cls._make(VERDAUX.unpack_from(buffer, offset))


class VerneedEntry(NamedTuple):
    """Elf64_Verneed: the versions needed from one library (`file` names it in the string table)."""

    version: int
    cnt: int
    file: int
    aux: int
    next: int

    @classmethod
    def unpack_from(cls, buffer, offset: int = 0) -> VerneedEntry:
        return cls._make(VERNEED.unpack_from(buffer, offset))

    def pack(self) -> bytes:
        return VERNEED.pack(*self)


class VernauxEntry(NamedTuple):
    """Elf64_Vernaux: one needed version; `other` is the index .gnu.version entries use for it."""

    hash: int
    flags: int
    other: int
    name: int
    next: int

    @classmethod
    def unpack_from(cls, buffer, offset: int = 0) -> VernauxEntry:
        return cls._make(VERNAUX.unpack_from(buffer, offset))

    def pack(self) -> bytes:
        return VERNAUX.pack(*self)
