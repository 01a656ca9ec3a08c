"""The File target's writer: a copy of an ELF x86-64 file with a package added.

A patched copy keeps every original byte where it was, except the jumps at the patch sites, the
ELF header's table fields and any .dynamic entries that must point at moved tables, and appends:

  [original file][padding][program headers][code][rodata][data][dynamic tables][section headers]

The program-header table has to grow by the new PT_LOAD entries and cannot grow in place (the
sections follow it), so a copy of it moves to the end, in its own read-only PT_LOAD, and PT_PHDR
follows it. Every new part lies at a file offset congruent with its link address by the same delta
as the first PT_LOAD (p_vaddr - p_offset), because kernels before 5.18 compute AT_PHDR as
load address + e_phoff; hence the padding up to the end of the image in memory (its bss).

The file is read through `hpkg.elf.file.ElfFile`; this module only lays out and writes the copy.
The new parts get section headers (.hpkg.phdr, .hpkg.text, .hpkg.rodata, .hpkg.data, .hpkg.bss) in
a copy of the section-header table at the end of the file, so that objdump and gdb show them and
`strip` keeps them; dynamic tables that moved keep their own section names, pointed at the copies.

What the dynamic linker must add at load time (relocations for absolute addresses in a
position-independent file, imports the baseline never bound) is built by `hpkg.loader.file_dynamic`
and lands in one more read-only segment after the package.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from hpkg.arch.x86_64 import PAGE_SIZE
from hpkg.atomic_output import write_output
from hpkg.elf.constants import (
    PF_R,
    PF_W,
    PF_X,
    PT_GNU_EH_FRAME,
    PT_LOAD,
    PT_PHDR,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    SHN_LORESERVE,
    SHT_NOBITS,
    SHT_PROGBITS,
)
from hpkg.elf.ehframe import UnwindTableError, read_eh_frame_hdr
from hpkg.elf.file import ElfFile
from hpkg.elf.structs import (
    E_PHNUM,
    E_PHOFF,
    E_SHNUM,
    E_SHOFF,
    PHDR,
    SHDR,
    DynamicEntry,
    ProgramHeader,
    SectionHeader,
)
from hpkg.errors import RefusedError
from hpkg.loader.file_dynamic import DynamicLinking, dynamic_linking
from hpkg.loader.link import RelocatedImage
from hpkg.loader.placement import Placement
from hpkg.loader.unwind_table import merged_eh_frame_hdr, package_fdes

RECORD_SECTION = ".hpkg.record"


def _page_up(value: int) -> int:
    return (value + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


@dataclass(frozen=True)
class NewSegments:
    """Where the added parts start, in link addresses (file offsets follow by the image's delta)."""

    phdr: int  # link address of the moved program-header table
    code_base: int  # where the package code starts (Placement.contiguous from here)


# New PT_LOADs at most: program headers, code, rodata+unwind, data+bss, relocation table, .eh_frame_hdr.
MAX_NEW_SEGMENTS = 6


def plan_segments(elf: ElfFile) -> NewSegments:
    """Choose the link address of the moved program headers and the package code, after the image."""
    delta = elf.loads[0].vaddr - elf.loads[0].offset
    phdr = _page_up(max(elf.image_end, len(elf.data) + delta))
    return NewSegments(phdr=phdr, code_base=phdr + _page_up((elf.phnum + MAX_NEW_SEGMENTS) * PHDR.size))


def write_patched(
    elf: ElfFile,
    relocated: RelocatedImage,
    segments: NewSegments,
    out: str | os.PathLike[str],
    record: bytes = b"",
) -> DynamicLinking:
    """Write a copy of `elf` with the package in new PT_LOADs and the jumps at its patch sites.

    `record` (what was applied, for a later apply or verify) goes in a non-loaded `.hpkg.record`
    section. `out` is replaced only after the new file, read back, holds every jump and the build-id;
    a failure leaves a previous `out` as it was. Returns what the dynamic linker was asked to do
    (relocations and symbols added, if any).
    """
    placement: Placement = relocated.placement
    layout = placement.layout
    if placement.code != segments.code_base:
        raise ValueError("the package was relocated for another code address than the planned segments")
    delta = elf.loads[0].vaddr - elf.loads[0].offset
    image = bytearray(elf.data)

    # STEP 1: the jumps at the patch sites, inside the original bytes.
    for site in relocated.patch_sites:
        offset = elf.file_offset(site.link_address, len(site.jump))
        if offset is None:
            where = f"{site.name} at {site.link_address:#x}"
            raise RefusedError(f"patch site of {where} is not stored in the file {elf.path}")
        image[offset : offset + len(site.jump)] = site.jump

    # STEP 2: what the dynamic linker must fix at load time (absolute addresses in a position-independent
    # file, imports the baseline never bound), in tables of their own after the package.
    tables_address = _page_up(placement.end)
    linking = dynamic_linking(elf, relocated, tables_address)

    # STEP 3: the new PT_LOADs, each at file offset = link address - delta.
    def load(flags: int, start: int, filesz: int, memsz: int | None = None) -> ProgramHeader:
        memsz = filesz if memsz is None else memsz
        return ProgramHeader(PT_LOAD, flags, start - delta, start, start, filesz, memsz, PAGE_SIZE)

    package_loads = [load(PF_R | PF_X, placement.code, layout.code_size)]
    if layout.rodata_size or layout.unwind_size:
        # The dynamic linker can only write relocated pointers into writable pages.
        flags = PF_R | PF_W if linking.writes_rodata else PF_R
        package_loads.append(load(flags, placement.rodata, placement.read_only_end - placement.rodata))
    if layout.data_size or layout.bss_size:
        memsz = placement.end - placement.data  # data, then bss zero-filled by the loader
        package_loads.append(load(PF_R | PF_W, placement.data, layout.data_size, memsz))
    if linking.tables:
        package_loads.append(load(PF_R, tables_address, len(linking.tables)))
    # The package's FDEs: a new .eh_frame_hdr covering the baseline's and the package's, in its own
    # segment at the end (inside the object's mapped range, where _dl_find_object looks).
    hdr_address, hdr, eh_frame = _page_up(tables_address + len(linking.tables)), b"", None
    if layout.unwind_size:
        eh_frame, hdr = _merged_hdr(elf, relocated, hdr_address)
        package_loads.append(load(PF_R, hdr_address, len(hdr)))
    phnum = elf.phnum + 1 + len(package_loads)
    phdr_size = phnum * PHDR.size
    new_loads = [load(PF_R, segments.phdr, phdr_size), *package_loads]

    # STEP 4: the program headers: PT_PHDR moved, new PT_LOADs after the last old one (sorted by address).
    headers = [
        ProgramHeader(PT_PHDR, p.flags, segments.phdr - delta, segments.phdr, segments.phdr, phdr_size,
                      phdr_size, p.align)
        if p.type == PT_PHDR
        else ProgramHeader(p.type, p.flags, hdr_address - delta, hdr_address, hdr_address, len(hdr), len(hdr),
                           p.align)
        if p.type == PT_GNU_EH_FRAME and hdr
        else p
        for p in elf.program_headers
    ]
    last_load = max(i for i, p in enumerate(headers) if p.type == PT_LOAD)
    headers[last_load + 1 : last_load + 1] = new_loads

    # STEP 5: assemble the file; the ELF header and .dynamic entries point at the moved parts.
    for position, tag, _ in elf.dynamic_entries():
        if tag in linking.dynamic_values:
            entry = DynamicEntry(tag, linking.dynamic_values[tag]).pack()
            image[position : position + len(entry)] = entry
    struct.pack_into("<Q", image, E_PHOFF, segments.phdr - delta)
    struct.pack_into("<H", image, E_PHNUM, phnum)
    parts = [
        (segments.phdr, b"".join(p.pack() for p in headers)),
        (placement.code, relocated.code),
        (placement.rodata, relocated.rodata),
        (placement.data, relocated.data),
        (tables_address, linking.tables),
        (placement.unwind, relocated.unwind),
        (hdr_address, hdr),
    ]
    parts.sort(key=lambda part: part[0])
    for address, blob in parts:
        if blob:
            offset = address - delta
            image += bytes(offset - len(image))
            image[offset : offset + len(blob)] = blob

    # STEP 6: section headers for the new parts, so that objdump, gdb and strip see (and keep) them.
    sections = [
        (".hpkg.phdr", SHT_PROGBITS, SHF_ALLOC, segments.phdr, phdr_size, 8),
        (".hpkg.text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, placement.code, layout.code_size, 16),
        (".hpkg.rodata", SHT_PROGBITS, SHF_ALLOC, placement.rodata, layout.rodata_size, 8),
        (".hpkg.data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, placement.data, layout.data_size, 8),
        (".hpkg.bss", SHT_NOBITS, SHF_ALLOC | SHF_WRITE, placement.bss, layout.bss_size, 16),
        (".hpkg.eh_frame", SHT_PROGBITS, SHF_ALLOC, placement.unwind, layout.unwind_size, 8),
    ]
    new = [(*s[:4], s[3] - delta, *s[4:]) for s in sections if s[4]]
    if record:
        new.append((RECORD_SECTION, SHT_PROGBITS, 0, 0, len(image), len(record), 1))
        image += record
    # The dynamic tables that moved keep their sections (.rela.dyn, .dynsym, …), pointed at the copies.
    moved = {old: (address, address - delta, size) for old, (address, size) in linking.moved.items()}
    if eh_frame is not None:
        moved[eh_frame.vaddr] = (hdr_address, hdr_address - delta, len(hdr))  # .eh_frame_hdr
    _add_section_headers(elf, image, new, moved)
    # Whole or not at all, read back and checked before it replaces a previous output (hpkg.atomic_output).
    mode = stat.S_IMODE(os.stat(elf.path).st_mode)
    write_output(out, bytes(image), mode, lambda written: _check_written(elf, relocated, Path(out), written))
    return linking


def _merged_hdr(elf: ElfFile, relocated: RelocatedImage, address: int) -> tuple[ProgramHeader, bytes]:
    """The baseline's PT_GNU_EH_FRAME and a merged .eh_frame_hdr at `address` covering the package FDEs."""
    placement = relocated.placement
    found = [p for p in elf.program_headers if p.type == PT_GNU_EH_FRAME]
    if len(found) != 1:
        raise RefusedError(
            f"unwind-registration-unsupported: {elf.path} has {len(found)} PT_GNU_EH_FRAME headers, so the"
            " package's unwind rules cannot be registered"
        )
    try:
        baseline = read_eh_frame_hdr(elf.read(found[0].vaddr, found[0].filesz), found[0].vaddr)
        code = (placement.code, placement.code + placement.layout.code_size)
        extra = package_fdes(relocated.unwind, placement.unwind, code)
        return found[0], merged_eh_frame_hdr(baseline, extra, address)
    except UnwindTableError as exc:
        raise RefusedError(f"unwind-registration-unsupported: {elf.path}: {exc}") from None


NewSection = tuple[str, int, int, int, int, int, int]  # name, type, flags, address, offset, size, alignment


def _add_section_headers(
    elf: ElfFile, image: bytearray, new: list[NewSection], moved: dict[int, tuple[int, int, int]]
) -> None:
    """Append a copy of the section-header table (and its names) with `new` sections to the file's end.

    An allocated section at an address in `moved` is pointed at (address, offset, size) instead.
    A file without section headers keeps none.
    """
    header = elf.header
    if header.shoff == 0 or header.shentsize != SHDR.size:
        return
    if not 0 < header.shstrndx < header.shnum < SHN_LORESERVE - len(new):
        return
    if len(elf.section_headers) != header.shnum:
        return
    table = [
        s._replace(addr=moved[s.addr][0], offset=moved[s.addr][1], size=moved[s.addr][2])
        if s.flags & SHF_ALLOC and s.addr in moved
        else s
        for s in elf.section_headers
    ]
    names_header = table[header.shstrndx]
    names = bytearray(elf.data[names_header.offset : names_header.offset + names_header.size])
    entries = []
    for name, kind, flags, address, offset, size, align in new:
        entries.append(SectionHeader(len(names), kind, flags, address, offset, size, 0, 0, align, 0))
        names += name.encode("ascii") + b"\0"
    table[header.shstrndx] = names_header._replace(offset=len(image), size=len(names))
    image += names
    image += bytes(-len(image) % 8)
    struct.pack_into("<Q", image, E_SHOFF, len(image))
    struct.pack_into("<H", image, E_SHNUM, len(table) + len(entries))
    image += b"".join(s.pack() for s in (*table, *entries))


def _check_written(elf: ElfFile, relocated: RelocatedImage, out: Path, written: bytes) -> None:
    """The new file as read back, before it replaces anything: every jump where it belongs, the
    build-id kept. A failure is a bug in hpkg (exit 1), not a property of the input."""
    copy = ElfFile(out, written)
    for site in relocated.patch_sites:
        if copy.read(site.link_address, len(site.jump)) != site.jump:
            raise RuntimeError(f"check after writing failed: no jump at {site.name} in {out}")
    if copy.build_id != elf.build_id:
        raise RuntimeError(f"check after writing failed: {out} lost the build-id")
