"""Resolve a PE package's imports (`dll!name`) inside a Windows program running under Wine.

1. an import the baseline already has goes through the baseline's own IAT slot (the runtime address
   of the slot its file names), exactly as the fixed build would: Wine's loader filled it;
2. otherwise the DLL must already be loaded in the process: its export directory, read from the
   process's memory (Wine 8 maps builtin DLLs from PE files too), gives the function's address; a
   forwarder (`NTDLL.RtlFoo`) is followed to the DLL it names. A DLL that is not loaded is refused:
   loading one would mean calling LoadLibrary inside the target, which the loader never does.
"""

from __future__ import annotations

import functools
import posixpath

from hpkg.errors import ImageError, RefusedError, TargetError
from hpkg.formats.model import ImportRecord
from hpkg.loader.bounds import mapped_file_of
from hpkg.loader.pe_file import PeFile
from hpkg.loader.pe_process import pe_images
from hpkg.loader.placement import ResolvedImport
from hpkg.loader.process import Process
from hpkg.loader.procfs import RuntimeImage
from hpkg.pe.constants import IMAGE_DIRECTORY_ENTRY_EXPORT
from hpkg.pe.exports import find_export
from hpkg.pe.headers import memory_reader, parse_headers
from hpkg.pe.imports import split_import_name

MAX_FORWARDS = 8  # a forwarder chain longer than this is a loop


def _module_name(path: str) -> str:
    """The name a PE import names a loaded image by: its file name, lower-cased."""
    return posixpath.basename(path.removesuffix(" (deleted)")).lower()


class PeProcessImports:
    """An ImportResolver over the PE images loaded in one Wine process, for one patched image."""

    def __init__(self, process: Process, patched: RuntimeImage) -> None:
        self.process = process
        self.patched = patched

    @functools.cached_property
    def _iat_slots(self) -> dict[str, int]:
        """`dll!name` → IAT slot RVA of the patched image, read from the file it mapped."""
        return PeFile.open(mapped_file_of(self.process.pid, self.patched)).import_slots()

    @functools.cached_property
    def _modules(self) -> dict[str, RuntimeImage]:
        """The loaded PE images by file name (the first of a name: the one Wine's loader would use)."""
        modules: dict[str, RuntimeImage] = {}
        for image in pe_images(self.process):
            modules.setdefault(_module_name(image.path), image)
        return modules

    def _export(self, dll: str, function: str | int, name: str) -> int:
        """The address of `function` exported by the loaded DLL `dll`, forwarders followed."""
        for _ in range(MAX_FORWARDS):
            module = self._modules.get(dll.lower()) or self._modules.get(f"{dll.lower()}.dll")
            if module is None:
                raise RefusedError(
                    f"import {name}: {dll} is not loaded in process {self.process.pid}; hpkg does not load"
                    " a DLL into a running program (that would call LoadLibrary inside it)"
                )
            read = memory_reader(self.process.read, module.start)
            try:
                headers = parse_headers(read, module.path)
                directory = headers.directory(IMAGE_DIRECTORY_ENTRY_EXPORT)
                export = find_export(read, *directory, function, module.path)
            except (ImageError, TargetError) as exc:
                why = f"cannot read the exports of {module.path}: {exc}"
                raise RefusedError(f"import {name}: {why}") from None
            if export is None:
                raise RefusedError(f"import {name}: {module.path} does not export it")
            if export.rva is not None:
                return module.start + export.rva
            target_dll, _, target = (export.forwarder or "").rpartition(".")
            dll = target_dll
            function = int(target[1:]) if target.startswith("#") and target[1:].isdigit() else target
        raise RefusedError(f"import {name}: its forwarders form a chain longer than {MAX_FORWARDS}")

    def __call__(self, record: ImportRecord) -> ResolvedImport:
        slot = self._iat_slots.get(record.name)
        if slot is not None:
            return ResolvedImport(record.name, None, self.patched.start + slot)
        parts = split_import_name(record.name)
        if parts is None:
            raise RefusedError(f"import {record.name}: not a `dll!name` import of a Windows program")
        return ResolvedImport(record.name, self._export(*parts, record.name))
