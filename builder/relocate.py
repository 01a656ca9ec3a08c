"""Turn every reference of the package's code (and every pointer in its data) into a relocation record.

A reference of the fix names a NEW link address. It is resolved to a **baseline location** (an
unchanged function through its twin, a variable of OLD — live state stays where it is —, OLD's
PLT entry or GOT slot), a **package location** (a replaced or added function, copied read-only
data, a new variable; named by its NEW address until the layout gives it an offset) or an
**import** by name@version. Anything that cannot be resolved becomes a refusal reason, never a guess.

What the loader does with each record (S = target per space, A = addend, P = the field's runtime
address; every relocated field is zero in the package):

  kind                  spaces             emitted for                          loader
  R_X86_64_PLT32        BASELINE CODE      call/jmp/jcc rel32 to a function,     S + A - P; IMPORT (far):
                        IMPORT             an OLD PLT entry, or an import       through an absolute stub
  R_X86_64_PC32         BASELINE CODE      rip-relative operand; OLD GOT slot    S + A - P, must fit int32
                        RODATA DATA BSS    read in place; PIC switch-table entry (entry i: A = 4i, S = case)
  R_X86_64_GOTPCREL     IMPORT             load from a GOT slot OLD lacks        make an 8-byte slot = S;
                                                                                 slot + A - P
  R_X86_64_REX_GOTPCRELX IMPORT            `lea` of a copy-relocated object OLD  as GOTPCREL (the builder
                                           lacks, rewritten to `mov` from a slot wrote the mov; may relax)
  R_X86_64_64           BASELINE CODE      pointer word in package data/rodata;  S + A
                        RODATA IMPORT      non-PIC switch-table entry, movabs
  R_X86_64_32 / 32S     BASELINE CODE      non-PIC absolute operand              S + A, must fit (place
                        RODATA DATA BSS                                          the package below 2 GiB)

BASELINE targets are OLD link addresses (add the load bias); package spaces are section offsets;
IMPORT is an index into Package.imports (name, version) resolved in the target's libraries.
Section bases must be at least 64-byte aligned (page-aligned mappings are): layout keeps each
datum's NEW address modulo 64.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field

from hpkg.builder.decode import instruction_text, scan
from hpkg.builder.jumptables import switch_dispatches
from hpkg.builder.model import (
    DiffResult,
    Function,
    LinkAddress,
    Reference,
    ReferenceKind,
    Symbol,
    SymbolKind,
    Target,
    TargetKind,
)
from hpkg.builder.references import TargetResolver
from hpkg.builder.resolve import (
    PLT_SECTIONS,
    BaselineIndex,
    is_read_only,
    plt_slots,
)
from hpkg.builder.verdict import Reason
from hpkg.builder.x86_64 import is_rel32_branch_field, relocation_recipe
from hpkg.formats.model import DataSection, ImportRecord, PackageSection, RelocationKind, TargetSpace

# Bytes of a non-string read-only datum copied at least (a 16-byte vector constant is the common case).
MIN_RODATA_COPY = 16
STRING_LIMIT = 4096
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
_ABSOLUTE = {
    ReferenceKind.ABS32: RelocationKind.R_X86_64_32,
    ReferenceKind.ABS32S: RelocationKind.R_X86_64_32S,
    ReferenceKind.ABS64: RelocationKind.R_X86_64_64,
}
# The package section a data space's bytes live in.
SECTION_OF_SPACE = {
    TargetSpace.CODE: PackageSection.CODE,
    TargetSpace.RODATA: PackageSection.RODATA,
    TargetSpace.DATA: PackageSection.DATA,
}


@dataclass(frozen=True)
class Place:
    """A resolved location: OLD link address (BASELINE), NEW link address (package spaces) or import index."""

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


@dataclass
class Relocator:
    """Collects fixups, copied ranges, imports and reasons while the package's functions are resolved."""

    diff: DiffResult
    package_functions: dict[int, Function]  # NEW address → NEW function carried in the package code
    tls_unchanged: bool
    index: BaselineIndex = field(init=False)
    fixups: list[Fixup] = field(default_factory=list)
    code_edits: dict[int, int] = field(default_factory=dict)  # NEW address → replacement byte
    ranges: dict[TargetSpace, list[tuple[int, int]]] = field(default_factory=dict)
    objects: dict[int, NewObject] = field(default_factory=dict)
    imports: list[ImportRecord] = field(default_factory=list)
    reasons: list[Reason] = field(default_factory=list)
    short_jumps: list[tuple[Function, int, int]] = field(default_factory=list)  # (fn, location, target)
    rodata_shared: int = 0  # references pointed at an identical datum of OLD instead of a copy
    jump_tables: int = 0

    def __post_init__(self) -> None:
        self.index = BaselineIndex(self.diff)
        new_functions = tuple(
            sorted((p.new.function for p in self.diff.pairs if p.new), key=lambda f: f.address)
        )
        self._resolver = TargetResolver(self.diff.new, new_functions)
        self._new_functions = {f.address: f for f in new_functions}
        self._package_starts = sorted(self.package_functions)
        self._old_twin = {p.new.function.address: p.old.function for p in self.diff.pairs if p.new and p.old}
        self._copies = {r.address for r in self.diff.new.dynamic_relocations if r.type == "X86_64_COPY"}
        self._rodata_boundaries = self._boundaries()
        self._scanned: set[tuple[TargetSpace, int, int]] = set()
        self._jump_table_fields: set[int] = set()
        self._label = ""
        self._reported: set[tuple[str, str]] = set()
        self._static = sorted(self.diff.new.static_relocations, key=lambda r: r.address)
        self._static_addresses = [r.address for r in self._static]
        self._fixed_fields: set[tuple[PackageSection, int]] = set()
        self._new_plt = plt_slots(self.diff.new)
        self._old_plt = plt_slots(self.diff.old)
        self._dynamic = sorted(self.diff.new.dynamic_relocations, key=lambda r: r.address)
        self._dynamic_addresses = [r.address for r in self._dynamic]
        self._new_imports = {a: i for i in self.diff.new.imports for a in (i.plt_address, i.got_address) if a}
        self._old_imports = {(i.name, i.version): i for i in reversed(self.diff.old.imports)}
        self._dynamic_symbols: dict[str, list[Symbol]] = {}
        for sym in self.diff.new.symbols:
            self._dynamic_symbols.setdefault(sym.name, []).append(sym)

    # -- small helpers -----------------------------------------------------------------------------
    def _reason(self, code: str, subject: str, message: str) -> None:
        self.reasons.append(Reason(code, subject, message))

    def _unresolved(self, fn: Function, where: int, what: str) -> None:
        name = self._label or fn.name
        if (name, what) in self._reported:
            return  # one line per function and cause, not per instruction
        self._reported.add((name, what))
        self._reason("reference-unresolved", name, f"function '{name}' at +{where:#x}: {what}")

    def import_index(self, name: str, version: str | None) -> int:
        """The index of an import in the package's table, added when new (used by the unwind emitter too)."""
        record = ImportRecord(name, version)
        if record not in self.imports:
            self.imports.append(record)
        return self.imports.index(record)

    def _copy(self, space: TargetSpace, start: int, end: int) -> None:
        self.ranges.setdefault(space, []).append((start, end))

    def _boundaries(self) -> list[int]:
        """Every NEW address that read-only data may start at: referenced addresses and object starts."""
        found = {s.address for s in self.index.new_objects}
        for p in self.diff.pairs:
            if p.new is not None:
                found.update(r.target.address for r in p.new.references if r.target.kind is TargetKind.RODATA)
        found.update(s.end for s in self.diff.new.sections if s.alloc)
        return sorted(found)

    def package_function_at(self, address: int) -> Function | None:
        """The package function whose NEW range holds `address` (its end included)."""
        i = bisect.bisect_right(self._package_starts, address) - 1
        if i >= 0:
            fn = self.package_functions[self._package_starts[i]]
            if fn.address <= address <= fn.end:
                return fn
        return None

    # -- where a NEW thing lives -------------------------------------------------------------------
    def _function_place(self, target: Target) -> Place | None:
        start = target.address - target.offset
        if start in self.package_functions:
            return Place(TargetSpace.CODE, target.address)
        old = self._old_twin.get(start)
        if old is None:
            return None
        return Place(TargetSpace.BASELINE, old.address + target.offset)

    def _rodata_extent(self, address: int) -> int:
        """The end of the read-only datum at `address`: a C string to its NUL, else to the next boundary."""
        section = self.diff.new.section_at(address)
        section_end = section.end if section is not None else address + 1
        window = self.diff.new.read(address, min(STRING_LIMIT, section_end - address))
        nul = window.find(b"\0")
        if nul > 0 and all(b in _PRINTABLE for b in window[:nul]):
            return address + nul + 1
        i = bisect.bisect_right(self._rodata_boundaries, address)
        end = self._rodata_boundaries[i] if i < len(self._rodata_boundaries) else section_end
        return min(section_end, max(end, address + MIN_RODATA_COPY))

    def _object_place(self, sym: Symbol, address: int) -> Place | str:
        """A NEW object's place: OLD's twin (live state), or a package copy if new or a changed constant."""
        image = self.diff.new
        if sym.kind is SymbolKind.TLS:
            return f"thread-local '{sym.name}' cannot be reached from package code"
        lookup = self.index.twin(sym)
        read_only = is_read_only(image, sym)
        if lookup.ambiguous:
            return f"static '{sym.name}' matches several baseline objects ({', '.join(lookup.ambiguous)})"
        old = lookup.old
        if old is not None:
            same_bytes = self.diff.old.read(old.address, old.size) == image.read(sym.address, sym.size)
            if not read_only or same_bytes:
                if address - sym.address > max(old.size, 1):
                    return f"'{sym.name}'+{address - sym.address:#x} lies beyond the baseline object"
                return Place(TargetSpace.BASELINE, old.address + (address - sym.address))
        section = image.section(sym.section)
        if read_only:
            space, kind = TargetSpace.RODATA, DataSection.RODATA
        elif section is not None and section.nobits:
            space, kind = TargetSpace.BSS, DataSection.BSS
        else:
            space, kind = TargetSpace.DATA, DataSection.DATA
        self._copy(space, sym.address, sym.address + max(sym.size, 1))
        self.objects.setdefault(sym.address, NewObject(sym.name, kind, sym.address, sym.size))
        return Place(space, address)

    def _object_named_by_relocation(self, field: int | None, start: int) -> Symbol | None:
        """The object a static relocation at `field` names, when several symbols share its address
        (relocation mode: the linker's own answer beats any guess by address)."""
        if field is None:
            return None
        i = bisect.bisect_left(self._static_addresses, field)
        if i < len(self._static) and self._static[i].address == field and self._static[i].symbol:
            return self.index.new_object(start, self._static[i].symbol, exact=True)
        return None

    def place_of(self, target: Target, field: int | None = None) -> Place | str:
        """Where a NEW target lives for package code (`field`: NEW address of the referring field, if
        any), or a sentence saying why it cannot be located."""
        kind = target.kind
        if kind is TargetKind.FUNCTION:
            place = self._function_place(target)
            return place if place is not None else f"function '{target.name}' has no baseline twin"
        if kind is TargetKind.IMPORT:
            imp = self._new_imports.get(target.address)
            old = self._old_imports.get((imp.name, imp.version)) if imp is not None else None
            if old is not None and target.address == imp.plt_address and old.plt_address:
                return Place(TargetSpace.BASELINE, old.plt_address)
            if old is not None and target.address == imp.got_address and old.got_address:
                return Place(TargetSpace.BASELINE, old.got_address)
            return f"import '{target.name}' is not reachable through the baseline's PLT or GOT"
        if kind is TargetKind.DATA:
            start = target.address - target.offset
            sym = self._object_named_by_relocation(field, start) or self.index.new_object(start, target.name)
            if sym is not None:
                return self._object_place(sym, target.address)
            kind = TargetKind.SECTION
        section = self.diff.new.section_at(target.address)
        if section is not None and section.name in PLT_SECTIONS:
            return self._plt_place(target.address)
        if section is not None and section.executable:
            return f"code at {target.address:#x} ({section.name}) that is no known function"
        if kind is TargetKind.RODATA:
            old = self.index.old_rodata(target.content)
            if old is not None:
                self.rodata_shared += 1
                return Place(TargetSpace.BASELINE, old)
            self._copy(TargetSpace.RODATA, target.address, self._rodata_extent(target.address))
            return Place(TargetSpace.RODATA, target.address)
        if section is not None and (section.writable or section.nobits) and not section.executable:
            old = self.index.old_address_by_use(target.address)
            if old is not None:
                return Place(TargetSpace.BASELINE, old)
            return (
                f"{section.name}+{target.address - section.address:#x} is used by no unchanged code, so the"
                " baseline object it is cannot be told from a new one without symbols"
                " (--old-debug/--new-debug)"
            )
        if section is not None and not section.writable and not section.executable:
            self._copy(TargetSpace.RODATA, target.address, self._rodata_extent(target.address))
            return Place(TargetSpace.RODATA, target.address)
        where = section.name if section is not None else "no section"
        return f"{target.address:#x} ({where}) is neither code, data nor an import"

    def _plt_place(self, address: int) -> Place | str:
        """A PLT entry the image model did not map: OLD's entry through the same symbol's GOT slot,
        else the symbol as an import."""
        slot = self._new_plt.get(address)
        new_slot = next((s for s in self.diff.new.got_slots if s.address == slot), None)
        if new_slot is None:
            return f"PLT entry at {address:#x} whose GOT slot names no symbol"
        key = (new_slot.name, new_slot.version)
        old_slot = next((s.address for s in self.diff.old.got_slots if (s.name, s.version) == key), None)
        old_entry = next((e for e, s in self._old_plt.items() if s == old_slot), None)
        if old_entry is not None:
            return Place(TargetSpace.BASELINE, old_entry)
        return Place(TargetSpace.IMPORT, self.import_index(new_slot.name, new_slot.version))

    def same_as_baseline(self, old: Reference, new: Reference, new_function: int) -> bool:
        """Whether a fix reference, resolved for the package, names exactly what the baseline's names.

        Used on functions the diff calls changed only in their references: when every one resolves
        to the baseline's own target, the function already behaves as the fix and is left out.
        """
        if (old.kind, old.width, old.location, old.addend) != (new.kind, new.width, new.location, new.addend):
            return False
        if old.target.kind is TargetKind.INTERNAL or new.target.kind is TargetKind.INTERNAL:
            return old.target.kind is new.target.kind and old.internal_offset == new.internal_offset
        if TargetKind.JUMP_TABLE in (old.target.kind, new.target.kind):
            return False  # a table's entries are code of this function: compared by the diff only
        if old.target.kind is TargetKind.RODATA and new.target.kind is TargetKind.RODATA:
            return bool(old.target.content) and old.target.content == new.target.content
        if new.target.kind is TargetKind.IMPORT:
            imp = self._new_imports.get(new.target.address)
            twin = self._old_imports.get((imp.name, imp.version)) if imp is not None else None
            slot = new.target.address == imp.got_address if imp is not None else False
            return twin is not None and old.target.address == (twin.got_address if slot else twin.plt_address)
        if new.target.kind in (TargetKind.DATA, TargetKind.SECTION):
            # Symbols sharing an address (`__TMC_END__` where `stdout`'s copy starts): the bytes are
            # the same, so one reading under which the fix names the baseline's target is enough.
            start = new.target.address - new.target.offset
            for sym in self.index.objects_at(start):
                twin = self.index.twin(sym).old
                if twin is not None and twin.address + new.target.offset == old.target.address:
                    return True
        before = len(self.ranges.get(TargetSpace.RODATA, [])), len(self.objects)
        place = self.place_of(new.target, new_function + new.location)
        copied = (len(self.ranges.get(TargetSpace.RODATA, [])), len(self.objects)) != before
        return (
            not copied
            and isinstance(place, Place)
            and place.space is TargetSpace.BASELINE
            and place.value == old.target.address
        )

    def place_of_address(self, address: int) -> Place | str:
        """Where a NEW link address held in a data word (a pointer) lives for the package."""
        dummy = Function("", LinkAddress(0), 0, "", b"")
        return self.place_of(self._resolver.resolve(address, dummy))

    # -- references of a package function -----------------------------------------------------------

    def _add(
        self, section: PackageSection, address: int, kind: RelocationKind, place: Place, addend: int
    ) -> None:
        self.fixups.append(Fixup(section, address, kind, place, addend))
        self._fixed_fields.add((section, address))

    def resolve_function(self, fn: Function, references: tuple[Reference, ...], label: str = "") -> None:
        """Resolve every reference of a package function (named `label` in reasons); report what cannot be."""
        self._label = label or fn.name
        for ref in references:
            self._resolve_reference(fn, ref)
        self._check_coverage(fn, references)

    def _resolve_reference(self, fn: Function, ref: Reference) -> None:
        field_address = fn.address + ref.location
        t = ref.target
        if t.kind is TargetKind.INTERNAL:
            # Copied whole, a function's branches inside itself stay right; only absolute ones move.
            if ref.kind in _ABSOLUTE:
                place = Place(TargetSpace.CODE, t.address)
                self._add(PackageSection.CODE, field_address, _ABSOLUTE[ref.kind], place, 0)
            return
        if ref.kind is ReferenceKind.TPOFF32:
            # An offset from the thread pointer: the same in OLD when the TLS layout is unchanged.
            if not self.tls_unchanged:
                self._unresolved(fn, ref.location, "a thread-local variable, and TLS layout changed")
            return
        if ref.kind is ReferenceKind.PC8:
            # A short jump to a neighbour (a tail call into `foo.part.0` laid out right before): right
            # only if the layout keeps their distance, which plan checks once offsets are known.
            if t.kind is TargetKind.FUNCTION and self.package_function_at(t.address) is not None:
                self.short_jumps.append((fn, ref.location, t.address))
            else:
                self._unresolved(fn, ref.location, f"a short (rel8) jump out of the function to {t.name}")
            return
        if t.kind is TargetKind.JUMP_TABLE:
            self._jump_table(fn, ref)
            return
        if t.kind is TargetKind.IMPORT:
            self._import_reference(fn, ref)
            return
        if t.kind is TargetKind.DATA and ref.kind is ReferenceKind.PC32:
            sym = self.index.new_object(t.address - t.offset, t.name)
            if sym is not None and sym.address in self._copies and self.index.twin(sym).old is None:
                self._copied_import(fn, ref, sym)
                return
        place = self.place_of(t, field_address)
        if isinstance(place, str):
            self._unresolved(fn, ref.location, place)
            return
        if ref.kind in _ABSOLUTE:
            self._add(PackageSection.CODE, field_address, _ABSOLUTE[ref.kind], place, ref.addend)
        elif ref.kind is ReferenceKind.PC32:
            branch = is_rel32_branch_field(fn.code, ref.location)
            kind = RelocationKind.R_X86_64_PLT32 if branch else RelocationKind.R_X86_64_PC32
            self._add(PackageSection.CODE, field_address, kind, place, ref.addend)
        else:
            self._unresolved(fn, ref.location, f"a {ref.kind.value} reference to {t.name or hex(t.address)}")

    def _import_reference(self, fn: Function, ref: Reference) -> None:
        """A call through the PLT or a load from a GOT slot: OLD's entry when it has one, else an import."""
        field_address = fn.address + ref.location
        imp = self._new_imports.get(ref.target.address)
        if imp is None:
            self._unresolved(fn, ref.location, f"import '{ref.target.name}' without a PLT entry or GOT slot")
            return
        old = self._old_imports.get((imp.name, imp.version))
        if ref.kind is ReferenceKind.GOTPC32 or ref.target.address == imp.got_address:
            if old is not None and old.got_address:
                # The instruction reads the slot itself: a plain PC32 to OLD's slot is exact.
                place = Place(TargetSpace.BASELINE, old.got_address)
                self._add(PackageSection.CODE, field_address, RelocationKind.R_X86_64_PC32, place, ref.addend)
            else:
                place = Place(TargetSpace.IMPORT, self.import_index(imp.name, imp.version))
                kind = RelocationKind.R_X86_64_GOTPCREL
                self._add(PackageSection.CODE, field_address, kind, place, ref.addend)
            return
        branch = ref.kind is ReferenceKind.PC32 and is_rel32_branch_field(fn.code, ref.location)
        if old is not None and old.plt_address:
            place = Place(TargetSpace.BASELINE, old.plt_address)
            if branch:
                kind = RelocationKind.R_X86_64_PLT32
            elif ref.kind is ReferenceKind.PC32:
                kind = RelocationKind.R_X86_64_PC32
            else:
                kind = _ABSOLUTE.get(ref.kind, RelocationKind.R_X86_64_PC32)
            self._add(PackageSection.CODE, field_address, kind, place, ref.addend)
        elif branch:
            place = Place(TargetSpace.IMPORT, self.import_index(imp.name, imp.version))
            self._add(PackageSection.CODE, field_address, RelocationKind.R_X86_64_PLT32, place, ref.addend)
        else:
            what = f"the address of '{imp.qualified_name}', which the baseline lacks"
            self._unresolved(fn, ref.location, what)

    def _copied_import(self, fn: Function, ref: Reference, sym: Symbol) -> None:
        """An object the fix copy-relocates from a library and the baseline lacks (C++ typeinfo, say).

        Its bytes exist only in the library at run time. `lea reg, [rip+obj]` is turned back into
        `mov reg, [rip+slot]` (what the linker relaxed, undone) and the loader provides the slot.
        """
        code = fn.code
        location = ref.location
        opcode = location - 2
        if ref.addend != -4 or opcode < 1 or code[opcode] != 0x8D or not 0x48 <= code[opcode - 1] <= 0x4F:
            self._unresolved(fn, location, f"'{sym.name}' lives in a library and is read in place")
            return
        name = sym.name.split("@")[0]
        version = next((s.version for s in self._dynamic_symbols.get(name, ()) if s.dynamic), None)
        self.code_edits[fn.address + opcode] = 0x8B
        place = Place(TargetSpace.IMPORT, self.import_index(name, version))
        kind = RelocationKind.R_X86_64_REX_GOTPCRELX
        self._add(PackageSection.CODE, fn.address + location, kind, place, -4)

    def _jump_table(self, fn: Function, ref: Reference) -> None:
        """Copy a switch table into package rodata; each entry relocated to its case in the package code.

        PIC tables (GCC) hold int32 `case - table`: with the entry at P = table + 4i that is
        R_X86_64_PC32 with S = case, A = 4i. Non-PIC tables hold absolute 8-byte case addresses.
        """
        t = ref.target
        width = 4 if ref.kind is ReferenceKind.PC32 else 8
        table = t.address
        count = len(t.entries)
        raw = self.diff.new.read(table, count * width)
        if count == 0 or len(raw) != count * width:
            self._reason(
                "jump-table-unrecovered",
                self._label,
                f"function '{self._label}': switch table at {table:#x} unreadable",
            )
            return
        self._copy(TargetSpace.RODATA, table, table + count * width)
        for i in range(count):
            entry = table + i * width
            if width == 4:
                case = table + struct.unpack_from("<i", raw, i * 4)[0]
                kind, addend = RelocationKind.R_X86_64_PC32, 4 * i
            else:
                case = struct.unpack_from("<Q", raw, i * 8)[0]
                kind, addend = RelocationKind.R_X86_64_64, 0
            if self.package_function_at(case) is None:
                self._reason(
                    "jump-table-unrecovered", self._label,
                    f"function '{self._label}': switch table entry {i} at {entry:#x} leaves the package code",
                )
                return
            self._jump_table_fields.add(entry)
            self._add(PackageSection.RODATA, entry, kind, Place(TargetSpace.CODE, case), addend)
        self.jump_tables += 1
        place = Place(TargetSpace.RODATA, table)
        rkind = RelocationKind.R_X86_64_PC32
        if width == 8:
            rkind = _ABSOLUTE.get(ref.kind, RelocationKind.R_X86_64_32S)
        self._add(PackageSection.CODE, fn.address + ref.location, rkind, place, ref.addend)

    def _check_coverage(self, fn: Function, references: tuple[Reference, ...]) -> None:
        """Every rip-relative operand, direct branch and static relocation must have been resolved."""
        covered = sorted(r.location for r in references)
        decoded = scan(fn)  # the decoding the references were found in
        if decoded.end < fn.size and any(b not in (0x00, 0xCC, 0x90) for b in fn.code[decoded.end :]):
            self._unresolved(fn, decoded.end, "bytes that do not decode as instructions")
        has_table = any(r.target.kind is TargetKind.JUMP_TABLE for r in references)
        # Instruction order: operands that need a reference (False), switch dispatches (True).
        checks = [(i[1], i[2], False) for i in decoded.branches + decoded.rip]
        if not has_table:
            checks += [(offset, 0, True) for offset in switch_dispatches(fn, decoded)]
        for offset, size, dispatch in sorted(checks):
            if dispatch:
                self._reason(
                    "jump-table-unrecovered", self._label,
                    f"function '{self._label}' at +{offset:#x}: an indirect jump through a switch table"
                    " that was not recovered",
                )
                continue
            inside = bisect.bisect_left(covered, offset)
            if not (inside < len(covered) and covered[inside] < offset + size):
                text = instruction_text(fn, offset)
                self._unresolved(fn, offset, f"an operand no reference covers ({text})")
        first = bisect.bisect_left(self._static_addresses, fn.address)
        last = bisect.bisect_left(self._static_addresses, fn.end)
        for reloc in self._static[first:last]:
            if relocation_recipe(reloc.type) is not None:
                offset = reloc.address - fn.address
                if offset not in covered:
                    self._unresolved(fn, offset, f"static relocation {reloc.type} against '{reloc.symbol}'")

    # -- pointers inside copied data -----------------------------------------------------------------
    def scan_copied_data(self) -> None:
        """Relocate pointer words inside copied rodata and data (repeat: a pointer may pull in more data)."""
        while True:
            pending = [
                (space, start, end)
                for space in (TargetSpace.RODATA, TargetSpace.DATA)
                for start, end in self.ranges.get(space, [])
                if (space, start, end) not in self._scanned
            ]
            if not pending:
                return
            for space, start, end in pending:
                self._scanned.add((space, start, end))
                section = SECTION_OF_SPACE[space]
                first = bisect.bisect_left(self._static_addresses, start)
                last = bisect.bisect_left(self._static_addresses, end)
                low = bisect.bisect_left(self._dynamic_addresses, start)
                high = bisect.bisect_left(self._dynamic_addresses, end)
                for reloc in self._dynamic[low:high] + self._static[first:last]:
                    if reloc.address in self._jump_table_fields:
                        continue
                    self._pointer(section, reloc.address, reloc.type, reloc.symbol, reloc.addend)

    def _pointer(self, section: PackageSection, address: int, rtype: str, symbol: str, addend: int) -> None:
        """One pointer word of copied data: an import by symbol, else where the address it holds lives."""
        if (section, address) in self._fixed_fields:
            return  # a static and a dynamic relocation for the same word
        owner = next((o for o in self.objects.values() if o.address <= address < o.address + o.size), None)
        subject = owner.name if owner is not None else f"data at {address:#x}"
        named = self._dynamic_symbols.get(symbol, []) if symbol else []
        imported = any(s.dynamic and not s.defined for s in named)
        if rtype in ("X86_64_64", "X86_64_GLOB_DAT") and imported:
            version = next((s.version for s in named if s.dynamic), None)
            place: Place | str = Place(TargetSpace.IMPORT, self.import_index(symbol, version))
            self._add(section, address, RelocationKind.R_X86_64_64, place, addend)
            return
        defined = next((s for s in named if s.defined and s.address), None)
        if rtype == "X86_64_RELATIVE":
            place = self.place_of_address(addend)
        elif rtype in ("X86_64_64", "X86_64_GLOB_DAT") and defined is not None:
            # A symbolic pointer to something this image defines (an exported function in a library):
            # S + A, resolved like any other address of the fix (interposition is not followed).
            place = self.place_of_address(defined.address + addend)
            if not isinstance(place, str):
                self._add(section, address, RelocationKind.R_X86_64_64, place, 0)
                return
        elif rtype == "X86_64_64":
            value = struct.unpack("<Q", self.diff.new.read(address, 8).ljust(8, b"\0"))[0]
            place = self.place_of_address(value)
        else:
            place = f"a {rtype} relocation, which a package copy cannot carry"
        if isinstance(place, str):
            self._reason("reference-unresolved", subject, f"'{subject}' at {address:#x} points to {place}")
            return
        self._add(section, address, RelocationKind.R_X86_64_64, place, 0)
