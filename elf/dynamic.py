"""What the dynamic linker reads: .dynamic strings, dynamic symbols with their versions, dynamic relocations.

Tables are found as ld.so finds them, through .dynamic (DT_SYMTAB, DT_STRTAB, DT_VERSYM, DT_VERDEF,
DT_VERNEED, DT_RELA, DT_JMPREL), so a file hpkg patched reads through its moved copies. Only the
symbol count is not in .dynamic: it comes from the SHT_DYNSYM section header, else from the hash
table (DT_HASH's nchain, or the end of DT_GNU_HASH's last chain).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hpkg.elf.constants import (
    DT_GNU_HASH,
    DT_HASH,
    DT_JMPREL,
    DT_NEEDED,
    DT_PLTRELSZ,
    DT_RELA,
    DT_RELASZ,
    DT_RPATH,
    DT_RUNPATH,
    DT_STRSZ,
    DT_STRTAB,
    DT_SYMTAB,
    DT_VERDEF,
    DT_VERDEFNUM,
    DT_VERNEED,
    DT_VERNEEDNUM,
    DT_VERSYM,
    SHN_UNDEF,
    SHT_DYNSYM,
    STT_GNU_IFUNC,
    VER_NDX_GLOBAL,
    VERSYM_HIDDEN,
    VERSYM_INDEX,
    st_bind,
    st_type,
)
from hpkg.elf.file import ElfFile
from hpkg.elf.structs import (
    RELA,
    SYM,
    VERDAUX,
    VERDEF,
    VERNAUX,
    VERNEED,
    VERSYM,
    RelaEntry,
    SymbolEntry,
    VerdauxEntry,
    VerdefEntry,
    VernauxEntry,
    VerneedEntry,
)
from hpkg.errors import ImageError


@dataclass(frozen=True)
class DynamicSymbol:
    """One .dynsym entry with its name and symbol version resolved."""

    index: int
    name: str
    version: str | None  # None: unversioned (VER_NDX_LOCAL/GLOBAL)
    hidden: bool  # `sym@VER`: not the default version a plain reference binds to
    bind: int  # STB_*
    type: int  # STT_*
    shndx: int
    value: int
    size: int

    @property
    def defined(self) -> bool:
        return self.shndx != SHN_UNDEF

    @property
    def default(self) -> bool:
        """The default version (`sym@@VER`), or unversioned."""
        return not self.hidden

    @property
    def ifunc(self) -> bool:
        return self.type == STT_GNU_IFUNC


@dataclass(frozen=True)
class VersionNeed:
    """One Elf64_Verneed: a library (by string-table offset) and the versions needed from it."""

    file: int
    version: int
    versions: tuple[VernauxEntry, ...]


def string_at(table: bytes, offset: int) -> str:
    """The NUL-terminated string at `offset` of a string table."""
    end = table.find(b"\0", offset)
    return table[offset : end if end >= 0 else len(table)].decode("ascii", "replace")


def elf_hash(name: bytes) -> int:
    """The System V ELF hash, which Elf64_Vernaux.vna_hash holds for a version name."""
    h = 0
    for byte in name:
        h = (h << 4) + byte
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xFFFFFFFF
    return h


def dynamic_strings(elf: ElfFile) -> bytes:
    """The dynamic string table (DT_STRTAB, DT_STRSZ bytes); empty when the file has none."""
    dynamic = elf.dynamic
    if DT_STRTAB not in dynamic or DT_STRSZ not in dynamic:
        return b""
    return elf.read(dynamic[DT_STRTAB], dynamic[DT_STRSZ])


def needed_libraries(elf: ElfFile) -> tuple[str, ...]:
    """DT_NEEDED: the libraries the file asks the dynamic linker for, in order."""
    strings = dynamic_strings(elf)
    return tuple(string_at(strings, offset) for offset in elf.dynamic_values(DT_NEEDED))


def library_search_path(elf: ElfFile) -> str | None:
    """DT_RUNPATH, or DT_RPATH when there is none (as written: $ORIGIN unexpanded), or None."""
    for tag in (DT_RUNPATH, DT_RPATH):
        if tag in elf.dynamic:
            return string_at(dynamic_strings(elf), elf.dynamic[tag])
    return None


def dynamic_symbol_count(elf: ElfFile) -> int | None:
    """Entries in .dynsym: from its section header, else from the hash table; None if neither says."""
    sections = elf.sections_of_type(SHT_DYNSYM)
    if sections:
        return sections[0].size // SYM.size
    dynamic = elf.dynamic
    if DT_HASH in dynamic:
        return struct.unpack("<I", elf.read(dynamic[DT_HASH] + 4, 4).ljust(4, b"\0"))[0]  # nchain
    if DT_GNU_HASH in dynamic:
        return _gnu_hash_count(elf, dynamic[DT_GNU_HASH])
    return None


def _gnu_hash_count(elf: ElfFile, address: int) -> int | None:
    """Symbols covered by a DT_GNU_HASH table: past the highest bucket's chain end (bit 0 set)."""
    head = elf.read(address, 16)
    if len(head) < 16:
        return None
    nbuckets, symoffset, bloom_size, _ = struct.unpack("<IIII", head)
    buckets_at = address + 16 + 8 * bloom_size  # ELF64 bloom words are 8 bytes
    buckets = elf.read(buckets_at, 4 * nbuckets)
    if len(buckets) < 4 * nbuckets:
        return None
    last = max(struct.unpack(f"<{nbuckets}I", buckets), default=0)
    if last < symoffset:
        return symoffset
    chain_at = buckets_at + 4 * nbuckets
    while True:
        word = elf.read(chain_at + 4 * (last - symoffset), 4)
        if len(word) < 4:
            return None
        if struct.unpack("<I", word)[0] & 1:
            return last + 1
        last += 1


def _version_record(elf: ElfFile, address: int, size: int) -> bytes:
    """One Verneed/Vernaux record; ImageError when it is not in the file (a damaged count or link)."""
    record = elf.read(address, size)
    if len(record) < size:
        raise ImageError(f"{elf.path}: malformed ELF file: DT_VERNEED chain leaves the file at {address:#x}")
    return record


def read_version_needs(elf: ElfFile, address: int, count: int) -> list[VersionNeed]:
    """The Elf64_Verneed chain at link address `address` (DT_VERNEED, DT_VERNEEDNUM entries).

    The chain ends at DT_VERNEEDNUM entries or at the first `vn_next` of 0, whichever comes first (and
    each entry's Vernaux list at `vn_cnt` or a `vna_next` of 0): a damaged count cannot make it run on.
    """
    needs = []
    for _ in range(count):
        need = VerneedEntry.unpack_from(_version_record(elf, address, VERNEED.size))
        versions, position = [], address + need.aux
        for _ in range(need.cnt):
            aux = VernauxEntry.unpack_from(_version_record(elf, position, VERNAUX.size))
            versions.append(aux)
            if not aux.next:
                break
            position += aux.next
        needs.append(VersionNeed(need.file, need.version, tuple(versions)))
        if not need.next:
            break
        address += need.next
    return needs


def pack_version_needs(needs: list[VersionNeed]) -> bytes:
    """The Elf64_Verneed chain for `needs`, each entry followed by its Vernaux entries."""
    out = b""
    for i, need in enumerate(needs):
        following = 0 if i == len(needs) - 1 else VERNEED.size + VERNAUX.size * len(need.versions)
        out += VerneedEntry(need.version, len(need.versions), need.file, VERNEED.size, following).pack()
        for j, aux in enumerate(need.versions):
            out += aux._replace(next=0 if j == len(need.versions) - 1 else VERNAUX.size).pack()
    return out


def _version_names(elf: ElfFile, strings: bytes) -> dict[int, str]:
    """Version index → version name, from the file's definitions (DT_VERDEF) and needs (DT_VERNEED)."""
    dynamic = elf.dynamic
    names: dict[int, str] = {}
    if DT_VERDEF in dynamic:
        address = dynamic[DT_VERDEF]
        for _ in range(dynamic.get(DT_VERDEFNUM, 0)):
            definition = VerdefEntry.unpack_from(elf.read(address, VERDEF.size).ljust(VERDEF.size, b"\0"))
            if definition.cnt:
                aux = VerdauxEntry.unpack_from(
                    elf.read(address + definition.aux, VERDAUX.size).ljust(VERDAUX.size, b"\0")
                )
                names[definition.ndx] = string_at(strings, aux.name)
            if not definition.next:
                break
            address += definition.next
    if DT_VERNEED in dynamic:
        for need in read_version_needs(elf, dynamic[DT_VERNEED], dynamic.get(DT_VERNEEDNUM, 0)):
            for aux in need.versions:
                names[aux.other & VERSYM_INDEX] = string_at(strings, aux.name)
    return names


def dynamic_symbols(elf: ElfFile) -> tuple[DynamicSymbol, ...]:
    """Every .dynsym entry (index 0 included), with names and versions; empty without a symbol table."""
    dynamic = elf.dynamic
    count = dynamic_symbol_count(elf)
    if DT_SYMTAB not in dynamic or not count:
        return ()
    table = elf.read(dynamic[DT_SYMTAB], count * SYM.size)
    count = len(table) // SYM.size
    strings = dynamic_strings(elf)
    versym = elf.read(dynamic[DT_VERSYM], VERSYM.size * count) if DT_VERSYM in dynamic else b""
    names = _version_names(elf, strings) if versym else {}
    symbols = []
    for index, entry in enumerate(SymbolEntry.unpack_from(table, i * SYM.size) for i in range(count)):
        version, hidden = None, False
        if len(versym) >= VERSYM.size * (index + 1):
            (value,) = VERSYM.unpack_from(versym, VERSYM.size * index)
            hidden = bool(value & VERSYM_HIDDEN)
            if value & VERSYM_INDEX > VER_NDX_GLOBAL:
                version = names.get(value & VERSYM_INDEX)
        symbols.append(
            DynamicSymbol(
                index, string_at(strings, entry.name), version, hidden, st_bind(entry.info),
                st_type(entry.info), entry.shndx, entry.value, entry.size,
            )
        )
    return tuple(symbols)


def dynamic_relocations(elf: ElfFile) -> tuple[RelaEntry, ...]:
    """The relocations ld.so applies: DT_RELA's table, then DT_JMPREL's (.rela.dyn, then .rela.plt)."""
    dynamic = elf.dynamic
    found: list[RelaEntry] = []
    for table, size in ((DT_RELA, DT_RELASZ), (DT_JMPREL, DT_PLTRELSZ)):
        if table in dynamic and size in dynamic:
            blob = elf.read(dynamic[table], dynamic[size])
            count = len(blob) // RELA.size
            found.extend(RelaEntry.unpack_from(blob, i * RELA.size) for i in range(count))
    return tuple(found)
