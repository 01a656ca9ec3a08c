"""Imports of a package against an ELF file: the binary's own PLT/GOT, or a library it already needs.

In a file nothing is loaded yet, so an import is resolved the way the dynamic linker will: an import
the baseline already binds is reached through its PLT entry and GOT slot; any other must be defined
(with its version) by a library in the file's DT_NEEDED tree, found by its DT_RUNPATH/DT_RPATH and
the system library directories, and the patched copy asks the dynamic linker to bind it. An import no
such library defines is refused before anything is written: a file that names an undefined symbol
would not even start.
"""

from __future__ import annotations

import os
import subprocess
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from hpkg.elf.dynamic import dynamic_symbols, library_search_path, needed_libraries
from hpkg.elf.file import ElfFile
from hpkg.elf.imports import read_imports
from hpkg.errors import ImageError, RefusedError
from hpkg.formats.model import ImportRecord
from hpkg.loader.placement import ResolvedImport

# Where glibc's dynamic linker looks after DT_RUNPATH and its cache, on Debian/Ubuntu x86-64.
SYSTEM_LIBRARY_DIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
)
MAX_LIBRARIES = 64  # a bound on the dependency walk


def _search_dirs(paths: str | None, origin: Path) -> list[str]:
    """The directories of a DT_RUNPATH (or DT_RPATH) string of one object, $ORIGIN expanded."""
    if not paths:
        return []
    expanded = paths.replace("${ORIGIN}", str(origin)).replace("$ORIGIN", str(origin))
    return [p for p in expanded.split(":") if p]


def _ldconfig_cache() -> dict[str, str]:
    """soname -> path of the x86-64 libraries in the dynamic linker's cache (empty if ldconfig fails)."""
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        cache: dict[str, str] = {}
        for line in out.splitlines()[1:]:
            name, _, rest = line.strip().partition(" (")
            if "x86-64" in rest and "=> " in rest:
                cache.setdefault(name, rest.split("=> ", 1)[1])
        return cache
    return {}


def _definitions(elf: ElfFile) -> dict[str, set[str | None]]:
    """Defined dynamic symbols of a library: name -> the versions it defines it at (None: unversioned)."""
    found: dict[str, set[str | None]] = {}
    for sym in dynamic_symbols(elf):
        if sym.defined and sym.name:
            found.setdefault(sym.name, set()).add(sym.version)
    return found


@dataclass(frozen=True)
class _Library:
    """What the dependency walk needs of one object: what it needs, where it looks, what it defines."""

    needed: tuple[str, ...]  # DT_NEEDED
    search_dirs: list[str]  # DT_RUNPATH or DT_RPATH, $ORIGIN expanded
    definitions: dict[str, set[str | None]]


def _read_library(path: str | Path) -> _Library | None:
    """One object's needs, search path and definitions, or None if it is no x86-64 ELF file."""
    try:
        with ElfFile.mapped(path) as elf:
            search_dirs = _search_dirs(library_search_path(elf), Path(path).parent)
            return _Library(needed_libraries(elf), search_dirs, _definitions(elf))
    except ImageError:
        return None


class NeededLibraries:
    """The libraries a file's dynamic linker loads for it, breadth-first, as far as they can be found."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.found: list[tuple[str, dict[str, set[str | None]]]] = []  # (path, definitions)
        self.missing: list[str] = []
        self._cache: dict[str, str] | None = None
        self._walk()

    def _locate(self, name: str, dirs: list[str]) -> str | None:
        if "/" in name:
            return name if os.path.isfile(name) else None
        for directory in dirs:
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate):
                return candidate
        if self._cache is None:
            self._cache = _ldconfig_cache()
        if name in self._cache:
            return self._cache[name]
        return next((c for d in SYSTEM_LIBRARY_DIRS if os.path.isfile(c := os.path.join(d, name))), None)

    def _walk(self) -> None:
        root = _read_library(self.path)
        if root is None:
            return
        queue = deque((name, root.search_dirs) for name in root.needed)
        seen: set[str] = set()
        while queue and len(self.found) < MAX_LIBRARIES:
            name, dirs = queue.popleft()
            if name in seen:
                continue
            seen.add(name)
            located = self._locate(name, dirs)
            library = _read_library(located) if located else None
            if library is None:
                self.missing.append(name)
                continue
            self.found.append((located, library.definitions))
            queue.extend((n, library.search_dirs) for n in library.needed)

    def defines(self, record: ImportRecord) -> str | None:
        """The first library that defines `record` at its version, or None."""
        for path, definitions in self.found:
            versions = definitions.get(record.name, set())
            if versions and (record.version is None or record.version in versions or None in versions):
                return path
        return None


def file_import_resolver(
    binary: Path, imports: tuple[ImportRecord, ...]
) -> dict[ImportRecord, ResolvedImport]:
    """Each import resolved to the binary's own PLT entry and GOT slot, else bound at load time.

    Raises RefusedError naming every import that neither the binary binds nor a needed library defines.
    """
    if not imports:
        return {}
    with ElfFile.mapped(binary) as elf:
        own_imports = read_imports(elf)
    resolved: dict[ImportRecord, ResolvedImport] = {}
    libraries: NeededLibraries | None = None
    refused: list[str] = []
    for record in imports:
        found = next(
            (
                i
                for i in own_imports
                if i.name == record.name
                and (record.version is None or i.version in (None, record.version))
                and (i.plt_address is not None or i.got_address is not None)
            ),
            None,
        )
        if found is not None:
            resolved[record] = ResolvedImport(record.name, found.plt_address, found.got_address)
            continue
        libraries = libraries or NeededLibraries(binary)
        if libraries.defines(record) is None:
            shown = f"{record.name}@{record.version}" if record.version else record.name
            searched = ", ".join(Path(p).name for p, _ in libraries.found) or "none found"
            refused.append(f"import {shown}: defined by no library {binary.name} needs ({searched})")
            continue
        resolved[record] = ResolvedImport(record.name, None, None, bound_at_load=True)
    if refused:
        raise RefusedError(
            f"the package needs symbols that {binary} cannot bind when it is loaded", tuple(refused)
        )
    return resolved
