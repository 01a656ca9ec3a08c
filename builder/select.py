"""Which functions go into a package: the changed and added ones, plus the pieces that must move with them.

GCC splits a function into pieces that jump into each other's middles (`foo.cold`, `foo.part.0`).
A jump written at a piece's entry does not catch a jump into its middle, so when one piece is
replaced its relatives must be too: a new `foo.cold` jumps back into the middle of the *new* `foo`,
and the old `foo` jumps into the middle of the *old* `foo.cold`. The rule is applied by name
(families) and, for stripped builds where pieces are `sub_<hex>`, by references into a middle.
Left out: line-number-only changes (unless asked for), and reference-only changes whose every
reference goes where the baseline's already does (`spurious_changes`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpkg.builder.destinations import Destinations
from hpkg.builder.model import ChangeKind, DiffResult, FunctionPair, Status, TargetKind, TargetTable

_PIECE_SUFFIX = re.compile(r"(\.(cold|part\.\d+))+$")


@dataclass(frozen=True)
class Selection:
    """The pairs whose fix side goes into the package, why each does, and what was left out."""

    pairs: tuple[FunctionPair, ...]
    why: tuple[str, ...]
    left_out: tuple[str, ...]  # line-number-only changes not included


def spurious_changes(diff: DiffResult, destinations: Destinations) -> frozenset[int]:
    """NEW addresses of functions the diff calls changed in their references only, whose every reference
    nevertheless goes to the very target the baseline's does (a moved PLT entry, a moved string
    of the same bytes): they already behave as the fix, and replacing them would only add risk."""
    found = set()
    for pair in diff.changed:
        if pair.change_kind is not ChangeKind.REFERENCES or pair.old is None or pair.new is None:
            continue
        old_refs, new_refs = pair.old.references, pair.new.references
        if pair.old.masked != pair.new.masked or len(old_refs) != len(new_refs):
            continue
        start = pair.new.function.address
        if all(destinations.same_as_baseline(a, b, start) for a, b in zip(old_refs, new_refs, strict=True)):
            found.add(pair.new.function.address)
    return frozenset(found)


def family(name: str) -> str:
    """The function a piece belongs to: `foo.part.0.cold` → `foo`; `f.constprop.0.cold` → `f.constprop.0`."""
    return _PIECE_SUFFIX.sub("", name)


def _middles_entered(
    pair: FunctionPair,
    by_new_start: dict[int, FunctionPair],
    by_old_start: dict[int, FunctionPair],
    entered: dict[int, dict[int, int]],
) -> list[FunctionPair]:
    """The pairs whose middle this pair's fix side jumps into, then those its baseline side jumps into
    (`by_*_start`: pairs by the start address of their function on that side), in reference order.

    `entered`: per target table (by id), the start of the function each entry enters past its start
    (`_mid_function_entries`), filled as tables are met."""
    found = []
    for side, index in ((pair.new, by_new_start), (pair.old, by_old_start)):
        if side is None:
            continue
        table = side.table
        starts = entered.get(id(table))
        if starts is None:
            starts = entered[id(table)] = _mid_function_entries(table)
        ids = side.target_ids()
        if starts.keys().isdisjoint(ids):  # most functions: tested in C
            continue
        for tid in ids:
            start = starts.get(tid)
            if start is not None:
                hit = index.get(start)
                if hit is not None:
                    found.append(hit)
    return found


def _mid_function_entries(table: TargetTable) -> dict[int, int]:
    """Entry number → the start of the function it names, for entries past a function's start: read
    once per table, rather than every target of every function made and tested (libcrypto: 11,000
    pairs, 0.2 s)."""
    function = TargetKind.FUNCTION
    out = {}
    for i in range(len(table)):
        if table.kind_of(i) is function:
            t = table.targets[i]
            if t[2]:
                out[i] = t[3] - t[2]
    return out


def select_functions(
    diff: DiffResult, include_line_only: bool = False, spurious: frozenset[int] = frozenset()
) -> Selection:
    """Changed and added functions, then their pieces and the functions that jump into their middles.

    `spurious` (NEW addresses, see spurious_changes) are changes proved to be none; they stay out.
    """
    chosen: dict[int, tuple[FunctionPair, str]] = {}  # NEW address → (pair, why)
    left_out: list[str] = []
    for pair in diff.pairs:
        if pair.new is None or pair.new.function.address in spurious:
            continue
        if pair.status is Status.NEW:
            chosen[pair.new.function.address] = (pair, "added")
        elif pair.status is Status.CHANGED:
            if pair.change_kind is ChangeKind.LINE_NUMBER_ONLY and not include_line_only:
                left_out.append(pair.name)
                continue
            why = "line numbers only" if pair.change_kind is ChangeKind.LINE_NUMBER_ONLY else "changed"
            chosen[pair.new.function.address] = (pair, why)
    with_new = [p for p in diff.pairs if p.new is not None]
    by_new_start = {p.new.function.address: p for p in with_new}
    by_old_start = {p.old.function.address: p for p in with_new if p.old is not None}
    families: dict[str, list[FunctionPair]] = {}
    for p in with_new:
        if p.new.function.named:
            families.setdefault(family(p.new.function.name), []).append(p)
    # For each function, the functions whose middle it jumps into (its fix side, then its baseline side):
    # found once, as the rounds below only ask which of them were chosen meanwhile.
    entered: dict[int, dict[int, int]] = {}
    middles = [
        (p, entries)
        for p in with_new
        if (entries := _middles_entered(p, by_new_start, by_old_start, entered))
    ]
    grew = True
    while grew:
        grew = False
        for pair, _ in list(chosen.values()):
            relatives = families.get(family(pair.new.function.name), ()) if pair.new.function.named else ()
            for relative in relatives:
                if relative.new.function.address not in chosen:
                    chosen[relative.new.function.address] = (relative, f"piece of {family(pair.name)}")
                    grew = True
            for callee in _middles_entered(pair, by_new_start, {}, entered):
                if callee.new.function.address not in chosen:
                    chosen[callee.new.function.address] = (callee, f"entered mid-body from {pair.name}")
                    grew = True
        for p, entries in middles:
            if p.new.function.address in chosen:
                continue
            hit = next((e for e in entries if e.new.function.address in chosen), None)
            if hit is not None:
                chosen[p.new.function.address] = (p, f"jumps into the middle of {hit.name}")
                grew = True
    ordered = sorted(chosen.items())
    return Selection(
        tuple(pair for _, (pair, _) in ordered),
        tuple(why for _, (_, why) in ordered),
        tuple(sorted(left_out)),
    )
