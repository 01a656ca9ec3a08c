"""Compare a matched pair's canonical forms: same, changed code, changed references, or line numbers only."""

from __future__ import annotations

from hpkg.builder.canon import stable_name
from hpkg.builder.line_numbers import line_number_only
from hpkg.builder.model import CanonicalFunction, ChangeKind, Image, TargetKind
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


def compare_pair(
    old: CanonicalFunction, new: CanonicalFunction, function_map: dict[int, int], old_image: Image
) -> ChangeKind | None:
    """None if the pair behaves the same, else how it changed."""
    same_targets = len(old.rows) == len(new.rows) and all(
        targets_correspond(a[3], b[3], function_map) for a, b in zip(old.rows, new.rows, strict=True)
    )
    if old.masked == new.masked:
        return None if same_targets else ChangeKind.REFERENCES
    if same_targets and line_number_only(old, new, old_image):
        return ChangeKind.LINE_NUMBER_ONLY
    return ChangeKind.CODE
