"""Compare a matched pair's canonical forms: same, changed code, changed references, or line numbers only."""

from __future__ import annotations

from array import array

from hpkg.builder.canon import stable_name
from hpkg.builder.line_numbers import line_number_only
from hpkg.builder.model import CanonicalFunction, ChangeKind, Image, TargetKind, TargetTable
from hpkg.builder.symbolize import ALIASES


def targets_correspond(old: tuple, new: tuple, function_map: dict[int, int]) -> bool:
    """Whether two targets name the same thing: functions (and anonymous data) through the match, the
    rest by identity.

    Targets come as Target or as plain tuples of its fields (kind, name, offset, address, content, entries).
    """
    kind = old[0]
    if kind is not new[0]:
        return False
    if kind is TargetKind.INTERNAL:  # most targets: branches inside the function
        return old[2] == new[2]
    if kind is TargetKind.FUNCTION:
        return old[2] == new[2] and function_map.get(old[3] - old[2]) == new[3] - new[2]
    if kind is TargetKind.DATA:
        if old[2] != new[2]:
            return False
        if old[4] == new[4] and stable_name(old[1]) == stable_name(new[1]):
            return True
        if not (_aliased(old[4]) and _aliased(new[4])):
            return False
        if _is_object(old) and _is_object(new):
            # Two named objects are one object by name alone, whatever markers share their address.
            return stable_name(old[1].partition("@")[0]) == stable_name(new[1].partition("@")[0])
        return bool(_names(old) & _names(new))
    if kind is TargetKind.JUMP_TABLE:
        return old[5] == new[5]
    if kind is TargetKind.RODATA:
        return old[4] == new[4] and old[2] == new[2]
    if kind is TargetKind.SECTION and old[1] == new[1]:
        # Anonymous data the same functions use in both builds is one object, wherever it moved.
        mapped = function_map.get(old[3])
        if mapped is not None:
            return mapped == new[3]
    return old[1] == new[1] and old[2] == new[2] and old[4] == new[4]


def _aliased(content: str | None) -> bool:
    """Whether a DATA target's content is no digest: writable data, maybe with markers at its address."""
    return content is None or content.startswith(ALIASES)


def _markers_of(target: tuple) -> list[str]:
    content = target[4]
    return content[len(ALIASES) :].split(",") if content else []


def _is_object(target: tuple) -> bool:
    """Whether a DATA target names a sized object rather than a zero-size marker standing for its address."""
    return target[1].partition("@")[0] not in _markers_of(target)


def _names(target: tuple) -> set[str]:
    """Every name a DATA target's address has: its object's and the zero-size markers there."""
    return {stable_name(target[1].partition("@")[0]), *_markers_of(target)}


class EntryMemo:
    """Per baseline table entry, the first fix entry found to correspond to it (-1: none yet), for
    one pair of tables (made again when another pair is asked for). An array: a dict of a large
    library's entries, with an int object for each key and value, cost ~23 MiB at the diff's peak."""

    __slots__ = ("old_table", "new_table", "fix_entries")

    def __init__(self) -> None:
        self.old_table: TargetTable | None = None
        self.new_table: TargetTable | None = None
        self.fix_entries = array("i")

    def of(self, old_table: TargetTable, new_table: TargetTable) -> array:
        """The memo's column for these two tables (every entry -1 when they are new to it)."""
        if old_table is not self.old_table or new_table is not self.new_table:
            self.old_table, self.new_table = old_table, new_table
            self.fix_entries = array("i", [-1]) * len(old_table)
        return self.fix_entries


def references_correspond(
    old: CanonicalFunction, new: CanonicalFunction, function_map: dict[int, int], memo: EntryMemo
) -> bool:
    """Whether the two forms' targets correspond one by one (`targets_correspond`), read from their
    target columns.

    `memo` (for one function map and pair of tables): per baseline table entry, the first fix entry
    found to correspond to it. Only answers that go on are kept: an entry that does not correspond
    ends the comparison, so its answer is asked once per pair at most; and one entry per baseline
    entry, not per pair of entries (libxul: a dict of every pair compared took ~100 MiB for a while).
    An entry that corresponds to several is tested again for the others."""
    a, b = old.target_ids(), new.target_ids()
    if len(a) != len(b):
        return False
    old_targets, new_targets = old.table.targets, new.table.targets
    fix_entries = memo.of(old.table, new.table)
    for x, y in zip(a, b, strict=True):
        if x < 0 or y < 0:  # in-function targets: equal padding-free offsets
            if x != y:
                return False
            continue
        if fix_entries[x] == y:
            continue
        if not targets_correspond(old_targets[x], new_targets[y], function_map):
            return False
        if fix_entries[x] < 0:
            fix_entries[x] = y
    return True


def same_masked(old: CanonicalFunction, new: CanonicalFunction) -> bool:
    """Whether the masked bytes are equal: equal digests cover them, else they are rebuilt."""
    if old.masked_size != new.masked_size:
        return False
    return old.digest == new.digest or old.masked == new.masked


def compare_pair(
    old: CanonicalFunction,
    new: CanonicalFunction,
    function_map: dict[int, int],
    old_image: Image,
    new_image: Image,
    memo: EntryMemo | None = None,
) -> ChangeKind | None:
    """None if the pair behaves the same, else how it changed (`memo`: see references_correspond)."""
    same_targets = references_correspond(old, new, function_map, EntryMemo() if memo is None else memo)
    if same_masked(old, new):
        return None if same_targets else ChangeKind.REFERENCES
    if same_targets and line_number_only(old, new, old_image, new_image):
        return ChangeKind.LINE_NUMBER_ONLY
    return ChangeKind.CODE
