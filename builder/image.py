"""Load an ELF x86-64 executable or shared library into an Image (LIEF for headers, one read for bytes)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

from hpkg.arch.x86_64 import GOT_RELOCATIONS, RELOCATION_TYPES_BY_NUMBER
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
from hpkg.elf.ehframe import parse_eh_frame_records
from hpkg.elf.file import read_build_id
from hpkg.elf.plt import PLT_SECTIONS, plt_entries
from hpkg.elf.structs import ElfHeader
from hpkg.errors import ImageError


def _lief():
    import lief

    lief.logging.disable()
    # LIEF 1.0 warns (RuntimeWarning "N is not a valid TYPE.") and hands back the bare number for an
    # enum value it does not know; 0.16 raises ValueError instead (`_member_name` catches that).
    warnings.filterwarnings("ignore", message=r".* is not a valid ", category=RuntimeWarning)
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
    try:
        binary = _lief().ELF.parse(str(path))
    except MemoryError:  # a size field asks LIEF for more than the process may have (std::bad_alloc)
        raise ImageError(f"{path}: malformed ELF file: its headers ask for more memory than exists") from None
    if binary is None:
        raise ImageError(f"{path}: malformed ELF file")
    return binary


def _text(name: str | bytes) -> str:
    """A symbol, section or version name as text: LIEF hands back `bytes` for a name that is not UTF-8;
    its bytes are kept, escaped (`\\xff`), so that such a name still pairs with itself."""
    return name if isinstance(name, str) else name.decode("utf-8", "backslashreplace")


def _relocation_type(relocation) -> str:
    """The psABI name of a relocation's type without "R_" ("X86_64_PC32"), read from r_info: LIEF's
    enum raises (0.16) or warns and returns an int (1.0) for a type number it does not know."""
    number = relocation.r_info(_lief().ELF.Header.CLASS.ELF64) & 0xFFFFFFFF
    known = RELOCATION_TYPES_BY_NUMBER.get(number)
    return known.short_name if known is not None else f"X86_64_UNKNOWN_{number}"


def _read_sections(binary, data: bytes, path: Path) -> tuple[tuple[Section, ...], dict[str, bytes]]:
    sections: list[Section] = []
    contents: dict[str, bytes] = {}
    for s in binary.sections:
        name = _text(s.name)
        if not name:
            continue
        flags = _member_number(s, "flags")
        nobits = _member_number(s, "type") == SHT_NOBITS
        section = Section(
            name=name,
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
            raise ImageError(f"{path}: truncated ELF file: section {name} ends past its end")
        sections.append(section)
        if not nobits and section.name not in contents:
            contents[section.name] = data[s.file_offset : s.file_offset + s.size]
    return tuple(sections), contents


def _member_name(value: object, attribute: str) -> str:
    """The name of a LIEF enum attribute ("LOAD", "X|R"); "UNKNOWN" for a value LIEF has no member for
    (0.16 raises ValueError when it converts one, 1.0 gives the number, named by its digits)."""
    try:
        return str(getattr(value, attribute)).rsplit(".", 1)[-1]
    except ValueError:
        return "UNKNOWN"


def _member_number(value: object, attribute: str) -> int:
    """The number of a LIEF enum attribute (sh_type, sh_flags); 0 where LIEF 0.16 has no member for it."""
    try:
        return int(getattr(value, attribute))
    except ValueError:
        return 0


def _read_segments(binary) -> tuple[Segment, ...]:
    return tuple(
        Segment(
            kind=_member_name(seg, "type"),
            address=LinkAddress(seg.virtual_address),
            offset=FileOffset(seg.file_offset),
            file_size=seg.physical_size,
            memory_size=seg.virtual_size,
            flags=_member_name(seg, "flags"),
        )
        for seg in binary.segments
    )


def _symbol_version(sym) -> str | None:
    if not sym.has_version:
        return None
    version = sym.symbol_version
    if version.has_auxiliary_version:
        return _text(version.symbol_version_auxiliary.name)
    return None


# st_type → what hpkg makes of the symbol (section, file and common symbols are dropped).
_SYMBOL_KINDS: dict[int, SymbolKind] = {
    STT_FUNC: SymbolKind.FUNCTION,
    STT_GNU_IFUNC: SymbolKind.FUNCTION,
    STT_OBJECT: SymbolKind.OBJECT,
    STT_TLS: SymbolKind.TLS,
    STT_NOTYPE: SymbolKind.OTHER,
}


def _section_holding(sections: tuple[Section, ...], address: int) -> str | None:
    """The allocated section whose addresses include `address`."""
    for section in sections:
        if section.alloc and section.size and section.address <= address < section.address + section.size:
            return section.name
    return None


def _read_symbols(symbols, sections: tuple[Section, ...], dynamic: bool) -> list[Symbol]:
    """Function, object and TLS symbols (section, file and unnamed entries dropped)."""
    by_index = {i: s.name for i, s in enumerate(sections, start=1)}
    out: list[Symbol] = []
    for sym in symbols:
        # st_info read raw: LIEF's type and binding enums fail on values they have no member for.
        info = sym.information
        kind = _SYMBOL_KINDS.get(st_type(info))
        name = _text(sym.name)
        if kind is None or not name:
            continue
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
        type_name = _relocation_type(r)
        symbol = _text(r.symbol.name) if r.has_symbol else ""
        if purpose in ("DYNAMIC", "PLTGOT"):
            dynamic.append(ElfRelocation(LinkAddress(r.address), type_name, symbol, r.addend, ""))
            if type_name in GOT_RELOCATIONS and symbol:
                slots.append(GotSlot(LinkAddress(r.address), symbol, _symbol_version(r.symbol), type_name))
            continue
        section = _text(r.section.name) if r.has_section else ""
        if section in alloc:
            static.append(ElfRelocation(LinkAddress(r.address), type_name, symbol, r.addend, section))
    return dynamic, static, slots


def _read_plt_entries(binary, contents: dict[str, bytes]) -> dict[int, int]:
    """PLT entry link address → the GOT slot its `jmp *slot(%rip)` goes through (`hpkg.elf.plt` reads
    .plt, .plt.sec and .plt.got, each by its sh_entsize)."""
    entries: dict[int, int] = {}
    for s in binary.sections:
        name = _text(s.name)
        if name in PLT_SECTIONS:
            found = plt_entries(name, s.virtual_address, contents.get(name, b""), s.entry_size)
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
    debug_data = _check_header(debug)
    binary = _parse(debug)
    debug_build_id = _read_build_id(debug_data)
    if build_id and debug_build_id and build_id != debug_build_id:
        raise ImageError(
            f"{debug}: debug file is for build-id {_shown(debug_build_id)}, not {_shown(build_id)}"
        )
    debug_sections, _ = _read_sections(binary, b"", debug)
    # Debug files keep the section headers (as NOBITS), so symbol section names still line up.
    return _read_symbols(binary.symtab_symbols, debug_sections or sections, dynamic=False)


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
    data = _check_header(path)
    binary = _parse(path)
    sections, contents = _read_sections(binary, data, path)
    if not any(s.executable and not s.nobits and s.size for s in sections):
        raise ImageError(f"{path}: no code: the file has no executable section with contents")
    segments = _read_segments(binary)
    build_id = _read_build_id(data)
    dynamic_symbols = _read_symbols(binary.dynamic_symbols, sections, dynamic=True)
    static_symbols = _read_symbols(binary.symtab_symbols, sections, dynamic=False)
    if debug is None and not static_symbols:
        debug = _look_up_debug_file(path, build_id, debug_roots, fetch_debug)
    if debug is not None:
        static_symbols = _debug_symbols(Path(debug), build_id, sections)
    dynamic_relocations, static_relocations, got_slots = _read_relocations(binary, sections)
    plt = _read_plt_entries(binary, contents)
    imports = _read_imports(dynamic_symbols, got_slots, plt)
    eh = next((s for s in sections if s.name == ".eh_frame"), None)
    frames = parse_eh_frame_records(contents.get(".eh_frame", b""), eh.address)[1] if eh is not None else []
    has_interp = any(s.name == ".interp" for s in sections)
    if ElfHeader.unpack_from(data).type == ET_EXEC:
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
        debug_path=str(debug) if debug is not None else None,
    )
