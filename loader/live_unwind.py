"""Make the unwinder of a running process find a package's FDEs, without calling into the process.

libgcc (GCC 12) asks glibc 2.35+'s `_dl_find_object(pc)` (exported by libc, implemented in ld.so)
which object holds a PC; for the main program ld.so answers from one internal record, `_dlfo_main` =
{map_start, map_end, link_map*, eh_frame} (x86-64 has neither eh_dbase nor eh_count), filled at
startup from the program's
PT_LOAD span and PT_GNU_EH_FRAME and never written again. ld.so has no .symtab here, so the record
is found by its contents: the one 8-aligned quadruple (map_start, map_end, *, eh_frame) in ld.so's
data whose link_map's l_addr is the load bias. While every thread is stopped, its eh_frame is
pointed at a merged .eh_frame_hdr in the package allocation (the baseline's table plus the package
FDEs) and map_end is extended over the allocation, which therefore lies above the image with no
other code in between; revert writes both words back. The record sits in RELRO (read-only pages):
/proc/PID/mem writes it regardless, as it does the patch sites.

Anything else — a shared-library image, an unwinder that does not use `_dl_find_object`, a record
not found exactly once — is refused (`unwind-registration-unsupported`) before anything changes.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass

from hpkg.arch.x86_64 import PAGE_SIZE
from hpkg.elf.constants import AT_BASE, PT_GNU_EH_FRAME
from hpkg.elf.dynamic import dynamic_symbols
from hpkg.elf.ehframe import EH_FRAME_HDR, EhFrameHdr, UnwindTableError, eh_frame_hdr_size, read_eh_frame_hdr
from hpkg.elf.file import ElfFile
from hpkg.elf.headers import ElfHeaders, read_headers
from hpkg.elf.structs import AUXV
from hpkg.errors import ImageError, RefusedError, TargetError
from hpkg.loader.process import Process
from hpkg.loader.procfs import Mapping, RuntimeImage

REASON = "unwind-registration-unsupported"
FIND_OBJECT = "_dl_find_object"
_RECORD = struct.Struct("<QQQQ")  # struct dl_find_object_internal on x86-64


def _refuse(why: str) -> RefusedError:
    return RefusedError(f"{REASON}: {why}; the package's unwind rules cannot be registered in this process")


@dataclass(frozen=True)
class UnwindTarget:
    """What a live unwind registration needs to know, found before anything is changed."""

    record_address: int
    map_start: int
    original_end: int  # the program's own map_end (bias + highest PT_LOAD end)
    original_eh_frame: int  # bias + PT_GNU_EH_FRAME's address
    baseline: EhFrameHdr  # the program's own search table


def _image_file(pid: int, image: RuntimeImage) -> str:
    first = min(image.mappings, key=lambda m: m.start)
    return f"/proc/{pid}/map_files/{first.start:x}-{first.end:x}"


@functools.lru_cache(maxsize=32)
def _dynamic_symbols(path: str, key: str) -> tuple[frozenset[str], frozenset[str]]:
    """(defined, undefined) .dynsym names of one file, cached by `key` (build-id)."""
    del key
    try:
        with ElfFile.mapped(path) as elf:
            symbols = dynamic_symbols(elf)
    except ImageError:
        return frozenset(), frozenset()
    defined = frozenset(s.name for s in symbols if s.defined and s.name)
    undefined = frozenset(s.name for s in symbols if not s.defined and s.name)
    return defined, undefined


def _interpreter_base(pid: int) -> int:
    """AT_BASE from /proc/PID/auxv: where the kernel mapped the program's interpreter (ld.so)."""
    try:
        with open(f"/proc/{pid}/auxv", "rb") as f:
            auxv = f.read()
    except OSError as exc:
        raise TargetError(f"cannot read /proc/{pid}/auxv: {exc.strerror or exc}") from None
    for key, value in AUXV.iter_unpack(auxv[: len(auxv) // AUXV.size * AUXV.size]):
        if key == AT_BASE:
            return value
    return 0


def _symbols(process: Process, image: RuntimeImage) -> tuple[frozenset[str], frozenset[str]]:
    return _dynamic_symbols(_image_file(process.pid, image), image.build_id or image.path)


def _mapped_headers(process: Process, image: RuntimeImage) -> ElfHeaders:
    """The image's ELF and program headers as mapped (file offset 0 is the start of its first mapping)."""
    try:
        return read_headers(lambda offset, size: process.read(image.start + offset, size), image.path)
    except ImageError as exc:
        raise _refuse(str(exc)) from None


def find_unwind_target(
    process: Process, image: RuntimeImage, current: tuple[int, int] | None = None
) -> UnwindTarget:
    """Prove the process registers FDEs the way this module changes, and find ld.so's record.

    `current` is (map_end, eh_frame) as a lower level of hpkg left them, when one is applied.
    """
    executable = os.readlink(f"/proc/{process.pid}/exe")
    if image.path.removesuffix(" (deleted)") != executable.removesuffix(" (deleted)"):
        raise _refuse(f"{image.path} is a shared library (only the main program's record is changed)")
    images = [i for i in process.images() if i.path != "[vdso]"]
    # glibc 2.35+ exports _dl_find_object from libc (a call through ld.so's function table) and keeps
    # the tables in ld.so, the interpreter (AT_BASE).
    if not any(FIND_OBJECT in _symbols(process, i)[0] for i in images):
        raise _refuse(f"no library in process {process.pid} defines {FIND_OBJECT} (glibc before 2.35)")
    base = _interpreter_base(process.pid)
    linkers = [i for i in images if i.start == base]
    if len(linkers) != 1:
        raise _refuse(f"the dynamic linker of process {process.pid} is not mapped at AT_BASE {base:#x}")
    unwinders = [i for i in images if os.path.basename(i.path).startswith("libgcc_s.so")] or [image]
    if not all(FIND_OBJECT in _symbols(process, i)[1] for i in unwinders):
        names = ", ".join(i.path for i in unwinders)
        raise _refuse(f"the unwinder ({names}) does not look FDEs up with {FIND_OBJECT}")

    headers = _mapped_headers(process, image)
    bias = image.load_bias
    frames = headers.of_type(PT_GNU_EH_FRAME)
    if len(frames) != 1:
        raise _refuse(f"{image.path} has {len(frames)} PT_GNU_EH_FRAME headers")
    map_start = bias + min(p.vaddr for p in headers.loads) // PAGE_SIZE * PAGE_SIZE
    original_end = bias + max(p.vaddr + p.memsz for p in headers.loads)
    original_eh_frame = bias + frames[0].vaddr
    try:
        size = eh_frame_hdr_size(process.read(original_eh_frame, EH_FRAME_HDR.size))
        baseline = read_eh_frame_hdr(process.read(original_eh_frame, size), original_eh_frame)
    except (UnwindTableError, TargetError) as exc:
        raise _refuse(f"the program's .eh_frame_hdr: {exc}") from None

    map_end, eh_frame = current or (original_end, original_eh_frame)
    found = _find_record(process, linkers[0].mappings, map_start, map_end, eh_frame, bias)
    if len(found) != 1:
        raise _refuse(f"ld.so's record of the main program was found {len(found)} times, not once")
    return UnwindTarget(found[0], map_start, original_end, original_eh_frame, baseline)


def _find_record(
    process: Process, mappings: tuple[Mapping, ...], start: int, end: int, eh_frame: int, bias: int
) -> list[int]:
    """Addresses of 8-aligned (start, end, link_map, eh_frame) in ld.so's non-executable mappings,
    whose link_map starts with l_addr == bias."""
    found = []
    for mapping in mappings:
        if "x" in mapping.perms or not mapping.readable:
            continue
        data = process.read(mapping.start, mapping.size)
        for offset in range(0, len(data) - _RECORD.size + 1, 8):
            a, b, link_map, d = _RECORD.unpack_from(data, offset)
            if (a, b, d) == (start, end, eh_frame) and link_map:
                try:
                    l_addr = struct.unpack("<Q", process.read(link_map, 8))[0]
                except TargetError:
                    continue
                if l_addr == bias:
                    found.append(mapping.start + offset)
    return found


def check_placement(maps: tuple[Mapping, ...], image: RuntimeImage, start: int, end: int,
                    own: tuple[tuple[int, int], ...] = ()) -> None:
    """Refuse an allocation below the image or with other code between the image and it: extending the
    program's range over that code would hand its PCs the program's unwind table."""
    if start < image.end:
        raise _refuse(f"no free gap above {image.path} within reach for the package")
    for m in maps:
        inside_own = any(s <= m.start and m.end <= e for s, e in ((start, end), *own))
        if m.start >= image.end and m.end <= end and "x" in m.perms and not inside_own:
            what = m.path or "an anonymous mapping"
            raise _refuse(f"code of {what} lies between {image.path} and the package")
