"""Link a package into its placement: its final code, rodata and data bytes, and its patch-site jumps.

The one place that turns a Package plus a Placement (`hpkg.loader.placement`) into bytes, shared by
the File target (bias 0, link addresses) and the live loader (runtime addresses). `relocate()` runs
four steps: fill the loader's GOT slots, write the absolute stubs, compute every relocation per its
psABI recipe (`hpkg.arch.x86_64`) with a range check, and encode the `jmp rel32` of each patch site.

Recipes (S = target address, A = addend, P = address of the field, G = a GOT slot holding S):
PC32/PLT32 S + A - P (signed 32 bits), PC64 S + A - P, GOTPCREL* G + A - P, 64 S + A, 32 S + A
(unsigned 32 bits), 32S S + A (signed 32 bits). A value that does not fit its field is an error
naming the function, never a truncation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hpkg.arch.x86_64 import (
    ABS_JMP_SIZE,
    INT3,
    JMP_REL32_SIZE,
    RelocationType,
    encode_abs_jmp,
    encode_jmp_rel32,
    encode_jmp_through_slot,
    rel32_reaches,
    relocation_type,
)
from hpkg.errors import RefusedError
from hpkg.formats.model import Package, Relocation, RelocationKind, TargetSpace
from hpkg.loader.placement import (
    AREA_OF_SECTION,
    AREA_OF_SPACE,
    GOT_SLOT,
    LEA_OPCODE,
    STUB_SLOT,
    Area,
    ImportResolver,
    Placement,
    ResolvedImports,
    area_layout,
    is_call,
    is_relaxable,
)


@dataclass(frozen=True)
class SiteJump:
    """The jump written over a replaced function's first bytes (its patch site), and the bytes it replaces."""

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
    patch_sites: tuple[SiteJump, ...]
    absolute_fields: tuple[AbsoluteField, ...]
    stubs_used: tuple[str, ...]  # imports reached through an absolute stub (out of rel32 reach)
    relaxed: int  # GOTPCRELX loads rewritten to lea (no slot needed)

    load_time_bindings: tuple[LoadTimeBinding, ...] = ()
    unwind: bytes = b""

    def area_bytes(self, area: Area) -> bytes:
        areas = {Area.CODE: self.code, Area.RODATA: self.rodata, Area.DATA: self.data, Area.BSS: b""}
        return self.unwind if area is Area.UNWIND else areas[area]


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
    if area_layout(package, resolve_import) != placement.layout:
        raise ValueError("placement was made for another layout of this package")
    link = _Link(package, placement, baseline_bias, ResolvedImports(package, resolve_import))
    link.fill_got_slots()  # STEP 1: the loader's GOT slots, each holding the address of its target
    link.write_stubs()  # STEP 2: the absolute stubs after the code, one per import package code calls
    for r in package.relocations:  # STEP 3: every relocation, per its recipe
        link.apply(r)
    sites = link.site_jumps()  # STEP 4: the jump at each patch site, from the baseline entry to its copy
    if link.problems:
        message = f"cannot relocate package {package.identity.package_id} for this placement"
        raise RefusedError(message, tuple(link.problems))
    return link.result(sites)


class _Link:
    """The package's areas being linked for one placement, and what linking them found."""

    def __init__(
        self, package: Package, placement: Placement, baseline_bias: int, imports: ResolvedImports
    ) -> None:
        self.package = package
        self.placement = placement
        self.layout = placement.layout
        self.baseline_bias = baseline_bias
        self.imports = imports
        self.owners = _Owners(package)
        self.areas = {
            Area.CODE: bytearray(package.code.ljust(self.layout.code_size, bytes([INT3]))),
            Area.RODATA: bytearray(package.rodata),
            Area.DATA: bytearray(package.data.ljust(self.layout.data_size, b"\0")),
            Area.UNWIND: bytearray(package.unwind),
        }
        self.problems: list[str] = []
        self.absolute: list[AbsoluteField] = []
        self.stubs_used: list[str] = []
        self.bindings: list[LoadTimeBinding] = []
        self.relaxed = 0
        self.got_slot_of: dict[tuple[TargetSpace, int], int] = {}
        self.stub_of: dict[int, int] = {}

    # -- where things are ----------------------------------------------------------------------------
    def bound_at_load(self, space: TargetSpace, target: int) -> bool:
        return space is TargetSpace.IMPORT and self.imports.get(target).bound_at_load

    def target_address(self, space: TargetSpace, target: int, where: str) -> int | None:
        """The address of a relocation target in the target's terms; None (and a problem) if unknown."""
        if space is TargetSpace.BASELINE:
            return target + self.baseline_bias
        if space is TargetSpace.IMPORT:
            resolved = self.imports.get(target)
            if resolved.address is None:
                self.problems.append(f"{where}: import {resolved.name} has no address in the target")
            return resolved.address
        return self.placement.base(AREA_OF_SPACE[space]) + target

    # -- STEP 1 and 2 --------------------------------------------------------------------------------
    def fill_got_slots(self) -> None:
        """Each loader GOT slot holds its target's address, or is left to the dynamic linker."""
        for i, (space, target) in enumerate(self.layout.got_targets):
            offset = self.layout.got_offset + GOT_SLOT * i
            self.got_slot_of[(space, target)] = self.placement.data + offset
            what = _space_name(self.package, space, target)
            if self.bound_at_load(space, target):
                record, called = self.package.imports[target], target in self.layout.stub_imports
                self.bindings.append(
                    LoadTimeBinding(Area.DATA, offset, target, record.name, record.version, 0, True, called)
                )
                continue
            value = self.target_address(space, target, f"GOT slot for {what}")
            if value is not None:
                struct.pack_into("<Q", self.areas[Area.DATA], offset, value & 0xFFFF_FFFF_FFFF_FFFF)
                self.absolute.append(AbsoluteField(Area.DATA, offset, GOT_SLOT, f"GOT slot for {what}"))

    def write_stubs(self) -> None:
        """An absolute stub per called import: `jmp *0(%rip); .quad address`, or a jump through its slot."""
        for i, index in enumerate(self.layout.stub_imports):
            offset = self.layout.stubs_offset + STUB_SLOT * i
            self.stub_of[index] = self.placement.code + offset
            resolved = self.imports.get(index)
            if resolved.bound_at_load:
                slot: int | None = self.got_slot_of[(TargetSpace.IMPORT, index)]
            else:
                slot = resolved.got_slot
            if resolved.address is not None:
                self.areas[Area.CODE][offset : offset + ABS_JMP_SIZE] = encode_abs_jmp(resolved.address)
            elif slot is not None:
                stub = encode_jmp_through_slot(self.stub_of[index], slot)
                self.areas[Area.CODE][offset : offset + len(stub)] = stub
            else:
                self.problems.append(f"import {resolved.name}: no address and no GOT slot in the target")

    # -- STEP 3 --------------------------------------------------------------------------------------
    def apply(self, r: Relocation) -> None:
        """Compute one relocation's value by its recipe and store it, or record why it cannot be."""
        area = AREA_OF_SECTION[r.section]
        field = self.placement.base(area) + r.offset
        where = f"{self.owners.name(area, r.offset)} ({r.kind.name} at {area.value}+{r.offset:#x})"
        recipe = relocation_type(r.kind.name)
        if recipe.through_got:
            value = self._got_value(r, field, where)
        elif r.space is TargetSpace.IMPORT and is_call(self.package, r):
            value = self._call_value(r, recipe, field)
        elif self.bound_at_load(r.space, r.target):
            self._bind_at_load(r, area, where)
            return
        else:
            value = self._value(r, recipe, area, field, where)
        if value is None:
            return
        if not recipe.fits(value):
            target = _space_name(self.package, r.space, r.target)
            self.problems.append(f"{where}: value {value:#x} for {target} does not fit the field")
            return
        _store(self.areas[area], r.offset, recipe.width, value)

    def _got_value(self, r: Relocation, field: int, where: str) -> int | None:
        """G + A - P: through the baseline's own slot, an import's slot, a loader slot, or relaxed to lea."""
        if r.space is TargetSpace.BASELINE:
            slot: int | None = r.target + self.baseline_bias  # the baseline's own GOT slot
        elif is_relaxable(self.package, r):
            slot = self.target_address(r.space, r.target, where)  # S + A - P once `mov` is `lea`
            self.areas[Area.CODE][r.offset - 2] = LEA_OPCODE
            self.relaxed += 1
        elif r.space is TargetSpace.IMPORT and self.imports.get(r.target).got_slot is not None:
            slot = self.imports.get(r.target).got_slot
        else:
            slot = self.got_slot_of[(r.space, r.target)]
        return None if slot is None else slot + r.addend - field

    def _call_value(self, r: Relocation, recipe: RelocationType, field: int) -> int:
        """A call to an import: straight to it when within reach, else through its stub."""
        address = self.imports.get(r.target).address
        value = None if address is None else address + r.addend - field
        if value is None or not recipe.fits(value):
            value = self.stub_of[r.target] + r.addend - field  # through the stub: absolute, or via a slot
            if address is not None:
                self.stubs_used.append(self.package.imports[r.target].name)
        return value

    def _bind_at_load(self, r: Relocation, area: Area, where: str) -> None:
        """A pointer to an import the dynamic linker binds at load time: only a data word can hold one."""
        record = self.package.imports[r.target]
        if r.kind is RelocationKind.R_X86_64_64 and area is Area.DATA:
            binding = LoadTimeBinding(
                area, r.offset, r.target, record.name, record.version, r.addend, slot=False, called=False
            )
            self.bindings.append(binding)
        else:
            self.problems.append(
                f"{where}: the address of {record.name} is not known before the program runs"
            )

    def _value(
        self, r: Relocation, recipe: RelocationType, area: Area, field: int, where: str
    ) -> int | None:
        """S + A - P for pc-relative recipes, S + A (an absolute field, noted) for the others."""
        symbol = self.target_address(r.space, r.target, where)
        if symbol is None:
            return None
        if recipe.pc_relative:
            return symbol + r.addend - field
        self.absolute.append(AbsoluteField(area, r.offset, recipe.width, f"{r.kind.name} in {where}"))
        return symbol + r.addend

    # -- STEP 4 --------------------------------------------------------------------------------------
    def site_jumps(self) -> list[SiteJump]:
        """The `jmp rel32` from each replaced function's baseline entry to its replacement."""
        sites: list[SiteJump] = []
        for f in self.package.functions:
            site = f.baseline_address + self.baseline_bias
            replacement = self.placement.code + f.code_offset
            if len(f.pre_image) < JMP_REL32_SIZE:
                self.problems.append(
                    f"function {f.name}: pre-image of {len(f.pre_image)} bytes, shorter than a jump"
                )
                continue
            if not rel32_reaches(site, replacement):
                self.problems.append(
                    f"function {f.name}: replacement {replacement:#x} is beyond ±2 GiB of {site:#x}"
                )
                continue
            jump = encode_jmp_rel32(site, replacement)
            sites.append(SiteJump(f.name, f.baseline_address, site, f.pre_image, jump, replacement))
        return sites

    def result(self, sites: list[SiteJump]) -> RelocatedImage:
        return RelocatedImage(
            placement=self.placement,
            code=bytes(self.areas[Area.CODE]),
            rodata=bytes(self.areas[Area.RODATA]),
            data=bytes(self.areas[Area.DATA]),
            bss_size=self.layout.bss_size,
            patch_sites=tuple(sites),
            absolute_fields=tuple(self.absolute),
            stubs_used=tuple(dict.fromkeys(self.stubs_used)),
            relaxed=self.relaxed,
            load_time_bindings=tuple(self.bindings),
            unwind=bytes(self.areas[Area.UNWIND]),
        )


def _store(buffer: bytearray, offset: int, width: int, value: int) -> None:
    """Write `value` (already range-checked) as a little-endian field of `width` bytes."""
    buffer[offset : offset + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def _space_name(package: Package, space: TargetSpace, target: int) -> str:
    if space is TargetSpace.IMPORT:
        return f"import {package.imports[target].name}"
    if space is TargetSpace.BASELINE:
        return f"baseline {target:#x}"
    return f"{space.name.lower()}+{target:#x}"
