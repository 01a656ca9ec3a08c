"""Where a thing the fix's code refers to lives in the baseline: the twin of a variable, a string, a slot.

Live state stays in the baseline's memory, so a variable the new code uses must be found in OLD:
by symbol (globals by name, static locals such as `count.0` by name without GCC's number and by
the functions that use them), or in stripped builds by what unchanged code refers to (an
unchanged function that used `.data+0x60` in OLD uses `.data+0x70` in NEW: that is the same object).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from hpkg.builder.canon import stable_name
from hpkg.builder.data import data_objects
from hpkg.builder.model import DiffResult, Image, Status, Symbol, TargetKind
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
    """Answers "which OLD thing is this NEW thing" for data objects, anonymous read-only data and imports."""

    def __init__(self, diff: DiffResult) -> None:
        self.diff = diff
        self.old_objects = data_objects(diff.old)
        self.new_objects = data_objects(diff.new)
        self._old_by_name: dict[str, list[Symbol]] = defaultdict(list)
        for sym in self.old_objects:
            self._old_by_name[sym.name].append(sym)
            self._old_by_name["~" + stable_name(sym.name)].append(sym)
        self._new_by_address: dict[int, list[Symbol]] = defaultdict(list)
        for sym in self.new_objects:
            self._new_by_address[sym.address].append(sym)
        self._old_owners, self._new_owners = self._owners()
        self._rodata_by_content = self._old_rodata()
        self._votes = self._section_votes()

    # -- data objects by symbol ------------------------------------------------------------------
    def _owners(self) -> tuple[dict[int, set[str]], dict[int, set[str]]]:
        """Object address → names of the functions using it (NEW functions named after their OLD twin)."""
        old_owners: dict[int, set[str]] = defaultdict(set)
        new_owners: dict[int, set[str]] = defaultdict(set)
        for pair in self.diff.pairs:
            name = pair.old.function.name if pair.old is not None else pair.name
            for side, owners in ((pair.old, old_owners), (pair.new, new_owners)):
                if side is None:
                    continue
                for ref in side.references:
                    if ref.target.kind is TargetKind.DATA:
                        owners[ref.target.address - ref.target.offset].add(name)
        return old_owners, new_owners

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
        """OLD's object for a NEW one: globals by name; statics by name without numbering, then by owners."""
        if not new.local:
            for sym in self._old_by_name.get(new.name, ()):
                if not sym.local:
                    return TwinLookup(sym)
            return TwinLookup(None)
        candidates = [s for s in self._old_by_name.get("~" + stable_name(new.name), ()) if s.local]
        if len(candidates) == 1:
            return TwinLookup(candidates[0])
        if not candidates:
            return TwinLookup(None)
        owners = self._new_owners.get(new.address, set())
        same = [c for c in candidates if self._old_owners.get(c.address, set()) == owners and owners]
        if len(same) == 1:
            return TwinLookup(same[0])
        shared = [c for c in candidates if self._old_owners.get(c.address, set()) & owners]
        if len(shared) == 1:
            return TwinLookup(shared[0])
        exact = [c for c in candidates if c.name == new.name]
        if len(exact) == 1 and not owners:
            return TwinLookup(exact[0])
        return TwinLookup(None, tuple(sorted(c.name for c in candidates)))

    # -- anonymous read-only data by content -----------------------------------------------------
    def _old_rodata(self) -> dict[str, int]:
        """Content digest → OLD address, from OLD code's references: where the baseline keeps that datum."""
        found: dict[str, int] = {}
        for pair in self.diff.pairs:
            if pair.old is None:
                continue
            for ref in pair.old.references:
                t = ref.target
                if t.kind is TargetKind.RODATA and t.content and not t.content.startswith("?"):
                    found[t.content] = min(found.get(t.content, t.address), t.address)
        return found

    def old_rodata(self, content: str | None) -> int | None:
        """The OLD address of read-only data with this content digest, if unchanged code there used it."""
        if not content or content.startswith("?"):
            return None
        return self._rodata_by_content.get(content)

    # -- writable data without symbols (stripped builds) -------------------------------------------
    def _section_votes(self) -> dict[int, set[int]]:
        """NEW address → OLD addresses that unchanged functions refer to at the same reference position."""
        votes: dict[int, set[int]] = defaultdict(set)
        for pair in self.diff.pairs:
            if pair.status is not Status.SAME or pair.old is None or pair.new is None:
                continue
            if len(pair.old.references) != len(pair.new.references):
                continue
            for a, b in zip(pair.old.references, pair.new.references, strict=True):
                if a.target.kind is b.target.kind and a.target.kind in (TargetKind.SECTION, TargetKind.DATA):
                    votes[b.target.address].add(a.target.address)
        return votes

    def old_address_by_use(self, new_address: int) -> int | None:
        """OLD address of writable data at `new_address`, when unchanged code refers to it at the same place.

        Only exact evidence counts: two builds' sections can have the same size while a new variable
        sits where an old one was, so a common shift of the neighbours proves nothing.
        """
        votes = self._votes.get(new_address)
        if votes is not None and len(votes) == 1:
            return next(iter(votes))
        return None


def plt_slots(image: Image) -> dict[int, int]:
    """PLT entry address → the GOT slot its `jmp *slot(%rip)` goes through, by the one PLT reader."""
    entries: dict[int, int] = {}
    for section in image.sections:
        if section.name in PLT_SECTIONS:
            code = image.section_bytes.get(section.name, b"")
            entries.update((e.address, e.slot) for e in plt_entries(section.name, section.address, code))
    return entries
