"""Fixups for the references of package code: each field of a carried function, placed and recorded.

A function is copied whole, so its branches inside itself stay right; every other reference becomes
a fixup (a relocation the loader applies) to where its target goes (destinations), or a reason.
Switch tables are copied with their function (copies), and what no reference covered is checked
last (coverage).
"""

from __future__ import annotations

from hpkg.arch.x86_64 import is_rel32_branch_field
from hpkg.builder.copies import copy_jump_table
from hpkg.builder.coverage import OperandCoverage
from hpkg.builder.destinations import Destinations, LibraryObject
from hpkg.builder.fixups import Fixups, PackageCode, Place
from hpkg.builder.library_objects import AccessThunk, SlotLoad, access_through_slot, site_bytes
from hpkg.builder.model import Function, Reference, ReferenceKind, TargetKind
from hpkg.formats.model import PackageSection, RelocationKind, TargetSpace

LIBRARY_DATA_UNREACHABLE = "library-data-unreachable"
ABSOLUTE_KINDS = {
    ReferenceKind.ABS32: RelocationKind.R_X86_64_32,
    ReferenceKind.ABS32S: RelocationKind.R_X86_64_32S,
    ReferenceKind.ABS64: RelocationKind.R_X86_64_64,
}


class CodeFixups:
    """Turns the references of each package function into fixups of the placement."""

    def __init__(
        self,
        destinations: Destinations,
        package: PackageCode,
        placement: Fixups,
        coverage: OperandCoverage,
        tls_unchanged: bool,
    ) -> None:
        self.destinations = destinations
        self.package = package
        self.placement = placement
        self.coverage = coverage
        self.tls_unchanged = tls_unchanged

    def fix_function(self, fn: Function, references: tuple[Reference, ...], label: str = "") -> None:
        """Place every reference of a package function (named `label` in reasons); report what cannot be."""
        self.placement.label = label or fn.name
        for ref in references:
            self._reference(fn, ref)
        self.coverage.check(fn, references)

    def _add_code(
        self, fn: Function, ref: Reference, kind: RelocationKind, place: Place, addend: int
    ) -> None:
        self.placement.add(PackageSection.CODE, fn.address + ref.location, kind, place, addend)

    def _reference(self, fn: Function, ref: Reference) -> None:
        placement = self.placement
        t = ref.target
        if t.kind is TargetKind.INTERNAL:
            # Copied whole, a function's branches inside itself stay right; only absolute ones move.
            if ref.kind in ABSOLUTE_KINDS:
                self._add_code(fn, ref, ABSOLUTE_KINDS[ref.kind], Place(TargetSpace.CODE, t.address), 0)
            return
        if ref.kind is ReferenceKind.TPOFF32:
            # An offset from the thread pointer: the same in OLD when the TLS layout is unchanged.
            if not self.tls_unchanged:
                placement.unresolved(fn, ref.location, "a thread-local variable, and TLS layout changed")
            return
        if ref.kind is ReferenceKind.PC8:
            # A short jump to a neighbour (a tail call into `foo.part.0` laid out right before): right
            # only if the layout keeps their distance, which plan checks once offsets are known.
            if t.kind is TargetKind.FUNCTION and self.package.function_at(t.address) is not None:
                placement.short_jumps.append((fn, ref.location, t.address))
            else:
                placement.unresolved(fn, ref.location, f"a short (rel8) jump out of the function to {t.name}")
            return
        if t.kind is TargetKind.JUMP_TABLE:
            copy_jump_table(self.destinations.diff.new, self.package, placement, fn, ref)
            return
        if t.kind is TargetKind.IMPORT:
            self._import_reference(fn, ref)
            return
        if t.kind is TargetKind.DATA:
            library = self.destinations.library_object(t.address - t.offset)
            if library is not None:
                self._library_object(fn, ref, library)
                return
        destination = self.destinations.place_of(t, self.package, fn.address + ref.location)
        if isinstance(destination, str):
            placement.unresolved(fn, ref.location, destination)
            return
        place = placement.take(destination)
        if ref.kind in ABSOLUTE_KINDS:
            self._add_code(fn, ref, ABSOLUTE_KINDS[ref.kind], place, ref.addend)
        elif ref.kind is ReferenceKind.PC32:
            branch = is_rel32_branch_field(fn.code, ref.location)
            kind = RelocationKind.R_X86_64_PLT32 if branch else RelocationKind.R_X86_64_PC32
            self._add_code(fn, ref, kind, place, ref.addend)
        else:
            what = f"a {ref.kind.value} reference to {t.name or hex(t.address)}"
            placement.unresolved(fn, ref.location, what)

    def _import_reference(self, fn: Function, ref: Reference) -> None:
        """A call through the PLT or a load from a GOT slot: OLD's entry when it has one, else an import."""
        placement = self.placement
        index = self.destinations.index
        imp = index.new_import(ref.target.address)
        if imp is None:
            what = f"import '{ref.target.name}' without a PLT entry or GOT slot"
            placement.unresolved(fn, ref.location, what)
            return
        old = index.old_import(imp)
        if ref.kind is ReferenceKind.GOTPC32 or ref.target.address == imp.got_address:
            if old is not None and old.got_address:
                # The instruction reads the slot itself: a plain PC32 to OLD's slot is exact.
                place = Place(TargetSpace.BASELINE, old.got_address)
                self._add_code(fn, ref, RelocationKind.R_X86_64_PC32, place, ref.addend)
            else:
                place = Place(TargetSpace.IMPORT, placement.import_index(imp.name, imp.version))
                self._add_code(fn, ref, RelocationKind.R_X86_64_GOTPCREL, place, ref.addend)
            return
        branch = ref.kind is ReferenceKind.PC32 and is_rel32_branch_field(fn.code, ref.location)
        if old is not None and old.plt_address:
            place = Place(TargetSpace.BASELINE, old.plt_address)
            if branch:
                kind = RelocationKind.R_X86_64_PLT32
            elif ref.kind is ReferenceKind.PC32:
                kind = RelocationKind.R_X86_64_PC32
            else:
                kind = ABSOLUTE_KINDS.get(ref.kind, RelocationKind.R_X86_64_PC32)
            self._add_code(fn, ref, kind, place, ref.addend)
        elif branch:
            place = Place(TargetSpace.IMPORT, placement.import_index(imp.name, imp.version))
            self._add_code(fn, ref, RelocationKind.R_X86_64_PLT32, place, ref.addend)
        else:
            what = f"the address of '{imp.qualified_name}', which the baseline lacks"
            placement.unresolved(fn, ref.location, what)

    def _library_object(self, fn: Function, ref: Reference, library: LibraryObject) -> None:
        """A data object of a shared library that the fix copy-relocates and the baseline lacks (stderr,
        optind, C++ typeinfo): the package reaches the library's own object through a slot the loader
        fills with its address (library_objects rewrites the instruction).
        """
        placement = self.placement
        offset = ref.target.address - library.address
        place = Place(TargetSpace.IMPORT, placement.import_index(library.name, library.version))
        if ref.kind is ReferenceKind.ABS64:
            self._add_code(fn, ref, RelocationKind.R_X86_64_64, place, offset + ref.addend)
            return
        where = f"function '{placement.label}' at +{ref.location:#x}: '{library.name}' is a shared library's"
        if ref.kind is not ReferenceKind.PC32:
            why = f"{where}, and its address does not fit the {ref.kind.value} field that takes it"
            placement.reason(LIBRARY_DATA_UNREACHABLE, placement.label, why)
            return
        access = access_through_slot(fn, ref.location, ref.target.address, offset)
        if isinstance(access, str):
            placement.reason(LIBRARY_DATA_UNREACHABLE, placement.label, f"{where}, and {access}")
            return
        if isinstance(access, SlotLoad):
            placement.code_edits[fn.address + access.opcode_offset] = access.opcode
            self._add_code(fn, ref, RelocationKind.R_X86_64_REX_GOTPCRELX, place, ref.addend)
            return
        self._thunk(fn, access, place, library.name)

    def _thunk(self, fn: Function, thunk: AccessThunk, slot: Place, name: str) -> None:
        """The moved instruction's thunk carried after the functions, and `jmp thunk` where it was."""
        placement = self.placement
        address = placement.add_thunk(f"{placement.label}+{thunk.start:#x} ({name})", thunk.code)
        site = fn.address + thunk.start
        for i, byte in enumerate(site_bytes(thunk)):
            placement.code_edits[site + i] = byte
        jump = RelocationKind.R_X86_64_PLT32
        placement.add(PackageSection.CODE, site + 1, jump, Place(TargetSpace.CODE, address), -4)
        load = RelocationKind.R_X86_64_REX_GOTPCRELX
        placement.add(PackageSection.CODE, address + thunk.slot_field, load, slot, -4)
        back = Place(TargetSpace.CODE, site + thunk.length)
        placement.add(PackageSection.CODE, address + thunk.return_field, jump, back, -4)
