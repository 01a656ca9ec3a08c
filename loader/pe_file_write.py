"""The File target's writer for PE32+: a copy of a Windows x64 image with a package added.

Every original byte stays where it was, except the patch sites' jumps, a few optional-header fields
and the section table's new entries. Three sections are appended after SizeOfImage, their bytes
after the file's end:

  .hpkgtx   code, read+execute: the package code (and its stubs), rodata, the UNWIND_INFO records
  .hpkgdt   data, read+write: package data and GOT slots, bss, then the tables the image needs anew:
            the import directory (the baseline's descriptors, then one per DLL with functions the
            baseline never imported, each with its own lookup table and IAT here), the exception
            directory (the baseline's RUNTIME_FUNCTIONs and the package's, sorted: the unwinder
            binary-searches it), the base relocations (the baseline's blocks, then DIR64 entries for
            every absolute address in package data)
  .hpkgrec  the record of what was applied (JSON), read-only

The data directories IMPORT (when imports were added), EXCEPTION and BASERELOC point at the copies;
NumberOfSections, SizeOfImage, SizeOfCode, SizeOfInitializedData and CheckSum are rewritten; an
Authenticode signature (the SECURITY directory), which no longer matches, is dropped. The
header area must have room for three more section headers (mingw leaves it; MSVC leaves more).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from hpkg.errors import RefusedError
from hpkg.loader.link import RelocatedImage
from hpkg.loader.pe_file import PeFile
from hpkg.loader.placement import Area, Placement, align
from hpkg.pe.checksum import CHECKSUM_FIELD, pe_checksum
from hpkg.pe.constants import (
    IMAGE_DIRECTORY_ENTRY_BASERELOC,
    IMAGE_DIRECTORY_ENTRY_EXCEPTION,
    IMAGE_DIRECTORY_ENTRY_IMPORT,
    IMAGE_DIRECTORY_ENTRY_SECURITY,
    IMAGE_REL_BASED_ABSOLUTE,
    IMAGE_REL_BASED_DIR64,
    IMAGE_SCN_CNT_CODE,
    IMAGE_SCN_CNT_INITIALIZED_DATA,
    IMAGE_SCN_MEM_EXECUTE,
    IMAGE_SCN_MEM_READ,
    IMAGE_SCN_MEM_WRITE,
)
from hpkg.pe.headers import SECTION_HEADER
from hpkg.pe.imports import (
    IMAGE_ORDINAL_FLAG64,
    IMPORT_DESCRIPTOR,
    THUNK,
    import_descriptors,
    split_import_name,
)
from hpkg.pe.package_unwind import PackageRuntimeFunction
from hpkg.pe.pdata import RUNTIME_FUNCTION
from hpkg.pe.relocations import BLOCK_HEADER

# Offsets in IMAGE_OPTIONAL_HEADER64 (the PE Format specification).
SIZE_OF_CODE, SIZE_OF_INITIALIZED_DATA = 4, 8
SECTION_ALIGNMENT, FILE_ALIGNMENT = 32, 36
SIZE_OF_IMAGE = 56
DATA_DIRECTORIES = 112
# Offsets in IMAGE_FILE_HEADER, which ends where the optional header starts.
FILE_HEADER_SIZE = 20
NUMBER_OF_SECTIONS, SIZE_OF_OPTIONAL_HEADER = 2, 16
PAGE_4K = 0x1000  # a base relocation block covers one 4 KiB page

CODE_SECTION, DATA_SECTION, RECORD_SECTION_NAME = ".hpkgtx", ".hpkgdt", ".hpkgrec"
CODE_FLAGS = IMAGE_SCN_CNT_CODE | IMAGE_SCN_MEM_EXECUTE | IMAGE_SCN_MEM_READ
DATA_FLAGS = IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ | IMAGE_SCN_MEM_WRITE
RECORD_FLAGS = IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ
TABLE_ALIGN = 16


def _u32(data: bytes | bytearray, at: int) -> int:
    return struct.unpack_from("<I", data, at)[0]


@dataclass(frozen=True)
class PeLayout:
    """Where the added sections go (RVAs) and the image's alignments."""

    section_alignment: int
    file_alignment: int
    code_rva: int  # .hpkgtx: where the package code starts

    @classmethod
    def of(cls, pe: PeFile) -> PeLayout:
        optional = pe.headers.optional_header_offset
        section_alignment = _u32(pe.data, optional + SECTION_ALIGNMENT)
        file_alignment = _u32(pe.data, optional + FILE_ALIGNMENT)
        return cls(section_alignment, file_alignment, align(pe.headers.size_of_image, section_alignment))


@dataclass(frozen=True)
class AddedImports:
    """Imports the baseline lacks: where each one's IAT slot is (RVA) and the directory that binds them."""

    slots: dict[str, int]  # `dll!name` → RVA of its new IAT slot
    directory_rva: int
    directory_size: int
    blob: bytes  # the directory, lookup tables, IATs, hint/name entries and DLL names, from directory_rva


def added_imports(pe: PeFile, names: Sequence[str], rva: int) -> AddedImports:
    """The import tables at `rva` for `names` (`dll!name`, not imported by the baseline): the baseline's
    descriptors copied first (their tables stay where they are), then one per DLL."""
    old_rva, old_size = pe.headers.directory(IMAGE_DIRECTORY_ENTRY_IMPORT)
    old = import_descriptors(pe.read_rva, old_rva, old_size, str(pe.path))
    groups: dict[str, list[str | int]] = {}
    for name in names:
        parts = split_import_name(name)
        if parts is None:
            raise RefusedError(f"import {name!r} names no DLL function (expected dll!name or dll!#ordinal)")
        groups.setdefault(parts[0], []).append(parts[1])
    directory_size = IMPORT_DESCRIPTOR.size * (len(old) + len(groups) + 1)
    at = rva + directory_size
    tables: list[tuple[str, int, int, list[str | int]]] = []  # dll, lookup rva, iat rva, functions
    for dll, functions in groups.items():
        table = THUNK.size * (len(functions) + 1)
        tables.append((dll, at, at + table, functions))
        at += 2 * table
    strings = bytearray()
    hint_names: dict[tuple[str, str | int], int] = {}
    dll_names: dict[str, int] = {}
    for dll, _, _, functions in tables:
        for function in functions:
            if isinstance(function, str):
                if (at + len(strings)) % 2:
                    strings += b"\0"  # hint/name entries are 2-aligned
                hint_names[(dll, function)] = at + len(strings)
                strings += b"\0\0" + function.encode("ascii") + b"\0"
        dll_names[dll] = at + len(strings)
        strings += dll.encode("ascii") + b"\0"
    blob = bytearray(b"".join(IMPORT_DESCRIPTOR.pack(*d) for d in old))
    for dll, lookup, iat, _ in tables:
        blob += IMPORT_DESCRIPTOR.pack(lookup, 0, 0, dll_names[dll], iat)
    blob += bytes(IMPORT_DESCRIPTOR.size)
    slots: dict[str, int] = {}
    for dll, _, iat, functions in tables:
        entries = [
            IMAGE_ORDINAL_FLAG64 | f if isinstance(f, int) else hint_names[(dll, f)] for f in functions
        ]
        thunks = b"".join(THUNK.pack(e) for e in entries) + bytes(THUNK.size)
        blob += thunks + thunks  # the lookup table, then the IAT the loader overwrites with addresses
        for i, function in enumerate(functions):
            slots[f"{dll}!{'#' + str(function) if isinstance(function, int) else function}"] = (
                iat + THUNK.size * i
            )
    blob += strings
    return AddedImports(slots, rva, directory_size, bytes(blob))


def merged_pdata(
    pe: PeFile, package: Sequence[PackageRuntimeFunction], code_rva: int, unwind_rva: int
) -> bytes:
    """The baseline's RUNTIME_FUNCTIONs and the package's (moved to their RVAs), sorted by begin."""
    rva, size = pe.headers.directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION)
    raw = pe.read_rva(rva, size - size % RUNTIME_FUNCTION.size) if rva and size else b""
    entries = [e for e in RUNTIME_FUNCTION.iter_unpack(raw) if any(e)]
    entries += [(code_rva + f.begin, code_rva + f.end, unwind_rva + f.unwind) for f in package]
    return b"".join(RUNTIME_FUNCTION.pack(*e) for e in sorted(entries))


def merged_relocations(pe: PeFile, pointer_rvas: Sequence[int]) -> bytes:
    """The baseline's base relocation blocks, then one DIR64 block per 4 KiB page of `pointer_rvas`."""
    rva, size = pe.headers.directory(IMAGE_DIRECTORY_ENTRY_BASERELOC)
    blob = bytearray(pe.read_rva(rva, size) if rva and size else b"")
    pages: dict[int, list[int]] = {}
    for where in sorted(pointer_rvas):
        pages.setdefault(where & ~(PAGE_4K - 1), []).append(where & (PAGE_4K - 1))
    for page, offsets in pages.items():
        entries = [IMAGE_REL_BASED_DIR64 << 12 | o for o in offsets]
        if len(entries) % 2:
            entries.append(IMAGE_REL_BASED_ABSOLUTE << 12)  # blocks are 4-aligned: pad with an ABSOLUTE entry
        blob += BLOCK_HEADER.pack(page, BLOCK_HEADER.size + 2 * len(entries))
        blob += struct.pack(f"<{len(entries)}H", *entries)
    return bytes(blob)


@dataclass(frozen=True)
class PeAdditions:
    """Everything the writer appends or redirects, in RVAs: the three sections' contents and the tables."""

    layout: PeLayout
    code: bytes  # .hpkgtx contents, at layout.code_rva
    data_rva: int
    data: bytes  # .hpkgdt contents
    record: bytes
    imports: AddedImports | None
    pdata: tuple[int, int]  # (RVA, size) of the merged exception directory
    relocations: tuple[int, int]  # (RVA, size) of the merged base relocations (0, 0) if none


def section_contents(relocated: RelocatedImage, placement: Placement, image_base: int) -> tuple[bytes, bytes]:
    """The bytes of .hpkgtx (code, rodata, unwind at their offsets) and of .hpkgdt up to bss's end."""
    code = bytearray(placement.read_only_end - placement.code)
    for area, blob in (
        (Area.CODE, relocated.code),
        (Area.RODATA, relocated.rodata),
        (Area.UNWIND, relocated.unwind),
    ):
        at = placement.base(area) - placement.code
        code[at : at + len(blob)] = blob
    data = bytearray(placement.end - placement.data)
    data[: len(relocated.data)] = relocated.data
    return bytes(code), bytes(data)


def write_pe(pe: PeFile, relocated: RelocatedImage, additions: PeAdditions) -> bytes:
    """The patched file's bytes: jumps at the sites, three sections appended, headers rewritten."""
    h = pe.headers
    out = bytearray(pe.data)
    # STEP 1: the jumps, over the pre-images at the sites (file offsets of their RVAs).
    for site in relocated.patch_sites:
        offset = h.rva_to_offset(site.link_address)
        if offset is None or out[offset : offset + len(site.jump)] != site.pre_image[: len(site.jump)]:
            raise RefusedError(f"patch site of {site.name} at rva {site.link_address:#x} has no file bytes")
        out[offset : offset + len(site.jump)] = site.jump
    # STEP 2: the new sections' bytes after the end of the file, FileAlignment apart.
    layout = additions.layout
    record_rva = align(additions.data_rva + len(additions.data), layout.section_alignment)
    contents = (
        (CODE_SECTION, layout.code_rva, additions.code, CODE_FLAGS),
        (DATA_SECTION, additions.data_rva, additions.data, DATA_FLAGS),
        (RECORD_SECTION_NAME, record_rva, additions.record, RECORD_FLAGS),
    )
    headers = []
    for name, rva, blob, flags in contents:
        offset = align(len(out), layout.file_alignment)
        raw_size = align(len(blob), layout.file_alignment)
        out += bytes(offset - len(out)) + blob + bytes(raw_size - len(blob))
        headers.append(
            SECTION_HEADER.pack(name.encode(), len(blob), rva, raw_size, offset, 0, 0, 0, 0, flags)
        )
    # STEP 3: the section table grows into the header area's free space.
    optional = h.optional_header_offset
    count = len(h.sections)
    table = optional + struct.unpack_from("<H", out, optional - FILE_HEADER_SIZE + SIZE_OF_OPTIONAL_HEADER)[0]
    at = table + SECTION_HEADER.size * count
    first_raw = min((s.raw_offset for s in h.sections if s.raw_size), default=h.size_of_headers)
    if at + SECTION_HEADER.size * len(headers) > min(h.size_of_headers, first_raw):
        raise RefusedError(
            f"{pe.path}: no room in the PE headers for {len(headers)} more section headers (hpkg adds its"
            " code, data and record as sections); nothing written"
        )
    if any(out[at : at + SECTION_HEADER.size * len(headers)]):
        raise RefusedError(f"{pe.path}: the bytes after the section table are in use; nothing written")
    out[at : at + SECTION_HEADER.size * len(headers)] = b"".join(headers)
    struct.pack_into("<H", out, optional - FILE_HEADER_SIZE + NUMBER_OF_SECTIONS, count + len(headers))
    # STEP 4: the optional header: sizes, the redirected directories, the checksum last.
    size_of_image = align(record_rva + len(additions.record), layout.section_alignment)
    struct.pack_into("<I", out, optional + SIZE_OF_IMAGE, size_of_image)
    code_size = align(len(additions.code), layout.file_alignment)
    data_size = align(len(additions.data), layout.file_alignment) + align(
        len(additions.record), layout.file_alignment
    )
    struct.pack_into("<I", out, optional + SIZE_OF_CODE, _u32(out, optional + SIZE_OF_CODE) + code_size)
    struct.pack_into(
        "<I",
        out,
        optional + SIZE_OF_INITIALIZED_DATA,
        _u32(out, optional + SIZE_OF_INITIALIZED_DATA) + data_size,
    )
    directories = {IMAGE_DIRECTORY_ENTRY_EXCEPTION: additions.pdata}
    if additions.imports is not None:
        directories[IMAGE_DIRECTORY_ENTRY_IMPORT] = (
            additions.imports.directory_rva,
            additions.imports.directory_size,
        )
    if additions.relocations[1]:
        directories[IMAGE_DIRECTORY_ENTRY_BASERELOC] = additions.relocations
    if h.directory(IMAGE_DIRECTORY_ENTRY_SECURITY) != (0, 0):
        # An Authenticode signature covers the bytes this copy changes: it would no longer verify, and a
        # signature that fails is worse than none. The certificate bytes stay; the directory forgets them.
        directories[IMAGE_DIRECTORY_ENTRY_SECURITY] = (0, 0)
    for index, (rva, size) in directories.items():
        if index >= len(h.directories):
            raise RefusedError(
                f"{pe.path}: the optional header has no data directory {index}; nothing written"
            )
        struct.pack_into("<II", out, optional + DATA_DIRECTORIES + 8 * index, rva, size)
    struct.pack_into("<I", out, optional + CHECKSUM_FIELD, pe_checksum(bytes(out), optional))
    return bytes(out)
