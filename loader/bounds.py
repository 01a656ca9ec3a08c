"""Bounded writes: proof, before anything is written, that a package's patch sites are function entries.

A package says where its jumps go (`ReplacedFunction.baseline_address`); the pre-image check then
proves the bytes there, not the place. A package signed by a trusted key can still be wrong (a build
bug, a compromised pipeline), so the loader also checks the place against what the baseline itself
says, read from the baseline file (for a process: the file it mapped, through /proc/PID/map_files,
never the target's memory, which the target can rewrite):

  1. `target.image_size` is the span of the image's PT_LOAD segments (the span the builder measured);
  2. every patch site lies in a PT_LOAD with PF_X of that span, with the function's bytes and the
     bytes the jump (or a revert's pre-image) overwrites;
  3. every site is a function entry the image names: the initial location of an FDE (from the
     .eh_frame_hdr search table, or the .eh_frame section when there is no table), the value of an
     STT_FUNC/STT_GNU_IFUNC symbol (.symtab or .dynsym), or the ELF entry point;
  4. no other function entry lies under the bytes a site overwrites (a jump would split it);
  5. every baseline address the package's relocations name lies inside the image's span.

An image with neither .eh_frame nor function symbols gives no proof of where functions start: every
package for it is refused. A function the builder found only through a separate debug file or a call
target (assembly without CFI in a stripped file) is refused likewise: the image cannot vouch for it.
Each failure is an IncompatibleTarget (exit 4): the package may be well-formed, it does not fit this
image. Every other write the loader makes stays inside the package's own allocation (`check_writes`).
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hpkg.arch.x86_64 import JMP_REL32_SIZE, PAGE_SIZE
from hpkg.elf.constants import (
    PF_X,
    PT_GNU_EH_FRAME,
    SHN_UNDEF,
    SHT_DYNSYM,
    SHT_SYMTAB,
    STT_FUNC,
    STT_GNU_IFUNC,
)
from hpkg.elf.ehframe import (
    EH_FRAME_HDR,
    UnwindTableError,
    eh_frame_hdr_size,
    parse_eh_frame,
    read_eh_frame_hdr,
)
from hpkg.elf.file import ElfFile
from hpkg.elf.structs import SYM, ProgramHeader
from hpkg.errors import ImageError, IncompatibleTarget, TargetError
from hpkg.formats.model import Package, ReplacedFunction, TargetSpace
from hpkg.loader.procfs import RuntimeImage, permission_advice
from hpkg.loader.terminal import printable

_FUNCTION_TYPES = (STT_FUNC, STT_GNU_IFUNC)


@dataclass(frozen=True)
class ImageCode:
    """What a baseline file says about its code, in link addresses: segments, sections, function entries."""

    path: str
    span: tuple[int, int]  # [first page of the lowest PT_LOAD, end of the highest PT_LOAD)
    executable: tuple[tuple[int, int], ...]  # [start, end) of each PT_LOAD with PF_X, its file-backed bytes
    sections: tuple[tuple[str, int, int], ...]  # (name, start, end) of allocated sections, for messages
    entries: tuple[int, ...]  # sorted function entries: FDE starts, function symbols, e_entry
    sources: tuple[str, ...]  # where the entries came from, e.g. (".eh_frame_hdr", ".symtab")

    def section_at(self, address: int) -> str | None:
        return next((name for name, start, end in self.sections if start <= address < end), None)

    def in_executable(self, start: int, end: int) -> bool:
        """Whether [start, end) lies inside one executable segment."""
        return any(s <= start and end <= e for s, e in self.executable)

    def is_entry(self, address: int) -> bool:
        i = bisect.bisect_left(self.entries, address)
        return i < len(self.entries) and self.entries[i] == address

    def entry_before(self, address: int) -> int | None:
        """The last function entry below `address`, if any."""
        i = bisect.bisect_left(self.entries, address)
        return self.entries[i - 1] if i > 0 else None

    def entries_within(self, start: int, end: int) -> list[int]:
        """Function entries in [start, end)."""
        return self.entries[bisect.bisect_left(self.entries, start) : bisect.bisect_left(self.entries, end)]


def image_code(elf: ElfFile, loads: Sequence[ProgramHeader] | None = None) -> ImageCode:
    """Read segments, sections and function entries of `elf`. `loads` are the baseline's own PT_LOADs when
    they are not all of them (a file hpkg already patched carries the segments it added)."""
    loads = elf.loads if loads is None else loads
    if not loads:
        raise ImageError(f"{elf.path}: no loadable segment of the baseline")
    start = min(p.vaddr for p in loads) // PAGE_SIZE * PAGE_SIZE
    end = max(p.vaddr + p.memsz for p in loads)
    executable = tuple((p.vaddr, p.vaddr + p.filesz) for p in loads if p.flags & PF_X)
    sections = tuple(
        (elf.section_name(s), s.addr, s.addr + s.size) for s in elf.section_headers if s.addr and s.size
    )
    entries: set[int] = set()
    sources: list[str] = []
    fde_starts, fde_source = _fde_starts(elf)
    if fde_source:
        entries |= fde_starts
        sources.append(fde_source)
    for name, addresses in _function_symbols(elf):
        entries |= addresses
        sources.append(name)
    if elf.header.entry:
        entries.add(elf.header.entry)
    inside = sorted(a for a in entries if start <= a < end)
    return ImageCode(str(elf.path), (start, end), executable, sections, tuple(inside), tuple(sources))


def _fde_starts(elf: ElfFile) -> tuple[set[int], str]:
    """FDE initial locations: the linker's sorted search table, else the .eh_frame section parsed whole."""
    frames = [p for p in elf.program_headers if p.type == PT_GNU_EH_FRAME]
    if len(frames) == 1:
        try:
            address = frames[0].vaddr
            size = eh_frame_hdr_size(elf.read(address, EH_FRAME_HDR.size))
            table = read_eh_frame_hdr(elf.read(address, size), address).table
            return {location for location, _ in table}, ".eh_frame_hdr"
        except UnwindTableError:
            pass  # an unusual table: the section itself still says it
    section = elf.section_header(".eh_frame")
    if section is not None and section.size:
        starts = {start for start, _ in parse_eh_frame(elf.section_contents(section), section.addr)}
        if starts:
            return starts, ".eh_frame"
    return set(), ""


def _function_symbols(elf: ElfFile) -> Iterable[tuple[str, set[int]]]:
    """(table name, values) of the defined function symbols of .symtab and .dynsym, when present."""
    for sh_type, name in ((SHT_SYMTAB, ".symtab"), (SHT_DYNSYM, ".dynsym")):
        values: set[int] = set()
        for table in elf.sections_of_type(sh_type):
            if table.entsize != SYM.size:
                continue
            data = elf.section_contents(table)
            for _, info, _, shndx, value, _ in SYM.iter_unpack(data[: len(data) // SYM.size * SYM.size]):
                if info & 0xF in _FUNCTION_TYPES and shndx != SHN_UNDEF and value:
                    values.add(value)
        if values:
            yield name, values


def check_sites(package: Package, code: ImageCode) -> None:
    """Refuse (IncompatibleTarget, exit 4) a package whose sites or baseline references leave the image's
    function entries; nothing has been read from or written to the target yet."""
    reasons: list[str] = []
    start, end = code.span
    if package.target.image_size != end - start:
        reasons.append(
            f"the package's image_size {package.target.image_size:#x} is not the span of the image's"
            f" segments {end - start:#x}"
        )
    if not code.entries:
        reasons.append(
            f"{code.path} has no .eh_frame and no function symbols: hpkg cannot prove where its"
            " functions start"
        )
    else:
        reasons += [r for f in package.functions if (r := _site_problem(f, code))]
    for r in package.relocations:
        if r.space is TargetSpace.BASELINE and not start <= r.target <= end:
            reasons.append(f"a relocation names baseline address {r.target:#x}, outside the image")
            break
    if reasons:
        raise IncompatibleTarget(f"{reasons[0]}; nothing written", tuple(reasons[1:]))


def _site_problem(f: ReplacedFunction, code: ImageCode) -> str | None:
    """Why one patch site is out of bounds, or None."""
    site = f.baseline_address
    where = f"patch site of {f.name} at {site:#x}"
    overwritten = site + max(len(f.pre_image), JMP_REL32_SIZE)
    if not code.in_executable(site, max(site + f.baseline_size, overwritten)):
        section = code.section_at(site)
        place = f"in {section}" if section else "outside every executable segment"
        if not code.span[0] <= site < code.span[1]:
            place = "beyond the image"
        return f"{where} is not in an executable segment of {code.path} ({place})"
    if not code.is_entry(site):
        before = code.entry_before(site)
        inside = f" (inside the function at {before:#x})" if before is not None else ""
        return f"{where} is not a function entry of {code.path}{inside}"
    split = code.entries_within(site + 1, overwritten)
    if split:
        return f"{where}: its jump would overwrite the function entry at {split[0]:#x}"
    return None


def mapped_file_of(pid: int, image: RuntimeImage) -> str:
    """The /proc/PID/map_files path of the file `image` was mapped from (its lowest mapping); a refusal to
    open it is a TargetError that says why (map_files is guarded like ptrace itself)."""
    first = min(image.mappings, key=lambda m: m.start)
    path = f"/proc/{pid}/map_files/{first.start:x}-{first.end:x}"
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except PermissionError:
        raise TargetError(
            f"permission denied reading the file of {image.path} mapped at {first.start:#x} ({path}); "
            f"{permission_advice()}"
        ) from None
    except OSError:
        pass  # the file's reader says why, in its own words
    return path


def image_code_of_process(pid: int, image: RuntimeImage) -> ImageCode:
    """`image_code` of a process's image, from the file it mapped (/proc/PID/map_files), not its memory."""
    path = mapped_file_of(pid, image)
    try:
        with ElfFile.mapped(path) as elf:
            return dataclasses.replace(image_code(elf), path=printable(image.path))
    except ImageError as exc:  # the file behind the mapping cannot be read
        start = min(m.start for m in image.mappings)
        raise TargetError(f"cannot read the file of {image.path} mapped at {start:#x}: {exc}") from None


def check_record_sites(sites: Iterable[tuple[str, int, int]], code: ImageCode, what: str) -> None:
    """Each (function, link address, bytes written) a record names is a function entry in an executable
    segment of the image: revert and a superseding apply write a record's pre-images only there."""
    for name, site, size in sites:
        if not (code.is_entry(site) and code.in_executable(site, site + size)):
            raise IncompatibleTarget(
                f"{what} names a patch site of {printable(name)} at {site:#x} that is not a function entry of"
                f" {code.path}; nothing written"
            )


def check_writes(writes: Sequence[tuple[int, int]], allowed: Sequence[tuple[int, int]], what: str) -> None:
    """Every (address, size) write lies inside one allowed [start, end) range; else refuse before writing."""
    for address, size in writes:
        if not any(s <= address and address + size <= e for s, e in allowed):
            raise IncompatibleTarget(
                f"{what}: a write of {size} bytes at {address:#x} leaves its bounds; nothing written"
            )
