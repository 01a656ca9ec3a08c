"""Apply a package to a Windows PE32+ file on disk (`hpkg apply --file` of a PE baseline).

The steps of the ELF File target (loader/file_apply.py), for a PE image: prove the file is the
baseline (identity, sites as `.pdata` function entries, pre-images, function digests), resolve
imports to the file's IAT slots or to new ones, place the package after SizeOfImage at the preferred
ImageBase, relocate, write the copy (loader/pe_file_write.py) and read it back before it replaces
the output.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from hpkg.arch.x86_64 import decode_jmp_rel32
from hpkg.atomic_output import write_output
from hpkg.errors import IncompatibleTarget, RefusedError
from hpkg.formats.model import ImportRecord, Package
from hpkg.loader.compat import CompatReport, check_compatibility
from hpkg.loader.file_result import SiteLine, applied_json, applied_lines, carried_entry
from hpkg.loader.link import RelocatedImage, relocate
from hpkg.loader.pe_file import PE_RECORD_FORMAT, PeFile
from hpkg.loader.pe_file_write import (
    TABLE_ALIGN,
    AddedImports,
    PeAdditions,
    PeLayout,
    added_imports,
    merged_pdata,
    merged_relocations,
    section_contents,
    write_pe,
)
from hpkg.loader.placement import Placement, ResolvedImport, align, area_layout
from hpkg.pe.constants import (
    IMAGE_DIRECTORY_ENTRY_BASERELOC,
    IMAGE_DIRECTORY_ENTRY_EXCEPTION,
    IMAGE_DIRECTORY_ENTRY_SECURITY,
)
from hpkg.pe.identity import read_codeview
from hpkg.pe.package_unwind import decode_package_pdata
from hpkg.pe.pdata import RUNTIME_FUNCTION

DIR64_SIZE = 8


@dataclass(frozen=True)
class PeFileApplyResult:
    """What `apply --file` wrote for a PE baseline; the same summary and JSON shape as ELF's."""

    package: Package
    binary: Path
    output: Path
    compat: CompatReport
    relocated: RelocatedImage
    added_imports: tuple[str, ...]
    base_relocations: int  # DIR64 entries added for absolute addresses in package data
    signature_dropped: bool = False  # the baseline carried an Authenticode signature, which no longer matches

    def site_lines(self) -> list[SiteLine]:
        """Each patch site at its address at the preferred ImageBase."""
        return [(s.name, s.address, s.replacement) for s in self.relocated.patch_sites]

    def lines(self) -> list[str]:
        where = "at the image's preferred base (sections .hpkgtx, .hpkgdt)"
        result = applied_lines(self, where)
        if self.base_relocations:
            result.append(f"{self.base_relocations} DIR64 base relocations added for absolute addresses")
        if self.added_imports:
            result.append(f"imports added to the import directory: {', '.join(self.added_imports)}")
        if self.signature_dropped:
            result.append(
                "the baseline's Authenticode signature was dropped: it does not cover the patched file"
            )
        return result

    def to_json(self) -> dict[str, object]:
        return applied_json(
            self,
            position_independent=True,
            relative_relocations=self.base_relocations,
            bound_imports=self.added_imports,
            superseded=None,
        )


def pe_carried_level(package: Package, pe: PeFile) -> tuple[str, int] | None:
    """The recorded package that makes applying `package` to this PE file a no-op (loader/file_result.py's
    rule, jumps relative to the preferred ImageBase). None otherwise."""
    if not package.target.is_pe or not pe.applied_packages():
        return None
    # A CodeView identity survives patching; the fallback rule's (stamp, SizeOfImage, header digest) does
    # not, and then the record and the jumps alone say what the file carries.
    if read_codeview(pe.headers, pe.read_rva) is not None and pe.build_id != package.target.build_id:
        return None
    return carried_entry(package, pe.applied_packages(), pe.read, pe.headers.image_base)


def check_pe_file(package: Package, pe: PeFile) -> CompatReport:
    """The compatibility check against a PE file (also `hpkg verify --against`); changes nothing."""
    if not package.target.is_pe:
        raise IncompatibleTarget(f"{pe.path} is a Windows PE image; the package is for an ELF baseline")
    if pe.applied_packages():
        raise IncompatibleTarget(
            f"{pe.path} was already patched by hpkg apply --file with another package; apply a package"
            " (a higher level is cumulative) to the unpatched baseline instead"
        )
    return check_compatibility(package, pe, (), pe.image_code())


def apply_to_pe_file(package: Package, pe: PeFile, output: str | os.PathLike[str]) -> PeFileApplyResult:
    """Write `output`: the PE file `pe` with `package` added and jumps at its sites; `pe` is unchanged."""
    # STEP 1: the file is the baseline, site by site (proven before anything is written).
    compat = check_pe_file(package, pe)
    base = pe.headers.image_base
    runtime_functions = decode_package_pdata(package.unwind, len(package.code))

    # STEP 2: imports the file has resolve to its IAT slots; the others get slots in new import tables,
    # whose place is known once the package's areas are (a slot's existence, not its address, sizes them).
    existing = pe.import_slots()
    missing = tuple(dict.fromkeys(m.name for m in package.imports if m.name not in existing))

    def resolver(new_slots: dict[str, int]):
        def resolve(record: ImportRecord) -> ResolvedImport:
            slot = existing.get(record.name, new_slots.get(record.name))
            return ResolvedImport(record.name, None, None if slot is None else base + slot)

        return resolve

    placeholder = {name: 0 for name in missing}
    layout = PeLayout.of(pe)
    areas = area_layout(package, resolver(placeholder))
    placement = Placement.contiguous(base + layout.code_rva, areas, page_size=layout.section_alignment)
    tables_rva = align(placement.end - base, TABLE_ALIGN)
    imports: AddedImports | None = added_imports(pe, missing, tables_rva) if missing else None
    pdata_rva = align(tables_rva + (len(imports.blob) if imports else 0), TABLE_ALIGN)

    # STEP 3: relocation at the preferred base: baseline RVAs + ImageBase, package areas where placed.
    relocated = relocate(package, placement, base, resolver(imports.slots if imports else {}))

    # STEP 4: the tables the image needs anew, then the file, read back before it replaces `output`.
    pdata = merged_pdata(pe, runtime_functions, layout.code_rva, placement.unwind - base)
    relocations_rva = align(pdata_rva + len(pdata), TABLE_ALIGN)
    pointers = _pointer_rvas(relocated, base)
    has_relocations = bool(pe.headers.directory(IMAGE_DIRECTORY_ENTRY_BASERELOC)[1]) or bool(pointers)
    relocations = merged_relocations(pe, pointers) if has_relocations else b""
    code, data = section_contents(relocated, placement, base)
    data_rva = placement.data - base
    tail = bytearray(data)
    for rva, blob in (
        (tables_rva, imports.blob if imports else b""),
        (pdata_rva, pdata),
        (relocations_rva, relocations),
    ):
        tail += bytes(rva - data_rva - len(tail)) + blob
    entry = {
        "package_id": package.identity.package_id,
        "patch_level": package.identity.patch_level,
        "supersedes": None,
        "code": [placement.code, placement.code + areas.code_size],
        "functions": [f.name for f in package.functions],
    }
    record = json.dumps({"format": PE_RECORD_FORMAT, "applied": [entry]}, sort_keys=True).encode("ascii")
    additions = PeAdditions(
        layout=layout,
        code=code,
        data_rva=data_rva,
        data=bytes(tail),
        record=record,
        imports=imports,
        pdata=(pdata_rva, len(pdata)),
        relocations=(relocations_rva, len(relocations)) if relocations else (0, 0),
    )
    patched = write_pe(pe, relocated, additions)
    mode = pe.path.stat().st_mode & 0o777
    write_output(output, patched, mode, lambda written: _check_written(pe, relocated, Path(output), written))
    signed = pe.headers.directory(IMAGE_DIRECTORY_ENTRY_SECURITY) != (0, 0)
    return PeFileApplyResult(
        package, pe.path, Path(output), compat, relocated, missing, len(pointers), signed
    )


def _pointer_rvas(relocated: RelocatedImage, base: int) -> list[int]:
    """RVAs of the absolute addresses the package areas hold (GOT slots, pointer words): each needs a
    DIR64 base relocation, for Windows may load the image elsewhere (DYNAMIC_BASE, ASLR)."""
    out = []
    for field in relocated.absolute_fields:
        if field.width != DIR64_SIZE:
            raise RefusedError(
                f"{field.what}: a {field.width}-byte absolute address, which no PE base relocation of a"
                " 64-bit image can rebase; nothing written"
            )
        out.append(relocated.placement.base(field.area) + field.offset - base)
    return out


def _check_written(pe: PeFile, relocated: RelocatedImage, output: Path, written: bytes) -> None:
    """The written copy parses, keeps the baseline's CodeView identity and jumps where it should."""
    from hpkg.pe.headers import file_reader, parse_headers

    headers = parse_headers(file_reader(written), str(output))
    read = file_reader(written, headers)
    before = read_codeview(pe.headers, pe.read_rva)
    if before is not None and read_codeview(headers, read) != before:
        raise RefusedError(
            f"{output}: the written copy lost the baseline's CodeView identity; nothing written"
        )
    for site in relocated.patch_sites:
        bytes_there = read(site.link_address, len(site.jump))
        if decode_jmp_rel32(site.address, bytes_there) != site.replacement:
            raise RefusedError(f"{output}: the jump of {site.name} did not land in the written copy")
    rva, size = headers.directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION)
    table = read(rva, size)
    begins = [b for b, _, _ in RUNTIME_FUNCTION.iter_unpack(table[: len(table) // 12 * 12])]
    if begins != sorted(begins):
        raise RefusedError(f"{output}: the merged exception directory is not sorted")
