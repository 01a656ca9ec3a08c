"""The Windows code of a Wine process and the unwind data of every pc in it, for the stack walker.

Windows code is the executable mappings of the PE images the process maps (loader/pe_process) and the
code of hpkg's packages in it. A module's RUNTIME_FUNCTIONs and UNWIND_INFO come from the file behind
its header mapping (/proc/PID/map_files: what Wine mapped, never the target's memory, which it could
rewrite), memory-mapped and read by RVA; a package's from its own memory: the table its record's Wine
list entry points at (loader/wine_unwind.py), UNWIND_INFO at the entry's base + RVA. A pc of a package
without such a table, or in no RUNTIME_FUNCTION of a module, is a leaf function's.

Built while the process runs (once per change of its mappings); inside the stop, a lookup is two
bisections and, per function met for the first time, one decode of its UNWIND_INFO chain.
"""

from __future__ import annotations

import bisect
import mmap
import os
from array import array
from dataclasses import dataclass, field

from hpkg.errors import ImageError, TargetError
from hpkg.loader.bounds import mapped_file_of
from hpkg.loader.pe_process import pe_images
from hpkg.loader.process import Process
from hpkg.loader.procfs import RuntimeImage, parse_maps, read_maps_text
from hpkg.loader.record import PatchRecord, find_records
from hpkg.loader.wine_unwind import ENTRY
from hpkg.pe.constants import IMAGE_DIRECTORY_ENTRY_EXCEPTION
from hpkg.pe.headers import RvaReader, file_reader, parse_headers
from hpkg.pe.pdata import MAX_CHAIN, RUNTIME_FUNCTION
from hpkg.pe.unwind_info import decode_unwind_info
from hpkg.pe.virtual_unwind import EPILOG_BYTES, CodeAt, FrameRecipe, FunctionUnwind

MAX_PACKAGE_FUNCTIONS = 1 << 16  # a longer table in package memory is not one hpkg wrote
UNWIND_INFO_SPAN = 4 + 2 * 256 + 12  # the longest UNWIND_INFO: header, 255 codes padded, a chained entry


@dataclass(frozen=True)
class CodeModule:
    """One module of Windows code: RVAs count from `base`; its RUNTIME_FUNCTIONs as three parallel
    arrays sorted by begin; `read` reads its bytes by RVA (the file, or a copy of package memory)."""

    name: str
    base: int
    executable: tuple[tuple[int, int], ...]  # runtime [start, end) ranges of its code
    begins: array
    ends: array
    unwinds: array
    read: RvaReader = field(repr=False)


@dataclass
class WindowsCode:
    """The code lookup of pe/virtual_unwind.walk over a process's modules (a CodeLookup)."""

    modules: tuple[CodeModule, ...]
    maps_text: bytes = b""  # the /proc/PID/maps text it was built from
    _starts: list[int] = field(default_factory=list, repr=False)
    _ranges: list[tuple[int, int, CodeModule]] = field(default_factory=list, repr=False)
    _functions: dict[tuple[int, int], FunctionUnwind] = field(default_factory=dict, repr=False)
    # Each pc's rsp-relative unwind, kept across the walks of every thread and attempt (pe/virtual_unwind).
    recipes: dict[tuple[int, bool], FrameRecipe | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._ranges = sorted((s, e, m) for m in self.modules for s, e in m.executable)
        self._starts = [s for s, _e, _m in self._ranges]

    def module_at(self, pc: int) -> CodeModule | None:
        """The module whose code holds `pc`, or None: not Windows code."""
        index = bisect.bisect_right(self._starts, pc) - 1
        if index >= 0 and pc < self._ranges[index][1]:
            return self._ranges[index][2]
        return None

    def __call__(self, pc: int, caller: bool) -> CodeAt | None:
        module = self.module_at(pc - 1 if caller else pc)
        if module is None:
            return None
        rva = pc - module.base - (1 if caller else 0)
        index = bisect.bisect_right(module.begins, rva) - 1
        function = None
        if index >= 0 and rva < module.ends[index]:
            function = self._function(module, index)
        return CodeAt(function, module.read(pc - module.base, EPILOG_BYTES))

    def _function(self, module: CodeModule, index: int) -> FunctionUnwind:
        """Entry `index` of `module` with its UNWIND_INFO chain decoded (once per entry)."""
        key = (id(module), index)
        found = self._functions.get(key)
        if found is None:
            begin, end, unwind = module.begins[index], module.ends[index], module.unwinds[index]
            chain = [(module.base + begin, decode_unwind_info(module.read, unwind))]
            while chain[-1][1].chained is not None:
                if len(chain) > MAX_CHAIN:
                    raise ImageError(f"{module.name}: the unwind chain of RVA {begin:#x} does not end")
                parent = chain[-1][1].chained
                chain.append((module.base + parent.begin, decode_unwind_info(module.read, parent.unwind)))
            found = FunctionUnwind(module.base + begin, module.base + end, tuple(chain))
            self._functions[key] = found
        return found


def _columns(raw: bytes) -> tuple[array, array, array]:
    """RUNTIME_FUNCTION records → begin, end, unwind columns sorted by begin (empty entries dropped)."""
    whole = raw[: len(raw) - len(raw) % RUNTIME_FUNCTION.size]
    rows = sorted(r for r in RUNTIME_FUNCTION.iter_unpack(whole) if r[0] < r[1])
    return tuple(array("Q", (r[column] for r in rows)) for column in range(3))  # type: ignore[return-value]


# Modules by the identity of their file (device, inode, size, mtime): the same DLLs in every Wine process.
_FILE_TABLES: dict[tuple[int, int, int, int], tuple[tuple[array, array, array], RvaReader]] = {}


def module_of_file(path: str, name: str, base: int, executable: tuple[tuple[int, int], ...]) -> CodeModule:
    """The module of the PE file at `path` (its exception directory; its bytes memory-mapped), at `base`."""
    try:
        with open(path, "rb") as f:
            status = os.fstat(f.fileno())
            key = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
            if key not in _FILE_TABLES:
                data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
                headers = parse_headers(file_reader(data), name)
                read = file_reader(data, headers)
                rva, size = headers.directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION)
                columns = _columns(read(rva, size) if rva and size else b"")
                _FILE_TABLES[key] = (columns, _with_copy(read, columns[2]))
    except (OSError, ValueError) as exc:  # ValueError: an empty file, which mmap refuses
        raise TargetError(f"cannot read {name} ({path}): {exc}") from None
    (begins, ends, unwinds), read = _FILE_TABLES[key]
    return CodeModule(name, base, executable, begins, ends, unwinds, read)


def _with_copy(read: RvaReader, unwinds: array) -> RvaReader:
    """`read`, with the span holding every UNWIND_INFO copied out of the file's mapping now, before any
    stop: a walk inside the stop then faults in no page of it."""
    if not unwinds:
        return read
    low, high = min(unwinds), max(unwinds) + UNWIND_INFO_SPAN
    copy = read(low, high - low)

    def read_copied(rva: int, size: int) -> bytes:
        if low <= rva and rva + size <= low + len(copy):
            return copy[rva - low : rva - low + size]
        return read(rva, size)

    return read_copied


def _image_module(pid: int, image: RuntimeImage) -> CodeModule:
    executable = tuple((m.start, m.end) for m in image.mappings if m.executable)
    return module_of_file(mapped_file_of(pid, image), image.path, image.start, executable)


def _package_modules(process: Process, images: list[RuntimeImage]) -> list[CodeModule]:
    """The code of every hpkg package applied to one of the PE `images`, with the RUNTIME_FUNCTIONs its
    Wine entry lists (none: every function of it is a leaf); one hpkg cannot read is left out."""
    pe_bases = {(image.path, image.start) for image in images}
    modules = []
    for found in find_records(process):
        record = found.record
        if record is None or (record.image_path, record.load_bias) not in pe_bases:
            continue
        try:
            modules.append(_package_module(process, record))
        except (TargetError, KeyError, ValueError):  # KeyError: a record without a code area
            continue
    return modules


def _package_module(process: Process, record: PatchRecord) -> CodeModule:
    """One package's code: RVAs from its Wine entry's base (the allocation), its bytes copied now (read
    by offset: pe.headers.file_reader without headers)."""
    start, end = record.area("code")
    if record.wine_unwind is None:
        no_entries = (array("Q"), array("Q"), array("Q"))
        return CodeModule(f"package {record.package_id[:12]}", start, ((start, end),), *no_entries,
                          read=file_reader(process.read(start, end - start)))  # fmt: skip
    entry = process.read(record.wine_unwind.entry, ENTRY.size)
    _, _, base, _, table_at, count, _, _, _ = ENTRY.unpack(entry)
    if count > MAX_PACKAGE_FUNCTIONS or not base <= start < end <= record.allocation.end:
        raise ValueError(f"package {record.package_id}: its Wine entry is not one hpkg wrote")
    table = _columns(process.read(table_at, count * RUNTIME_FUNCTION.size))
    return CodeModule(f"package {record.package_id[:12]}", base, ((start, end),), *table,
                      read=file_reader(process.read(base, record.allocation.end - base)))  # fmt: skip


def windows_code(process: Process) -> WindowsCode:
    """The Windows code of `process` now: its PE modules and its packages' code. A module hpkg cannot
    read is left out: a frame in it is then in no Windows code, which the walk reports (never guesses)."""
    maps_text = read_maps_text(process.pid)
    modules = []
    images = pe_images(process, parse_maps(maps_text))
    for image in images:
        try:
            modules.append(_image_module(process.pid, image))
        except (TargetError, ImageError):
            continue
    modules += _package_modules(process, images)
    return WindowsCode(tuple(modules), maps_text)


def current(process: Process, known: WindowsCode | None) -> WindowsCode:
    """`known` while the process's mappings are the ones it was built from, else built anew."""
    if known is not None and read_maps_text(process.pid) == known.maps_text:
        return known
    return windows_code(process)



