"""PE32+ headers (DOS stub pointer, COFF file header, optional header, section table), read through
one interface from a file or from the memory of a process that mapped the image.

An `RvaReader` reads `size` bytes at a relative virtual address (short or empty past the end). In a
process an image's bytes sit at ImageBase + RVA; in a file they sit where the section table says
(`file_reader`). The headers themselves are at RVA 0 and file offset 0 alike: Wine maps the first
SizeOfHeaders bytes of the file at the image's base (`r--p`, with the path, in /proc/PID/maps).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace

from hpkg.errors import ImageError
from hpkg.pe.constants import (
    DOS_MAGIC,
    E_LFANEW,
    IMAGE_FILE_DLL,
    IMAGE_FILE_MACHINE_AMD64,
    IMAGE_NT_OPTIONAL_HDR32_MAGIC,
    IMAGE_NT_OPTIONAL_HDR64_MAGIC,
    IMAGE_SCN_MEM_DISCARDABLE,
    IMAGE_SCN_MEM_EXECUTE,
    IMAGE_SCN_MEM_WRITE,
    MACHINE_NAMES,
    PE_SIGNATURE,
)

RvaReader = Callable[[int, int], bytes]

FILE_HEADER = struct.Struct("<HHIIIHH")  # IMAGE_FILE_HEADER
# IMAGE_OPTIONAL_HEADER64 up to NumberOfRvaAndSizes (the data directories follow).
OPTIONAL_HEADER64 = struct.Struct("<HBBIIIIIQIIHHHHHHIIIIHHQQQQII")
IMAGE_BASE_FIELD = 24  # byte offset of ImageBase (8 bytes) in IMAGE_OPTIONAL_HEADER64
DATA_DIRECTORY = struct.Struct("<II")  # IMAGE_DATA_DIRECTORY: VirtualAddress, Size
SECTION_HEADER = struct.Struct("<8sIIIIIIHHI")  # IMAGE_SECTION_HEADER
MAX_SECTIONS = 96  # the loader's own limit (the COFF field allows 65,535)
MAX_DIRECTORIES = 16
MAX_HEADERS_SIZE = 1 << 20  # SizeOfHeaders is FileAlignment-rounded: 0x400 or 0x1000 in practice


@dataclass(frozen=True, slots=True)
class SectionHeader:
    """One IMAGE_SECTION_HEADER: where its bytes lie in memory (RVA) and in the file."""

    name: str
    virtual_address: int
    virtual_size: int
    raw_offset: int
    raw_size: int
    characteristics: int

    @property
    def size(self) -> int:
        """Bytes it occupies in memory (VirtualSize; mingw's linker may leave it 0: then the raw size)."""
        return self.virtual_size or self.raw_size

    @property
    def discardable(self) -> bool:
        return bool(self.characteristics & IMAGE_SCN_MEM_DISCARDABLE)

    @property
    def executable(self) -> bool:
        return bool(self.characteristics & IMAGE_SCN_MEM_EXECUTE)

    @property
    def writable(self) -> bool:
        return bool(self.characteristics & IMAGE_SCN_MEM_WRITE)

    def contains(self, rva: int) -> bool:
        return self.virtual_address <= rva < self.virtual_address + self.size


@dataclass(frozen=True)
class PeHeaders:
    """What the headers of a PE32+ x86-64 image say: layout, identity fields and the data directories."""

    machine: int
    characteristics: int
    time_date_stamp: int
    symbol_table_offset: int
    symbol_count: int
    image_base: int
    size_of_image: int
    size_of_headers: int
    entry_rva: int
    dll_characteristics: int
    optional_header_offset: int  # where IMAGE_OPTIONAL_HEADER64 starts (RVA = file offset in the headers)
    directories: tuple[tuple[int, int], ...]  # (RVA, size) per IMAGE_DIRECTORY_ENTRY_*
    sections: tuple[SectionHeader, ...]

    @property
    def is_dll(self) -> bool:
        return bool(self.characteristics & IMAGE_FILE_DLL)

    def directory(self, index: int) -> tuple[int, int]:
        """(RVA, size) of a data directory; (0, 0) when the image has none."""
        return self.directories[index] if index < len(self.directories) else (0, 0)

    def section_at(self, rva: int) -> SectionHeader | None:
        return next((s for s in self.sections if s.contains(rva)), None)

    def rva_to_offset(self, rva: int) -> int | None:
        """The file offset of an RVA, or None where the file holds no byte for it (zero-filled tail)."""
        if rva < self.size_of_headers:
            return rva
        section = self.section_at(rva)
        if section is None or rva - section.virtual_address >= section.raw_size:
            return None
        return section.raw_offset + rva - section.virtual_address


def looks_like_pe(head: bytes) -> bool:
    """Cheap detection: an MZ header (the full checks are `parse_headers`'s)."""
    return head[:2] == DOS_MAGIC


def parse_headers(read: RvaReader, what: str) -> PeHeaders:
    """The headers of a PE32+ x86-64 image at RVA 0 of `read`; ImageError (one line) for anything else."""
    dos = read(0, 64)
    if dos[:2] != DOS_MAGIC:
        raise ImageError(f"{what}: not a PE file")
    if len(dos) < 64:
        raise ImageError(f"{what}: truncated PE file ({len(dos)} bytes of DOS header)")
    (pe_offset,) = struct.unpack_from("<I", dos, E_LFANEW)
    if pe_offset > 1 << 16:
        raise ImageError(f"{what}: malformed PE file: e_lfanew {pe_offset:#x} points past any header")
    head = read(pe_offset, 4 + FILE_HEADER.size)
    if len(head) < 4 + FILE_HEADER.size or head[:4] != PE_SIGNATURE:
        raise ImageError(f"{what}: an MZ file without a PE header (DOS program?)")
    machine, nsections, stamp, symtab, nsyms, opt_size, characteristics = FILE_HEADER.unpack_from(head, 4)
    optional_at = pe_offset + 4 + FILE_HEADER.size
    optional = read(optional_at, opt_size)
    magic = struct.unpack_from("<H", optional)[0] if len(optional) >= 2 else 0
    if machine != IMAGE_FILE_MACHINE_AMD64 or magic != IMAGE_NT_OPTIONAL_HDR64_MAGIC:
        name = MACHINE_NAMES.get(machine, f"machine {machine:#x}")
        bits = "32" if magic == IMAGE_NT_OPTIONAL_HDR32_MAGIC else "64"
        raise ImageError(f"{what}: unsupported architecture {name} ({bits}-bit PE); hpkg handles x86-64 only")
    if len(optional) < OPTIONAL_HEADER64.size or len(optional) != opt_size:
        raise ImageError(f"{what}: truncated PE optional header")
    fields = OPTIONAL_HEADER64.unpack_from(optional)
    entry_rva, image_base = fields[6], fields[8]
    size_of_image, size_of_headers, dll_characteristics, ndirs = (
        fields[18],
        fields[19],
        fields[22],
        fields[28],
    )
    ndirs = min(ndirs, MAX_DIRECTORIES, (opt_size - OPTIONAL_HEADER64.size) // DATA_DIRECTORY.size)
    directories = tuple(
        DATA_DIRECTORY.unpack_from(optional, OPTIONAL_HEADER64.size + i * DATA_DIRECTORY.size)
        for i in range(ndirs)
    )
    if size_of_headers > MAX_HEADERS_SIZE:
        raise ImageError(
            f"{what}: malformed PE file: SizeOfHeaders {size_of_headers:#x} is larger than any header"
        )
    if nsections > MAX_SECTIONS:
        raise ImageError(
            f"{what}: malformed PE file: {nsections} sections (the Windows loader takes {MAX_SECTIONS})"
        )
    table = read(optional_at + opt_size, nsections * SECTION_HEADER.size)
    if len(table) < nsections * SECTION_HEADER.size:
        raise ImageError(f"{what}: truncated PE section table")
    sections = []
    for i in range(nsections):
        raw_name, vsize, rva, raw_size, raw_offset, *_, flags = SECTION_HEADER.unpack_from(
            table, i * SECTION_HEADER.size
        )
        name = raw_name.rstrip(b"\0").decode("utf-8", "backslashreplace")
        section = SectionHeader(name, rva, vsize, raw_offset, raw_size, flags)
        if not section.discardable and section.virtual_address + section.size > size_of_image:
            # The Windows loader refuses such an image too: its section would lie outside the mapping.
            raise ImageError(f"{what}: malformed PE file: section {name} ends past SizeOfImage")
        sections.append(section)
    return PeHeaders(
        machine=machine,
        characteristics=characteristics,
        time_date_stamp=stamp,
        symbol_table_offset=symtab,
        symbol_count=nsyms,
        image_base=image_base,
        size_of_image=size_of_image,
        size_of_headers=size_of_headers,
        entry_rva=entry_rva,
        dll_characteristics=dll_characteristics,
        optional_header_offset=optional_at,
        directories=directories,
        sections=tuple(sections),
    )


COFF_SYMBOL_SIZE = 18  # IMAGE_SYMBOL: the string table follows the last one


def resolve_long_names(headers: PeHeaders, data: bytes) -> PeHeaders:
    """The headers with `/N` section names (longer than 8 bytes: `.debug_line`) read from the COFF
    string table, which only the file holds (it follows the symbol table and is never mapped)."""
    table = headers.symbol_table_offset + COFF_SYMBOL_SIZE * headers.symbol_count
    if not headers.symbol_table_offset or table + 4 > len(data):
        return headers
    (table_size,) = struct.unpack_from("<I", data, table)
    strings = data[table : table + table_size]
    sections = []
    for section in headers.sections:
        name = section.name
        if name[:1] == "/" and name[1:].isdigit() and int(name[1:]) < len(strings):
            raw = strings[int(name[1:]) :].partition(b"\0")[0]
            name = raw.decode("utf-8", "backslashreplace")
        sections.append(replace(section, name=name))
    return replace(headers, sections=tuple(sections))


def file_reader(data: bytes, headers: PeHeaders | None = None) -> RvaReader:
    """Reads a PE file's bytes by RVA: the headers at their offset, section bytes through the section
    table (zeros for a section's uninitialised tail); before `headers` is known, RVA = file offset."""

    def read(rva: int, size: int) -> bytes:
        if headers is None or rva < headers.size_of_headers:
            return data[rva : rva + size]
        section = headers.section_at(rva)
        if section is None:
            return b""
        start = rva - section.virtual_address
        size = min(size, section.size - start)
        raw = data[section.raw_offset + start : section.raw_offset + min(start + size, section.raw_size)]
        return raw + bytes(size - len(raw)) if start + size > section.raw_size else raw

    return read


def memory_reader(read_memory: Callable[[int, int], bytes], base: int) -> RvaReader:
    """Reads an image a process mapped at `base` by RVA (`read_memory(address, size)`)."""
    return lambda rva, size: read_memory(base + rva, size)


def file_section(data: bytes, name: str) -> bytes | None:
    """The bytes of a PE file's section by name (long names resolved), or None: how the builder reads
    a non-mapped section such as mingw's `.debug_line`."""
    headers = resolve_long_names(parse_headers(file_reader(data), "PE file"), data)
    section = next((s for s in headers.sections if s.name == name), None)
    if section is None or not section.raw_size:
        return None
    return data[section.raw_offset : section.raw_offset + min(section.raw_size, section.size)]
