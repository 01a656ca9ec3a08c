"""The build driver: two binaries in, a package out; and PatchPlan → formats.Package on the way.

The plan is pure; this module adds the facts about the baseline file itself (its SHA-256, taken
when it was loaded, and its soname) and hands the result to `hpkg.formats.write_package`.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hpkg import __version__
from hpkg.builder.diff import Progress, diff_images
from hpkg.builder.image import DEBUG_ROOTS, DebugLookup, load_image
from hpkg.builder.model import Function, Image
from hpkg.builder.pe_target import as_rvas, pe_baseline_record
from hpkg.builder.plan import PatchPlan, PlanOptions, check_plan, plan_patch
from hpkg.elf.constants import DT_SONAME
from hpkg.elf.structs import DYN
from hpkg.errors import ImageError
from hpkg.formats import (
    AddedFunction,
    DataObject,
    Package,
    PatchIdentity,
    ReplacedFunction,
    TargetRecord,
    write_package,
)

PAGE_SIZE = 4096
PACKAGE_ID_BYTES = 16


def image_size(image: Image) -> int:
    """Span of the PT_LOAD segments from the first page to the last byte: what the loader maps."""
    loads = [s for s in image.segments if s.kind == "LOAD"]
    if not loads:
        raise ImageError(f"{image.path}: no loadable segment")
    start = min(s.address for s in loads) & ~(PAGE_SIZE - 1)
    return max(s.address + s.memory_size for s in loads) - start


def soname(image: Image) -> str | None:
    """DT_SONAME of a shared library, read from .dynamic and .dynstr."""
    dynamic = image.section_bytes.get(".dynamic", b"")
    strings = image.section_bytes.get(".dynstr", b"")
    for tag, value in DYN.iter_unpack(dynamic[: len(dynamic) // DYN.size * DYN.size]):
        if tag == DT_SONAME and value < len(strings):
            end = strings.find(b"\0", value)
            name = strings[value:end]
            if end < 0 or not name.isascii() or not name.decode().isprintable():
                # The name ends up in the package and on terminals: a damaged one is refused, not mangled.
                raise ImageError(f"{image.path}: malformed ELF file: DT_SONAME is no terminated ASCII name")
            return name.decode()
        if tag == 0:
            break
    return None


def baseline_record(image: Image) -> TargetRecord:
    """The baseline a package applies to: build-id, image size, file digest and a name to find it by
    (a PE32+ image: its CodeView identity, SizeOfImage and ImageBase, builder/pe_target.py)."""
    if image.is_pe:
        return pe_baseline_record(image)
    if not image.build_id:
        raise ImageError(f"{image.path}: the baseline has no GNU build-id (link with -Wl,--build-id)")
    return TargetRecord(
        build_id=bytes.fromhex(image.build_id),
        image_size=image_size(image),
        file_sha256=image.file_sha256 or None,
        soname_hint=soname(image) or os.path.basename(image.path),
    )


def package_id(target: TargetRecord, plan: PatchPlan, overrides: tuple[str, ...]) -> str:
    """Hex of the first 16 bytes of SHA-256 over the baseline build-id, the level and the payload: same
    inputs, same id; another fix or level, another id."""
    h = hashlib.sha256()
    h.update(target.build_id)
    h.update(struct.pack("<I", plan.options.level))
    h.update((plan.options.supersedes or "").encode() + b"\0")
    for blob in (plan.code, plan.rodata, plan.data) + ((plan.unwind,) if plan.unwind else ()):
        h.update(struct.pack("<Q", len(blob)) + blob)
    h.update(struct.pack("<Q", plan.bss_size))
    h.update(repr((plan.relocations, plan.imports, overrides)).encode())
    h.update(repr([(f.name, f.site, f.code_offset, f.code_size) for f in plan.functions]).encode())
    h.update(repr([(o.name, o.section.value, o.offset, o.size) for o in plan.objects]).encode())
    return h.hexdigest()[: 2 * PACKAGE_ID_BYTES]


def package_from_plan(plan: PatchPlan, target: TargetRecord) -> Package:
    """The formats record of a (patchable) plan."""
    overrides = plan.verdict.used_overrides()
    identity = PatchIdentity(
        package_id=package_id(target, plan, overrides),
        patch_level=plan.options.level,
        supersedes=plan.options.supersedes,
        builder_version=f"hpkg {__version__}",
    )
    package = Package(
        target=target,
        identity=identity,
        functions=tuple(
            ReplacedFunction(
                name=f.name,
                baseline_address=f.site.address,
                baseline_size=f.site.size,
                baseline_sha256=f.site.sha256,
                pre_image=f.site.pre_image,
                code_offset=f.code_offset,
                code_size=f.code_size,
            )
            for f in plan.replaced
            if f.site is not None
        ),
        added_functions=tuple(AddedFunction(f.name, f.code_offset, f.code_size) for f in plan.added),
        data_objects=tuple(DataObject(o.name, o.section, o.offset, o.size) for o in plan.objects),
        imports=plan.imports,
        allowed_overrides=overrides,
        code=plan.code,
        rodata=plan.rodata,
        data=plan.data,
        bss_size=plan.bss_size,
        relocations=plan.relocations,
        unwind=plan.unwind,
    )
    return as_rvas(package) if target.is_pe else package


@dataclass(frozen=True)
class BuildResult:
    """A built package: the plan it came from, the record, and the file bytes."""

    plan: PatchPlan
    package: Package
    blob: bytes
    signed: bool = False


def build_images(
    old: Image,
    new: Image,
    options: PlanOptions | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    progress: Progress | None = None,
    functions: tuple[tuple[Function, ...], tuple[Function, ...]] | None = None,
) -> BuildResult:
    """Diff two loaded builds, plan, judge (raising UnsupportedChange or NoChange) and encode the package.

    `progress` and `functions` are passed to diff_images (a progress bar, and the functions it sized).
    """
    target = baseline_record(old)
    diff = diff_images(old, new, progress=progress, functions=functions)
    plan = check_plan(plan_patch(diff, options))
    package = package_from_plan(plan, target)
    return BuildResult(plan, package, write_package(package, signing_key), signing_key is not None)


def build_package(
    old_path: str | os.PathLike[str],
    new_path: str | os.PathLike[str],
    options: PlanOptions | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    old_debug: str | os.PathLike[str] | None = None,
    new_debug: str | os.PathLike[str] | None = None,
    debug_roots: tuple[str, ...] = DEBUG_ROOTS,
    fetch_debug: DebugLookup | None = None,
) -> BuildResult:
    """Load two builds (each file read once) and build the package: see `build_images`.

    Stripped builds without `--old-debug/--new-debug` use the debug files installed under
    `debug_roots` by build-id, else what `fetch_debug` finds (hpkg.builder.debuginfod), when there
    are any: symbols tell variables apart.
    """
    old = load_image(old_path, old_debug, debug_roots, fetch_debug)
    new = load_image(new_path, new_debug, debug_roots, fetch_debug)
    return build_images(old, new, options, signing_key)
