"""What `apply --file` says it did, and when it has nothing to do: shared by the ELF and PE file targets.

Both write the package into a copy of the baseline; their summaries and JSON differ only in what the
format adds (ELF: relocations for the dynamic linker and superseding; PE: DIR64 base relocations and
import-directory entries), and both call a file "already applied" by the same rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from hpkg.arch.x86_64 import JMP_REL32_SIZE, decode_jmp_rel32
from hpkg.formats.model import Package
from hpkg.loader.compat import CompatReport, contains
from hpkg.loader.link import RelocatedImage

# (function name, address of its jump as the file's reader sees it, address of the replacement)
SiteLine = tuple[str, int, int]


class WrittenFile(Protocol):
    """What both file targets' results hold (loader/file_apply.FileApplyResult, PeFileApplyResult)."""

    @property
    def package(self) -> Package: ...
    @property
    def binary(self) -> Path: ...
    @property
    def output(self) -> Path: ...
    @property
    def compat(self) -> CompatReport: ...
    @property
    def relocated(self) -> RelocatedImage: ...

    def site_lines(self) -> list[SiteLine]:
        """Each patch site as the format's reader addresses it."""
        ...


def applied_lines(written: WrittenFile, where: str) -> list[str]:
    """The first lines of `hpkg apply --file`'s summary: what went where, and each site's jump."""
    identity, placement = written.package.identity, written.relocated.placement
    result = [
        f"applied {identity.package_id} (level {identity.patch_level}) to {written.binary}",
        f"wrote {written.output}",
        f"package code at {placement.code:#x} ({placement.layout.code_size} bytes), "
        f"data at {placement.data:#x}, {where}",
    ]
    result.extend(
        f"  {name}: jmp at {address:#x} -> {replacement:#x}"
        for name, address, replacement in written.site_lines()
    )
    return result


def applied_json(
    written: WrittenFile,
    *,
    position_independent: bool,
    relative_relocations: int,
    bound_imports: Sequence[str],
    superseded: str | None,
) -> dict[str, object]:
    """`hpkg apply --file --json` of a written file (schemas/apply.json), for either format."""
    identity, relocated = written.package.identity, written.relocated
    placement = relocated.placement
    layout = placement.layout
    return {
        "package_id": identity.package_id,
        "patch_level": identity.patch_level,
        "target": {"file": str(written.binary), "build_id": written.compat.build_id.hex()},
        "output": str(written.output),
        "changed": True,
        "position_independent": position_independent,
        "areas": {
            "code": {"address": placement.code, "size": layout.code_size},
            "rodata": {"address": placement.rodata, "size": layout.rodata_size},
            "data": {"address": placement.data, "size": layout.data_size},
            "bss": {"address": placement.bss, "size": layout.bss_size},
        },
        "patch_sites": [
            {"function": name, "link_address": address, "replacement": replacement}
            for name, address, replacement in written.site_lines()
        ],
        "relative_relocations": relative_relocations,
        "bound_imports": list(bound_imports),
        "relaxed_got_loads": relocated.relaxed,
        "superseded": superseded,
        "compatibility": written.compat.to_json(),
    }


def carried_entry(
    package: Package, applied: Sequence[dict[str, object]], read: Callable[[int, int], bytes], base: int = 0
) -> tuple[str, int] | None:
    """The recorded package that makes applying `package` to the file a no-op: this very package, or a
    higher level not superseded since, whose code every one of this package's sites jumps into (the bytes
    after each jump still the pre-image's). `read(site, size)` reads the file at a package address;
    `base` turns that address into the one the jump is relative to (a PE's ImageBase, 0 for ELF)."""
    superseded = {e.get("supersedes") for e in applied}
    for entry in reversed(applied):
        package_id, level = entry["package_id"], entry["patch_level"]
        if package_id in superseded or not contains(package, package_id, level):
            continue
        start, end = entry["code"]
        if all(
            _jumps_into(
                read(f.baseline_address, len(f.pre_image)), base + f.baseline_address, f.pre_image, start, end
            )
            for f in package.functions
        ):
            return package_id, level
    return None


def _jumps_into(found: bytes, address: int, pre_image: bytes, start: int, end: int) -> bool:
    target = decode_jmp_rel32(address, found)
    if target is None or not start <= target < end:
        return False
    return found[JMP_REL32_SIZE:] == pre_image[JMP_REL32_SIZE:]
