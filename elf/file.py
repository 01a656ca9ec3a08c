"""An ELF x86-64 executable or shared library held in memory: headers, sections, bytes by link address.

The whole file is one buffer (bytes, or an mmap for a large library read only in parts). Program
headers are read and checked up front (`hpkg.elf.headers`); section headers only when asked for.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from hpkg.elf.constants import DT_NULL, ELF_MAGIC, PT_DYNAMIC, SHN_XINDEX, SHT_NOBITS, SHT_NOTE
from hpkg.elf.headers import ElfHeaders, read_headers
from hpkg.elf.notes import find_build_id, segment_build_id
from hpkg.elf.structs import DYN, EHDR, PHDR, SHDR, DynamicEntry, ElfHeader, ProgramHeader, SectionHeader
from hpkg.errors import ImageError


def read_build_id(data: bytes | mmap.mmap) -> bytes:
    """The GNU build-id of a whole ELF64 file: from its PT_NOTE segments, else from its note sections
    (a separate debug file's); b"" if none. Tolerant: headers that do not fit the file are skipped."""
    if len(data) < EHDR.size or data[:4] != ELF_MAGIC:
        return b""
    header = ElfHeader.unpack_from(data)

    def table(offset: int, count: int, layout: struct.Struct, entry_size: int) -> list[bytes]:
        if not offset or entry_size != layout.size or offset + count * layout.size > len(data):
            return []
        return [data[offset + i * layout.size : offset + (i + 1) * layout.size] for i in range(count)]

    phdrs = table(header.phoff, header.phnum, PHDR, header.phentsize)
    segments = [ProgramHeader.unpack_from(b) for b in phdrs]
    found = segment_build_id(segments, lambda p: bytes(data[p.offset : p.offset + p.filesz]))
    if found:
        return found
    shdrs = table(header.shoff, header.shnum, SHDR, header.shentsize)
    sections = [SectionHeader.unpack_from(b) for b in shdrs]
    notes = (s for s in sections if s.type == SHT_NOTE)
    return find_build_id((bytes(data[s.offset : s.offset + s.size]), s.addralign) for s in notes)


class ElfFile:
    """An ELF x86-64 executable or shared library read from disk; an image reader with load bias 0."""

    def __init__(self, path: str | os.PathLike[str], data: bytes | mmap.mmap | None = None) -> None:
        self.path = Path(path)
        if data is None:
            try:
                data = self.path.read_bytes()
            except OSError as exc:
                raise ImageError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        self.data = data
        self.headers: ElfHeaders = read_headers(lambda offset, size: data[offset : offset + size], str(path))
        self.program_headers = self.headers.program_headers
        self.loads = self.headers.loads
        if any(p.filesz and p.offset + p.filesz > len(data) for p in self.loads):
            raise ImageError(f"{self.path}: truncated (a loadable segment ends beyond the end of the file)")

    @classmethod
    @contextmanager
    def mapped(cls, path: str | os.PathLike[str]) -> Iterator[ElfFile]:
        """The file mapped read-only rather than read: for a large library of which only tables are read."""
        try:
            with open(path, "rb") as f:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
            raise ImageError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        with data:
            yield cls(path, data)

    @property
    def header(self) -> ElfHeader:
        return self.headers.header

    @property
    def elf_type(self) -> int:
        return self.headers.elf_type

    @property
    def phnum(self) -> int:
        return len(self.program_headers)

    @property
    def position_independent(self) -> bool:
        """ET_DYN: a PIE or shared library, loaded at a bias chosen at run time."""
        return self.headers.position_independent

    @property
    def load_bias(self) -> int:
        return 0

    @property
    def image_end(self) -> int:
        """First link address after the highest segment in memory (including its bss)."""
        return max(p.vaddr + p.memsz for p in self.loads)

    @cached_property
    def build_id(self) -> bytes:
        """The GNU build-id (NT_GNU_BUILD_ID descriptor); b"" if the file has none."""
        return read_build_id(self.data)

    # -- link addresses ------------------------------------------------------------------------------
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
                return bytes(stored) + bytes(size - len(stored))
        return b""

    # -- sections ------------------------------------------------------------------------------------
    @cached_property
    def section_headers(self) -> tuple[SectionHeader, ...]:
        """The section-header table; empty when the file has none or it does not fit in the file."""
        header = self.header
        if header.shoff == 0 or header.shentsize != SHDR.size or header.shoff + SHDR.size > len(self.data):
            return ()
        # e_shnum 0 with a table: the count (>= SHN_LORESERVE) is in section header 0's sh_size.
        count = header.shnum or SectionHeader.unpack_from(self.data, header.shoff).size
        if header.shoff + count * SHDR.size > len(self.data):
            return ()
        return tuple(SectionHeader.unpack_from(self.data, header.shoff + i * SHDR.size) for i in range(count))

    @cached_property
    def _section_names(self) -> bytes:
        headers = self.section_headers
        index = self.header.shstrndx
        if index == SHN_XINDEX and headers:
            index = headers[0].link
        if not index < len(headers):
            return b""
        names = headers[index]
        return bytes(self.data[names.offset : names.offset + names.size])

    def section_name(self, section: SectionHeader) -> str:
        """The name of a section, from the section-name string table."""
        end = self._section_names.find(b"\0", section.name)
        return self._section_names[section.name : end if end >= 0 else None].decode("ascii", "replace")

    def section_header(self, name: str) -> SectionHeader | None:
        """The last section called `name` (a file patched twice keeps the first patch's sections too)."""
        for section in reversed(self.section_headers):
            if self.section_name(section) == name:
                return section
        return None

    def section_contents(self, section: SectionHeader) -> bytes:
        """The file bytes of a section (empty for SHT_NOBITS)."""
        if section.type == SHT_NOBITS:
            return b""
        return bytes(self.data[section.offset : section.offset + section.size])

    def section(self, name: str) -> bytes | None:
        """The file bytes of the last section called `name` with contents, or None."""
        for section in reversed(self.section_headers):
            if section.type != SHT_NOBITS and self.section_name(section) == name:
                return self.section_contents(section)
        return None

    def sections_of_type(self, sh_type: int) -> tuple[SectionHeader, ...]:
        """The sections of one type (SHT_DYNSYM, SHT_NOTE, …), in table order."""
        return tuple(s for s in self.section_headers if s.type == sh_type)

    # -- .dynamic ------------------------------------------------------------------------------------
    def dynamic_entries(self) -> list[tuple[int, int, int]]:
        """(file offset, tag, value) of each .dynamic entry up to DT_NULL."""
        dynamic = next((p for p in self.program_headers if p.type == PT_DYNAMIC), None)
        if dynamic is None:
            return []
        entries = []
        end = min(dynamic.offset + dynamic.filesz, len(self.data))
        for position in range(dynamic.offset, end - DYN.size + 1, DYN.size):
            entry = DynamicEntry.unpack_from(self.data, position)
            if entry.tag == DT_NULL:
                break
            entries.append((position, entry.tag, entry.value))
        return entries

    @cached_property
    def dynamic(self) -> dict[int, int]:
        """The .dynamic entries by tag (the first of each; DT_NEEDED has many: see `dynamic_values`)."""
        found: dict[int, int] = {}
        for _, tag, value in self.dynamic_entries():
            found.setdefault(tag, value)
        return found

    def dynamic_values(self, tag: int) -> list[int]:
        """Every value of one .dynamic tag, in order (DT_NEEDED)."""
        return [value for _, t, value in self.dynamic_entries() if t == tag]
