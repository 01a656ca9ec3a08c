"""Pair the data objects of two builds by symbol: which baseline object each object of the fix is.

Globals pair by name. Static locals carry GCC's numbering (`count.0`), which shifts when another
function gains one, so they are keyed by name without the number plus the functions that reference
them (their owners): references are already known, and no DWARF is needed. The pairing is made once,
by the diff; the data diff compares the pairs and the package builder reads them (live state stays
in the baseline's object, so a wrong twin would corrupt it: what cannot be told apart stays unpaired).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from hpkg.builder.canon import stable_name
from hpkg.builder.match import AddressIndex
from hpkg.builder.model import (
    CanonicalFunction,
    DataKey,
    DataTwins,
    Image,
    Symbol,
    SymbolKind,
    TargetKind,
    data_key,
)

# Objects the C runtime and the linker add to every program; they say nothing about the fix (the data
# diff leaves them out), but package code may still use them (`__dso_handle`, `completed.0`).
RUNTIME_OBJECTS = frozenset(
    {"__dso_handle", "_IO_stdin_used", "__TMC_END__", "completed.0", "__FRAME_END__", "_DYNAMIC",
     "_GLOBAL_OFFSET_TABLE_", "__GNU_EH_FRAME_HDR", "__init_array_start", "__init_array_end",
     "__fini_array_start", "__fini_array_end", "__bss_start", "_edata", "_end", "__data_start", "data_start",
     "__abi_tag", "__frame_dummy_init_array_entry", "__do_global_dtors_aux_fini_array_entry"}
)


def data_objects(image: Image, *, distinct: bool = False) -> list[Symbol]:
    """Defined object and TLS symbols in allocated non-code sections, static table first.

    `distinct`: one symbol per object (see model.data_key), named without @VERSION. Otherwise every
    (address, name), as the package builder looks up the object a reference names.
    """
    code = {s.name for s in image.sections if s.executable}
    seen: set[tuple[int, str]] = set()
    out = []
    for sym in sorted(image.symbols, key=lambda s: (s.dynamic, s.address, s.name)):
        if sym.kind not in (SymbolKind.OBJECT, SymbolKind.TLS) or not sym.defined or not sym.section:
            continue
        if sym.section in code:
            continue
        key = data_key(sym) if distinct else (sym.address, sym.name)
        if key in seen:
            continue
        seen.add(key)
        out.append(replace(sym, name=key[1]) if key[1] != sym.name else sym)
    return out


class TwinNames:
    """NEW function address → its baseline twin's name: a fix function named as the baseline knows it.

    Each name is made when asked (the name of an unnamed function is made from its address): the
    data stages ask for the few functions that own static locals or whose address a pointer holds,
    and a dict of every pair's name took tens of MiB on a large library."""

    __slots__ = ("_old_of", "_old")

    def __init__(self, old_functions: tuple[CanonicalFunction, ...], function_twins: dict[int, int]) -> None:
        self._old_of = {new_address: old_address for old_address, new_address in function_twins.items()}
        self._old = AddressIndex(old_functions)

    def get(self, new_address: int, default: str | None = None) -> str | None:
        old_address = self._old_of.get(new_address)
        if old_address is None:
            return default
        return self._old[old_address].function.name


def twin_names(old_functions: tuple[CanonicalFunction, ...], function_twins: dict[int, int]) -> TwinNames:
    """The baseline names of the fix's functions that have a twin (see TwinNames)."""
    return TwinNames(old_functions, function_twins)


def _owners(
    functions: tuple[CanonicalFunction, ...], objects: list[Symbol], rename: TwinNames | dict
) -> dict[int, set[str]]:
    """Object start address → names (baseline names, via the match) of the functions referencing it,
    for the static locals among `objects` (the only ones keyed by their owners, see `_keyed`)."""
    wanted = {sym.address for sym in objects if _is_static_local(sym)}
    owners: dict[int, set[str]] = defaultdict(set)
    if not wanted:
        return owners
    for c in functions:
        name = None
        for t in c.targets_of(TargetKind.DATA):
            start = t[3] - t[2]
            if start in wanted:
                if name is None:
                    name = rename.get(c.function.address, c.function.name)
                owners[start].add(name)
    return owners


def _is_static_local(sym: Symbol) -> bool:
    """A function's static variable (`count.0`): local, with GCC's numbering."""
    return sym.local and stable_name(sym.name) != sym.name


def _keyed(objects: list[Symbol], owners: dict[int, set[str]]) -> dict[tuple, Symbol]:
    keyed: dict[tuple, Symbol] = {}
    for sym in objects:
        base = stable_name(sym.name)
        if not sym.local:
            key: tuple = ("global", sym.name)
        elif base != sym.name:
            key = ("static-local", base, tuple(sorted(owners.get(sym.address, ()))))
        else:
            key = ("static", sym.name)
        n = 0
        while (key + (n,)) in keyed:
            n += 1
        keyed[key + (n,)] = sym
    return keyed


def _pair_static_locals(old_keyed: dict[tuple, Symbol], new_keyed: dict[tuple, Symbol]) -> None:
    """Re-key static locals whose owner sets differ between builds so that they pair up anyway.

    A fix that inlines (or stops inlining) the owner changes which functions reference the object;
    it is still the same object when it shares the base name and at least one owner, or when it is
    the only object of its base name left unpaired on each side.
    """
    lonely_old = [k for k in old_keyed if k[0] == "static-local" and k not in new_keyed]
    lonely_new = [k for k in new_keyed if k[0] == "static-local" and k not in old_keyed]
    for old_key in lonely_old:
        candidates = [k for k in lonely_new if k[1] == old_key[1]]
        sharing = [k for k in candidates if set(k[2]) & set(old_key[2])]
        same_base_old = [k for k in lonely_old if k[1] == old_key[1]]
        chosen = sharing[0] if len(sharing) == 1 else None
        if chosen is None and len(candidates) == 1 and len(same_base_old) == 1:
            chosen = candidates[0]
        if chosen is not None:
            new_keyed[old_key] = new_keyed.pop(chosen)
            lonely_new.remove(chosen)


def _pair(
    old_objects: list[Symbol],
    new_objects: list[Symbol],
    old_owners: dict[int, set[str]],
    new_owners: dict[int, set[str]],
) -> list[tuple[Symbol | None, Symbol | None]]:
    """(baseline, fix) pairs: the baseline's objects in order, then the fix's without a twin."""
    old_keyed = _keyed(old_objects, old_owners)
    new_keyed = _keyed(new_objects, new_owners)
    _pair_static_locals(old_keyed, new_keyed)
    pairs: list[tuple[Symbol | None, Symbol | None]] = [
        (sym, new_keyed.get(key)) for key, sym in old_keyed.items()
    ]
    pairs.extend((None, sym) for key, sym in new_keyed.items() if key not in old_keyed)
    return pairs


def _ambiguous(pairs: list[tuple[Symbol | None, Symbol | None]]) -> dict[DataKey, tuple[str, ...]]:
    """Fix statics without a twin → the baseline statics of the same base name also left without one."""
    unpaired_old: dict[str, list[str]] = defaultdict(list)
    for old, new in pairs:
        if old is not None and new is None and old.local:
            unpaired_old[stable_name(old.name)].append(old.name)
    return {
        data_key(new): tuple(sorted(unpaired_old[stable_name(new.name)]))
        for old, new in pairs
        if old is None and new is not None and new.local and unpaired_old.get(stable_name(new.name))
    }


def pair_data_objects(
    old: Image,
    new: Image,
    old_functions: tuple[CanonicalFunction, ...],
    new_functions: tuple[CanonicalFunction, ...],
    function_twins: dict[int, int],
) -> DataTwins:
    """Every data object's twin; the runtime's objects are paired apart, by name, so they never sway
    which of the program's own statics pair up."""
    old_objects, new_objects = data_objects(old, distinct=True), data_objects(new, distinct=True)
    old_owners = _owners(old_functions, old_objects, {})
    new_owners = _owners(new_functions, new_objects, twin_names(old_functions, function_twins))
    pairs: list[tuple[Symbol | None, Symbol | None]] = []
    for runtime in (False, True):
        pairs += _pair(
            [s for s in old_objects if (s.name in RUNTIME_OBJECTS) is runtime],
            [s for s in new_objects if (s.name in RUNTIME_OBJECTS) is runtime],
            old_owners,
            new_owners,
        )
    return DataTwins(tuple(pairs), _ambiguous(pairs))
