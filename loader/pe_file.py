"""A Windows PE32+ file as the File target reads it: headers, identity, code facts, imports, record.

The loader's side of a PE baseline, with hpkg.pe alone (no LIEF, no disassembler). Addresses are
RVAs, as in a PE package (formats/SPEC.md, 1.4); the image's base is its preferred ImageBase, the
"load bias" the compatibility check and the linker add to reach the addresses objdump shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from hpkg.errors import ImageError
from hpkg.loader.bounds import ImageCode
from hpkg.pe.constants import IMAGE_DIRECTORY_ENTRY_EXCEPTION, IMAGE_DIRECTORY_ENTRY_IMPORT
from hpkg.pe.headers import PeHeaders, RvaReader, file_reader, parse_headers
from hpkg.pe.identity import image_identity
from hpkg.pe.imports import import_slots
from hpkg.pe.pdata import runtime_functions

# The section `apply --file` adds with its record (JSON, as ELF's `.hpkg.record`): what was applied.
PE_RECORD_SECTION = ".hpkgrec"
PE_RECORD_FORMAT = 1
MAX_FILE_SIZE = 4 << 30


def is_pe_path(path: str | Path) -> bool:
    """Whether `path` starts with the MZ magic (the File target's dispatch); False when unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"MZ"
    except OSError:
        return False


@dataclass(frozen=True)
class PeFile:
    """A PE32+ file read whole: its bytes and headers, read through RVAs."""

    path: Path
    data: bytes
    headers: PeHeaders

    @classmethod
    def open(cls, path: str | Path) -> PeFile:
        path = Path(path)
        try:
            if path.stat().st_size > MAX_FILE_SIZE:
                raise ImageError(f"{path}: larger than any binary hpkg reads")
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{path}: cannot read: {exc.strerror}") from None
        headers = parse_headers(file_reader(data), str(path))
        for s in headers.sections:
            # A copy appends after the file's end: a section whose bytes the file lacks would overlap it.
            if s.raw_size and s.raw_offset + s.raw_size > len(data):
                raise ImageError(f"{path}: truncated PE file: section {s.name} ends past its end")
        return cls(path, data, headers)

    @cached_property
    def read_rva(self) -> RvaReader:
        return file_reader(self.data, self.headers)

    # -- the compatibility check's ImageReader: RVAs, the preferred base as the bias -----------------
    @cached_property
    def build_id(self) -> bytes:
        """The image identity (CodeView GUID + age, else the fallback rule), as the builder records it."""
        return image_identity(self.headers, self.read_rva)

    @property
    def load_bias(self) -> int:
        return self.headers.image_base

    def read(self, rva: int, size: int) -> bytes:
        return self.read_rva(rva, size) if rva >= 0 and size >= 0 else b""

    # -- what the file says about its code --------------------------------------------------------
    def image_code(self) -> ImageCode:
        """The span (SizeOfImage), the executable sections' file-backed bytes and the function entries
        `.pdata` lists (every x64 function that uses the stack), plus the entry point, all by RVA."""
        h = self.headers
        rva, size = h.directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION)
        entries = {f.begin for f in runtime_functions(self.read_rva, rva, size)}
        if h.entry_rva:
            entries.add(h.entry_rva)
        executable = tuple(
            (s.virtual_address, s.virtual_address + min(s.raw_size, s.size))
            for s in h.sections
            if s.executable and not s.discardable
        )
        sections = tuple((s.name, s.virtual_address, s.virtual_address + s.size) for s in h.sections)
        return ImageCode(
            path=str(self.path),
            span=(0, h.size_of_image),
            executable=executable,
            sections=sections,
            entries=tuple(sorted(entries)),
            sources=(".pdata",),
        )

    def import_slots(self) -> dict[str, int]:
        """`dll!name` → RVA of its IAT slot, for every function the file imports."""
        rva, size = self.headers.directory(IMAGE_DIRECTORY_ENTRY_IMPORT)
        return {s.name: s.slot for s in import_slots(self.read_rva, rva, size, str(self.path))}

    def section_bytes(self, name: str) -> bytes | None:
        section = next((s for s in self.headers.sections if s.name == name), None)
        if section is None:
            return None
        return self.data[section.raw_offset : section.raw_offset + min(section.raw_size, section.size)]

    def applied_packages(self) -> list[dict[str, object]]:
        """What an earlier `apply --file` recorded in the file; empty for a baseline."""
        blob = self.section_bytes(PE_RECORD_SECTION)
        if blob is None:
            return []
        try:
            document = json.loads(blob.rstrip(b"\0"))
            entries = document["applied"]
            if document["format"] != PE_RECORD_FORMAT or not all(
                isinstance(e["package_id"], str) and isinstance(e["patch_level"], int) for e in entries
            ):
                raise ValueError("unexpected record")
        except (ValueError, KeyError, TypeError, RecursionError):
            raise ImageError(
                f"{self.path}: unreadable {PE_RECORD_SECTION} section (written by another hpkg?)"
            ) from None
        return entries
