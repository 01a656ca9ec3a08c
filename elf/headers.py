"""The ELF header and program headers, read through one interface from a file or from process memory.

A `Reader` is `read(file_offset, size) -> bytes` (short or empty past the end). For a file it is a
positional read; for a process it reads at the image's first mapping, which maps file offset 0
(the ELF header and, in every linker's output, the program-header table) at its start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hpkg.elf.constants import (
    EI_CLASS,
    EI_DATA,
    ELF_MAGIC,
    ELFCLASS64,
    ELFDATA2LSB,
    EM_X86_64,
    ET_DYN,
    ET_EXEC,
    PN_XNUM,
    PT_LOAD,
)
from hpkg.elf.structs import EHDR, PHDR, ElfHeader, ProgramHeader
from hpkg.errors import ImageError

Reader = Callable[[int, int], bytes]


@dataclass(frozen=True)
class ElfHeaders:
    """The ELF header and the program-header table of an x86-64 executable or shared library."""

    header: ElfHeader
    program_headers: tuple[ProgramHeader, ...]

    @property
    def elf_type(self) -> int:
        """ET_EXEC or ET_DYN."""
        return self.header.type

    @property
    def position_independent(self) -> bool:
        """ET_DYN: a PIE or shared library, loaded at a bias chosen at run time."""
        return self.header.type == ET_DYN

    @property
    def loads(self) -> tuple[ProgramHeader, ...]:
        """The PT_LOAD segments, in table order (ascending addresses, as the gABI requires)."""
        return self.of_type(PT_LOAD)

    def of_type(self, p_type: int) -> tuple[ProgramHeader, ...]:
        """The program headers of one type (PT_NOTE, PT_DYNAMIC, …)."""
        return tuple(p for p in self.program_headers if p.type == p_type)


def check_ident(head: bytes, what: str) -> ElfHeader:
    """The ELF header at the start of `head`, if it is ELF64 little-endian x86-64; ImageError otherwise."""
    if len(head) < EHDR.size or head[:4] != ELF_MAGIC:
        raise ImageError(f"{what}: not an ELF file")
    header = ElfHeader.unpack_from(head)
    ident = header.ident
    if ident[EI_CLASS] != ELFCLASS64 or ident[EI_DATA] != ELFDATA2LSB or header.machine != EM_X86_64:
        raise ImageError(f"{what}: not a 64-bit little-endian x86-64 ELF file")
    return header


def read_headers(read: Reader, what: str) -> ElfHeaders:
    """Read and check the ELF header and program headers of an executable or shared library.

    `what` names the file or image in the ImageError raised for anything else.
    """
    header = check_ident(read(0, EHDR.size), what)
    if header.type not in (ET_EXEC, ET_DYN):
        raise ImageError(f"{what}: not an executable or shared library (ELF type {header.type})")
    if header.phentsize != PHDR.size or header.phnum in (0, PN_XNUM):
        raise ImageError(f"{what}: unsupported program-header table ({header.phnum} entries)")
    table = read(header.phoff, header.phnum * PHDR.size)
    if len(table) < header.phnum * PHDR.size:
        raise ImageError(f"{what}: truncated program-header table")
    program_headers = tuple(ProgramHeader.unpack_from(table, i * PHDR.size) for i in range(header.phnum))
    if not any(p.type == PT_LOAD for p in program_headers):
        raise ImageError(f"{what}: no loadable segment")
    return ElfHeaders(header, program_headers)
