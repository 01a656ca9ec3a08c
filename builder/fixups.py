"""What placing the package's code produces, gathered in one record: fixups, copies, imports, reasons.

A reference of the fix names a NEW link address. It is placed at a **baseline location** (an
unchanged function through its twin, a variable of OLD — live state stays where it is —, OLD's
PLT entry or GOT slot), a **package location** (a replaced or added function, copied read-only
data, a new variable; named by its NEW address until the layout gives it an offset) or an
**import** by name@version. Anything that cannot be placed becomes a refusal reason, never a guess.

What the loader does with each record the fixups become (S = target per space, A = addend, P = the
field's runtime address; every relocated field is zero in the package):

  kind                  spaces             emitted for                          loader
  R_X86_64_PLT32        BASELINE CODE      call/jmp/jcc rel32 to a function,     S + A - P; IMPORT (far):
                        IMPORT             an OLD PLT entry, or an import       through an absolute stub
  R_X86_64_PC32         BASELINE CODE      rip-relative operand; OLD GOT slot    S + A - P, must fit int32
                        RODATA DATA BSS    read in place; PIC switch-table entry (entry i: A = 4i, S = case)
  R_X86_64_GOTPCREL     IMPORT             load from a GOT slot OLD lacks        make an 8-byte slot = S;
                                                                                 slot + A - P
  R_X86_64_REX_GOTPCRELX IMPORT            `lea` of a copy-relocated object OLD  as GOTPCREL (the builder
                                           lacks, rewritten to `mov` from a slot wrote the mov; may relax)
                                           or the slot load of an access thunk
                                           (library_objects)
  R_X86_64_64           BASELINE CODE      pointer word in package data/rodata;  S + A
                        RODATA IMPORT      non-PIC switch-table entry, movabs
  R_X86_64_32 / 32S     BASELINE CODE      non-PIC absolute operand              S + A, must fit (place
                        RODATA DATA BSS                                          the package below 2 GiB)

BASELINE targets are OLD link addresses (add the load bias); package spaces are section offsets;
IMPORT is an index into Package.imports (name, version) resolved in the target's libraries.
Section bases must be at least 64-byte aligned (page-aligned mappings are): layout keeps each
datum's NEW address modulo 64.

The parts that fill this record: destinations (where a target goes), code_fixups (the references
of package functions), copies (switch tables and pointers inside copied data), coverage (what no
reference covered).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from hpkg.builder.model import ElfRelocation, ElfRelocations, Function, Image, LinkAddress
from hpkg.builder.verdict import Reason
from hpkg.formats.model import DataSection, ImportRecord, PackageSection, RelocationKind, TargetSpace

# Access thunks (library_objects) are package code that is no copy of the fix: they are named by
# addresses from here on, above any link address of a user-space ELF file, so that the layout and the
# relocation records treat them like the functions they follow.
THUNK_ADDRESSES = 1 << 60
THUNK_ALIGNMENT = 16

# The package section a data space's bytes live in.
SECTION_OF_SPACE = {
    TargetSpace.CODE: PackageSection.CODE,
    TargetSpace.RODATA: PackageSection.RODATA,
    TargetSpace.DATA: PackageSection.DATA,
}


@dataclass(frozen=True)
class Place:
    """A placed location: OLD link address (BASELINE), NEW link address (package spaces) or import index."""

    space: TargetSpace
    value: int


@dataclass(frozen=True)
class Fixup:
    """A field of the package (named by its NEW address) that a relocation fills in."""

    section: PackageSection
    field_address: int  # NEW link address of the field
    kind: RelocationKind
    place: Place
    addend: int


@dataclass(frozen=True)
class NewObject:
    """A named object of the fix that the package carries (a new variable or a changed constant)."""

    name: str
    section: DataSection
    address: int
    size: int


@dataclass(frozen=True)
class Destination:
    """Where a fix target goes for package code, and what the package must carry for it to be there.

    Exactly one of `place` (a baseline or package location) and `imported` (a symbol the loader
    resolves) is set; `copy` is a range of the fix the package copies, `new_object` the object it is.
    """

    place: Place | None = None
    imported: ImportRecord | None = None
    copy: tuple[TargetSpace, int, int] | None = None
    new_object: NewObject | None = None
    shared_rodata: bool = False  # read-only data pointed at OLD's identical copy instead of a copy
    inferred: str | None = None  # a baseline place inferred from an unchanged layout: what was assumed


class PackageCode:
    """The fix's functions the package carries (NEW address → function), looked up by any address."""

    def __init__(self, functions: dict[int, Function]) -> None:
        self.functions = functions
        self._starts = sorted(functions)

    def __contains__(self, start: int) -> bool:
        return start in self.functions

    def function_at(self, address: int) -> Function | None:
        """The package function whose NEW range holds `address` (its end included)."""
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0:
            fn = self.functions[self._starts[i]]
            if fn.address <= address <= fn.end:
                return fn
        return None


class FixRelocations:
    """The fix's static and dynamic relocations sorted by address: one index per build. Records are
    made only for the ranges asked (a library has tens of thousands of relocations; a package reads
    the few inside its functions and copied data)."""

    def __init__(self, image: Image) -> None:
        self.static = _SortedRelocations(image.static_relocations)
        self.static_addresses = self.static.addresses
        self.dynamic = _SortedRelocations(image.dynamic_relocations)
        self.dynamic_addresses = self.dynamic.addresses

    def static_in(self, start: int, end: int) -> list[ElfRelocation]:
        return self.static.between(start, end)

    def dynamic_in(self, start: int, end: int) -> list[ElfRelocation]:
        return self.dynamic.between(start, end)


class _SortedRelocations:
    """One relocation table in address order (stable: entries at one address keep table order)."""

    __slots__ = ("addresses", "_order", "_table")

    def __init__(self, table: ElfRelocations) -> None:
        columns = table.addresses
        self._table = table
        self._order = sorted(range(len(columns)), key=columns.__getitem__)
        self.addresses = [columns[i] for i in self._order]

    def between(self, start: int, end: int) -> list[ElfRelocation]:
        """The records at addresses in [start, end), in address order."""
        first = bisect.bisect_left(self.addresses, start)
        return self[first : bisect.bisect_left(self.addresses, end)]

    def __getitem__(self, index: slice) -> list[ElfRelocation]:
        table = self._table
        return [table[i] for i in self._order[index]]


@dataclass
class Fixups:
    """Fixups, copied ranges, new objects, imports and reasons, gathered while the package is placed."""

    fixups: list[Fixup] = field(default_factory=list)
    code_edits: dict[int, int] = field(default_factory=dict)  # NEW address → replacement byte
    ranges: dict[TargetSpace, list[tuple[int, int]]] = field(default_factory=dict)
    objects: dict[int, NewObject] = field(default_factory=dict)
    imports: list[ImportRecord] = field(default_factory=list)
    reasons: list[Reason] = field(default_factory=list)
    short_jumps: list[tuple[Function, int, int]] = field(default_factory=list)  # (fn, location, target)
    rodata_shared: int = 0  # references pointed at an identical datum of OLD instead of a copy
    jump_tables: int = 0
    label: str = ""  # the package function being placed, as reasons name it
    fixed_fields: set[tuple[PackageSection, int]] = field(default_factory=set)
    jump_table_fields: set[int] = field(default_factory=set)  # NEW addresses of copied table entries
    thunks: dict[int, Function] = field(default_factory=dict)  # access thunks by their made-up address
    _reported: set[tuple[str, str]] = field(default_factory=set)

    def reason(self, code: str, subject: str, message: str) -> None:
        self.reasons.append(Reason(code, subject, message))

    def unresolved(self, fn: Function, where: int, what: str) -> None:
        """A reference that cannot be placed: one line per function and cause, not per instruction."""
        name = self.label or fn.name
        if (name, what) in self._reported:
            return
        self._reported.add((name, what))
        self.reason("reference-unresolved", name, f"function '{name}' at +{where:#x}: {what}")

    def import_index(self, name: str, version: str | None) -> int:
        """The index of an import in the package's table, added when new (used by the unwind emitter too)."""
        record = ImportRecord(name, version)
        if record not in self.imports:
            self.imports.append(record)
        return self.imports.index(record)

    def add_thunk(self, name: str, code: bytes) -> int:
        """Carry builder-made code after the functions; returns the address that names it."""
        last = max(self.thunks.values(), key=lambda t: t.address, default=None)
        address = THUNK_ADDRESSES if last is None else last.end
        address = -(-address // THUNK_ALIGNMENT) * THUNK_ALIGNMENT
        self.thunks[address] = Function(name, LinkAddress(address), len(code), "", code)
        return address

    def copy(self, space: TargetSpace, start: int, end: int) -> None:
        self.ranges.setdefault(space, []).append((start, end))

    def add(
        self, section: PackageSection, address: int, kind: RelocationKind, place: Place, addend: int
    ) -> None:
        self.fixups.append(Fixup(section, address, kind, place, addend))
        self.fixed_fields.add((section, address))

    def take(self, destination: Destination) -> Place:
        """The place of a destination, recording what the package carries for it."""
        if destination.copy is not None:
            self.copy(*destination.copy)
        if destination.new_object is not None:
            self.objects.setdefault(destination.new_object.address, destination.new_object)
        if destination.shared_rodata:
            self.rodata_shared += 1
        if destination.inferred is not None and (self.label, destination.inferred) not in self._reported:
            self._reported.add((self.label, destination.inferred))
            message = f"function '{self.label}': {destination.inferred}"
            self.reason("data-offset-inferred", self.label, message)
        imported = destination.imported
        if imported is not None:
            return Place(TargetSpace.IMPORT, self.import_index(imported.name, imported.version))
        assert destination.place is not None
        return destination.place
