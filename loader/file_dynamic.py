"""What the dynamic linker must do for a patched ELF file: relocate absolute addresses, bind new imports.

In a position-independent file the load bias is chosen at run time. Package and image move together,
so PC-relative fields stay right, but a field holding an absolute address (a pointer in package data,
a GOT slot of the package) must be fixed when the file is loaded: the copy gets a new relocation
table (the old DT_RELA entries plus one R_X86_64_RELATIVE per such field) and DT_RELA/DT_RELASZ
point at it.

A fix may also call a library function the baseline does not use (`strlen`, a C++ exception constructor).
In a process the live loader looks it up; a file must ask the dynamic linker. This module writes
copies of the dynamic symbol table (.dynsym), its strings (.dynstr) and symbol versions
(.gnu.version, and .gnu.version_r when a version is new) with the imports appended as undefined
global symbols, so that R_X86_64_GLOB_DAT / R_X86_64_64 relocations can name them; DT_SYMTAB,
DT_STRTAB, DT_STRSZ, DT_VERSYM (and DT_VERNEED) then point at the copies. The symbols are undefined,
so the hash tables (which only find definitions) need no change. Only libraries the file already
needs (DT_NEEDED) can provide them: a version is attached to the library that already provides its
family (GLIBC_2.34 to the library of GLIBC_2.2.5), and anything else is refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace

from hpkg.arch.x86_64 import R_X86_64_64, R_X86_64_GLOB_DAT, R_X86_64_RELATIVE
from hpkg.elf.constants import (
    DT_RELA,
    DT_RELAENT,
    DT_RELASZ,
    DT_STRSZ,
    DT_STRTAB,
    DT_SYMTAB,
    DT_VERDEFNUM,
    DT_VERNEED,
    DT_VERNEEDNUM,
    DT_VERSYM,
    STB_GLOBAL,
    STT_FUNC,
    STT_OBJECT,
    VER_NDX_GLOBAL,
    st_info,
)
from hpkg.elf.dynamic import (
    VersionNeed,
    dynamic_symbol_count,
    elf_hash,
    pack_version_needs,
    read_version_needs,
    string_at,
)
from hpkg.elf.file import ElfFile
from hpkg.elf.structs import RELA, SYM, VERSYM, RelaEntry, SymbolEntry, VernauxEntry
from hpkg.errors import ImageError, RefusedError
from hpkg.loader.link import RelocatedImage
from hpkg.loader.placement import Area


@dataclass(frozen=True)
class NewImport:
    """An import to add: its name, symbol version, and whether it is called (a function) or read."""

    name: str
    version: str | None
    function: bool


@dataclass(frozen=True)
class DynamicTables:
    """The copied tables laid out from `base`, the .dynamic values to change, and each new symbol's index."""

    base: int
    blob: bytes
    dynamic_values: dict[int, int]  # tag -> new value
    symbol_index: dict[NewImport, int]
    moved: dict[int, tuple[int, int]]  # old link address of a table -> (its copy's address, size)


def _dynsym_count(elf: ElfFile) -> int:
    """Entries in .dynsym (the dynamic segment does not say: its section header or hash table does)."""
    count = dynamic_symbol_count(elf)
    if count is None:
        raise RefusedError(f"{elf.path} has no section headers or hash table that size its dynamic symbols")
    return count


def _family(version: str) -> str:
    """GLIBC_ for GLIBC_2.34, GLIBCXX_ for GLIBCXX_3.4.21: the part a library's versions share."""
    return version.rstrip("0123456789.")


def extend_dynamic_symbols(elf: ElfFile, imports: list[NewImport], base: int) -> DynamicTables:
    """Copies of the dynamic tables with `imports` appended as undefined symbols, laid out from `base`."""
    dynamic = {tag: value for _, tag, value in elf.dynamic_entries()}
    for tag, what in ((DT_SYMTAB, "DT_SYMTAB"), (DT_STRTAB, "DT_STRTAB"), (DT_STRSZ, "DT_STRSZ")):
        if tag not in dynamic:
            raise RefusedError(f"{elf.path} has no {what}: it cannot bind new imports")
    count = _dynsym_count(elf)
    symbols = elf.read(dynamic[DT_SYMTAB], count * SYM.size)
    strings = bytearray(elf.read(dynamic[DT_STRTAB], dynamic[DT_STRSZ]))
    versym = elf.read(dynamic[DT_VERSYM], VERSYM.size * count) if DT_VERSYM in dynamic else None
    verneed: list[VersionNeed] = []
    if DT_VERNEED in dynamic:
        verneed = read_version_needs(elf, dynamic[DT_VERNEED], dynamic.get(DT_VERNEEDNUM, 0))
    if len(symbols) != count * SYM.size or len(strings) != dynamic[DT_STRSZ]:
        raise RefusedError(f"{elf.path}: its dynamic symbol table is not inside the image")

    def add_string(text: str) -> int:
        offset = len(strings)
        strings.extend(text.encode("ascii") + b"\0")
        return offset

    def version_name(aux: VernauxEntry) -> str:
        return string_at(strings, aux.name)

    # Version indexes 1..DT_VERDEFNUM are the file's own definitions; needs use the numbers above them.
    used = [aux.other for need in verneed for aux in need.versions] + [dynamic.get(DT_VERDEFNUM, 1)]
    next_index = max(used) + 1
    verneed_changed = False
    new_symbols, new_versym, index = b"", b"", {}
    refused = []
    for item in imports:
        ndx = VER_NDX_GLOBAL
        if item.version is not None:
            if versym is None:
                refused.append(f"{item.name}@{item.version}: the file has no symbol versions")
                continue
            found = [a.other for need in verneed for a in need.versions if version_name(a) == item.version]
            if found:
                ndx = found[0]
            else:
                owner = next(
                    (
                        i for i, need in enumerate(verneed)
                        if any(_family(version_name(aux)) == _family(item.version) for aux in need.versions)
                    ),
                    None,
                )
                if owner is None:
                    library = "no library the file needs provides its version family"
                    refused.append(f"{item.name}@{item.version}: {library}")
                    continue
                ndx, next_index = next_index, next_index + 1
                added = VernauxEntry(elf_hash(item.version.encode()), 0, ndx, add_string(item.version), 0)
                verneed[owner] = replace(verneed[owner], versions=(*verneed[owner].versions, added))
                verneed_changed = True
        kind = STT_FUNC if item.function else STT_OBJECT
        index[item] = count + len(index)
        new_symbols += SymbolEntry(add_string(item.name), st_info(STB_GLOBAL, kind), 0, 0, 0, 0).pack()
        new_versym += VERSYM.pack(ndx)
    if refused:
        raise RefusedError(f"{elf.path} cannot bind imports the package needs", tuple(refused))

    # Layout: symbols (8-aligned), strings, versions (2-aligned), version needs (4-aligned).
    blob = bytearray(symbols + new_symbols)
    values = {DT_SYMTAB: base}
    moved = {dynamic[DT_SYMTAB]: (base, len(blob))}
    values[DT_STRTAB] = base + len(blob)
    values[DT_STRSZ] = len(strings)
    moved[dynamic[DT_STRTAB]] = (values[DT_STRTAB], len(strings))
    blob += strings
    if versym is not None:
        blob += bytes(-len(blob) % 8)
        values[DT_VERSYM] = base + len(blob)
        moved[dynamic[DT_VERSYM]] = (values[DT_VERSYM], len(versym) + len(new_versym))
        blob += versym + new_versym
    if verneed_changed:
        blob += bytes(-len(blob) % 8)
        values[DT_VERNEED] = base + len(blob)
        packed = pack_version_needs(verneed)
        moved[dynamic[DT_VERNEED]] = (values[DT_VERNEED], len(packed))
        blob += packed
    return DynamicTables(base, bytes(blob), values, index, moved)


@dataclass(frozen=True)
class DynamicLinking:
    """The tables added for the dynamic linker, the .dynamic values that point at them, and a summary."""

    tables: bytes  # relocation table, then the copied symbol tables (empty when nothing is needed)
    dynamic_values: dict[int, int]  # tag -> new value
    relative: int  # R_X86_64_RELATIVE relocations added
    bound_imports: tuple[str, ...]  # name@version of the dynamic symbols added
    writes_rodata: bool  # a relocated pointer lies in package rodata (its pages must be writable)
    moved: dict[int, tuple[int, int]] = field(default_factory=dict)  # old table address -> (new, size)


def _relative_fields(elf: ElfFile, relocated: RelocatedImage) -> list[tuple[int, int]]:
    """(field link address, value) of each absolute field; refuse those the dynamic linker can't fix."""
    placement = relocated.placement
    fields, refused = [], []
    for f in relocated.absolute_fields:
        if f.width != 8 or f.area is Area.CODE:
            refused.append(f"{f.what}: a {f.width * 8}-bit absolute address in {f.area.value}")
            continue
        (value,) = struct.unpack_from("<Q", relocated.area_bytes(f.area), f.offset)
        fields.append((placement.base(f.area) + f.offset, value))
    if refused:
        raise RefusedError(
            f"{elf.path} is position-independent and the package has absolute address fields the dynamic "
            "linker cannot relocate (apply it live with --pid instead)",
            tuple(refused),
        )
    return fields


def dynamic_linking(elf: ElfFile, relocated: RelocatedImage, address: int) -> DynamicLinking:
    """Relocations (and symbols) for the dynamic linker, laid out at link address `address`."""
    relative = _relative_fields(elf, relocated) if elf.position_independent else []
    bindings = relocated.load_time_bindings
    if not relative and not bindings:
        return DynamicLinking(b"", {}, 0, (), False)
    dynamic = {tag: value for _, tag, value in elf.dynamic_entries()}
    if DT_RELA not in dynamic or DT_RELASZ not in dynamic:
        raise RefusedError(f"{elf.path} has no DT_RELA relocation table to extend for the package")
    if dynamic.get(DT_RELAENT, RELA.size) != RELA.size:
        raise ImageError(f"{elf.path}: unexpected DT_RELAENT {dynamic[DT_RELAENT]}")
    old = elf.read(dynamic[DT_RELA], dynamic[DT_RELASZ])
    if len(old) != dynamic[DT_RELASZ]:
        raise ImageError(f"{elf.path}: its DT_RELA table is outside the image")

    rela_size = len(old) + RELA.size * (len(relative) + len(bindings))
    symbols_address = address + rela_size + (-rela_size % 8)
    imports: dict[int, NewImport] = {}
    for b in bindings:
        called = b.called or (b.import_index in imports and imports[b.import_index].function)
        imports[b.import_index] = NewImport(b.name, b.version, called)
    symbols = extend_dynamic_symbols(elf, list(imports.values()), symbols_address) if bindings else None

    entries = [RelaEntry.make(field, 0, R_X86_64_RELATIVE.number, value).pack() for field, value in relative]
    for b in bindings:
        assert symbols is not None
        index = symbols.symbol_index[imports[b.import_index]]
        kind = R_X86_64_GLOB_DAT if b.slot else R_X86_64_64
        field = relocated.placement.base(b.area) + b.offset
        entries.append(RelaEntry.make(field, index, kind.number, b.addend).pack())
    tables = old + b"".join(entries)
    values = {DT_RELA: address, DT_RELASZ: len(tables)}
    moved = {dynamic[DT_RELA]: (address, len(tables))}
    if symbols is not None:
        tables += bytes(symbols_address - address - len(tables)) + symbols.blob
        values.update(symbols.dynamic_values)
        moved.update(symbols.moved)
    missing = sorted(hex(tag) for tag in values if tag not in dynamic)
    if missing:
        tags = ", ".join(missing)
        raise RefusedError(f"{elf.path}: its .dynamic lacks the entries {tags} to point at new tables")
    shown = tuple(f"{i.name}@{i.version}" if i.version else i.name for i in imports.values())
    writes_rodata = any(f.area is Area.RODATA for f in relocated.absolute_fields) and elf.position_independent
    return DynamicLinking(tables, values, len(relative), shown, writes_rodata, moved)
