"""The File target: read an ELF x86-64 image by link address, and write a copy with a package added.

A patched copy keeps every original byte where it was, except the jumps at the patch sites, the
ELF header's table fields and any .dynamic entries that must point at moved tables, and appends:

  [original file][padding][program headers][code][rodata][data][dynamic tables][section headers]

The program-header table has to grow by the new PT_LOAD entries and cannot grow in place (the
sections follow it), so a copy of it moves to the end, in its own read-only PT_LOAD, and PT_PHDR
follows it. Every new part lies at a file offset congruent with its link address by the same delta
as the first PT_LOAD (p_vaddr - p_offset), because kernels before 5.18 compute AT_PHDR as
load address + e_phoff; hence the padding up to the end of the image in memory (its bss).

The new parts get section headers (.hpkg.phdr, .hpkg.text, .hpkg.rodata, .hpkg.data, .hpkg.bss) in
a copy of the section-header table at the end of the file, so that objdump and gdb show them and
`strip` keeps them; dynamic tables that moved keep their own section names, pointed at the copies.

What the dynamic linker must add at load time (relocations for absolute addresses in a
position-independent file, imports the baseline never bound) is built by `hpkg.loader.elf_dynamic`
and lands in one more read-only segment after the package.
"""

from __future__ import annotations

import os
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hpkg.errors import ImageError, RefusedError, TargetError
from hpkg.loader.elf_dynamic import DynamicLinking, dynamic_linking
from hpkg.loader.relocate import Placement, RelocatedImage
from hpkg.loader.unwind_table import UnwindTableError, merged_eh_frame_hdr, package_fdes, read_eh_frame_hdr

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_DYN = struct.Struct("<qQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
ELF_MAGIC = b"\x7fELF"
ELFCLASS64, ELFDATA2LSB, EM_X86_64 = 2, 1, 62
ET_EXEC, ET_DYN = 2, 3
PT_LOAD, PT_DYNAMIC, PT_NOTE, PT_PHDR = 1, 2, 4, 6
PT_GNU_EH_FRAME = 0x6474E550
PF_X, PF_W, PF_R = 1, 2, 4
PN_XNUM = 0xFFFF
SHN_LORESERVE = 0xFF00
SHT_PROGBITS, SHT_NOBITS = 1, 8
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
NT_GNU_BUILD_ID = 3
DT_NULL = 0
PAGE_SIZE = 4096


@dataclass(frozen=True)
class ProgramHeader:
    """One program-header entry, as stored."""

    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int

    def pack(self) -> bytes:
        return _PHDR.pack(
            self.type, self.flags, self.offset, self.vaddr, self.paddr, self.filesz, self.memsz, self.align
        )


def _page_up(value: int) -> int:
    return (value + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _notes(blob: bytes) -> list[tuple[bytes, int, bytes]]:
    """(name, type, descriptor) of each note in a PT_NOTE segment (4-byte aligned, as on x86-64)."""
    found, position = [], 0
    while position + 12 <= len(blob):
        namesz, descsz, kind = struct.unpack_from("<III", blob, position)
        name_start = position + 12
        desc_start = name_start + (namesz + 3 & ~3)
        found.append((blob[name_start : name_start + namesz], kind, blob[desc_start : desc_start + descsz]))
        position = desc_start + (descsz + 3 & ~3)
    return found


RECORD_SECTION = ".hpkg.record"


class ElfFile:
    """An ELF x86-64 executable or shared library read from disk; an ImageReader with load bias 0."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.data = self.path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        if len(self.data) < _EHDR.size or self.data[:4] != ELF_MAGIC:
            raise ImageError(f"{self.path}: not an ELF file")
        fields = _EHDR.unpack_from(self.data)
        ident, self.elf_type, machine = fields[0], fields[1], fields[2]
        self.phoff, self.phentsize, self.phnum = fields[5], fields[9], fields[10]
        if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB or machine != EM_X86_64:
            raise ImageError(f"{self.path}: not a 64-bit little-endian x86-64 ELF file")
        if self.elf_type not in (ET_EXEC, ET_DYN):
            raise ImageError(f"{self.path}: not an executable or shared library (ELF type {self.elf_type})")
        if self.phentsize != _PHDR.size or self.phnum in (0, PN_XNUM):
            raise ImageError(f"{self.path}: unsupported program-header table ({self.phnum} entries)")
        end = self.phoff + self.phnum * _PHDR.size
        if end > len(self.data):
            raise ImageError(f"{self.path}: truncated program-header table")
        self.program_headers = tuple(
            ProgramHeader(*_PHDR.unpack_from(self.data, self.phoff + i * _PHDR.size))
            for i in range(self.phnum)
        )
        self.loads = tuple(p for p in self.program_headers if p.type == PT_LOAD)
        if not self.loads:
            raise ImageError(f"{self.path}: no loadable segment")
        if any(p.filesz and p.offset + p.filesz > len(self.data) for p in self.loads):
            raise ImageError(f"{self.path}: truncated (a loadable segment ends beyond the end of the file)")

    @property
    def position_independent(self) -> bool:
        """ET_DYN: a PIE or shared library, loaded at a bias chosen at run time."""
        return self.elf_type == ET_DYN

    @property
    def load_bias(self) -> int:
        return 0

    @property
    def image_end(self) -> int:
        """First link address after the highest segment in memory (including its bss)."""
        return max(p.vaddr + p.memsz for p in self.loads)

    @property
    def build_id(self) -> bytes:
        for p in self.program_headers:
            if p.type == PT_NOTE:
                for name, kind, descriptor in _notes(self.data[p.offset : p.offset + p.filesz]):
                    if name == b"GNU\0" and kind == NT_GNU_BUILD_ID:
                        return descriptor
        return b""

    def file_offset(self, link_address: int, size: int) -> int | None:
        """File offset of `size` bytes at a link address, if all of them are stored in the file."""
        for p in self.loads:
            if p.vaddr <= link_address and link_address + size <= p.vaddr + p.filesz:
                return p.offset + link_address - p.vaddr
        return None

    def read(self, link_address: int, size: int) -> bytes:
        """Bytes at a link address as the image has them in memory (bss reads as zeros)."""
        for p in self.loads:
            if p.vaddr <= link_address < p.vaddr + p.memsz:
                size = min(size, p.vaddr + p.memsz - link_address)
                start = link_address - p.vaddr
                stored = self.data[p.offset + start : p.offset + min(start + size, p.filesz)]
                return stored + bytes(size - len(stored))
        return b""

    def section(self, name: str) -> bytes | None:
        """The file bytes of the last section called `name` (by the section headers), or None.

        The last: a file patched twice keeps the first patch's section headers and adds its own.
        """
        (shoff,) = struct.unpack_from("<Q", self.data, 40)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", self.data, 58)
        end = shoff + shnum * _SHDR.size
        if shoff == 0 or shentsize != _SHDR.size or not shstrndx < shnum or end > len(self.data):
            return None
        headers = [_SHDR.unpack_from(self.data, shoff + i * _SHDR.size) for i in range(shnum)]
        names = self.data[headers[shstrndx][4] : headers[shstrndx][4] + headers[shstrndx][5]]
        wanted = name.encode("ascii") + b"\0"
        for header in reversed(headers):
            if names[header[0] : header[0] + len(wanted)] == wanted and header[1] != SHT_NOBITS:
                return self.data[header[4] : header[4] + header[5]]
        return None

    def dynamic_entries(self) -> list[tuple[int, int, int]]:
        """(file offset, tag, value) of each .dynamic entry up to DT_NULL."""
        dynamic = next((p for p in self.program_headers if p.type == PT_DYNAMIC), None)
        if dynamic is None:
            return []
        entries = []
        for position in range(dynamic.offset, dynamic.offset + dynamic.filesz - _DYN.size + 1, _DYN.size):
            tag, value = _DYN.unpack_from(self.data, position)
            if tag == DT_NULL:
                break
            entries.append((position, tag, value))
        return entries


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
    return NewSegments(phdr=phdr, code_base=phdr + _page_up((elf.phnum + MAX_NEW_SEGMENTS) * _PHDR.size))


def write_patched(
    elf: ElfFile,
    relocated: RelocatedImage,
    segments: NewSegments,
    out: str | os.PathLike[str],
    record: bytes = b"",
) -> DynamicLinking:
    """Write a copy of `elf` with the package in new PT_LOADs and the jumps at its patch sites.

    `record` (what was applied, for a later apply or verify) goes in a non-loaded `.hpkg.record`
    section. Returns what the dynamic linker was asked to do (relocations and symbols added, if any).
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
    phdr_size = phnum * _PHDR.size
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
            _DYN.pack_into(image, position, tag, linking.dynamic_values[tag])
    struct.pack_into("<Q", image, 32, segments.phdr - delta)  # e_phoff
    struct.pack_into("<H", image, 56, phnum)  # e_phnum
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
    _write_atomically(Path(out), bytes(image), stat.S_IMODE(os.stat(elf.path).st_mode))
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
    (shoff,) = struct.unpack_from("<Q", image, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", image, 58)
    if shoff == 0 or shentsize != _SHDR.size or not 0 < shstrndx < shnum < SHN_LORESERVE - len(new):
        return
    table = bytearray(elf.data[shoff : shoff + shnum * _SHDR.size])
    for i in range(shnum):
        header = list(_SHDR.unpack_from(table, i * _SHDR.size))
        if header[2] & SHF_ALLOC and header[3] in moved:
            header[3], header[4], header[5] = moved[header[3]]
            _SHDR.pack_into(table, i * _SHDR.size, *header)
    names_header = list(_SHDR.unpack_from(table, shstrndx * _SHDR.size))
    names = bytearray(elf.data[names_header[4] : names_header[4] + names_header[5]])
    entries = []
    for name, kind, flags, address, offset, size, align in new:
        entries.append(_SHDR.pack(len(names), kind, flags, address, offset, size, 0, 0, align, 0))
        names += name.encode("ascii") + b"\0"
    names_header[4], names_header[5] = len(image), len(names)
    _SHDR.pack_into(table, shstrndx * _SHDR.size, *names_header)
    image += names
    image += bytes(-len(image) % 8)
    struct.pack_into("<Q", image, 40, len(image))  # e_shoff
    struct.pack_into("<H", image, 60, shnum + len(entries))  # e_shnum
    image += table + b"".join(entries)


def _write_atomically(out: Path, data: bytes, mode: int) -> None:
    """Write `out` through a temporary file in the same directory, with the input's mode."""
    directory = out.parent if str(out.parent) else Path(".")
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=directory)
    except OSError as exc:
        raise TargetError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, out)
    except OSError as exc:
        os.unlink(temporary)
        raise TargetError(f"cannot write {out}: {exc.strerror or exc}") from None
