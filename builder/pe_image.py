"""Load a Windows x64 (PE32+) executable or DLL into the same Image the ELF backend produces.

One backend per format, one surface (angr/cle): the diff core never learns which format it reads.
How PE facts map onto the Image:

  link address    ImageBase + RVA (the preferred virtual address): what `objdump -d` shows and what
                  the pointer words of the file hold, so base relocations need no translation.
  sections        the section table; `.bss` (no raw data) is nobits, discardable sections (`.reloc`,
                  `.debug_*`) are not allocated; a section's bytes run to its VirtualSize, zero-filled.
  symbols         the COFF symbol table (mingw keeps it unless stripped): a function when its derived
                  type says so (DTYPE_FUNCTION), EXTERNAL global, STATIC local; data objects sized up to
                  the next symbol of their section (COFF symbols have no size); then the export table.
  eh_frame        the function ranges of `.pdata` (RUNTIME_FUNCTION, chained parts attributed,
                  hpkg.pe.pdata): the counterpart of .eh_frame's FDEs; they size every function. An
                  adjacent chained part extends its primary; a distant one no symbol names is called
                  `primary.cold`, the diff's word for a split part of a function.
  imports         per IAT slot: `dll!name` (`dll!#ordinal`), the DLL name lower-cased; the slot plays the
                  GOT slot's part (`call [rip+slot]`), and a `jmp [rip+slot]` thunk (mingw's import stubs)
                  the PLT entry's, so a call through either resolves to the import.
  relocations     each DIR64 base relocation as an X86_64_RELATIVE one whose addend is the word's value:
                  the pointer words the data and rodata comparisons follow. No static relocations:
                  PE references are always recovered by disassembly.
  build_id        the image identity (hpkg.pe.identity): CodeView GUID + age, else TimeDateStamp +
                  SizeOfImage + a digest of the headers; 20 bytes, hex.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import stat
import struct
from pathlib import Path

from hpkg.builder.model import (
    AddressRanges,
    ElfRelocation,
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
)
from hpkg.errors import ImageError
from hpkg.pe.constants import (
    DOS_MAGIC,
    IMAGE_DIRECTORY_ENTRY_BASERELOC,
    IMAGE_DIRECTORY_ENTRY_EXCEPTION,
    IMAGE_DIRECTORY_ENTRY_IAT,
    IMAGE_DIRECTORY_ENTRY_IMPORT,
    IMAGE_DIRECTORY_ENTRY_TLS,
    IMAGE_SCN_CNT_UNINITIALIZED_DATA,
    IMAGE_SYM_CLASS_EXTERNAL,
    IMAGE_SYM_CLASS_STATIC,
)
from hpkg.pe.headers import PeHeaders, file_reader, parse_headers, resolve_long_names
from hpkg.pe.identity import image_identity
from hpkg.pe.pdata import FunctionRange, function_ranges
from hpkg.pe.relocations import pointer_words

# The same bound as the ELF backend's (builder/image.py): larger than any binary hpkg reads whole.
MAX_IMAGE_FILE_SIZE = 4 << 30
# `jmp qword ptr [rip + disp32]`: the body of an import thunk.
_THUNK = re.compile(rb"\xff\x25", re.DOTALL)
_THUNK_SIZE = 6
# Zero-filled section tails (VirtualSize past the raw data) are held as bytes: a crafted VirtualSize
# must not make the diff allocate gigabytes.
MAX_ZERO_FILL = 256 << 20
# The derived type "function" of a COFF symbol's Type field, as LIEF names it.
_FUNCTION_TYPE = "FUNCTION"
# IMAGE_TLS_DIRECTORY64: StartAddressOfRawData, EndAddressOfRawData, AddressOfIndex, AddressOfCallBacks
# (VAs), SizeOfZeroFill, Characteristics.
TLS_DIRECTORY64 = struct.Struct("<QQQQII")


def is_pe_file(path: str | Path) -> bool:
    """Whether `path` is a regular file that starts with the MZ magic (the dispatch of load_image)."""
    try:
        if not stat.S_ISREG(Path(path).stat().st_mode):
            return False
        with open(path, "rb") as f:
            return f.read(2) == DOS_MAGIC
    except OSError:
        return False


def _read_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_FILE_SIZE:
            raise ImageError(f"{path}: {size} bytes, larger than any binary hpkg reads")
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror}") from None


def _parse(path: Path):
    import lief

    lief.logging.disable()
    try:
        binary = lief.PE.parse(str(path))
    except MemoryError:
        raise ImageError(f"{path}: malformed PE file: its headers ask for more memory than exists") from None
    if binary is None:
        raise ImageError(f"{path}: malformed PE file")
    return binary


def _sections(headers: PeHeaders, data: bytes) -> tuple[tuple[Section, ...], dict[str, bytes]]:
    """Sections at their link addresses, their bytes up to VirtualSize (the uninitialised tail zeros)."""
    read = file_reader(data, headers)
    sections: list[Section] = []
    contents: dict[str, bytes] = {}
    zero_filled = 0
    for s in headers.sections:
        if s.raw_size and s.raw_offset + min(s.raw_size, s.size) > len(data):
            raise ImageError(f"truncated PE file: section {s.name} ends past its end")
        nobits = not s.raw_size and bool(s.characteristics & IMAGE_SCN_CNT_UNINITIALIZED_DATA)
        zero_filled += 0 if nobits else max(s.size - s.raw_size, 0)
        if zero_filled > MAX_ZERO_FILL:
            raise ImageError(
                f"malformed PE file: section {s.name} asks for more zero-filled memory than hpkg reads"
            )
        section = Section(
            name=s.name,
            address=LinkAddress(headers.image_base + s.virtual_address),
            offset=FileOffset(s.raw_offset),
            size=s.size,
            alloc=not s.discardable,
            writable=s.writable,
            executable=s.executable,
            nobits=nobits,
            tls=False,  # .tls holds the template the loader copies; code reaches copies through gs:[0x58]
        )
        sections.append(section)
        if not nobits and s.name not in contents:
            contents[s.name] = read(s.virtual_address, s.size)
    return tuple(sections), contents


def _segments(headers: PeHeaders) -> tuple[Segment, ...]:
    """One LOAD segment per mapped section: PE maps sections one by one."""
    out = []
    for s in headers.sections:
        if s.discardable:
            continue
        flags = "R" + ("W" if s.writable else "") + ("X" if s.executable else "")
        out.append(
            Segment(
                "LOAD",
                LinkAddress(headers.image_base + s.virtual_address),
                FileOffset(s.raw_offset),
                s.raw_size,
                s.size,
                flags,
            )
        )
    return tuple(out)


def _tls_segment(headers: PeHeaders, data: bytes) -> tuple[Segment, ...]:
    """The TLS directory's template as a TLS segment (file size: the initialised template, memory size:
    with SizeOfZeroFill): the static TLS block every thread of a running process already has."""
    rva, size = headers.directory(IMAGE_DIRECTORY_ENTRY_TLS)
    raw = file_reader(data, headers)(rva, TLS_DIRECTORY64.size) if rva and size else b""
    if len(raw) < TLS_DIRECTORY64.size:
        return ()
    start, end, _, _, zero_fill, _ = TLS_DIRECTORY64.unpack(raw)
    template = max(end - start, 0)
    offset = headers.rva_to_offset(start - headers.image_base) if start >= headers.image_base else None
    return (Segment("TLS", LinkAddress(start), FileOffset(offset or 0), template, template + zero_fill, "R"),)


def _coff_symbols(binary, sections: tuple[Section, ...], linker_tables: set[str]) -> list[Symbol]:
    """Functions and data objects of the COFF symbol table (section, file, label and `.`-names dropped,
    and every symbol of the `linker_tables` sections)."""
    raw: list[tuple[str, int, bool, bool, Section]] = []
    # Input-section bounds (a section symbol's aux record gives its length): where an object ends at the
    # latest, so that a constant table never runs on into another file's string literals.
    bounds: dict[str, set[int]] = {}
    for sym in binary.symbols:
        index = sym.section_idx
        if index <= 0 or index > len(sections):
            continue  # undefined, absolute or debug symbols
        storage = int(sym.storage_class)
        if storage not in (IMAGE_SYM_CLASS_EXTERNAL, IMAGE_SYM_CLASS_STATIC):
            continue
        name = sym.name if isinstance(sym.name, str) else sym.name.decode("utf-8", "backslashreplace")
        section = sections[index - 1]
        if not section.alloc:
            continue
        # Section symbols (`.text` with its aux record), `.refptr.x`/`.weak.x` helper words, `.file`.
        if not name or name.startswith("."):
            for aux in sym.auxiliary_symbols:
                length = getattr(aux, "length", None)
                if length is not None:
                    start = section.address + sym.value
                    bounds.setdefault(section.name, set()).update((start, start + length))
            continue
        if section.name in linker_tables:
            continue  # the import tables (`__imp_x` slots, hint/name entries): imports, not variables
        function = str(sym.complex_type).rsplit(".", 1)[-1] == _FUNCTION_TYPE
        raw.append((name, section.address + sym.value, function, storage == IMAGE_SYM_CLASS_STATIC, section))
    # COFF symbols carry no size: a data object runs to the next symbol of its section.
    for _, address, _, _, section in raw:
        bounds.setdefault(section.name, set()).add(address)
    starts = {name: sorted(addresses) for name, addresses in bounds.items()}
    out: list[Symbol] = []
    for name, address, function, local, section in raw:
        if function:
            kind, size = SymbolKind.FUNCTION, 0  # sized by .pdata (discover_functions)
        elif section.executable:
            kind, size = SymbolKind.OTHER, 0  # markers such as __CTOR_LIST__ in .text
        else:
            addresses = starts[section.name]
            i = bisect.bisect_right(addresses, address)
            kind, size = SymbolKind.OBJECT, (addresses[i] if i < len(addresses) else section.end) - address
        out.append(Symbol(name, LinkAddress(address), size, kind, local, section.name))
    return out


def _import_sections(headers: PeHeaders) -> set[str]:
    """The sections holding the import directory or the IAT (mingw's `.idata`): linker tables."""
    found = set()
    for index in (IMAGE_DIRECTORY_ENTRY_IMPORT, IMAGE_DIRECTORY_ENTRY_IAT):
        rva, size = headers.directory(index)
        section = headers.section_at(rva) if rva and size else None
        if section is not None:
            found.add(section.name)
    return found


def _export_symbols(binary, headers: PeHeaders, sections: tuple[Section, ...]) -> list[Symbol]:
    """The export table's named entries (a DLL's interface), as dynamic symbols; forwarders dropped."""
    if not binary.has_exports:
        return []
    out: list[Symbol] = []
    for entry in binary.get_export().entries:
        name = entry.name if isinstance(entry.name, str) else entry.name.decode("utf-8", "backslashreplace")
        if not name or entry.is_extern or not entry.address:
            continue
        address = headers.image_base + entry.address
        section = next((s for s in sections if s.alloc and s.address <= address < s.end), None)
        if section is None:
            continue
        kind = SymbolKind.FUNCTION if section.executable else SymbolKind.OBJECT
        out.append(Symbol(name, LinkAddress(address), 0, kind, False, section.name, dynamic=True))
    return out


def _import_slots(binary, headers: PeHeaders) -> dict[int, str]:
    """IAT slot link address → `dll!name` (or `dll!#ordinal`)."""
    slots: dict[int, str] = {}
    for library in binary.imports:
        dll = library.name.lower()
        for entry in library.entries:
            if not entry.iat_address:
                continue
            name = f"#{entry.ordinal}" if entry.is_ordinal else entry.name
            slots[headers.image_base + entry.iat_address] = f"{dll}!{name}"
    return slots


def _thunks(
    sections: tuple[Section, ...],
    contents: dict[str, bytes],
    slots: dict[int, str],
    ranges: tuple[tuple[LinkAddress, int], ...],
) -> dict[int, int]:
    """`jmp [rip+slot]` import thunks in code: thunk link address → the IAT slot it jumps through.

    The 6 bytes must name an IAT slot exactly, which no other instruction's bytes do by accident; a
    thunk has no `.pdata` entry, so the same instruction inside a function's range (a tail call
    through the IAT) is not one."""
    starts = [start for start, _ in ranges]

    def inside_function(address: int) -> bool:
        i = bisect.bisect_right(starts, address) - 1
        return i >= 0 and ranges[i][0] < address < ranges[i][0] + ranges[i][1]

    found: dict[int, int] = {}
    for section in sections:
        if not section.executable or section.nobits:
            continue
        code = contents.get(section.name, b"")
        for match in _THUNK.finditer(code):
            at = match.start()
            if at + _THUNK_SIZE > len(code):
                break
            (displacement,) = struct.unpack_from("<i", code, at + 2)
            slot = section.address + at + _THUNK_SIZE + displacement
            if slot in slots and not inside_function(section.address + at):
                found[section.address + at] = slot
    return found


def _imports(slots: dict[int, str], thunks: dict[int, int]) -> tuple[Import, ...]:
    """One Import per thunk (its PLT-like entry and slot), and one per slot no thunk jumps through."""
    out = [
        Import(slots[slot], None, LinkAddress(thunk), LinkAddress(slot))
        for thunk, slot in sorted(thunks.items())
    ]
    reached = set(thunks.values())
    out.extend(
        Import(name, None, None, LinkAddress(slot))
        for slot, name in sorted(slots.items())
        if slot not in reached
    )
    return tuple(out)


def _pointer_relocations(
    headers: PeHeaders, data: bytes, sections: tuple[Section, ...], contents: dict[str, bytes]
) -> tuple[ElfRelocation, ...]:
    """DIR64 base relocations as RELATIVE relocations: the word's address and the address it holds.

    The word's value moves to the relocation's addend and the word in `contents` becomes zeros, as
    in an ELF file with RELA relocations: comparisons then see a pointer as what it points to (the
    relocation), never as an address that shifts with every change before its target."""
    read = file_reader(data, headers)
    rva, size = headers.directory(IMAGE_DIRECTORY_ENTRY_BASERELOC)
    out = []
    cleared: dict[str, bytearray] = {}
    for where in pointer_words(read, rva, size):
        word = read(where, 8)
        if len(word) != 8:
            continue
        address = headers.image_base + where
        out.append(
            ElfRelocation(LinkAddress(address), "X86_64_RELATIVE", "", struct.unpack("<Q", word)[0], "")
        )
        section = next((s for s in sections if s.address <= address and address + 8 <= s.end), None)
        if section is not None and section.name in contents:
            raw = cleared.setdefault(section.name, bytearray(contents[section.name]))
            raw[address - section.address : address - section.address + 8] = bytes(8)
    for name, raw in cleared.items():
        contents[name] = bytes(raw)
    return tuple(out)


def _function_ranges(headers: PeHeaders, data: bytes) -> list[FunctionRange]:
    """`.pdata`'s function ranges at link addresses (begin and primary moved by ImageBase)."""
    rva, size = headers.directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION)
    base = headers.image_base
    return [
        FunctionRange(base + r.begin, r.size, base + r.primary)
        for r in function_ranges(file_reader(data, headers), rva, size)
    ]


def _split_part_names(ranges: list[FunctionRange], symbols: list[Symbol]) -> list[Symbol]:
    """A name for each distant chained part no function symbol names: its primary's, as `name.cold`
    (`name.cold.1`, …), so the diff treats it as GCC's split part of that function (parent `name`)."""
    functions = {s.address: s for s in symbols if s.kind is SymbolKind.FUNCTION}
    counts: dict[str, int] = {}
    out = []
    for r in ranges:
        primary = functions.get(r.primary)
        if r.primary == r.begin or r.begin in functions or primary is None:
            continue
        n = counts[primary.name] = counts.get(primary.name, -1) + 1
        name = f"{primary.name}.cold" + (f".{n}" if n else "")
        out.append(Symbol(name, LinkAddress(r.begin), r.size, SymbolKind.FUNCTION, True, primary.section))
    return out


def _section_bytes(contents: dict[str, bytes]) -> SectionBytes:
    """The sections' bytes as the diff reads them (one buffer and spans, like a mapped ELF file): a PE
    section's contents differ from its file bytes (virtual-size padding, cleared pointer words)."""
    spans: dict[str, tuple[int, int]] = {}
    offset = 0
    for name, blob in contents.items():
        spans[name] = (offset, len(blob))
        offset += len(blob)
    return SectionBytes(b"".join(contents.values()), spans)


def load_pe_image(path: str | Path, debug: str | Path | None = None) -> Image:
    """Load a PE32+ x86-64 executable or DLL; the file is read once and parsed once by LIEF (symbols,
    imports, exports), the rest by hpkg.pe."""
    path = Path(path)
    if debug is not None:
        raise ImageError(f"{path}: separate debug files are not read for PE images (PDB or DWARF): give none")
    data = _read_file(path)
    headers = resolve_long_names(parse_headers(file_reader(data), str(path)), data)
    try:
        sections, contents = _sections(headers, data)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None
    if not any(s.executable and not s.nobits and s.size for s in sections):
        raise ImageError(f"{path}: no code: the file has no executable section with contents")
    relocations = _pointer_relocations(headers, data, sections, contents)
    binary = _parse(path)
    slots = _import_slots(binary, headers)
    ranges = _function_ranges(headers, data)
    spans = tuple((LinkAddress(r.begin), r.size) for r in ranges)
    thunks = _thunks(sections, contents, slots, spans)
    symbols = [
        s for s in _coff_symbols(binary, sections, _import_sections(headers)) if s.address not in thunks
    ]
    exported = [s for s in _export_symbols(binary, headers, sections) if s.address not in thunks]
    symbols += _split_part_names(ranges, symbols + exported)
    return Image(
        path=str(path),
        machine="x86-64",
        build_id=image_identity(headers, file_reader(data, headers)).hex(),
        kind="pe-library" if headers.is_dll else "pe-executable",
        entry=LinkAddress(headers.image_base + headers.entry_rva),
        sections=sections,
        segments=_segments(headers) + _tls_segment(headers, data),
        symbols=tuple(symbols + exported),
        imports=_imports(slots, thunks),
        got_slots=tuple(
            GotSlot(LinkAddress(a), name, None, "IMAGE_IAT") for a, name in sorted(slots.items())
        ),
        dynamic_relocations=ElfRelocations.of(relocations),
        static_relocations=ElfRelocations(),
        section_bytes=_section_bytes(contents),
        eh_frame=AddressRanges(spans),
        stripped=not any(s.kind is SymbolKind.FUNCTION for s in symbols),
        file_sha256=hashlib.sha256(data).digest(),
        pe_headers=headers,
    )
