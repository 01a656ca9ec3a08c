"""Relocation: a package's final code, rodata and data bytes for one placement, and its patch-site jumps.

The one place that turns a Package plus "where everything goes" into bytes, shared by the File target
(bias 0, link addresses) and the live loader (runtime addresses). Steps:

  area_layout()  how big each area is once the loader's additions are appended: absolute stubs after
                 the code (calls to imports beyond ±2 GiB), GOT slots after the data (GOTPCREL fields
                 whose target has no slot of its own);
  Placement      where each area starts (`Placement.contiguous` puts them on separate pages);
  relocate()     every relocation computed per its ABI recipe and range-checked, and the 5-byte
                 `jmp rel32` for each patch site.

Recipes (x86-64 psABI; S = target address, A = addend, P = address of the field, G = a GOT slot
holding S): PC32/PLT32 S + A - P (signed 32 bits), PC64 S + A - P, GOTPCREL* G + A - P, 64 S + A,
32 S + A (unsigned 32 bits), 32S S + A (signed 32 bits). A value that does not fit its field is an
error naming the function, never a truncation.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from hpkg.builder.x86_64 import is_rel32_branch_field
from hpkg.errors import RefusedError
from hpkg.formats.model import (
    FIELD_WIDTH,
    ImportRecord,
    Package,
    PackageSection,
    Relocation,
    RelocationKind,
    TargetSpace,
)
from hpkg.loader.jumps import ABS_JMP_SIZE, encode_abs_jmp, encode_jmp_rel32, rel32_reaches

PAGE_SIZE = 4096
CODE_ALIGN = 16
STUB_SLOT = 16  # one absolute stub (14 bytes) padded with int3 to keep the next one aligned
GOT_SLOT = 8
UNWIND_ALIGN = 8  # .eh_frame records are 4-aligned; 8 keeps the copy's LSDA alignment too
INT3 = 0xCC
JMP_REL32_SIZE = 5

_INT32 = (-(1 << 31), (1 << 31) - 1)
_UINT32 = (0, (1 << 32) - 1)
_ANY64 = (-(1 << 63), (1 << 64) - 1)

_PC_RELATIVE = {RelocationKind.R_X86_64_PC32, RelocationKind.R_X86_64_PLT32, RelocationKind.R_X86_64_PC64}
_GOT_KINDS = {
    RelocationKind.R_X86_64_GOTPCREL,
    RelocationKind.R_X86_64_GOTPCRELX,
    RelocationKind.R_X86_64_REX_GOTPCRELX,
}
_RELAXABLE = {RelocationKind.R_X86_64_GOTPCRELX, RelocationKind.R_X86_64_REX_GOTPCRELX}
_RANGE: dict[RelocationKind, tuple[int, int]] = {
    RelocationKind.R_X86_64_64: _ANY64,
    RelocationKind.R_X86_64_PC32: _INT32,
    RelocationKind.R_X86_64_PLT32: _INT32,
    RelocationKind.R_X86_64_GOTPCREL: _INT32,
    RelocationKind.R_X86_64_32: _UINT32,
    RelocationKind.R_X86_64_32S: _INT32,
    RelocationKind.R_X86_64_PC64: _ANY64,
    RelocationKind.R_X86_64_GOTPCRELX: _INT32,
    RelocationKind.R_X86_64_REX_GOTPCRELX: _INT32,
}
# `mov foo@GOTPCREL(%rip), %reg` (8B /r) becomes `lea foo(%rip), %reg` (8D /r), as the linker relaxes it.
_MOV_OPCODE, _LEA_OPCODE = 0x8B, 0x8D
# `jmp *disp32(%rip)`: a stub that jumps through a GOT slot the dynamic linker fills.
_JMP_THROUGH_SLOT = b"\xff\x25"
_JMP_THROUGH_SLOT_SIZE = 6
_PACKAGE_SPACES = {TargetSpace.CODE, TargetSpace.RODATA, TargetSpace.DATA, TargetSpace.BSS}


class Area(Enum):
    """One of the package's memory areas as placed by the loader."""

    CODE = "code"
    RODATA = "rodata"
    DATA = "data"
    BSS = "bss"
    UNWIND = "unwind"  # the package's CIEs, FDEs and LSDAs, read-only, right after rodata


_AREA_OF_SECTION = {
    PackageSection.CODE: Area.CODE,
    PackageSection.RODATA: Area.RODATA,
    PackageSection.DATA: Area.DATA,
    PackageSection.UNWIND: Area.UNWIND,
}
_AREA_OF_SPACE = {
    TargetSpace.CODE: Area.CODE,
    TargetSpace.RODATA: Area.RODATA,
    TargetSpace.DATA: Area.DATA,
    TargetSpace.BSS: Area.BSS,
    TargetSpace.UNWIND: Area.UNWIND,
}


@dataclass(frozen=True)
class ResolvedImport:
    """Where an import lives in the target: its entry or object address, and/or a GOT slot holding it.

    The live loader knows the symbol's runtime address in a loaded library; the File target knows the
    binary's own PLT entry (`address`) and GOT slot (`got_slot`), which the dynamic linker fills, or,
    for a symbol the binary does not import yet, asks the dynamic linker to bind it (`bound_at_load`):
    then relocate() gives it a GOT slot of the package (left zero, listed in `load_time_bindings`),
    calls go through a `jmp *slot(%rip)` stub, and the File target adds the dynamic symbol.
    """

    name: str
    address: int | None  # where a call or a reference should go; None if only a GOT slot is known
    got_slot: int | None = None  # an existing slot that holds the symbol's address at run time
    bound_at_load: bool = False  # no address yet: the dynamic linker fills a package slot at load time


ImportResolver = Callable[[ImportRecord], ResolvedImport]


@dataclass(frozen=True)
class AreaLayout:
    """The size of each area with the loader's additions: stubs after the code, GOT slots after the data."""

    code_size: int  # package code, then the stubs
    stubs_offset: int
    stub_imports: tuple[int, ...]  # import index of each stub, in order
    rodata_size: int
    data_size: int  # package data, then the GOT slots
    got_offset: int
    got_targets: tuple[tuple[TargetSpace, int], ...]  # (space, target) held by each slot, in order
    bss_size: int
    unwind_size: int = 0


@dataclass(frozen=True)
class Placement:
    """Where each area starts: runtime addresses for a process, link addresses for a file."""

    code: int
    rodata: int
    data: int
    bss: int
    layout: AreaLayout
    unwind: int = 0  # after rodata, on the same read-only pages

    @classmethod
    def contiguous(cls, base: int, layout: AreaLayout, page_size: int = PAGE_SIZE) -> Placement:
        """Code at `base`, rodata (then unwind) and data each on their own next pages (own protections),
        bss after data."""
        rodata = _align(base + layout.code_size, page_size)
        unwind = _align(rodata + layout.rodata_size, UNWIND_ALIGN)
        data = _align(unwind + layout.unwind_size, page_size)
        bss = _align(data + layout.data_size, CODE_ALIGN)
        return cls(code=base, rodata=rodata, data=data, bss=bss, layout=layout, unwind=unwind)

    @property
    def read_only_end(self) -> int:
        """First address after rodata and unwind (the read-only pages)."""
        if self.layout.unwind_size:
            return self.unwind + self.layout.unwind_size
        return self.rodata + self.layout.rodata_size

    def base(self, area: Area) -> int:
        bases = {
            Area.CODE: self.code, Area.RODATA: self.rodata, Area.DATA: self.data, Area.BSS: self.bss,
            Area.UNWIND: self.unwind,
        }
        return bases[area]

    @property
    def end(self) -> int:
        """First address after the last area (bss)."""
        return self.bss + self.layout.bss_size


@dataclass(frozen=True)
class PatchSite:
    """The jump written over a replaced function's first bytes, and the bytes it replaces."""

    name: str
    link_address: int
    address: int  # runtime address (link address + bias)
    pre_image: bytes
    jump: bytes  # 5 bytes: jmp rel32 to the replacement
    replacement: int  # runtime address of the replacement in the package code


@dataclass(frozen=True)
class AbsoluteField:
    """A field that holds an absolute address: right only where the image is loaded at the assumed bias."""

    area: Area
    offset: int
    width: int
    what: str  # e.g. "R_X86_64_64 in data object table", "GOT slot for puts"


@dataclass(frozen=True)
class LoadTimeBinding:
    """A field the dynamic linker must fill with an import's address when the patched file is loaded."""

    area: Area
    offset: int
    import_index: int
    name: str
    version: str | None
    addend: int
    slot: bool  # True: a GOT slot (R_X86_64_GLOB_DAT); False: a pointer field (R_X86_64_64)
    called: bool  # the package calls it (so it is a function), rather than reading it


@dataclass(frozen=True)
class RelocatedImage:
    """The package's bytes ready to be written at `placement`, and the jumps that switch to them."""

    placement: Placement
    code: bytes
    rodata: bytes
    data: bytes
    bss_size: int
    patch_sites: tuple[PatchSite, ...]
    absolute_fields: tuple[AbsoluteField, ...]
    stubs_used: tuple[str, ...]  # imports reached through an absolute stub (out of rel32 reach)
    relaxed: int  # GOTPCRELX loads rewritten to lea (no slot needed)

    load_time_bindings: tuple[LoadTimeBinding, ...] = ()
    unwind: bytes = b""

    def area_bytes(self, area: Area) -> bytes:
        areas = {Area.CODE: self.code, Area.RODATA: self.rodata, Area.DATA: self.data, Area.BSS: b""}
        return self.unwind if area is Area.UNWIND else areas[area]


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment



def _is_call(package: Package, r: Relocation) -> bool:
    """A rel32 call or jump field in package code (the only kind a stub can stand in for)."""
    return (
        r.section is PackageSection.CODE
        and r.kind in (RelocationKind.R_X86_64_PLT32, RelocationKind.R_X86_64_PC32)
        and (r.kind is RelocationKind.R_X86_64_PLT32 or is_rel32_branch_field(package.code, r.offset))
    )


def _is_relaxable(package: Package, r: Relocation) -> bool:
    """A GOTPCRELX `mov` to a package-local target, which the loader turns into a `lea` (no slot)."""
    return (
        r.kind in _RELAXABLE
        and r.section is PackageSection.CODE
        and r.space in _PACKAGE_SPACES
        and r.offset >= 2
        and package.code[r.offset - 2] == _MOV_OPCODE
    )


def area_layout(package: Package, resolve_import: ImportResolver) -> AreaLayout:
    """Sizes of the areas for `package`, given how its imports resolve (placement-independent)."""
    resolved = _Resolver(package, resolve_import)
    stub_imports: list[int] = []
    got_targets: list[tuple[TargetSpace, int]] = []
    for r in package.relocations:
        if r.space is TargetSpace.IMPORT and _is_call(package, r):
            if r.target not in stub_imports:
                stub_imports.append(r.target)
        elif r.kind in _GOT_KINDS and r.space is not TargetSpace.BASELINE and not _is_relaxable(package, r):
            if r.space is TargetSpace.IMPORT and resolved.get(r.target).got_slot is not None:
                continue
            if (r.space, r.target) not in got_targets:
                got_targets.append((r.space, r.target))
    for index in stub_imports:  # a stub to a symbol bound at load time jumps through a package slot
        if resolved.get(index).bound_at_load and (TargetSpace.IMPORT, index) not in got_targets:
            got_targets.append((TargetSpace.IMPORT, index))
    stubs_offset = _align(len(package.code), CODE_ALIGN) if stub_imports else len(package.code)
    got_offset = _align(len(package.data), GOT_SLOT) if got_targets else len(package.data)
    return AreaLayout(
        code_size=stubs_offset + STUB_SLOT * len(stub_imports),
        stubs_offset=stubs_offset,
        stub_imports=tuple(stub_imports),
        rodata_size=len(package.rodata),
        data_size=got_offset + GOT_SLOT * len(got_targets),
        got_offset=got_offset,
        got_targets=tuple(got_targets),
        bss_size=package.bss_size,
        unwind_size=len(package.unwind),
    )


class _Resolver:
    """Resolves each import once, and says which import a failure is about."""

    def __init__(self, package: Package, resolve_import: ImportResolver) -> None:
        self.package = package
        self.resolve_import = resolve_import
        self.cache: dict[int, ResolvedImport] = {}

    def get(self, index: int) -> ResolvedImport:
        if index not in self.cache:
            self.cache[index] = self.resolve_import(self.package.imports[index])
        return self.cache[index]


class _Owners:
    """Names the function or data object that holds a field, for error messages."""

    def __init__(self, package: Package) -> None:
        self.code = [(f.code_offset, f.code_offset + f.code_size, f.name) for f in package.functions]
        self.code += [(f.code_offset, f.code_offset + f.code_size, f.name) for f in package.added_functions]
        self.data = {
            (Area(o.section.value), o.offset, o.offset + o.size, o.name) for o in package.data_objects
        }

    def name(self, area: Area, offset: int) -> str:
        if area is Area.CODE:
            for start, end, name in self.code:
                if start <= offset < end:
                    return f"function {name}"
            return f"code+{offset:#x}"
        for owner_area, start, end, name in self.data:
            if owner_area is area and start <= offset < end:
                return f"data object {name}"
        return f"{area.value}+{offset:#x}"


def relocate(
    package: Package, placement: Placement, baseline_bias: int, resolve_import: ImportResolver
) -> RelocatedImage:
    """Apply every relocation of `package` for `placement` and build the patch-site jumps.

    `baseline_bias` turns baseline link addresses into addresses of the same kind as `placement`
    (0 for a file, the load bias for a process). Raises RefusedError listing every field that
    cannot be computed (out of range, unresolvable import), naming its function.
    """
    layout = area_layout(package, resolve_import)
    if layout != placement.layout:
        raise ValueError("placement was made for another layout of this package")
    resolver = _Resolver(package, resolve_import)
    owners = _Owners(package)
    areas = {
        Area.CODE: bytearray(package.code.ljust(layout.code_size, bytes([INT3]))),
        Area.RODATA: bytearray(package.rodata),
        Area.DATA: bytearray(package.data.ljust(layout.data_size, b"\0")),
        Area.UNWIND: bytearray(package.unwind),
    }
    problems: list[str] = []
    absolute: list[AbsoluteField] = []
    stubs_used: list[str] = []
    bindings: list[LoadTimeBinding] = []
    relaxed = 0

    def bound(space: TargetSpace, target: int) -> bool:
        return space is TargetSpace.IMPORT and resolver.get(target).bound_at_load

    def target_address(space: TargetSpace, target: int, where: str) -> int | None:
        if space is TargetSpace.BASELINE:
            return target + baseline_bias
        if space is TargetSpace.IMPORT:
            resolved = resolver.get(target)
            if resolved.address is None:
                problems.append(f"{where}: import {resolved.name} has no address in the target")
            return resolved.address
        return placement.base(_AREA_OF_SPACE[space]) + target

    # STEP 1: the loader's GOT slots, each holding the address of its target.
    got_slot_of: dict[tuple[TargetSpace, int], int] = {}
    for i, (space, target) in enumerate(layout.got_targets):
        offset = layout.got_offset + GOT_SLOT * i
        got_slot_of[(space, target)] = placement.data + offset
        what = _space_name(package, space, target)
        if bound(space, target):
            record, called = package.imports[target], target in layout.stub_imports
            binding = LoadTimeBinding(Area.DATA, offset, target, record.name, record.version, 0, True, called)
            bindings.append(binding)
            continue
        value = target_address(space, target, f"GOT slot for {what}")
        if value is not None:
            struct.pack_into("<Q", areas[Area.DATA], offset, value & 0xFFFF_FFFF_FFFF_FFFF)
            absolute.append(AbsoluteField(Area.DATA, offset, GOT_SLOT, f"GOT slot for {what}"))

    # STEP 2: the absolute stubs after the code, one per import called from package code.
    stub_of: dict[int, int] = {}
    for i, index in enumerate(layout.stub_imports):
        offset = layout.stubs_offset + STUB_SLOT * i
        stub_of[index] = placement.code + offset
        resolved = resolver.get(index)
        slot = got_slot_of[(TargetSpace.IMPORT, index)] if resolved.bound_at_load else resolved.got_slot
        if resolved.address is not None:
            areas[Area.CODE][offset : offset + ABS_JMP_SIZE] = encode_abs_jmp(resolved.address)
        elif slot is not None:
            stub = _JMP_THROUGH_SLOT + struct.pack("<i", slot - (stub_of[index] + _JMP_THROUGH_SLOT_SIZE))
            areas[Area.CODE][offset : offset + len(stub)] = stub
        else:
            problems.append(f"import {resolved.name}: no address and no GOT slot in the target")

    # STEP 3: every relocation, per its recipe.
    for r in package.relocations:
        area = _AREA_OF_SECTION[r.section]
        field = placement.base(area) + r.offset
        where = f"{owners.name(area, r.offset)} ({r.kind.name} at {area.value}+{r.offset:#x})"
        if r.kind in _GOT_KINDS:
            if r.space is TargetSpace.BASELINE:
                symbol: int | None = r.target + baseline_bias  # the baseline's own GOT slot
            elif _is_relaxable(package, r):
                symbol = target_address(r.space, r.target, where)
                areas[Area.CODE][r.offset - 2] = _LEA_OPCODE
                relaxed += 1
            elif r.space is TargetSpace.IMPORT and resolver.get(r.target).got_slot is not None:
                symbol = resolver.get(r.target).got_slot
            else:
                symbol = got_slot_of[(r.space, r.target)]
            value = None if symbol is None else symbol + r.addend - field
        elif r.space is TargetSpace.IMPORT and _is_call(package, r):
            address = resolver.get(r.target).address
            value = None if address is None else address + r.addend - field
            if value is None or not _fits(value, _RANGE[r.kind]):
                value = stub_of[r.target] + r.addend - field  # through the stub: absolute, or via a slot
                if address is not None:
                    stubs_used.append(package.imports[r.target].name)
        elif bound(r.space, r.target):
            if r.kind is RelocationKind.R_X86_64_64 and area is Area.DATA:
                record = package.imports[r.target]
                binding = LoadTimeBinding(
                    area, r.offset, r.target, record.name, record.version, r.addend, slot=False, called=False
                )
                bindings.append(binding)
                continue
            else:
                name = package.imports[r.target].name
                problems.append(f"{where}: the address of {name} is not known before the program runs")
                continue
        else:
            symbol = target_address(r.space, r.target, where)
            if symbol is None:
                continue
            if r.kind in _PC_RELATIVE:
                value = symbol + r.addend - field
            else:
                value = symbol + r.addend
                what = f"{r.kind.name} in {where}"
                absolute.append(AbsoluteField(area, r.offset, FIELD_WIDTH[r.kind], what))
        if value is None:
            continue
        low, high = _RANGE[r.kind]
        if not low <= value <= high:
            target = _space_name(package, r.space, r.target)
            problems.append(f"{where}: value {value:#x} for {target} does not fit the field")
            continue
        _store(areas[area], r.offset, FIELD_WIDTH[r.kind], value)

    # STEP 4: the jump at each patch site, from the baseline function's entry to its replacement.
    sites: list[PatchSite] = []
    for f in package.functions:
        site = f.baseline_address + baseline_bias
        replacement = placement.code + f.code_offset
        if len(f.pre_image) < JMP_REL32_SIZE:
            problems.append(f"function {f.name}: pre-image of {len(f.pre_image)} bytes, shorter than a jump")
            continue
        if not rel32_reaches(site, replacement):
            problems.append(f"function {f.name}: replacement {replacement:#x} is beyond ±2 GiB of {site:#x}")
            continue
        jump = encode_jmp_rel32(site, replacement)
        sites.append(PatchSite(f.name, f.baseline_address, site, f.pre_image, jump, replacement))

    if problems:
        message = f"cannot relocate package {package.identity.package_id} for this placement"
        raise RefusedError(message, tuple(problems))
    return RelocatedImage(
        placement=placement,
        code=bytes(areas[Area.CODE]),
        rodata=bytes(areas[Area.RODATA]),
        data=bytes(areas[Area.DATA]),
        bss_size=layout.bss_size,
        patch_sites=tuple(sites),
        absolute_fields=tuple(absolute),
        stubs_used=tuple(dict.fromkeys(stubs_used)),
        relaxed=relaxed,
        load_time_bindings=tuple(bindings),
        unwind=bytes(areas[Area.UNWIND]),
    )


def _fits(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _store(buffer: bytearray, offset: int, width: int, value: int) -> None:
    """Write `value` (already range-checked) as a little-endian field of `width` bytes."""
    buffer[offset : offset + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def _space_name(package: Package, space: TargetSpace, target: int) -> str:
    if space is TargetSpace.IMPORT:
        return f"import {package.imports[target].name}"
    if space is TargetSpace.BASELINE:
        return f"baseline {target:#x}"
    return f"{space.name.lower()}+{target:#x}"
