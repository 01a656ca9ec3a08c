"""Where a package goes in a target: how big each area is once the loader's additions are appended, and
where each area starts.

  area_layout()  the size of each area: absolute stubs after the code (calls to imports beyond
                 ±2 GiB), GOT slots after the data (GOTPCREL fields whose target has no slot of its own);
  Placement      where each area starts (`Placement.contiguous` puts them on separate pages).

Both serve the File target (link addresses) and the live loader (runtime addresses); `hpkg.loader.link`
then writes the package's bytes for one placement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from hpkg.arch.x86_64 import PAGE_SIZE, is_rel32_branch_field, relocation_type
from hpkg.formats.model import ImportRecord, Package, PackageSection, Relocation, RelocationKind, TargetSpace

CODE_ALIGN = 16
STUB_SLOT = 16  # one absolute stub (14 bytes) padded with int3 to keep the next one aligned
GOT_SLOT = 8
UNWIND_ALIGN = 8  # .eh_frame records are 4-aligned; 8 keeps the copy's LSDA alignment too
# `mov foo@GOTPCREL(%rip), %reg` (8B /r) becomes `lea foo(%rip), %reg` (8D /r), as the linker relaxes it.
MOV_OPCODE, LEA_OPCODE = 0x8B, 0x8D
PACKAGE_SPACES = frozenset({TargetSpace.CODE, TargetSpace.RODATA, TargetSpace.DATA, TargetSpace.BSS})


class Area(Enum):
    """One of the package's memory areas as placed by the loader."""

    CODE = "code"
    RODATA = "rodata"
    DATA = "data"
    BSS = "bss"
    UNWIND = "unwind"  # the package's CIEs, FDEs and LSDAs, read-only, right after rodata


AREA_OF_SECTION = {
    PackageSection.CODE: Area.CODE,
    PackageSection.RODATA: Area.RODATA,
    PackageSection.DATA: Area.DATA,
    PackageSection.UNWIND: Area.UNWIND,
}
AREA_OF_SPACE = {
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


class ResolvedImports:
    """Resolves each import of a package once, on first use."""

    def __init__(self, package: Package, resolve_import: ImportResolver) -> None:
        self.package = package
        self.resolve_import = resolve_import
        self.cache: dict[int, ResolvedImport] = {}

    def get(self, index: int) -> ResolvedImport:
        if index not in self.cache:
            self.cache[index] = self.resolve_import(self.package.imports[index])
        return self.cache[index]


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
        rodata = align(base + layout.code_size, page_size)
        unwind = align(rodata + layout.rodata_size, UNWIND_ALIGN)
        data = align(unwind + layout.unwind_size, page_size)
        bss = align(data + layout.data_size, CODE_ALIGN)
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


def align(value: int, alignment: int) -> int:
    """`value` rounded up to a multiple of `alignment`."""
    return (value + alignment - 1) // alignment * alignment


def is_call(package: Package, r: Relocation) -> bool:
    """A rel32 call or jump field in package code (the only kind a stub can stand in for)."""
    return (
        r.section is PackageSection.CODE
        and r.kind in (RelocationKind.R_X86_64_PLT32, RelocationKind.R_X86_64_PC32)
        and (r.kind is RelocationKind.R_X86_64_PLT32 or is_rel32_branch_field(package.code, r.offset))
    )


def through_got(r: Relocation) -> bool:
    """A field that reaches its target through a GOT slot (GOTPCREL and its relaxable forms)."""
    return relocation_type(r.kind.name).through_got


def is_relaxable(package: Package, r: Relocation) -> bool:
    """A GOTPCRELX `mov` to a package-local target, which the loader turns into a `lea` (no slot)."""
    return (
        relocation_type(r.kind.name).relaxable
        and r.section is PackageSection.CODE
        and r.space in PACKAGE_SPACES
        and r.offset >= 2
        and package.code[r.offset - 2] == MOV_OPCODE
    )


def area_layout(package: Package, resolve_import: ImportResolver) -> AreaLayout:
    """Sizes of the areas for `package`, given how its imports resolve (placement-independent)."""
    resolved = ResolvedImports(package, resolve_import)
    stub_imports: list[int] = []
    got_targets: list[tuple[TargetSpace, int]] = []
    for r in package.relocations:
        if r.space is TargetSpace.IMPORT and is_call(package, r):
            if r.target not in stub_imports:
                stub_imports.append(r.target)
        elif through_got(r) and r.space is not TargetSpace.BASELINE and not is_relaxable(package, r):
            if r.space is TargetSpace.IMPORT and resolved.get(r.target).got_slot is not None:
                continue
            if (r.space, r.target) not in got_targets:
                got_targets.append((r.space, r.target))
    for index in stub_imports:  # a stub to a symbol bound at load time jumps through a package slot
        if resolved.get(index).bound_at_load and (TargetSpace.IMPORT, index) not in got_targets:
            got_targets.append((TargetSpace.IMPORT, index))
    stubs_offset = align(len(package.code), CODE_ALIGN) if stub_imports else len(package.code)
    got_offset = align(len(package.data), GOT_SLOT) if got_targets else len(package.data)
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
