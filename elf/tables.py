"""The tables of a whole ELF file as a static reader sees them: sections, symbols, relocations.

Read from the file's bytes (bytes or an mmap), never raising on what does not fit: a table that
leaves the file is read up to the file's end, a name without its NUL is empty, a link that points
nowhere yields nothing, as binutils and LIEF read damaged files. The rules follow LIEF's ELF parser
(`Parser::parse_binary`), which the diff engine used before and whose readings it keeps:

- sections: e_shnum headers; names from the section-name table's file offset, up to a NUL;
- .symtab: the first SHT_SYMTAB section, with the string table its sh_link names;
- .dynsym: at DT_SYMTAB, counted from the hash table and the SHT_DYNSYM header (LIEF's "auto"
  count), names from DT_STRTAB, versions from DT_VERSYM with DT_VERNEED and DT_VERDEF names;
- dynamic relocations: DT_RELA's table, then the DT_RELR bitmap's (R_X86_64_RELATIVE, addend 0 as
  LIEF gives them), then DT_JMPREL's; symbols bound to .dynsym entries by index;
- section relocations: every SHT_RELA section (only non-allocated ones when the dynamic tables
  gave any), duplicates within a section dropped, symbols from the table sh_link names.

Names are bytes: the reader above decides how to show one that is not UTF-8.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass

from hpkg.elf.constants import (
    DT_GNU_HASH,
    DT_HASH,
    DT_JMPREL,
    DT_NULL,
    DT_PLTRELSZ,
    DT_RELA,
    DT_RELASZ,
    DT_STRTAB,
    DT_SYMTAB,
    DT_VERDEF,
    DT_VERDEFNUM,
    DT_VERNEED,
    DT_VERNEEDNUM,
    DT_VERSYM,
    PT_DYNAMIC,
    PT_LOAD,
    SHF_ALLOC,
    SHT_DYNSYM,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
)
from hpkg.elf.structs import (
    DYN,
    EHDR,
    PHDR,
    RELA,
    SHDR,
    SYM,
    VERDAUX,
    VERDEF,
    VERNAUX,
    VERNEED,
    ElfHeader,
    ProgramHeader,
    SectionHeader,
)

DT_RELRSZ, DT_RELR = 35, 36
# Bounds a damaged count cannot push past (LIEF's: a real library is far below them).
MAX_SYMBOLS = 1_000_000
_DELTA_SYMBOLS = 3000  # how far the hash table's or the section's count may exceed the relocations'
MAX_RELOCATIONS = 3_000_000
MAX_DYNAMIC_ENTRIES = 1000
_NAME_LIMIT = 1 << 16  # a name longer than this is damage, not a name


def string_at(data, offset: int) -> bytes:
    """The NUL-terminated string at a file offset; b"" when it is outside the file or unterminated."""
    if not 0 <= offset < len(data):
        return b""
    end = data.find(b"\0", offset, offset + _NAME_LIMIT)
    return bytes(data[offset:end]) if end >= 0 else b""


def _table(data, offset: int, count: int, layout: struct.Struct) -> list[tuple]:
    """`count` records of `layout` from a file offset, as many as fit in the file."""
    if offset < 0 or offset >= len(data):
        return []
    count = max(0, min(count, (len(data) - offset) // layout.size))
    return list(layout.iter_unpack(data[offset : offset + count * layout.size]))


@dataclass(frozen=True)
class ElfTables:
    """Headers of one file: the ELF header, program headers, section headers with their names."""

    header: ElfHeader
    segments: tuple[ProgramHeader, ...]
    sections: tuple[SectionHeader, ...]
    section_names: tuple[bytes, ...]

    def file_offset(self, address: int) -> int | None:
        """The file offset of a link address, through the first PT_LOAD whose memory holds it."""
        for p in self.segments:
            if p.type == PT_LOAD and p.vaddr <= address < p.vaddr + p.memsz:
                return p.offset + address - p.vaddr
        return None

    def first_section(self, sh_type: int) -> SectionHeader | None:
        return next((s for s in self.sections if s.type == sh_type), None)


def read_tables(data) -> ElfTables:
    """The headers of an ELF64 file (its ELF header already checked by the caller)."""
    header = ElfHeader.unpack_from(data)
    phnum = header.phnum if header.phentsize == PHDR.size and header.phoff else 0
    segments = tuple(ProgramHeader._make(p) for p in _table(data, header.phoff, phnum, PHDR))
    shnum = header.shnum if header.shentsize == SHDR.size and header.shoff else 0
    sections = tuple(SectionHeader._make(s) for s in _table(data, header.shoff, shnum, SHDR))
    names: list[bytes] = []
    if header.shstrndx < len(sections):
        base = sections[header.shstrndx].offset
        names = [string_at(data, base + s.name) for s in sections]
    else:
        names = [b""] * len(sections)
    return ElfTables(header, segments, sections, tuple(names))


# -- .dynamic --------------------------------------------------------------------------------------


def dynamic_tags(data, tables: ElfTables) -> dict[int, int]:
    """The .dynamic entries by tag (the first of each), read from PT_DYNAMIC up to DT_NULL."""
    dynamic = next((p for p in tables.segments if p.type == PT_DYNAMIC), None)
    if dynamic is None:
        return {}
    found: dict[int, int] = {}
    entries = _table(data, dynamic.offset, min(dynamic.filesz // DYN.size, MAX_DYNAMIC_ENTRIES), DYN)
    for tag, value in entries:
        if tag == DT_NULL:
            break
        found.setdefault(tag, value)
    return found


def _dynamic_offset(tables: ElfTables, tags: dict[int, int], tag: int) -> int | None:
    return tables.file_offset(tags[tag]) if tag in tags else None


# -- symbols ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SymbolRecord:
    """One symbol table entry with its name (and, for .dynsym, its version name)."""

    name: bytes
    info: int
    shndx: int
    value: int
    size: int
    version: bytes | None = None


def static_symbols(data, tables: ElfTables) -> list[SymbolRecord]:
    """The entries of the first SHT_SYMTAB section (index 0 included), named through its sh_link."""
    symtab = tables.first_section(SHT_SYMTAB)
    if symtab is None or not 0 < symtab.link < len(tables.sections):
        return []
    strings = tables.sections[symtab.link].offset
    count = min(symtab.size // SYM.size, MAX_SYMBOLS)
    return [
        SymbolRecord(string_at(data, strings + name), info, shndx, value, size)
        for name, info, _, shndx, value, size in _table(data, symtab.offset, count, SYM)
    ]


def _relocation_index_bound(data, tables: ElfTables, tags: dict[int, int]) -> int:
    """One past the highest symbol index the dynamic relocations name (0 without a table)."""
    bound = 0
    for table, size in ((DT_RELA, DT_RELASZ), (DT_JMPREL, DT_PLTRELSZ)):
        offset = _dynamic_offset(tables, tags, table)
        if offset is None or size not in tags:
            continue
        count = min(tags[size] // RELA.size, MAX_RELOCATIONS, max(len(data) - offset, 0) // RELA.size)
        infos = array("Q", data[offset : offset + count * RELA.size])[1::3] if count else ()
        bound = max(bound, max((info >> 32 for info in infos), default=0) + 1)
    return bound


def _gnu_hash_count(data, offset: int) -> int:
    """Symbols a DT_GNU_HASH table covers: past the end of the chain of its highest bucket."""
    head = data[offset : offset + 16]
    if len(head) < 16:
        return 0
    buckets, symoffset, bloom, _ = struct.unpack("<IIII", head)
    at = offset + 16 + 8 * bloom
    words = data[at : at + 4 * buckets]
    if len(words) < 4 * buckets or not buckets:
        return 0
    last = max(struct.unpack(f"<{buckets}I", words))
    if last < symoffset:
        return symoffset
    chains = at + 4 * buckets
    while True:
        word = data[chains + 4 * (last - symoffset) : chains + 4 * (last - symoffset) + 4]
        if len(word) < 4:
            return 0
        if struct.unpack("<I", word)[0] & 1:
            return last + 1
        last += 1


def _dynamic_symbol_count(data, tables: ElfTables, tags: dict[int, int]) -> int:
    """How many .dynsym entries there are: LIEF's "auto" count over the hash table, the SHT_DYNSYM
    header and the highest index the relocations name."""
    dynsym = tables.first_section(SHT_DYNSYM)
    from_section = dynsym.size // SYM.size if dynsym is not None else 0
    from_hash = 0
    if DT_HASH in tags:
        offset = tables.file_offset(tags[DT_HASH])
        if offset is not None and len(data[offset + 4 : offset + 8]) == 4:
            from_hash = struct.unpack_from("<I", data, offset + 4)[0]  # nchain
    elif DT_GNU_HASH in tags:
        offset = tables.file_offset(tags[DT_GNU_HASH])
        if offset is not None:
            from_hash = _gnu_hash_count(data, offset)
    if from_hash > 0 and from_section == from_hash:
        return from_hash
    from_relocations = _relocation_index_bound(data, tables, tags)
    candidate = from_relocations
    if from_section < MAX_SYMBOLS and from_relocations < from_section < from_relocations + _DELTA_SYMBOLS:
        candidate = from_section
    if from_hash and from_hash < MAX_SYMBOLS and candidate < from_hash < candidate + _DELTA_SYMBOLS:
        candidate = from_hash
    return min(candidate, MAX_SYMBOLS)


def _dynamic_strings(tables: ElfTables, tags: dict[int, int]) -> int:
    """File offset of the dynamic string table: DT_STRTAB, else the .dynstr section; 0 when neither."""
    offset = _dynamic_offset(tables, tags, DT_STRTAB)
    if offset:
        return offset
    for section, name in zip(tables.sections, tables.section_names, strict=True):
        if name == b".dynstr" and section.type == SHT_STRTAB:
            return section.offset
    return 0


def _version_names(data, tables: ElfTables, tags: dict[int, int], strings: int) -> dict[int, bytes]:
    """Version index → name: each needed version's (DT_VERNEED, the last of an index wins), then each
    defined version above the base one (DT_VERDEF, its first name, where no needed one has the index)."""
    names: dict[int, bytes] = {}
    offset = _dynamic_offset(tables, tags, DT_VERNEED)
    if offset is not None and DT_VERNEEDNUM in tags:
        position = offset
        for _ in range(min(tags[DT_VERNEEDNUM], MAX_SYMBOLS)):
            need = data[position : position + VERNEED.size]
            if len(need) < VERNEED.size:
                break
            _, count, _, aux, following = VERNEED.unpack(need)
            if count and aux:
                at = position + aux
                for _ in range(count):
                    entry = data[at : at + VERNAUX.size]
                    if len(entry) < VERNAUX.size:
                        break
                    _, _, other, name, following_aux = VERNAUX.unpack(entry)
                    names[other] = string_at(data, strings + name) if strings else b""
                    if not following_aux:
                        break
                    at += following_aux
            if not following:
                break
            position += following
    offset = _dynamic_offset(tables, tags, DT_VERDEF)
    if offset is not None and DT_VERDEFNUM in tags:
        position = offset
        for _ in range(tags[DT_VERDEFNUM] & 0xFFFFFFFF):
            definition = data[position : position + VERDEF.size]
            if len(definition) < VERDEF.size:
                break
            _, _, index, count, _, aux, following = VERDEF.unpack(definition)
            entry = data[position + aux : position + aux + VERDAUX.size]
            if count and len(entry) == VERDAUX.size and strings and index > 1:
                names.setdefault(index, string_at(data, strings + VERDAUX.unpack(entry)[0]))
            if not following:
                break
            position += following
    return names


def dynamic_symbols(data, tables: ElfTables, tags: dict[int, int]) -> list[SymbolRecord]:
    """The .dynsym entries (index 0 included) with names and version names (None: unversioned)."""
    offset = _dynamic_offset(tables, tags, DT_SYMTAB)
    if offset is None:
        return []
    strings = _dynamic_strings(tables, tags)
    if not strings:
        return []
    entries = _table(data, offset, _dynamic_symbol_count(data, tables, tags), SYM)
    versym_offset = _dynamic_offset(tables, tags, DT_VERSYM)
    versions: list[bytes | None] = [None] * len(entries)
    if versym_offset is not None:
        raw = data[versym_offset : versym_offset + 2 * len(entries)]
        if len(raw) == 2 * len(entries):  # a version for every symbol, or none at all
            names = _version_names(data, tables, tags, strings)
            versions = [names.get(value & 0x7FFF) for value in array("H", raw)]
    return [
        SymbolRecord(string_at(data, strings + name) if name else b"", info, shndx, value, size, version)
        for (name, info, _, shndx, value, size), version in zip(entries, versions, strict=True)
    ]


# -- relocations -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelocationRecords:
    """Relocation entries as columns (the millions of a large library cost 26 bytes each here):
    r_offset, type, addend, symbol index (0: none) and the index of the section it applies to."""

    offsets: array  # 'Q'
    types: array  # 'I'
    addends: array  # 'q'
    symbols: array  # 'I'
    sections: array  # 'I' (0: none)

    @classmethod
    def empty(cls) -> RelocationRecords:
        return cls(array("Q"), array("I"), array("q"), array("I"), array("I"))

    def __len__(self) -> int:
        return len(self.offsets)

    def extend(self, blob: bytes, section: int = 0) -> None:
        """Append the Elf64_Rela entries of `blob` (whole entries only)."""
        blob = blob[: len(blob) // RELA.size * RELA.size]
        words = array("Q", blob)
        self.offsets.extend(words[0::3])
        infos = words[1::3]
        self.types.extend(info & 0xFFFFFFFF for info in infos)
        self.symbols.extend(info >> 32 for info in infos)
        self.addends.extend(array("q", blob)[2::3])
        self.sections.extend([section] * len(infos))

    def append(self, offset: int, kind: int, addend: int, symbol: int, section: int) -> None:
        self.offsets.append(offset)
        self.types.append(kind)
        self.addends.append(addend)
        self.symbols.append(symbol)
        self.sections.append(section)


def _relr_offsets(blob: bytes) -> list[int]:
    """The places a DT_RELR bitmap table relocates (each an R_X86_64_RELATIVE)."""
    out: list[int] = []
    base = 0
    for (entry,) in struct.iter_unpack("<Q", blob[: len(blob) // 8 * 8]):
        if entry & 1 == 0:
            out.append(entry)
            base = entry + 8
        else:
            bits, place = entry >> 1, base
            while bits:
                if bits & 1:
                    out.append(place)
                bits >>= 1
                place += 8
            base += 63 * 8
    return out


R_X86_64_RELATIVE = 8


def dynamic_relocations(data, tables: ElfTables, tags: dict[int, int]) -> tuple[RelocationRecords, int]:
    """The relocations ld.so applies, and how many of them come before DT_JMPREL's (the PLT's)."""
    records = RelocationRecords.empty()
    for table, size in ((DT_RELA, DT_RELASZ), (DT_RELR, DT_RELRSZ)):
        offset = _dynamic_offset(tables, tags, table)
        if offset is None or size not in tags:
            continue
        if table == DT_RELA:
            count = min(tags[size] // RELA.size, MAX_RELOCATIONS)
            records.extend(data[offset : offset + count * RELA.size])
        else:
            for place in _relr_offsets(data[offset : offset + tags[size]]):
                records.append(place, R_X86_64_RELATIVE, 0, 0, 0)
    before_plt = len(records)
    offset = _dynamic_offset(tables, tags, DT_JMPREL)
    if offset is not None and DT_PLTRELSZ in tags:
        count = min(tags[DT_PLTRELSZ] // RELA.size, MAX_RELOCATIONS)
        records.extend(data[offset : offset + count * RELA.size])
    return records, before_plt


def section_relocations(
    data, tables: ElfTables, skip_allocated: bool, dynamic_count: int, static_count: int
) -> tuple[RelocationRecords, list[bool]]:
    """The entries of SHT_RELA sections (`-Wl,--emit-relocs`), each section's duplicates dropped;
    allocated ones skipped when `skip_allocated` (they are the dynamic tables, read already).

    Returns the records (section: the index sh_info names, 0 if none) and, per record, whether its
    symbol index names a .dynsym entry (True) or a .symtab one (False), as sh_link says.
    """
    records = RelocationRecords.empty()
    from_dynsym: list[bool] = []
    count = len(tables.sections)
    for section in tables.sections:
        if section.type != SHT_RELA or (skip_allocated and section.flags & SHF_ALLOC):
            continue
        applies_to = section.info if 0 < section.info < count else 0
        link = tables.sections[section.link] if 0 < section.link < count else None
        seen: set[tuple[int, int, int]] = set()
        entries = min(section.size // RELA.size, MAX_RELOCATIONS)
        for offset, info, addend in _table(data, section.offset, entries, RELA):
            if (offset, info, addend) in seen:
                continue
            seen.add((offset, info, addend))
            index = info >> 32
            dynsym = 0 < index < dynamic_count and (link is None or link.type == SHT_DYNSYM)
            if not dynsym and not (index < static_count and (link is None or link.type == SHT_SYMTAB)):
                index = 0
            records.append(offset, info & 0xFFFFFFFF, addend, index, applies_to)
            from_dynsym.append(dynsym)
    return records, from_dynsym


__all__ = [
    "EHDR",
    "ElfTables",
    "RelocationRecords",
    "SymbolRecord",
    "dynamic_relocations",
    "dynamic_symbols",
    "dynamic_tags",
    "read_tables",
    "section_relocations",
    "static_symbols",
    "string_at",
]
