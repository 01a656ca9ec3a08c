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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hpkg.errors import ImageError, RefusedError
from hpkg.loader.relocate import Area, RelocatedImage

if TYPE_CHECKING:
    from hpkg.loader.elf_file import ElfFile

_SYM = struct.Struct("<IBBHQQ")
_VERNEED = struct.Struct("<HHIII")
_VERNAUX = struct.Struct("<IHHII")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_RELA = struct.Struct("<QQq")
SHT_DYNSYM = 11
DT_RELA, DT_RELASZ, DT_RELAENT = 7, 8, 9
R_X86_64_64, R_X86_64_GLOB_DAT, R_X86_64_RELATIVE = 1, 6, 8
DT_STRTAB, DT_SYMTAB, DT_STRSZ = 5, 6, 10
DT_VERSYM, DT_VERDEFNUM, DT_VERNEED, DT_VERNEEDNUM = 0x6FFFFFF0, 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF
STB_GLOBAL, STT_OBJECT, STT_FUNC = 1, 1, 2
VER_NDX_GLOBAL = 1


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


def _dynsym_count(elf: ElfFile) -> int:
    """Entries in .dynsym, from the section headers (the dynamic segment does not say)."""
    (shoff,) = struct.unpack_from("<Q", elf.data, 40)
    shentsize, shnum = struct.unpack_from("<HH", elf.data, 58)
    if shoff == 0 or shentsize != _SHDR.size or shoff + shnum * _SHDR.size > len(elf.data):
        raise RefusedError(f"{elf.path} has no section headers to find its dynamic symbol table by")
    for i in range(shnum):
        fields = _SHDR.unpack_from(elf.data, shoff + i * _SHDR.size)
        if fields[1] == SHT_DYNSYM:
            return fields[5] // _SYM.size
    raise RefusedError(f"{elf.path} has no dynamic symbol table")


def _string(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    return table[offset : end if end >= 0 else len(table)].decode("ascii", "replace")


Verneed = list[tuple[int, int, list[tuple[int, int, int, int]]]]


def _read_verneed(elf: ElfFile, address: int, count: int) -> Verneed:
    """[(vn_version, vn_file, [(vna_hash, vna_flags, vna_other, vna_name), …]), …] of .gnu.version_r."""
    entries = []
    for _ in range(count):
        version, aux_count, file, aux, following = _VERNEED.unpack(elf.read(address, _VERNEED.size))
        auxes, position = [], address + aux
        for _ in range(aux_count):
            hash_, flags, other, name, next_aux = _VERNAUX.unpack(elf.read(position, _VERNAUX.size))
            auxes.append((hash_, flags, other, name))
            position += next_aux
        entries.append((version, file, auxes))
        address += following
    return entries


def _pack_verneed(entries: Verneed) -> bytes:
    out = b""
    for i, (version, file, auxes) in enumerate(entries):
        following = 0 if i == len(entries) - 1 else _VERNEED.size + _VERNAUX.size * len(auxes)
        out += _VERNEED.pack(version, len(auxes), file, _VERNEED.size, following)
        for j, (hash_, flags, other, name) in enumerate(auxes):
            out += _VERNAUX.pack(hash_, flags, other, name, 0 if j == len(auxes) - 1 else _VERNAUX.size)
    return out


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
    symbols = elf.read(dynamic[DT_SYMTAB], count * _SYM.size)
    strings = bytearray(elf.read(dynamic[DT_STRTAB], dynamic[DT_STRSZ]))
    versym = elf.read(dynamic[DT_VERSYM], 2 * count) if DT_VERSYM in dynamic else None
    verneed: Verneed = []
    if DT_VERNEED in dynamic:
        verneed = _read_verneed(elf, dynamic[DT_VERNEED], dynamic.get(DT_VERNEEDNUM, 0))
    if len(symbols) != count * _SYM.size or len(strings) != dynamic[DT_STRSZ]:
        raise RefusedError(f"{elf.path}: its dynamic symbol table is not inside the image")

    def add_string(text: str) -> int:
        offset = len(strings)
        strings.extend(text.encode("ascii") + b"\0")
        return offset

    # Version indexes 1..DT_VERDEFNUM are the file's own definitions; needs use the numbers above them.
    used = [o for _, _, auxes in verneed for _, _, o, _ in auxes] + [dynamic.get(DT_VERDEFNUM, 1)]
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
            found = [
                o for _, _, auxes in verneed for _, _, o, n in auxes if _string(strings, n) == item.version
            ]
            if found:
                ndx = found[0]
            else:
                owner = next(
                    (e for e in verneed if any(_family(_string(strings, n)) == _family(item.version)
                                               for _, _, _, n in e[2])),
                    None,
                )
                if owner is None:
                    library = "no library the file needs provides its version family"
                    refused.append(f"{item.name}@{item.version}: {library}")
                    continue
                ndx, next_index = next_index, next_index + 1
                owner[2].append((elf_hash(item.version.encode()), 0, ndx, add_string(item.version)))
                verneed_changed = True
        kind = STT_FUNC if item.function else STT_OBJECT
        index[item] = count + len(index)
        new_symbols += _SYM.pack(add_string(item.name), STB_GLOBAL << 4 | kind, 0, 0, 0, 0)
        new_versym += struct.pack("<H", ndx)
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
        packed = _pack_verneed(verneed)
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
    if dynamic.get(DT_RELAENT, _RELA.size) != _RELA.size:
        raise ImageError(f"{elf.path}: unexpected DT_RELAENT {dynamic[DT_RELAENT]}")
    old = elf.read(dynamic[DT_RELA], dynamic[DT_RELASZ])
    if len(old) != dynamic[DT_RELASZ]:
        raise ImageError(f"{elf.path}: its DT_RELA table is outside the image")

    rela_size = len(old) + _RELA.size * (len(relative) + len(bindings))
    symbols_address = address + rela_size + (-rela_size % 8)
    imports: dict[int, NewImport] = {}
    for b in bindings:
        called = b.called or (b.import_index in imports and imports[b.import_index].function)
        imports[b.import_index] = NewImport(b.name, b.version, called)
    symbols = extend_dynamic_symbols(elf, list(imports.values()), symbols_address) if bindings else None

    entries = [_RELA.pack(field, R_X86_64_RELATIVE, value) for field, value in relative]
    for b in bindings:
        assert symbols is not None
        index = symbols.symbol_index[imports[b.import_index]]
        kind = R_X86_64_GLOB_DAT if b.slot else R_X86_64_64
        field = relocated.placement.base(b.area) + b.offset
        entries.append(_RELA.pack(field, index << 32 | kind, b.addend))
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
