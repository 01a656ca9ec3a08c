"""Load an ELF x86-64 executable or shared library into an Image, with the project's own ELF reader.

The file is mapped, not read into memory (`SectionBytes`): a large library's sections are read where
the diff needs them, and the pages it touched can be handed back. Headers, symbols and relocations
are read by `hpkg.elf.tables` (the rules LIEF's parser follows, which this loader used before).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import stat
import struct
from collections.abc import Callable
from pathlib import Path

from hpkg.arch.x86_64 import GOT_RELOCATIONS
from hpkg.builder.heap import release_freed_memory
from hpkg.builder.model import (
    AddressRanges,
    ElfRelocations,
    FileOffset,
    GotSlot,
    Image,
    Import,
    LinkAddress,
    Section,
    SectionBytes,
    Segment,
    Symbol,
    SymbolKind,
    relocation_type_name,
)
from hpkg.elf.constants import (
    EI_CLASS,
    ELF_MAGIC,
    ELFCLASS64,
    EM_X86_64,
    ET_DYN,
    ET_EXEC,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_TLS,
    SHF_WRITE,
    SHT_NOBITS,
    STB_LOCAL,
    STT_FUNC,
    STT_GNU_IFUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_TLS,
    st_bind,
    st_type,
)
from hpkg.elf.constants import MACHINE_NAMES as _MACHINES
from hpkg.elf.ehframe import parse_eh_frame
from hpkg.elf.file import read_build_id
from hpkg.elf.plt import PLT_SECTIONS, plt_entries
from hpkg.elf.structs import EHDR, ElfHeader
from hpkg.elf.tables import (
    ElfTables,
    SymbolRecord,
    dynamic_relocations,
    dynamic_symbols,
    dynamic_tags,
    read_tables,
    section_relocations,
    static_symbols,
)
from hpkg.errors import ImageError

# Larger than any binary hpkg is meant to read whole (the CLI checks the same bound before parsing).
MAX_IMAGE_FILE_SIZE = 4 << 30


def _open(path: Path) -> bytes | mmap.mmap:
    """The file's bytes, mapped read-only, once checked to be a linked ELF x86-64 file (one line each)."""
    try:
        info = path.stat()
        # A FIFO would block the read until a writer comes, a device or a huge sparse file never end.
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(f"{path}: is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{path}: not a regular file")
        if info.st_size > MAX_IMAGE_FILE_SIZE:
            raise ImageError(f"{path}: {info.st_size} bytes, larger than any binary hpkg reads")
        with open(path, "rb") as f:
            head = f.read(EHDR.size)
            _check_header(path, head, info.st_size)
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) != info.st_size:  # changed under our feet between the stat and the mapping
        data.close()
        raise ImageError(f"{path}: cannot read: the file changed while it was opened")
    return data


def _check_header(path: Path, head: bytes, size: int) -> None:
    """Reject what is not a linked ELF x86-64 file, in one line each."""
    if head[:4] != ELF_MAGIC:
        raise ImageError(f"{path}: not an ELF file")
    if len(head) < EHDR.size:
        raise ImageError(f"{path}: truncated ELF header")
    header = ElfHeader.unpack_from(head)
    elf_class, machine = header.ident[EI_CLASS], header.machine
    if machine != EM_X86_64 or elf_class != ELFCLASS64:
        name = _MACHINES.get(machine, f"machine {machine}")
        bits = "64" if elf_class == ELFCLASS64 else "32"
        raise ImageError(f"{path}: unsupported architecture {name} ({bits}-bit); hpkg handles x86-64 only")
    elf_type = header.type
    if elf_type not in (ET_EXEC, ET_DYN):
        raise ImageError(f"{path}: not a linked executable or shared library (ELF type {elf_type})")
    h = header
    if h.phoff + h.phentsize * h.phnum > size or h.shoff + h.shentsize * h.shnum > size:
        raise ImageError(f"{path}: truncated ELF file ({size} bytes)")


def _text(name: bytes) -> str:
    """A symbol, section or version name as text; a name that is not UTF-8 keeps its bytes, escaped
    (`\\xff`), so that such a name still pairs with itself."""
    return name.decode("utf-8", "backslashreplace")


def _read_sections(
    tables: ElfTables, size: int, path: Path, check: bool = True
) -> tuple[tuple[Section, ...], dict[str, tuple[int, int]]]:
    """Every named section, and where each name's bytes are in the file (the first with contents)."""
    sections: list[Section] = []
    spans: dict[str, tuple[int, int]] = {}
    for s, raw_name in zip(tables.sections, tables.section_names, strict=True):
        name = _text(raw_name)
        if not name:
            continue
        nobits = s.type == SHT_NOBITS
        section = Section(
            name=name,
            address=LinkAddress(s.addr),
            offset=FileOffset(s.offset),
            size=s.size,
            alloc=bool(s.flags & SHF_ALLOC),
            writable=bool(s.flags & SHF_WRITE),
            executable=bool(s.flags & SHF_EXECINSTR),
            nobits=nobits,
            tls=bool(s.flags & SHF_TLS),
        )
        if check and not nobits and section.size and s.offset + s.size > size:
            raise ImageError(f"{path}: truncated ELF file: section {name} ends past its end")
        sections.append(section)
        if not nobits and name not in spans:
            spans[name] = (s.offset, min(s.size, max(size - s.offset, 0)))
    return tuple(sections), spans


# p_type and p_flags as LIEF named them (an Image's segments keep those names).
_SEGMENT_KINDS = {
    0: "PT_NULL_", 1: "LOAD", 2: "DYNAMIC", 3: "INTERP", 4: "NOTE", 5: "SHLIB", 6: "PHDR", 7: "TLS",
    0x6474E550: "GNU_EH_FRAME", 0x6474E551: "GNU_STACK", 0x6474E552: "GNU_RELRO",
    0x6474E553: "GNU_PROPERTY", 0x65041580: "PAX_FLAGS",
}


def _segment_flags(flags: int) -> str:
    if flags & ~7:
        return str(flags)
    named = [name for bit, name in ((1, "X"), (2, "W"), (4, "R")) if flags & bit]
    return "|".join(named) or "NONE"


def _read_segments(tables: ElfTables) -> tuple[Segment, ...]:
    return tuple(
        Segment(
            kind=_SEGMENT_KINDS.get(p.type, str(p.type)),
            address=LinkAddress(p.vaddr),
            offset=FileOffset(p.offset),
            file_size=p.filesz,
            memory_size=p.memsz,
            flags=_segment_flags(p.flags),
        )
        for p in tables.segments
    )


# st_type → what hpkg makes of the symbol (section, file and common symbols are dropped).
_SYMBOL_KINDS: dict[int, SymbolKind] = {
    STT_FUNC: SymbolKind.FUNCTION,
    STT_GNU_IFUNC: SymbolKind.FUNCTION,
    STT_OBJECT: SymbolKind.OBJECT,
    STT_TLS: SymbolKind.TLS,
    STT_NOTYPE: SymbolKind.OTHER,
}


def _version(record: SymbolRecord) -> str | None:
    return _text(record.version) if record.version is not None else None


def _section_holding(sections: tuple[Section, ...], address: int) -> str | None:
    """The allocated section whose addresses include `address`."""
    for section in sections:
        if section.alloc and section.size and section.address <= address < section.address + section.size:
            return section.name
    return None


def _read_symbols(records: list[SymbolRecord], sections: tuple[Section, ...], dynamic: bool) -> list[Symbol]:
    """Function, object and TLS symbols (section, file and unnamed entries dropped)."""
    # Section indexes count the named sections from 1: the null section has no name.
    by_index = {i: s.name for i, s in enumerate(sections, start=1)}
    out: list[Symbol] = []
    for sym in records:
        info = sym.info
        kind = _SYMBOL_KINDS.get(st_type(info))
        if kind is None or not sym.name:
            continue
        name = _text(sym.name)
        shndx = sym.shndx
        defined = shndx != 0
        if kind is SymbolKind.OTHER and (not defined or name.startswith((".L", "$"))):
            continue
        section = by_index.get(shndx, "") if 0 < shndx < 0xFF00 else ""
        if dynamic and kind is not SymbolKind.TLS and defined and 0 < shndx < 0xFF00:
            # strip renumbers the section headers but cannot rewrite the loaded .dynsym: its st_shndx
            # may name another section of the stripped file. The address says which one it is.
            section = _section_holding(sections, sym.value) or section
        out.append(
            Symbol(
                name=name,
                address=LinkAddress(sym.value),
                size=sym.size,
                kind=kind,
                local=st_bind(info) == STB_LOCAL,
                section=section,
                version=_version(sym) if dynamic else None,
                dynamic=dynamic,
                defined=defined,
            )
        )
    return out


def _read_relocations(
    data,
    tables: ElfTables,
    sections: tuple[Section, ...],
    dynsym: list[SymbolRecord],
    symtab: list[SymbolRecord],
) -> tuple[ElfRelocations, ElfRelocations, list[GotSlot]]:
    """(dynamic, static) relocations and the GOT slots the dynamic ones bind; static ones are those
    `-Wl,--emit-relocs` kept in allocated sections."""
    tags = dynamic_tags(data, tables)
    records, _ = dynamic_relocations(data, tables, tags)
    dynamic = ElfRelocations()
    slots: list[GotSlot] = []
    ids: dict[str, int] = {"": 0}
    names = [_text(s.name) for s in dynsym]
    versions: dict[int, str | None] = {}  # by symbol index: one str per version, not per slot
    columns = (records.offsets, records.types, records.addends, records.symbols)
    for address, kind, addend, index in zip(*columns, strict=True):
        symbol = names[index] if index < len(names) else ""
        dynamic.append(address, kind, addend, symbol, "", ids)
        if symbol:
            type_name = relocation_type_name(kind)
            if type_name in GOT_RELOCATIONS:
                if index not in versions:
                    versions[index] = _version(dynsym[index])
                slots.append(GotSlot(LinkAddress(address), symbol, versions[index], type_name))
    static = ElfRelocations()
    found, from_dynsym = section_relocations(data, tables, bool(records), len(dynsym), len(symtab))
    if len(found):
        alloc = {s.name for s in sections if s.alloc}
        section_names = [_text(n) for n in tables.section_names]
        static_names = [_text(s.name) for s in symtab]
        ids = {"": 0}
        for i, (address, kind, addend, index, applies_to) in enumerate(
            zip(found.offsets, found.types, found.addends, found.symbols, found.sections, strict=True)
        ):
            section = section_names[applies_to] if applies_to else ""
            if section not in alloc:
                continue
            symbol = (names if from_dynsym[i] else static_names)[index] if index else ""
            static.append(address, kind, addend, symbol, section, ids)
    return dynamic, static, slots


def _read_plt_entries(tables: ElfTables, contents: SectionBytes) -> dict[int, int]:
    """PLT entry link address → the GOT slot its `jmp *slot(%rip)` goes through (`hpkg.elf.plt` reads
    .plt, .plt.sec and .plt.got, each by its sh_entsize)."""
    entries: dict[int, int] = {}
    for s, raw_name in zip(tables.sections, tables.section_names, strict=True):
        name = _text(raw_name)
        if name in PLT_SECTIONS:
            found = plt_entries(name, s.addr, contents.get(name, b""), s.entsize)
            entries.update((e.address, e.slot) for e in found)
    return entries


def _read_imports(symbols: list[Symbol], slots: list[GotSlot], plt: dict[int, int]) -> tuple[Import, ...]:
    got_by_name: dict[str, GotSlot] = {}
    for slot in slots:
        got_by_name.setdefault(slot.name, slot)
    slot_by_address = {slot.address: slot for slot in slots}
    plt_by_name: dict[str, int] = {}
    for entry, slot_address in sorted(plt.items()):
        slot = slot_by_address.get(LinkAddress(slot_address))
        if slot is not None:
            plt_by_name.setdefault(slot.name, entry)
    imports: list[Import] = []
    seen: set[str] = set()
    for sym in symbols:
        if not sym.dynamic or sym.defined or sym.name in seen:
            continue
        seen.add(sym.name)
        slot = got_by_name.get(sym.name)
        plt_entry = plt_by_name.get(sym.name)
        imports.append(
            Import(
                name=sym.name,
                version=sym.version,
                plt_address=LinkAddress(plt_entry) if plt_entry is not None else None,
                got_address=slot.address if slot is not None else None,
            )
        )
    # Exported symbols reached through the GOT or PLT (interposable calls inside a shared library).
    for name, slot in got_by_name.items():
        if name not in seen:
            seen.add(name)
            plt_entry = plt_by_name.get(name)
            imports.append(
                Import(name, slot.version, LinkAddress(plt_entry) if plt_entry else None, slot.address)
            )
    return tuple(imports)


def _read_build_id(data) -> str | None:
    """The GNU build-id as lowercase hex (`hpkg.elf` reads the notes), or None."""
    return read_build_id(data).hex() or None


def _read_init_functions(
    sections: tuple[Section, ...], contents: SectionBytes, dynamic: ElfRelocations
) -> tuple[LinkAddress, ...]:
    """Function addresses in .init_array/.fini_array (from RELATIVE addends in PIC, else the words)."""
    names = (".init_array", ".fini_array", ".preinit_array")
    arrays = [(s.address, s.end) for s in sections if s.name in names]
    if not arrays:
        return ()
    relative = {a: v for a, v in dynamic.relative() if any(low <= a < high for low, high in arrays)}
    found: list[LinkAddress] = []
    for section in sections:
        if section.name not in (".init_array", ".fini_array", ".preinit_array"):
            continue
        words = contents.get(section.name, b"")
        for i in range(0, len(words) - 7, 8):
            address = section.address + i
            value = relative.get(address, struct.unpack_from("<Q", words, i)[0])
            if value:
                found.append(LinkAddress(value))
    return tuple(found)


# Where distributions install separate debug files, named by build-id (the -dbgsym/-debuginfo layout).
DEBUG_ROOTS: tuple[str, ...] = ("/usr/lib/debug",)
# GNU build-ids are 8 (xxhash), 16 (md5, uuid) or 20 (sha1) bytes; only ld's --build-id=0xHEX makes
# other lengths, and it takes any. A lookup takes 2..64 bytes: a longer note (a crafted one can hold
# kilobytes) names no debug file, so it never becomes a path over NAME_MAX or a huge request line.
_BUILD_ID_HEX = re.compile(r"[0-9a-f]{4,128}")

# Finds the debug file of a build-id when no local root has it (a debuginfod client's `fetch`):
# a path, None for "none here", or an ImageError naming the build-id when the lookup itself failed.
DebugLookup = Callable[[str], "Path | None"]


def lookup_build_id(build_id: str | None) -> str | None:
    """`build_id` (lowercase hex) when it can name a debug file (2..64 bytes), else None."""
    if build_id and len(build_id) <= 128 and _BUILD_ID_HEX.fullmatch(build_id):
        return build_id
    return None


def debug_file_path(root: str | os.PathLike[str], build_id: str) -> Path:
    """ROOT/.build-id/ab/cdef….debug: where gdb, elfutils and dh_strip put the debug file of a build."""
    return Path(root) / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"


def find_debug_file(build_id: str | None, roots: tuple[str, ...] = DEBUG_ROOTS) -> Path | None:
    """The installed debug file of a build under one of `roots`, or None (also for a malformed build-id)."""
    key = lookup_build_id(build_id)
    if key is None:
        return None
    for root in roots:
        candidate = debug_file_path(root, key)
        try:
            if stat.S_ISREG(candidate.stat().st_mode):
                return candidate
        except OSError:
            continue
    return None


def _shown(build_id: str | None) -> str:
    """A build-id for an error line: a crafted one can be kilobytes long."""
    if build_id and len(build_id) > 128:
        return f"{build_id[:40]}… ({len(build_id) // 2} bytes)"
    return str(build_id)


def _debug_symbols(debug: Path, build_id: str | None, sections: tuple[Section, ...]) -> list[Symbol]:
    """The .symtab of a separate debug file (objcopy --only-keep-debug) made from the same build."""
    debug_data = _open(debug)
    with debug_data:
        debug_build_id = _read_build_id(debug_data)
        if build_id and debug_build_id and build_id != debug_build_id:
            raise ImageError(
                f"{debug}: debug file is for build-id {_shown(debug_build_id)}, not {_shown(build_id)}"
            )
        tables = read_tables(debug_data)
        debug_sections, _ = _read_sections(tables, len(debug_data), debug, check=False)
        # Debug files keep the section headers (as NOBITS), so symbol section names still line up.
        return _read_symbols(static_symbols(debug_data, tables), debug_sections or sections, dynamic=False)


def _look_up_debug_file(
    path: Path, build_id: str | None, roots: tuple[str, ...], fetch_debug: DebugLookup | None
) -> Path | None:
    """The debug file of a binary without symbols: the local roots first, then `fetch_debug`."""
    found = find_debug_file(build_id, roots)
    key = lookup_build_id(build_id)
    if found is not None or fetch_debug is None or key is None:
        return found
    try:
        return fetch_debug(key)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


def load_image(
    path: str | os.PathLike[str],
    debug: str | os.PathLike[str] | None = None,
    debug_roots: tuple[str, ...] = (),
    fetch_debug: DebugLookup | None = None,
) -> Image:
    """Load a linked ELF x86-64 binary; each file is read and parsed once.

    `debug` is a separate debug file that supplies the symbols; without one, a binary that has no
    symbol table of its own takes them from its debug file by build-id: installed under one of
    `debug_roots`, else from `fetch_debug` (hpkg.builder.debuginfod), if given.
    """
    path = Path(path)
    from hpkg.builder.pe_image import is_pe_file, load_pe_image

    if is_pe_file(path):  # MZ: the PE32+ backend produces the same Image (builder/pe_image.py)
        return load_pe_image(path, debug)
    data = _open(path)
    tables = read_tables(data)
    sections, spans = _read_sections(tables, len(data), path)
    if not any(s.executable and not s.nobits and s.size for s in sections):
        raise ImageError(f"{path}: no code: the file has no executable section with contents")
    contents = SectionBytes(data, spans)
    segments = _read_segments(tables)
    build_id = _read_build_id(data)
    dynsym = dynamic_symbols(data, tables, dynamic_tags(data, tables))
    symtab = static_symbols(data, tables)
    dynamic_symbols_ = _read_symbols(dynsym, sections, dynamic=True)
    static_symbols_ = _read_symbols(symtab, sections, dynamic=False)
    if debug is None and not static_symbols_:
        debug = _look_up_debug_file(path, build_id, debug_roots, fetch_debug)
    if debug is not None:
        static_symbols_ = _debug_symbols(Path(debug), build_id, sections)
    relocations = _read_relocations(data, tables, sections, dynsym, symtab)
    dynamic_relocations_, static_relocations, got_slots = relocations
    plt = _read_plt_entries(tables, contents)
    imports = _read_imports(dynamic_symbols_, got_slots, plt)
    eh = next((s for s in sections if s.name == ".eh_frame"), None)
    frames = parse_eh_frame(contents.get(".eh_frame", b""), eh.address) if eh is not None else ()
    has_interp = any(s.name == ".interp" for s in sections)
    if tables.header.type == ET_EXEC:
        kind = "executable"
    elif has_interp:
        kind = "pie-executable"
    else:
        kind = "shared-library"
    image = Image(
        path=str(path),
        machine="x86-64",
        build_id=build_id,
        kind=kind,
        entry=LinkAddress(tables.header.entry),
        sections=sections,
        segments=segments,
        symbols=tuple(static_symbols_ + dynamic_symbols_),
        imports=imports,
        got_slots=tuple(got_slots),
        dynamic_relocations=dynamic_relocations_,
        static_relocations=static_relocations,
        section_bytes=contents,
        init_functions=_read_init_functions(sections, contents, dynamic_relocations_),
        eh_frame=AddressRanges(frames),
        stripped=not static_symbols_,
        file_sha256=_file_sha256(path),
        debug_path=str(debug) if debug is not None else None,
    )
    image.release_pages()
    release_freed_memory()  # the tables read whole while loading
    return image


def _file_sha256(path: Path) -> bytes:
    """The SHA-256 of the whole file, read in chunks (hashing the mapping would make it all resident)."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").digest()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror}") from None
