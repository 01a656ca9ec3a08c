"""Where a target of the fix goes for package code: a baseline location, a package copy, or an import.

The rules, in the order they are tried: a function is its baseline twin unless the package carries
it; an import is OLD's PLT entry or GOT slot for the same symbol; a named object is its baseline twin
(live state) unless it is new or a changed constant, which the package copies; anonymous read-only
data is OLD's identical copy when OLD's code uses one, else copied; anonymous writable data is what
unchanged code proves it to be. Deciding is pure: `Fixups.take` records what a destination needs,
so the same rules also judge, without recording anything, whether a reference-only change is real.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import cached_property

from hpkg.builder.baseline_index import BaselineIndex, inferred_data_offset, is_read_only
from hpkg.builder.fixups import Destination, FixRelocations, NewObject, PackageCode, Place
from hpkg.builder.model import (
    DiffResult,
    Function,
    LinkAddress,
    Reference,
    Symbol,
    SymbolKind,
    Target,
    TargetKind,
)
from hpkg.builder.symbolize import TargetResolver
from hpkg.elf.plt import PLT_SECTIONS
from hpkg.formats.model import DataSection, ImportRecord, TargetSpace

# Bytes of a non-string read-only datum copied at least (a 16-byte vector constant is the common case).
MIN_RODATA_COPY = 16
STRING_LIMIT = 4096
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}


@dataclass(frozen=True)
class LibraryObject:
    """A data object of a shared library that the fix copy-relocates and the baseline does not."""

    name: str  # the symbol its copy relocation names
    version: str | None
    address: int  # NEW address of the fix's copy
    size: int


class Destinations:
    """Decides where each target of the fix goes; built once per plan over the diff and the baseline index."""

    def __init__(self, diff: DiffResult, index: BaselineIndex, relocations: FixRelocations) -> None:
        self.diff = diff
        self.index = index
        self.relocations = relocations
        self._symbols_by_name: dict[str, list[Symbol]] = {}
        for sym in diff.new.symbols:
            self._symbols_by_name.setdefault(sym.name, []).append(sym)

    # -- facts about the fix's symbols ----------------------------------------------------------------
    def symbols_named(self, name: str) -> list[Symbol]:
        """Every symbol of the fix (static and dynamic tables) with this exact name."""
        return self._symbols_by_name.get(name, [])

    def dynamic_version(self, name: str) -> str | None:
        """The version the fix's dynamic symbol table gives a symbol, if any."""
        return next((s.version for s in self.symbols_named(name) if s.dynamic), None)

    @cached_property
    def _copy_relocated(self) -> dict[int, str]:
        """NEW address of each copy the fix makes of a library's object → the symbol its R_X86_64_COPY
        names (what the dynamic linker looked up: `__environ` where the code says `environ`)."""
        copies = self.diff.new.dynamic_relocations.records(("X86_64_COPY",))
        return {r.address: r.symbol.split("@")[0] for r in copies}

    def library_object(self, address: int) -> LibraryObject | None:
        """The library object the fix copies to `address`, when no object there has a baseline twin.

        The process's one live instance is then the library's own. When the baseline has a copy too,
        that copy (in the baseline executable) is the instance everyone, the library included, uses:
        its twin is the destination, as for any variable.
        """
        name = self._copy_relocated.get(address)
        if name is None:
            return None
        symbols = self.index.objects_at(address)
        if any(self.index.twin(s).old is not None or self.index.twin(s).ambiguous for s in symbols):
            return None
        size = max((s.size for s in symbols), default=0)
        return LibraryObject(name, self.dynamic_version(name), address, size)

    @cached_property
    def _resolver(self) -> TargetResolver:
        functions = (p.new.function for p in self.diff.pairs if p.new)
        new_functions = tuple(sorted(functions, key=lambda f: f.address))
        return TargetResolver(self.diff.new, new_functions)

    @cached_property
    def _rodata_boundaries(self) -> list[int]:
        """Every NEW address that read-only data may start at: referenced addresses and object starts."""
        found = {s.address for s in self.index.new_objects}
        rodata = TargetKind.RODATA
        for p in self.diff.pairs:
            if p.new is not None:
                found.update(t[3] for t in p.new.targets() if t[0] is rodata)
        found.update(s.end for s in self.diff.new.sections if s.alloc)
        return sorted(found)

    # -- where a NEW thing lives -------------------------------------------------------------------
    def _function(self, target: Target, package: PackageCode) -> Destination | None:
        start = target.address - target.offset
        if start in package:
            return Destination(Place(TargetSpace.CODE, target.address))
        old = self.diff.baseline_twins.get(start)
        if old is None:
            return None
        return Destination(Place(TargetSpace.BASELINE, old.address + target.offset))

    def _rodata_extent(self, address: int) -> int:
        """The end of the read-only datum at `address`: a C string to its NUL, else to the next boundary."""
        section = self.diff.new.section_at(address)
        section_end = section.end if section is not None else address + 1
        window = self.diff.new.read(address, min(STRING_LIMIT, section_end - address))
        nul = window.find(b"\0")
        if nul > 0 and all(b in _PRINTABLE for b in window[:nul]):
            return address + nul + 1
        boundaries = self._rodata_boundaries
        i = bisect.bisect_right(boundaries, address)
        end = boundaries[i] if i < len(boundaries) else section_end
        return min(section_end, max(end, address + MIN_RODATA_COPY))

    def _copied_rodata(self, address: int) -> Destination:
        copy = (TargetSpace.RODATA, address, self._rodata_extent(address))
        return Destination(Place(TargetSpace.RODATA, address), copy=copy)

    def _object(self, sym: Symbol, address: int) -> Destination | str:
        """A NEW object's destination: OLD's twin (live state), or a package copy if new or a changed
        constant."""
        image = self.diff.new
        library = self.library_object(sym.address)
        if library is not None:
            # A pointer to it: the import's address (S + 0). An interior pointer would need an addend
            # the destination cannot carry.
            if address != sym.address:
                return f"'{library.name}'+{address - sym.address:#x} lies inside a shared library's object"
            return Destination(imported=ImportRecord(library.name, library.version))
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
                return Destination(Place(TargetSpace.BASELINE, old.address + (address - sym.address)))
        section = image.section(sym.section)
        if read_only:
            space, kind = TargetSpace.RODATA, DataSection.RODATA
        elif section is not None and section.nobits:
            space, kind = TargetSpace.BSS, DataSection.BSS
        else:
            space, kind = TargetSpace.DATA, DataSection.DATA
        return Destination(
            Place(space, address),
            copy=(space, sym.address, sym.address + max(sym.size, 1)),
            new_object=NewObject(sym.name, kind, sym.address, sym.size),
        )

    def named_object(self, target: Target, field: int | None = None) -> Symbol | None:
        """The fix object a DATA target names. When several symbols share its address, a static
        relocation at `field` (relocation mode) names it: the linker's own answer beats any guess."""
        start = target.address - target.offset
        named = None
        if field is not None:
            static = self.relocations.static_in(field, field + 1)
            if static and static[0].symbol:
                named = self.index.new_object(start, static[0].symbol, exact=True)
        return named or self.index.new_object(start, target.name)

    def _plt_entry(self, address: int) -> Destination | str:
        """A PLT entry the image model did not map: OLD's entry through the same symbol's GOT slot,
        else the symbol as an import."""
        symbol = self.index.plt_symbol(address)
        if symbol is None:
            return f"PLT entry at {address:#x} whose GOT slot names no symbol"
        old_entry = self.index.old_plt_entry(symbol)
        if old_entry is not None:
            return Destination(Place(TargetSpace.BASELINE, old_entry))
        return Destination(imported=ImportRecord(symbol.name, symbol.version))

    def place_of(self, target: Target, package: PackageCode, field: int | None = None) -> Destination | str:
        """Where a NEW target goes for package code (`field`: NEW address of the referring field, if
        any), or a sentence saying why it cannot be placed."""
        kind = target.kind
        if kind is TargetKind.FUNCTION:
            place = self._function(target, package)
            return place if place is not None else f"function '{target.name}' has no baseline twin"
        if kind is TargetKind.IMPORT:
            imp = self.index.new_import(target.address)
            old = self.index.old_import(imp) if imp is not None else None
            if old is not None and target.address == imp.plt_address and old.plt_address:
                return Destination(Place(TargetSpace.BASELINE, old.plt_address))
            if old is not None and target.address == imp.got_address and old.got_address:
                return Destination(Place(TargetSpace.BASELINE, old.got_address))
            return f"import '{target.name}' is not reachable through the baseline's PLT or GOT"
        if kind is TargetKind.DATA:
            sym = self.named_object(target, field)
            if sym is not None:
                return self._object(sym, target.address)
            kind = TargetKind.SECTION
        section = self.diff.new.section_at(target.address)
        if section is not None and section.name in PLT_SECTIONS:
            return self._plt_entry(target.address)
        if section is not None and section.executable:
            return f"code at {target.address:#x} ({section.name}) that is no known function"
        if kind is TargetKind.RODATA:
            old = self.index.old_rodata(target.content)
            if old is not None:
                return Destination(Place(TargetSpace.BASELINE, old), shared_rodata=True)
            return self._copied_rodata(target.address)
        if section is not None and (section.writable or section.nobits) and not section.executable:
            old = self.index.old_address_by_use(target.address)
            if old is not None:
                return Destination(Place(TargetSpace.BASELINE, old))
            old = self.index.old_address_by_layout(target.address, field)
            if old is not None:  # an inference, refused unless allowed (data-offset-inferred)
                where = f"{section.name}+{target.address - section.address:#x}"
                return Destination(Place(TargetSpace.BASELINE, old), inferred=inferred_data_offset(where))
            return (
                f"{section.name}+{target.address - section.address:#x} is used by no unchanged code, so the"
                " baseline object it is cannot be told from a new one without symbols"
                " (--old-debug/--new-debug)"
            )
        if section is not None and not section.writable and not section.executable:
            return self._copied_rodata(target.address)
        where = section.name if section is not None else "no section"
        return f"{target.address:#x} ({where}) is neither code, data nor an import"

    def place_of_address(self, address: int, package: PackageCode) -> Destination | str:
        """Where a NEW link address held in a data word (a pointer) goes for the package."""
        dummy = Function("", LinkAddress(0), 0, "", b"")
        return self.place_of(self._resolver.resolve(address, dummy), package)

    # -- the same target as the baseline's? -------------------------------------------------------------
    def same_as_baseline(self, old: Reference, new: Reference, new_function: int) -> bool:
        """Whether a fix reference, placed for a package that carries no function, names exactly what
        the baseline's names.

        Used on functions the diff calls changed only in their references: when every one goes to
        the baseline's own target, the function already behaves as the fix and is left out.
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
            imp = self.index.new_import(new.target.address)
            twin = self.index.old_import(imp) if imp is not None else None
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
        destination = self.place_of(new.target, _NO_PACKAGE, new_function + new.location)
        return (
            isinstance(destination, Destination)
            and destination.copy is None
            and destination.place is not None
            and destination.place.space is TargetSpace.BASELINE
            and destination.place.value == old.target.address
            and destination.inferred is None  # an inference never proves a change is none
        )


_NO_PACKAGE = PackageCode({})
