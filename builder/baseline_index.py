"""The baseline counterpart of a thing the fix's code refers to: a variable's twin, a string, a PLT entry.

Live state stays in the baseline's memory, so a variable the new code uses must be found in OLD.
The diff made every pairing once (data twins by symbol, anonymous data by unchanged code that uses
it); this index only reads them, and adds the lookups that are not pairings: the fix object a
reference names, OLD's copy of read-only bytes, and OLD's PLT entry or GOT slot for an import.
Built once per plan.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property

from hpkg.builder.data_twins import data_objects
from hpkg.builder.datamap import unchanged_layouts
from hpkg.builder.model import (
    DiffResult,
    FunctionPair,
    GotSlot,
    Image,
    Import,
    Symbol,
    TargetKind,
    TargetTable,
)
from hpkg.elf.plt import PLT_SECTIONS, plt_entries


def is_read_only(image: Image, sym: Symbol) -> bool:
    """Whether an object can never change at run time: in a non-writable allocated section."""
    section = image.section(sym.section)
    return section is not None and not section.writable and not section.nobits


@dataclass(frozen=True)
class TwinLookup:
    """The baseline object a fix object is, or why none was found (`ambiguous` names the candidates)."""

    old: Symbol | None
    ambiguous: tuple[str, ...] = ()


class BaselineIndex:
    """Answers "which OLD thing is this NEW thing" for data objects, anonymous data and imports."""

    def __init__(self, diff: DiffResult) -> None:
        self.diff = diff
        self.new_objects = data_objects(diff.new)
        self._new_by_address: dict[int, list[Symbol]] = defaultdict(list)
        for sym in self.new_objects:
            self._new_by_address[sym.address].append(sym)
        self._rodata_by_content = self._old_rodata()
        self._new_imports = {a: i for i in diff.new.imports for a in (i.plt_address, i.got_address) if a}
        self._old_imports = {(i.name, i.version): i for i in reversed(diff.old.imports)}
        self._new_plt = plt_slots(diff.new)
        self._old_plt = plt_slots(diff.old)

    # -- data objects by symbol ------------------------------------------------------------------
    def objects_at(self, address: int) -> tuple[Symbol, ...]:
        """Every object symbol of the fix that starts at `address`."""
        return tuple(self._new_by_address.get(address, ()))

    def new_object(self, address: int, name: str | None = None, exact: bool = False) -> Symbol | None:
        """The fix's object symbol starting at `address` (by name when several share it).

        A sized object wins over a zero-size marker at the same address (`__TMC_END__` or `_edata`
        mark where .data ends, which is where a copy-relocated `stdout` may begin).
        """
        syms = self._new_by_address.get(address, [])
        if exact:
            return next((s for s in syms if s.name.split("@")[0] == name.split("@")[0]), None)
        pool = [s for s in syms if s.size > 0] or syms
        for sym in pool:
            if name is None or sym.name == name:
                return sym
        return pool[0] if pool else None

    def twin(self, new: Symbol) -> TwinLookup:
        """OLD's object for a NEW one, as the diff paired them (data_twins)."""
        twins = self.diff.data_twins
        return TwinLookup(twins.twin(new), twins.candidates(new))

    # -- anonymous read-only data by content -----------------------------------------------------
    def _old_rodata(self) -> dict[str, int]:
        """Content digest → OLD address, from OLD code's references: where the baseline keeps that datum.

        Read from each target table's entries that some OLD function names (the references as ints,
        gathered in C), not from every reference made into a Target."""
        named: dict[int, tuple[TargetTable, set[int]]] = {}
        for pair in self.diff.pairs:
            if pair.old is not None:
                table = pair.old.table
                entry = named.get(id(table))
                if entry is None:
                    entry = named[id(table)] = (table, set())
                entry[1].update(pair.old.target_ids())
        found: dict[str, int] = {}
        rodata = TargetKind.RODATA
        for table, ids in named.values():
            for tid in ids:
                if tid >= 0 and table.kind_of(tid) is rodata:
                    t = table.targets[tid]
                    content = t[4]
                    if content and content[0] != "?":
                        address = t[3]
                        found[content] = min(found.get(content, address), address)
        return found

    def old_rodata(self, content: str | None) -> int | None:
        """The OLD address of read-only data with this content digest, if unchanged code there used it."""
        if not content or content.startswith("?"):
            return None
        return self._rodata_by_content.get(content)

    # -- writable data without symbols (stripped builds) -------------------------------------------
    def old_address_by_use(self, new_address: int) -> int | None:
        """OLD address of writable data at `new_address`, when unchanged code refers to it at the same
        place in both builds (the diff's anonymous_data)."""
        return self.diff.anonymous_data.get(new_address)

    @cached_property
    def _unchanged_layouts(self) -> dict[str, tuple[int, int, int]]:
        return unchanged_layouts(self.diff.pairs, self.diff.old, self.diff.new)

    @cached_property
    def _twins_by_new_start(self) -> tuple[list[int], list[FunctionPair]]:
        pairs = sorted((p for p in self.diff.pairs if p.old and p.new), key=lambda p: p.new.function.address)
        return [p.new.function.address for p in pairs], pairs

    def old_address_by_layout(self, new_address: int, field: int | None) -> int | None:
        """OLD address at the same offset of the same writable section, when that section's layout is
        unchanged (datamap.unchanged_layouts) and the baseline twin of the function holding `field`
        (the NEW address of the reference) refers to that OLD address too: an inference the verdict
        asks `--allow` for. A variable only the fix uses (maybe in what was padding) is never one."""
        if field is None:
            return None  # a pointer word in data: no function of the baseline vouches for it
        layouts = self._unchanged_layouts.values()
        old = next((o + (new_address - n) for o, n, size in layouts if n <= new_address < n + size), None)
        starts, pairs = self._twins_by_new_start
        i = bisect.bisect_right(starts, field) - 1
        if old is None or i < 0 or not pairs[i].new.function.address <= field < pairs[i].new.function.end:
            return None
        return old if any(t[3] == old for t in pairs[i].old.targets()) else None

    # -- imports: OLD's PLT entry or GOT slot -----------------------------------------------------
    def new_import(self, address: int) -> Import | None:
        """The import whose PLT entry or GOT slot of the fix is at `address`."""
        return self._new_imports.get(address)

    def old_import(self, new: Import) -> Import | None:
        """OLD's import of the same symbol and version."""
        return self._old_imports.get((new.name, new.version))

    def plt_symbol(self, new_entry: int) -> GotSlot | None:
        """The symbol the GOT slot of a fix PLT entry holds (for entries the image model did not map)."""
        slot = self._new_plt.get(new_entry)
        return next((s for s in self.diff.new.got_slots if s.address == slot), None)

    def old_plt_entry(self, symbol: GotSlot) -> int | None:
        """OLD's PLT entry that jumps through OLD's GOT slot for the same symbol."""
        key = (symbol.name, symbol.version)
        old_slot = next((s.address for s in self.diff.old.got_slots if (s.name, s.version) == key), None)
        return next((e for e, s in self._old_plt.items() if s == old_slot), None)



def plt_slots(image: Image) -> dict[int, int]:
    """PLT entry address → the GOT slot its `jmp *slot(%rip)` goes through, by the one PLT reader."""
    entries: dict[int, int] = {}
    for section in image.sections:
        if section.name in PLT_SECTIONS:
            code = image.section_bytes.get(section.name, b"")
            entries.update((e.address, e.slot) for e in plt_entries(section.name, section.address, code))
    return entries


def inferred_data_offset(where: str) -> str:
    """The data-offset-inferred line for a fix address `where` (`.data+0x20`)."""
    return (
        f"{where} has no symbol and no unchanged code uses it; taken to be the baseline object at the same"
        " offset, which the baseline's version of the function uses (both builds' section has the same"
        " size, and every object unchanged code uses sits at the same offset)"
    )
