"""What the package copies from the fix besides code, and the pointers inside it: switch tables, data.

A switch table goes with its function into package rodata, each entry relocated to its case in the
package code. Copied data (new variables, changed constants, anonymous read-only data) may hold
pointers; each relocated word becomes a fixup, and what it points to may pull in more data.
"""

from __future__ import annotations

import struct

from hpkg.builder.destinations import Destinations
from hpkg.builder.fixups import SECTION_OF_SPACE, FixRelocations, Fixups, PackageCode, Place
from hpkg.builder.model import Function, Image, Reference, ReferenceKind
from hpkg.formats.model import PackageSection, RelocationKind, TargetSpace

_ABSOLUTE = {
    ReferenceKind.ABS32: RelocationKind.R_X86_64_32,
    ReferenceKind.ABS32S: RelocationKind.R_X86_64_32S,
    ReferenceKind.ABS64: RelocationKind.R_X86_64_64,
}


def copy_jump_table(
    image: Image, package: PackageCode, placement: Fixups, fn: Function, ref: Reference
) -> None:
    """Copy a switch table into package rodata; each entry relocated to its case in the package code.

    PIC tables (GCC) hold int32 `case - table`: with the entry at P = table + 4i that is
    R_X86_64_PC32 with S = case, A = 4i. Non-PIC tables hold absolute 8-byte case addresses.
    """
    label = placement.label
    t = ref.target
    width = 4 if ref.kind is ReferenceKind.PC32 else 8
    table = t.address
    count = len(t.entries)
    raw = image.read(table, count * width)
    if count == 0 or len(raw) != count * width:
        placement.reason(
            "jump-table-unrecovered", label, f"function '{label}': switch table at {table:#x} unreadable"
        )
        return
    placement.copy(TargetSpace.RODATA, table, table + count * width)
    for i in range(count):
        entry = table + i * width
        if width == 4:
            case = table + struct.unpack_from("<i", raw, i * 4)[0]
            kind, addend = RelocationKind.R_X86_64_PC32, 4 * i
        else:
            case = struct.unpack_from("<Q", raw, i * 8)[0]
            kind, addend = RelocationKind.R_X86_64_64, 0
        if package.function_at(case) is None:
            placement.reason(
                "jump-table-unrecovered", label,
                f"function '{label}': switch table entry {i} at {entry:#x} leaves the package code",
            )
            return
        placement.jump_table_fields.add(entry)
        placement.add(PackageSection.RODATA, entry, kind, Place(TargetSpace.CODE, case), addend)
    placement.jump_tables += 1
    place = Place(TargetSpace.RODATA, table)
    rkind = RelocationKind.R_X86_64_PC32
    if width == 8:
        rkind = _ABSOLUTE.get(ref.kind, RelocationKind.R_X86_64_32S)
    placement.add(PackageSection.CODE, fn.address + ref.location, rkind, place, ref.addend)


class CopiedPointers:
    """Relocates the pointer words inside copied rodata and data, until no pointer pulls in more data."""

    def __init__(
        self,
        destinations: Destinations,
        package: PackageCode,
        placement: Fixups,
        relocations: FixRelocations,
    ) -> None:
        self.destinations = destinations
        self.package = package
        self.placement = placement
        self.relocations = relocations
        self._scanned: set[tuple[TargetSpace, int, int]] = set()

    def scan(self) -> None:
        """Relocate pointer words inside copied rodata and data (repeat: a pointer may pull in more data)."""
        ranges = self.placement.ranges
        while True:
            pending = [
                (space, start, end)
                for space in (TargetSpace.RODATA, TargetSpace.DATA)
                for start, end in ranges.get(space, [])
                if (space, start, end) not in self._scanned
            ]
            if not pending:
                return
            for space, start, end in pending:
                self._scanned.add((space, start, end))
                section = SECTION_OF_SPACE[space]
                found = self.relocations.dynamic_in(start, end) + self.relocations.static_in(start, end)
                for reloc in found:
                    if reloc.address in self.placement.jump_table_fields:
                        continue
                    self._pointer(section, reloc.address, reloc.type, reloc.symbol, reloc.addend)

    def _pointer(self, section: PackageSection, address: int, rtype: str, symbol: str, addend: int) -> None:
        """One pointer word of copied data: an import by symbol, else where the address it holds goes."""
        placement = self.placement
        if (section, address) in placement.fixed_fields:
            return  # a static and a dynamic relocation for the same word
        objects = placement.objects.values()
        owner = next((o for o in objects if o.address <= address < o.address + o.size), None)
        subject = owner.name if owner is not None else f"data at {address:#x}"
        named = self.destinations.symbols_named(symbol) if symbol else []
        imported = any(s.dynamic and not s.defined for s in named)
        if rtype in ("X86_64_64", "X86_64_GLOB_DAT") and imported:
            version = next((s.version for s in named if s.dynamic), None)
            place = Place(TargetSpace.IMPORT, placement.import_index(symbol, version))
            placement.add(section, address, RelocationKind.R_X86_64_64, place, addend)
            return
        defined = next((s for s in named if s.defined and s.address), None)
        if rtype == "X86_64_RELATIVE":
            destination = self.destinations.place_of_address(addend, self.package)
        elif rtype in ("X86_64_64", "X86_64_GLOB_DAT") and defined is not None:
            # A symbolic pointer to something this image defines (an exported function in a library):
            # S + A, placed like any other address of the fix (interposition is not followed).
            destination = self.destinations.place_of_address(defined.address + addend, self.package)
            if not isinstance(destination, str):
                placement.add(section, address, RelocationKind.R_X86_64_64, placement.take(destination), 0)
                return
        elif rtype == "X86_64_64":
            value = struct.unpack("<Q", self.destinations.diff.new.read(address, 8).ljust(8, b"\0"))[0]
            destination = self.destinations.place_of_address(value, self.package)
        else:
            destination = f"a {rtype} relocation, which a package copy cannot carry"
        if isinstance(destination, str):
            message = f"'{subject}' at {address:#x} points to {destination}"
            placement.reason("reference-unresolved", subject, message)
            return
        placement.add(section, address, RelocationKind.R_X86_64_64, placement.take(destination), 0)
