"""Apply a package to an ELF file on disk: the persistent form of a hotpatch (`hpkg apply --file`).

The same steps as the live loader, against a file: prove the file is the baseline (compat), resolve
imports to the binary's own PLT entries and GOT slots (or have the dynamic linker bind new ones),
place the package after the image, relocate with load bias 0 (link addresses), write a new ELF, then
read it back and check the result.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from hpkg.arch.x86_64 import PAGE_SIZE
from hpkg.atomic_output import write_output
from hpkg.elf.file import ElfFile
from hpkg.errors import ImageError, IncompatibleTarget
from hpkg.formats.model import Package
from hpkg.loader.bounds import ImageCode, image_code
from hpkg.loader.compat import AppliedLevel, CompatReport, carried_detail, check_compatibility
from hpkg.loader.file_dynamic import DynamicLinking
from hpkg.loader.file_imports import file_import_resolver
from hpkg.loader.file_result import SiteLine, applied_json, applied_lines, carried_entry
from hpkg.loader.file_write import RECORD_SECTION, plan_segments, write_patched
from hpkg.loader.link import RelocatedImage, relocate
from hpkg.loader.pe_file import PeFile, is_pe_path
from hpkg.loader.pe_file_apply import PeFileApplyResult, apply_to_pe_file, check_pe_file, pe_carried_level
from hpkg.loader.placement import Placement, area_layout


@dataclass(frozen=True)
class FileApplyResult:
    """What `apply --file` wrote: where the package went and which sites jump to it."""

    package: Package
    binary: Path
    output: Path
    compat: CompatReport
    relocated: RelocatedImage
    position_independent: bool
    linking: DynamicLinking  # relocations and dynamic symbols added for the dynamic linker

    def site_lines(self) -> list[SiteLine]:
        """Each patch site at its link address."""
        return [(s.name, s.link_address, s.replacement) for s in self.relocated.patch_sites]

    def lines(self) -> list[str]:
        """Human summary for `hpkg apply`."""
        result = applied_lines(self, "link addresses")
        if self.linking.relative:
            count = self.linking.relative
            result.append(f"{count} R_X86_64_RELATIVE relocations added for absolute addresses")
        if self.compat.superseded:
            old = self.compat.superseded
            result.append(f"supersedes {old}, which the file carried (its code stays in the file, unused)")
        if self.linking.bound_imports:
            result.append(f"imports bound at load time: {', '.join(self.linking.bound_imports)}")
        return result

    def to_json(self) -> dict[str, object]:
        return applied_json(
            self,
            position_independent=self.position_independent,
            relative_relocations=self.linking.relative,
            bound_imports=self.linking.bound_imports,
            superseded=self.compat.superseded,
        )


@dataclass(frozen=True)
class FileCarrying:
    """A file that already carries the package, or a higher level containing it (levels are cumulative):
    `apply --file` then writes `output` as an unchanged copy, so repeating a pipeline step is harmless."""

    package: Package
    binary: Path
    output: Path
    package_id: str  # the recorded package found in place
    patch_level: int

    @property
    def detail(self) -> str:
        """ "" when the file carries this package itself, else which higher level (containing it) it does."""
        return carried_detail(self.package, self.package_id, self.patch_level)

    def verdict(self) -> str:
        """The one line `verify --against` gives for such a file."""
        return f"already applied{f': {self.detail}' if self.detail else ''} (apply changes nothing)"

    def against_json(self) -> dict[str, object]:
        """What `verify --against --json` says of such a file."""
        carried = {"package_id": self.package_id, "patch_level": self.patch_level}
        return {"build_id": self.package.target.build_id.hex(), "already_applied": carried}

    def lines(self) -> list[str]:
        """Human summary for `hpkg apply`."""
        head = f"already applied: {self.package.identity.package_id} in {self.binary}"
        return [f"{head}: {self.detail}" if self.detail else head, f"wrote {self.output} (an unchanged copy)"]

    def to_json(self) -> dict[str, object]:
        identity = self.package.identity
        return {
            "package_id": identity.package_id,
            "patch_level": identity.patch_level,
            "target": {"file": str(self.binary), "build_id": self.package.target.build_id.hex()},
            "output": str(self.output),
            "changed": False,
            "already_applied": {"package_id": self.package_id, "patch_level": self.patch_level},
        }


RECORD_FORMAT = 1


def applied_packages(elf: ElfFile) -> list[dict[str, object]]:
    """What earlier `apply --file` runs recorded in the file (oldest first); empty for a baseline."""
    blob = elf.section(RECORD_SECTION)
    if blob is None:
        return []
    try:
        document = json.loads(blob)
        entries = document["applied"]
        if document["format"] != RECORD_FORMAT or not all(
            isinstance(e["package_id"], str)
            and isinstance(e["patch_level"], int)
            and len(e["code"]) == 2
            and all(isinstance(a, int) and a >= 0 for a in e["code"])
            for e in entries
        ):
            raise ValueError("unexpected record")
    except (ValueError, KeyError, TypeError, RecursionError):
        what = f"unreadable {RECORD_SECTION} section (written by another hpkg?)"
        raise ImageError(f"{elf.path}: {what}") from None
    return entries


def applied_levels(elf: ElfFile) -> tuple[AppliedLevel, ...]:
    """The recorded packages as the compatibility check takes them (their code areas, link addresses)."""
    return _levels(applied_packages(elf))


def _levels(entries: list[dict[str, object]]) -> tuple[AppliedLevel, ...]:
    return tuple(
        AppliedLevel(e["package_id"], e["patch_level"], ((e["code"][0], e["code"][1]),)) for e in entries
    )


def baseline_code(elf: ElfFile, applied: list[dict[str, object]], package: Package) -> ImageCode:
    """What the file says about its functions, without the segments earlier `apply --file` runs added.

    Those (moved program headers, then package code and data) start above the baseline's span, so the
    baseline's PT_LOADs are the ones that start within the package's image_size and below the first
    recorded package code; `check_sites` then proves that they span exactly image_size.
    """
    if not applied:
        return image_code(elf)
    start = min(p.vaddr for p in elf.loads) // PAGE_SIZE * PAGE_SIZE
    limit = min(start + package.target.image_size, *(e["code"][0] for e in applied))
    return image_code(elf, [p for p in elf.loads if p.vaddr < limit])


def carried_level(package: Package, elf: ElfFile, applied: list[dict[str, object]]) -> tuple[str, int] | None:
    """The recorded package that makes applying `package` to this ELF file a no-op (loader/file_result.py's
    rule), for a file of the package's baseline; anything else is left to the compatibility check."""
    if elf.build_id != package.target.build_id:
        return None
    return carried_entry(package, applied, elf.read)


def check_file(package: Package, binary: str | os.PathLike[str]) -> CompatReport | FileCarrying:
    """The compatibility check alone against a file (`hpkg verify --against`); changes nothing. A file
    that already carries the package answers with what it carries. A Windows PE32+ file goes to
    loader/pe_file_apply.py."""
    if is_pe_path(binary):
        pe = PeFile.open(binary)
        pe_carried = pe_carried_level(package, pe)
        if pe_carried is not None:
            return FileCarrying(package, pe.path, pe.path, *pe_carried)
        return check_pe_file(package, pe)
    _refuse_pe_package(package, binary)
    elf = ElfFile(binary)
    applied = applied_packages(elf)
    carried = carried_level(package, elf, applied)
    if carried is not None:
        return FileCarrying(package, elf.path, elf.path, *carried)  # `output`: nothing is written
    return check_compatibility(package, elf, _levels(applied), baseline_code(elf, applied, package))


def _refuse_pe_package(package: Package, binary: str | os.PathLike[str]) -> None:
    if package.target.is_pe:
        raise IncompatibleTarget(f"{binary} is not a Windows PE image; the package is for a PE32+ baseline")


def apply_to_file(
    package: Package, binary: str | os.PathLike[str], output: str | os.PathLike[str]
) -> FileApplyResult | FileCarrying | PeFileApplyResult:
    """Write `output`: `binary` with `package` added and jumps at its patch sites; `binary` is not changed.
    A file that already carries the package (or a higher level) is copied to `output` unchanged. A
    Windows PE32+ file goes to loader/pe_file_apply.py (same steps, PE sections instead of segments)."""
    if is_pe_path(binary):
        pe = PeFile.open(binary)
        pe_carried = pe_carried_level(package, pe)
        if pe_carried is not None:
            write_output(output, pe.data, stat.S_IMODE(os.stat(pe.path).st_mode))
            return FileCarrying(package, pe.path, Path(output), *pe_carried)
        return apply_to_pe_file(package, pe, output)
    _refuse_pe_package(package, binary)
    # STEP 1: the file is the package's baseline, site by site (or carries the level this one supersedes),
    # and every site is a function entry in its code (loader/bounds.py): proven before anything is written.
    elf = ElfFile(binary)
    applied = applied_packages(elf)
    carried = carried_level(package, elf, applied)
    if carried is not None:
        image = bytes(elf.data)
        mode = stat.S_IMODE(os.stat(elf.path).st_mode)
        write_output(output, image, mode)  # read back and compared before it replaces `output`
        return FileCarrying(package, elf.path, Path(output), *carried)
    compat = check_compatibility(package, elf, _levels(applied), baseline_code(elf, applied, package))

    # STEP 2: imports, placement after the image, relocation with link addresses (bias 0).
    resolved = file_import_resolver(elf.path, package.imports)
    layout = area_layout(package, resolved.__getitem__)
    segments = plan_segments(elf)
    placement = Placement.contiguous(segments.code_base, layout)
    relocated = relocate(package, placement, 0, resolved.__getitem__)

    # STEP 3: the new file, read back before it replaces `output`: the jumps are where they belong and the
    # identity is kept.
    entry = {
        "package_id": package.identity.package_id,
        "patch_level": package.identity.patch_level,
        "supersedes": compat.superseded,
        "code": [placement.code, placement.code + layout.code_size],
        "functions": [f.name for f in package.functions],
    }
    record = json.dumps({"format": RECORD_FORMAT, "applied": [*applied, entry]}, sort_keys=True)
    # write_patched reads the new file back and checks it before it replaces `output`.
    linking = write_patched(elf, relocated, segments, output, record.encode("ascii"))
    return FileApplyResult(
        package=package,
        binary=elf.path,
        output=Path(output),
        compat=compat,
        relocated=relocated,
        position_independent=elf.position_independent,
        linking=linking,
    )
