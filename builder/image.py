"""Load an ELF x86-64 executable or shared library into an Image (LIEF for headers, one read for bytes)."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from pathlib import Path

from hpkg.arch.x86_64 import GOT_RELOCATIONS
from hpkg.builder.model import (
    ElfRelocation,
    FileOffset,
    GotSlot,
    Image,
    Import,
    LinkAddress,
    Section,
    Segment,
    Symbol,
    SymbolKind,
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
)
from hpkg.elf.constants import MACHINE_NAMES as _MACHINES
from hpkg.elf.ehframe import parse_eh_frame_records
from hpkg.elf.file import read_build_id
from hpkg.elf.plt import PLT_SECTIONS, plt_entries
from hpkg.elf.structs import ElfHeader
from hpkg.errors import ImageError


def _lief():
    import lief

    lief.logging.disable()
    return lief


# Larger than any binary hpkg is meant to read whole (the CLI checks the same bound before parsing).
MAX_IMAGE_FILE_SIZE = 4 << 30


def _check_header(path: Path) -> bytes:
    """Read the whole file and reject what is not a linked ELF x86-64 file, in one line each."""
    try:
        info = path.stat()
        # A FIFO would block the read until a writer comes, a device or a huge sparse file never end.
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(f"{path}: is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{path}: not a regular file")
        if info.st_size > MAX_IMAGE_FILE_SIZE:
            raise ImageError(f"{path}: {info.st_size} bytes, larger than any binary hpkg reads")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror}") from None
    if data[:4] != ELF_MAGIC:
        raise ImageError(f"{path}: not an ELF file")
    if len(data) < 64:
        raise ImageError(f"{path}: truncated ELF header")
    header = ElfHeader.unpack_from(data)
    elf_class, machine = header.ident[EI_CLASS], header.machine
    if machine != EM_X86_64 or elf_class != ELFCLASS64:
        name = _MACHINES.get(machine, f"machine {machine}")
        bits = "64" if elf_class == ELFCLASS64 else "32"
        raise ImageError(f"{path}: unsupported architecture {name} ({bits}-bit); hpkg handles x86-64 only")
    elf_type = header.type
    if elf_type not in (ET_EXEC, ET_DYN):
        raise ImageError(f"{path}: not a linked executable or shared library (ELF type {elf_type})")
    h = header
    if h.phoff + h.phentsize * h.phnum > len(data) or h.shoff + h.shentsize * h.shnum > len(data):
        raise ImageError(f"{path}: truncated ELF file ({len(data)} bytes)")
    return data


def _parse(path: Path):
    binary = _lief().ELF.parse(str(path))
    if binary is None:
        raise ImageError(f"{path}: malformed ELF file")
    return binary


def _read_sections(binary, data: bytes) -> tuple[tuple[Section, ...], dict[str, bytes]]:
    sections: list[Section] = []
    contents: dict[str, bytes] = {}
    for s in binary.sections:
        if not s.name:
            continue
        flags = int(s.flags)
        nobits = int(s.type) == SHT_NOBITS
        section = Section(
            name=s.name,
            address=LinkAddress(s.virtual_address),
            offset=FileOffset(s.file_offset),
            size=s.size,
            alloc=bool(flags & SHF_ALLOC),
            writable=bool(flags & SHF_WRITE),
            executable=bool(flags & SHF_EXECINSTR),
            nobits=nobits,
            tls=bool(flags & SHF_TLS),
        )
        if not nobits and section.size and s.file_offset + s.size > len(data) and data:
            raise ImageError(f"{binary_path(binary)}: truncated ELF file: section {s.name} ends past its end")
        sections.append(section)
        if not nobits and section.name not in contents:
            contents[section.name] = data[s.file_offset : s.file_offset + s.size]
    return tuple(sections), contents


def binary_path(binary) -> str:
    return binary.name or "image"


def _read_segments(binary) -> tuple[Segment, ...]:
    return tuple(
        Segment(
            kind=str(seg.type).rsplit(".", 1)[-1],
            address=LinkAddress(seg.virtual_address),
            offset=FileOffset(seg.file_offset),
            file_size=seg.physical_size,
            memory_size=seg.virtual_size,
            flags=str(seg.flags).rsplit(".", 1)[-1],
        )
        for seg in binary.segments
    )


def _symbol_version(sym) -> str | None:
    if not sym.has_version:
        return None
    version = sym.symbol_version
    if version.has_auxiliary_version:
        return version.symbol_version_auxiliary.name
    return None


def _symbol_kind(type_name: str) -> SymbolKind | None:
    return {
        "FUNC": SymbolKind.FUNCTION,
        "GNU_IFUNC": SymbolKind.FUNCTION,
        "OBJECT": SymbolKind.OBJECT,
        "TLS": SymbolKind.TLS,
        "NOTYPE": SymbolKind.OTHER,
    }.get(type_name)


def _read_symbols(symbols, sections: tuple[Section, ...], dynamic: bool) -> list[Symbol]:
    """Function, object and TLS symbols (section, file and unnamed entries dropped)."""
    by_index = {i: s.name for i, s in enumerate(sections, start=1)}
    out: list[Symbol] = []
    for sym in symbols:
        kind = _symbol_kind(_enum_name(sym.type))
        if kind is None or not sym.name:
            continue
        shndx = sym.shndx
        defined = shndx != 0
        if kind is SymbolKind.OTHER and (not defined or sym.name.startswith((".L", "$"))):
            continue
        section = by_index.get(shndx, "") if 0 < shndx < 0xFF00 else ""
        out.append(
            Symbol(
                name=sym.name,
                address=LinkAddress(sym.value),
                size=sym.size,
                kind=kind,
                local=_enum_name(sym.binding) == "LOCAL",
                section=section,
                version=_symbol_version(sym) if dynamic else None,
                dynamic=dynamic,
                defined=defined,
            )
        )
    return out


_ENUM_NAMES: dict[object, str] = {}


def _enum_name(value) -> str:
    """A LIEF enum's member name (`TYPE.X86_64_PC32` → "X86_64_PC32"), cached: str() on them is slow."""
    name = _ENUM_NAMES.get(value)
    if name is None:
        name = _ENUM_NAMES[value] = str(value).rsplit(".", 1)[-1]
    return name


def _read_relocations(
    binary, sections: tuple[Section, ...]
) -> tuple[list[ElfRelocation], list[ElfRelocation], list[GotSlot]]:
    """(dynamic, static) relocations and the GOT slots the dynamic ones bind, in one pass over LIEF's list;
    static ones are those `-Wl,--emit-relocs` kept in allocated sections."""
    dynamic: list[ElfRelocation] = []
    static: list[ElfRelocation] = []
    slots: list[GotSlot] = []
    alloc = {s.name for s in sections if s.alloc}
    for r in binary.relocations:
        purpose = _enum_name(r.purpose)
        type_name = _enum_name(r.type)
        symbol = r.symbol.name if r.has_symbol else ""
        if purpose in ("DYNAMIC", "PLTGOT"):
            dynamic.append(ElfRelocation(LinkAddress(r.address), type_name, symbol, r.addend, ""))
            if type_name in GOT_RELOCATIONS and symbol:
                slots.append(GotSlot(LinkAddress(r.address), symbol, _symbol_version(r.symbol), type_name))
            continue
        section = r.section.name if r.has_section else ""
        if section in alloc:
            static.append(ElfRelocation(LinkAddress(r.address), type_name, symbol, r.addend, section))
    return dynamic, static, slots


def _read_plt_entries(binary, contents: dict[str, bytes]) -> dict[int, int]:
    """PLT entry link address → the GOT slot its `jmp *slot(%rip)` goes through (`hpkg.elf.plt` reads
    .plt, .plt.sec and .plt.got, each by its sh_entsize)."""
    entries: dict[int, int] = {}
    for s in binary.sections:
        if s.name in PLT_SECTIONS:
            found = plt_entries(s.name, s.virtual_address, contents.get(s.name, b""), s.entry_size)
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


def _read_build_id(data: bytes) -> str | None:
    """The GNU build-id as lowercase hex (`hpkg.elf` reads the notes), or None."""
    return read_build_id(data).hex() or None


def _read_init_functions(binary, sections, contents, dynamic: list[ElfRelocation]) -> tuple[LinkAddress, ...]:
    """Function addresses in .init_array/.fini_array (from RELATIVE addends in PIC, else the words)."""
    relative = {r.address: r.addend for r in dynamic if r.type == "X86_64_RELATIVE"}
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


def find_debug_file(build_id: str | None, roots: tuple[str, ...] = DEBUG_ROOTS) -> Path | None:
    """The installed debug file of a build: ROOT/.build-id/ab/cdef….debug, as gdb and debuginfod look."""
    if not build_id or len(build_id) < 3:
        return None
    for root in roots:
        candidate = Path(root) / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
        if candidate.is_file():
            return candidate
    return None


def _debug_symbols(debug: Path, build_id: str | None, sections: tuple[Section, ...]) -> list[Symbol]:
    """The .symtab of a separate debug file (objcopy --only-keep-debug) made from the same build."""
    debug_data = _check_header(debug)
    binary = _parse(debug)
    debug_build_id = _read_build_id(debug_data)
    if build_id and debug_build_id and build_id != debug_build_id:
        raise ImageError(f"{debug}: debug file is for build-id {debug_build_id}, not {build_id}")
    debug_sections, _ = _read_sections(binary, b"")
    # Debug files keep the section headers (as NOBITS), so symbol section names still line up.
    return _read_symbols(binary.symtab_symbols, debug_sections or sections, dynamic=False)


def load_image(
    path: str | os.PathLike[str],
    debug: str | os.PathLike[str] | None = None,
    debug_roots: tuple[str, ...] = (),
) -> Image:
    """Load a linked ELF x86-64 binary; each file is read and parsed once.

    `debug` is a separate debug file that supplies the symbols; without one, a binary that has no
    symbol table of its own takes them from its debug file installed under `debug_roots`, if any.
    """
    path = Path(path)
    data = _check_header(path)
    binary = _parse(path)
    sections, contents = _read_sections(binary, data)
    if not any(s.executable and not s.nobits and s.size for s in sections):
        raise ImageError(f"{path}: no code: the file has no executable section with contents")
    segments = _read_segments(binary)
    build_id = _read_build_id(data)
    dynamic_symbols = _read_symbols(binary.dynamic_symbols, sections, dynamic=True)
    static_symbols = _read_symbols(binary.symtab_symbols, sections, dynamic=False)
    if debug is None and not static_symbols:
        debug = find_debug_file(build_id, debug_roots)
    if debug is not None:
        static_symbols = _debug_symbols(Path(debug), build_id, sections)
    dynamic_relocations, static_relocations, got_slots = _read_relocations(binary, sections)
    plt = _read_plt_entries(binary, contents)
    imports = _read_imports(dynamic_symbols, got_slots, plt)
    eh = next((s for s in sections if s.name == ".eh_frame"), None)
    frames = parse_eh_frame_records(contents.get(".eh_frame", b""), eh.address)[1] if eh is not None else []
    file_type = str(binary.header.file_type).rsplit(".", 1)[-1]
    has_interp = any(s.name == ".interp" for s in sections)
    if file_type == "EXEC":
        kind = "executable"
    elif has_interp:
        kind = "pie-executable"
    else:
        kind = "shared-library"
    return Image(
        path=str(path),
        machine="x86-64",
        build_id=build_id,
        kind=kind,
        entry=LinkAddress(binary.header.entrypoint),
        sections=sections,
        segments=segments,
        symbols=tuple(static_symbols + dynamic_symbols),
        imports=imports,
        got_slots=tuple(got_slots),
        dynamic_relocations=tuple(dynamic_relocations),
        static_relocations=tuple(static_relocations),
        section_bytes=contents,
        init_functions=_read_init_functions(binary, sections, contents, dynamic_relocations),
        eh_frame=tuple((LinkAddress(f.start), f.length) for f in frames if f.start and f.length),
        stripped=not static_symbols,
        file_sha256=hashlib.sha256(data).digest(),
    )
