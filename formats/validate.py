"""Cross-field checks on a Package: every range inside its section, every index inside its table.

The writer runs them so that it never emits a package the reader would refuse; the reader runs them
so that a loader never acts on a record that points outside the bytes it was given.
"""

from __future__ import annotations

import unicodedata

from hpkg.errors import PackageError
from hpkg.formats import limits
from hpkg.formats.model import (
    ELF_FILE_FORMAT,
    FIELD_WIDTH,
    PE_FILE_FORMAT,
    DataSection,
    Package,
    PackageSection,
    Relocation,
    RelocationKind,
    TargetSpace,
)

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
SHA256_SIZE = 32
PE_IMAGE_BASE_ALIGN = 0x10000
SUPPORTED_FILE_FORMATS = (ELF_FILE_FORMAT, PE_FILE_FORMAT)
SUPPORTED_MACHINES = ("x86_64",)


def check_int(value: object, low: int, high: int, where: str) -> int:
    """`value` as an int within [low, high], or a PackageError naming `where`."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise PackageError(f"{where}: expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise PackageError(f"{where}: {value} is outside {low}..{high}")
    return value


def check_bytes(value: object, low: int, high: int, where: str) -> bytes:
    """`value` as bytes of length within [low, high], or a PackageError naming `where`."""
    if not isinstance(value, bytes):
        raise PackageError(f"{where}: expected bytes, got {type(value).__name__}")
    if not low <= len(value) <= high:
        raise PackageError(f"{where}: {len(value)} bytes, expected {low}..{high}")
    return value


def check_text(value: object, where: str, *, allow_empty: bool = False) -> str:
    """`value` as a bounded, printable one-line string (it ends up on terminals), or a PackageError."""
    if not isinstance(value, str):
        raise PackageError(f"{where}: expected a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise PackageError(f"{where}: must not be empty")
    if len(value) > limits.MAX_NAME_LENGTH:
        raise PackageError(f"{where}: {len(value)} characters, over the limit of {limits.MAX_NAME_LENGTH}")
    # Category C is control, format, surrogate, private-use and unassigned: none belongs in a name.
    printable = value.isascii() and value.isprintable()
    if not printable and any(unicodedata.category(ch).startswith("C") for ch in value):
        raise PackageError(f"{where}: contains control or non-printable characters")
    return value


def _check_range(offset: int, size: int, limit: int, where: str) -> None:
    if offset + size > limit:
        raise PackageError(f"{where}: bytes {offset}..{offset + size} lie outside a section of {limit} bytes")


def _check_target(pkg: Package) -> None:
    t = pkg.target
    check_bytes(t.build_id, 1, limits.MAX_BUILD_ID, "target.build_id")
    check_int(t.image_size, 1, U64_MAX, "target.image_size")
    if t.file_format not in SUPPORTED_FILE_FORMATS:
        raise PackageError(f"target.file_format: {t.file_format!r} is not supported (elf64 or pe32+)")
    if t.is_pe != (t.image_base is not None):
        what = "a pe32+ target needs" if t.is_pe else "an elf64 target has no"
        raise PackageError(f"target.image_base: {what} image base")
    if t.image_base is not None:
        # Windows maps an image at a 64 KiB boundary (the allocation granularity).
        check_int(t.image_base, 0, U64_MAX, "target.image_base")
        if t.image_base % PE_IMAGE_BASE_ALIGN:
            raise PackageError(f"target.image_base: {t.image_base:#x} is not a multiple of 64 KiB")
    if t.machine not in SUPPORTED_MACHINES:
        raise PackageError(f"target.machine: {t.machine!r} is not supported (expected x86_64)")
    if t.file_sha256 is not None:
        check_bytes(t.file_sha256, SHA256_SIZE, SHA256_SIZE, "target.file_sha256")
    check_text(t.soname_hint, "target.soname_hint", allow_empty=True)


def _check_identity(pkg: Package) -> None:
    i = pkg.identity
    check_text(i.package_id, "identity.package_id")
    check_int(i.patch_level, 1, U32_MAX, "identity.patch_level")
    if i.supersedes is not None:
        check_text(i.supersedes, "identity.supersedes")
        if i.supersedes == i.package_id:
            raise PackageError("identity.supersedes: a package cannot supersede itself")
    check_text(i.builder_version, "identity.builder_version", allow_empty=True)


def _check_count(items: tuple, where: str) -> None:
    if not isinstance(items, tuple):
        raise PackageError(f"{where}: expected a tuple, got {type(items).__name__}")
    if len(items) > limits.MAX_RECORDS:
        raise PackageError(f"{where}: {len(items)} records, over the limit of {limits.MAX_RECORDS}")


def _check_functions(pkg: Package) -> None:
    _check_count(pkg.functions, "functions")
    sites: list[tuple[int, int, str]] = []
    for n, f in enumerate(pkg.functions):
        where = f"functions[{n}]"
        check_text(f.name, f"{where}.name")
        check_int(f.baseline_address, 0, U64_MAX, f"{where}.baseline_address")
        check_int(f.baseline_size, 1, U64_MAX - f.baseline_address, f"{where}.baseline_size")
        check_bytes(f.baseline_sha256, SHA256_SIZE, SHA256_SIZE, f"{where}.baseline_sha256")
        check_bytes(f.pre_image, 1, min(limits.MAX_PRE_IMAGE, f.baseline_size), f"{where}.pre_image")
        check_int(f.code_offset, 0, U32_MAX, f"{where}.code_offset")
        check_int(f.code_size, 1, U32_MAX, f"{where}.code_size")
        _check_range(f.code_offset, f.code_size, len(pkg.code), f"{where} ({f.name}) code")
        sites.append((f.baseline_address, f.baseline_address + len(f.pre_image), f.name))
    # Two patch sites that overlap would have the loader write over its own jump.
    sites.sort()
    for (_, end, name), (start, _, other) in zip(sites, sites[1:], strict=False):
        if start < end:
            raise PackageError(f"functions: the patch sites of {name} and {other} overlap")


def _check_added(pkg: Package) -> None:
    _check_count(pkg.added_functions, "added_functions")
    for n, f in enumerate(pkg.added_functions):
        where = f"added_functions[{n}]"
        check_text(f.name, f"{where}.name")
        check_int(f.code_offset, 0, U32_MAX, f"{where}.code_offset")
        check_int(f.code_size, 1, U32_MAX, f"{where}.code_size")
        _check_range(f.code_offset, f.code_size, len(pkg.code), f"{where} ({f.name}) code")


def _check_data_objects(pkg: Package) -> None:
    _check_count(pkg.data_objects, "data_objects")
    sizes = {
        DataSection.RODATA: len(pkg.rodata),
        DataSection.DATA: len(pkg.data),
        DataSection.BSS: pkg.bss_size,
    }
    for n, d in enumerate(pkg.data_objects):
        where = f"data_objects[{n}]"
        check_text(d.name, f"{where}.name")
        if not isinstance(d.section, DataSection):
            raise PackageError(f"{where}.section: expected one of rodata, data, bss")
        check_int(d.offset, 0, U32_MAX, f"{where}.offset")
        check_int(d.size, 0, U32_MAX, f"{where}.size")
        _check_range(d.offset, d.size, sizes[d.section], f"{where} ({d.name}) in {d.section.value}")


def _check_imports_and_overrides(pkg: Package) -> None:
    _check_count(pkg.imports, "imports")
    for n, imp in enumerate(pkg.imports):
        check_text(imp.name, f"imports[{n}].name")
        if imp.version is not None:
            check_text(imp.version, f"imports[{n}].version")
    _check_count(pkg.allowed_overrides, "allowed_overrides")
    for n, reason in enumerate(pkg.allowed_overrides):
        check_text(reason, f"allowed_overrides[{n}]")


def _check_relocation(n: int, r: Relocation, pkg: Package, section_sizes: dict[PackageSection, int]) -> None:
    where = f"relocations[{n}]"
    if not isinstance(r.section, PackageSection):
        raise PackageError(f"{where}.section: expected CODE, RODATA, DATA or UNWIND")
    if not isinstance(r.kind, RelocationKind):
        raise PackageError(f"{where}.kind: not a supported relocation type")
    if not isinstance(r.space, TargetSpace):
        raise PackageError(f"{where}.space: not a known target space")
    check_int(r.offset, 0, U32_MAX, f"{where}.offset")
    _check_range(r.offset, FIELD_WIDTH[r.kind], section_sizes[r.section], f"{where} {r.kind.name} field")
    check_int(r.addend, I64_MIN, I64_MAX, f"{where}.addend")
    if r.space is TargetSpace.BASELINE:
        check_int(r.target, 0, U64_MAX, f"{where}.target")
    elif r.space is TargetSpace.IMPORT:
        check_int(r.target, 0, len(pkg.imports) - 1, f"{where}.target (import index)")
    else:
        size = {
            TargetSpace.CODE: len(pkg.code),
            TargetSpace.RODATA: len(pkg.rodata),
            TargetSpace.DATA: len(pkg.data),
            TargetSpace.BSS: pkg.bss_size,
            TargetSpace.UNWIND: len(pkg.unwind),
        }[r.space]
        check_int(r.target, 0, size, f"{where}.target (offset in {r.space.name.lower()})")


def _check_relocations(pkg: Package) -> None:
    if not isinstance(pkg.relocations, tuple):
        raise PackageError("relocations: expected a tuple")
    if len(pkg.relocations) > limits.MAX_RELOCATIONS:
        raise PackageError(f"relocations: {len(pkg.relocations)} records, over {limits.MAX_RELOCATIONS}")
    sizes = {
        PackageSection.CODE: len(pkg.code),
        PackageSection.RODATA: len(pkg.rodata),
        PackageSection.DATA: len(pkg.data),
        PackageSection.UNWIND: len(pkg.unwind),
    }
    fields = []
    for n, r in enumerate(pkg.relocations):
        _check_relocation(n, r, pkg, sizes)
        fields.append((r.section, r.offset, r.offset + FIELD_WIDTH[r.kind], n))
    # Two relocations writing the same bytes means the table is corrupt: one would undo the other.
    fields.sort()
    for (section, _, end, first), (other_section, start, _, second) in zip(fields, fields[1:], strict=False):
        if section == other_section and start < end:
            raise PackageError(f"relocations[{first}] and relocations[{second}] write overlapping bytes")


def validate_package(pkg: Package) -> Package:
    """Check every field and cross-reference of `pkg`; return it unchanged or raise PackageError."""
    for name in ("code", "rodata", "data", "unwind"):
        check_bytes(getattr(pkg, name), 0, limits.MAX_PAYLOAD_SIZE, name)
    check_int(pkg.bss_size, 0, limits.MAX_BSS_SIZE, "bss_size")
    _check_target(pkg)
    _check_identity(pkg)
    _check_functions(pkg)
    _check_added(pkg)
    _check_data_objects(pkg)
    _check_imports_and_overrides(pkg)
    _check_relocations(pkg)
    return pkg
