"""Resolve a package's imports inside a running process, without calling into it.

The order follows the dynamic linker's view as far as the loader can see it:

1. the patched image's own imports: a symbol the baseline already uses is reached exactly as the
   fixed build would reach it, through the baseline's PLT entry and GOT slot (this also covers
   IFUNCs and lazy binding: the dynamic linker fills the slot as it always does);
2. otherwise the first loaded image, in the order the dynamic linker searches them (its link map:
   the executable, then the libraries in load order; loader/link_map), whose .dynsym defines the
   symbol at the wanted version (or its default version when none is recorded). For a data object
   (stderr, optind) this is what makes the answer the process's one live instance: the executable's
   own copy when it has one (a copy relocation), else the library's definition;
3. an IFUNC (e.g. glibc's strspn) has no fixed address: its resolver picks one per CPU. Calling
   the resolver in the target is what the loader never does, so the loader asks its own copy of
   the same library — the same file by build-id, on the same CPU — and moves the answer by the
   difference of the two load biases. A library the loader has not mapped itself is refused.
"""

from __future__ import annotations

import ctypes
import functools
import os

from hpkg.elf.constants import STB_LOCAL, STT_FUNC, STT_GNU_IFUNC, STT_NOTYPE, STT_OBJECT
from hpkg.elf.dynamic import DynamicSymbol, dynamic_symbols
from hpkg.elf.file import ElfFile
from hpkg.elf.imports import ImportSlots, read_imports
from hpkg.errors import ImageError, RefusedError
from hpkg.formats.model import ImportRecord
from hpkg.loader import procfs
from hpkg.loader.link_map import search_order
from hpkg.loader.placement import ResolvedImport
from hpkg.loader.process import Process
from hpkg.loader.procfs import RuntimeImage

_EXPORTED_TYPES = (STT_FUNC, STT_GNU_IFUNC, STT_OBJECT, STT_NOTYPE)


def _image_file(pid: int, image: RuntimeImage) -> str:
    """A path that opens the exact mapped file (map_files reaches even a deleted one)."""
    first = min(image.mappings, key=lambda m: m.start)
    return f"/proc/{pid}/map_files/{first.start:x}-{first.end:x}"


@functools.lru_cache(maxsize=64)
def _dynamic_symbols(path: str, build_id: str) -> dict[str, list[DynamicSymbol]]:
    """The defined, exported .dynsym symbols of one file (cached by build-id: one read per library)."""
    del build_id  # part of the cache key only
    table: dict[str, list[DynamicSymbol]] = {}
    try:
        with ElfFile.mapped(path) as elf:
            symbols = dynamic_symbols(elf)
    except ImageError:
        return table
    for sym in symbols:
        if sym.defined and sym.name and sym.type in _EXPORTED_TYPES and sym.bind != STB_LOCAL:
            table.setdefault(sym.name, []).append(sym)
    return table


def _match(candidates: list[DynamicSymbol], record: ImportRecord) -> DynamicSymbol | None:
    if record.version is not None:
        exact = [c for c in candidates if c.version == record.version]
        if exact:
            return exact[0]
        return None
    default = [c for c in candidates if c.default]
    return (default or candidates or [None])[0]


def _own_ifunc_address(image: RuntimeImage, symbol: DynamicSymbol) -> int | None:
    """The IFUNC's resolved address in the loader's own copy of the library, moved to the target's."""
    own = [i for i in procfs.list_images(os.getpid()) if i.build_id and i.build_id == image.build_id]
    if not own:
        return None
    try:
        library = ctypes.CDLL(own[0].path.removesuffix(" (deleted)"))
        function = getattr(library, symbol.name)
    except (OSError, AttributeError):
        return None
    # dlsym on an IFUNC symbol runs its resolver and returns the implementation it chose.
    address = ctypes.cast(function, ctypes.c_void_p).value
    if address is None:
        return None
    return address - own[0].load_bias + image.load_bias


class ProcessImports:
    """An ImportResolver over the images loaded in one process, for one patched image."""

    def __init__(self, process: Process, patched: RuntimeImage) -> None:
        self.process = process
        self.patched = patched

    @functools.cached_property
    def _imports_of_patched(self) -> dict[str, list[ImportSlots]]:
        """The patched image's own imports (PLT entries, GOT slots), by name, read from the mapped file."""
        with ElfFile.mapped(_image_file(self.process.pid, self.patched)) as elf:
            imports = read_imports(elf)
        table: dict[str, list[ImportSlots]] = {}
        for imp in imports:
            table.setdefault(imp.name, []).append(imp)
        return table

    def _from_baseline(self, record: ImportRecord) -> ResolvedImport | None:
        bias = self.patched.load_bias
        for imp in self._imports_of_patched.get(record.name, []):
            if record.version is not None and imp.version not in (None, record.version):
                continue
            plt, got = imp.plt_address, imp.got_address
            if plt is None and got is None:
                continue
            slot = got + bias if got is not None else None
            if plt is not None:
                return ResolvedImport(record.name, plt + bias, slot)
            # No PLT entry (-fno-plt, or a GOT slot bound at load): the slot holds the address.
            value = int.from_bytes(self.process.read(slot, 8), "little") if slot is not None else 0
            return ResolvedImport(record.name, value or None, slot)
        return None

    @functools.cached_property
    def lookup_order(self) -> list[RuntimeImage]:
        """The loaded images in the order the dynamic linker searches them (its link map)."""
        images = [i for i in self.process.images() if i.path != "[vdso]"]
        path = _executable_path(self.process.pid)
        executable = next((i for i in images if i.path == path), None)
        exe_file = _image_file(self.process.pid, executable) if executable is not None else ""
        return search_order(self.process, images, executable, exe_file)

    def _from_libraries(self, record: ImportRecord) -> ResolvedImport | None:
        for image in self.lookup_order:
            table = _dynamic_symbols(_image_file(self.process.pid, image), image.build_id)
            symbol = _match(table.get(record.name, []), record)
            if symbol is None:
                continue
            if not symbol.ifunc:
                return ResolvedImport(record.name, image.runtime_address(symbol.value))
            address = _own_ifunc_address(image, symbol)
            if address is None:
                raise RefusedError(
                    f"import {_qualified(record)} is an IFUNC in {image.path}, which the loader has not "
                    "loaded itself: its implementation cannot be chosen without calling into the target"
                )
            return ResolvedImport(record.name, address)
        return None

    def __call__(self, record: ImportRecord) -> ResolvedImport:
        resolved = self._from_baseline(record) or self._from_libraries(record)
        if resolved is None:
            raise RefusedError(
                f"import {_qualified(record)} is defined by no library loaded in process {self.process.pid}"
            )
        return resolved


def _executable_path(pid: int) -> str:
    """The main executable's path as /proc/PID/maps names it, to search it first."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _qualified(record: ImportRecord) -> str:
    return f"{record.name}@{record.version}" if record.version else record.name
