"""Pair the baseline's functions with the fix's: by name, by clone origin, by hash, by call graph, by order.

Each pass only looks at what earlier passes left unmatched, so a name match always wins over a
guess. Unnamed functions (stripped binaries) are matched by canonical-form hash, then by the
call-graph neighbourhood of already matched pairs, then by their position between matched ones.
"""

from __future__ import annotations

import bisect
import difflib
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise

from hpkg.builder.canon import hash_key, stable_name
from hpkg.builder.model import CanonicalFunction, Image, TargetKind, TargetTable

CalleeEntry = tuple[int, tuple]  # a called function: (address, hash key)


class AddressIndex:
    """Functions by their address as two sorted columns (address, row), searched by bisection: a dict
    of a large image's functions costs ~60 bytes each, these 12. Of functions sharing an address, the
    last one given is found (as a dict built in order would keep it)."""

    __slots__ = ("functions", "addresses", "rows")

    def __init__(self, functions: tuple[CanonicalFunction, ...]) -> None:
        self.functions = functions
        addresses = array("Q", (c.function.address for c in functions))
        if all(a <= b for a, b in pairwise(addresses)):  # discovery's order, usually
            self.rows = array("I", range(len(functions)))
        else:  # stable: equal addresses keep their order
            self.rows = array("I", sorted(range(len(functions)), key=addresses.__getitem__))
            addresses = array("Q", (addresses[i] for i in self.rows))
        self.addresses = addresses

    def positions(self, address: int) -> range:
        """Where the functions at `address` are in the sequence given (indices into `rows`)."""
        addresses = self.addresses
        return range(bisect.bisect_left(addresses, address), bisect.bisect_right(addresses, address))

    def get(self, address: int) -> CanonicalFunction | None:
        i = bisect.bisect_right(self.addresses, address) - 1
        if i >= 0 and self.addresses[i] == address:
            return self.functions[self.rows[i]]
        return None

    def __getitem__(self, address: int) -> CanonicalFunction:
        found = self.get(address)
        if found is None:
            raise KeyError(address)
        return found

    def __contains__(self, address: object) -> bool:
        return isinstance(address, int) and self.get(address) is not None


@dataclass
class Matching:
    """old function address → new function address (`pairs`), and how each pair was made (`how`).

    Two dicts of objects that exist already (the functions' addresses, the pass names) rather than a
    tuple per pair: a large image has hundreds of thousands of pairs, made while the passes'
    scratch comes and goes, and small objects left among freed ones keep the heap from shrinking.
    """

    old: tuple[CanonicalFunction, ...]
    new: tuple[CanonicalFunction, ...]
    pairs: dict[int, int] = field(default_factory=dict)
    how: dict[int, str] = field(default_factory=dict)
    taken: set[int] = field(default_factory=set)
    _keys: dict[tuple, tuple] = field(default_factory=dict)  # one object per distinct hash key
    # Per store of forms (by id; both stay alive in `old` and `new`), by row: each form's callee list.
    _callees: dict[int, list[tuple[CalleeEntry, ...] | None]] = field(default_factory=dict)
    # Per target table (by id): the callee entry of each entry read so far (_NOT_READ until then,
    # None when it is no function start). Callee lists share these instead of building one per call
    # site (large images hold millions); only the entries the passes read are made.
    _callee_entries: dict[int, list] = field(default_factory=dict)
    # `hash_key`s numbered: one number per distinct key of either image, and per table the number of
    # each entry's key (-1 until read). A shape compares numbers, not tuples of keys.
    _key_numbers: dict[tuple, int] = field(default_factory=dict)
    _entry_numbers: dict[int, array] = field(default_factory=dict)
    _by_address: tuple[AddressIndex, AddressIndex] | None = None

    def by_address(self) -> tuple[AddressIndex, AddressIndex]:
        """Each side's functions by address, made once (the call-graph passes run up to four times)."""
        if self._by_address is None:
            self._by_address = (AddressIndex(self.old), AddressIndex(self.new))
        return self._by_address

    def callees(self, c: CanonicalFunction) -> tuple[CalleeEntry, ...]:
        """The functions `c` refers to, in order, each once: (address, hash key); computed once."""
        forms = c._forms
        lists = self._callees.get(id(forms))
        if lists is None:
            lists = self._callees[id(forms)] = [None] * len(forms)
        found = lists[c._index]
        if found is None:
            entries = self._callee_entries.get(id(c.table))
            if entries is None:
                entries = self._callee_entries[id(c.table)] = [_NOT_READ] * len(c.table)
            found = lists[c._index] = _find_callees(c, entries, self.key)
        return found

    def key_number(self, key: tuple) -> int:
        """The number of a hash key (equal keys, equal numbers)."""
        return self._key_numbers.setdefault(key, len(self._key_numbers))

    def entry_numbers(self, table: TargetTable) -> array:
        """Per table entry, its hash key's number (-1 where not read yet: see `shape`)."""
        found = self._entry_numbers.get(id(table))
        if found is None:
            found = self._entry_numbers[id(table)] = array("q", [-1]) * len(table)
        return found

    def add(self, old: CanonicalFunction, new: CanonicalFunction, how: str) -> None:
        self.pairs[old.function.address] = new.function.address
        self.how[old.function.address] = how
        self.taken.add(new.function.address)

    def key(self, key: tuple) -> tuple:
        """`key` as the one object kept for its value (callee entries of unnamed functions share
        ("function", "sub", 0))."""
        return self._keys.setdefault(key, key)

    def unmatched_old(self) -> list[CanonicalFunction]:
        return [c for c in self.old if c.function.address not in self.pairs]

    def unmatched_new(self) -> list[CanonicalFunction]:
        return [c for c in self.new if c.function.address not in self.taken]


def _one_unnamed(o: CanonicalFunction, n: CanonicalFunction) -> bool:
    """Two named functions with different names are different functions: only the name pass pairs
    named ones; the other passes pair when at least one side has no name (a stripped build)."""
    return not (o.function.named and n.function.named)


def _pair_groups(matching: Matching, key, how: str, unique_only: bool = False) -> None:
    """Pair unmatched functions whose key is equal, in address order within each key."""
    if unique_only:
        _pair_unique(matching, key, how)
        return
    olds: dict[object, list[CanonicalFunction]] = defaultdict(list)
    news: dict[object, list[CanonicalFunction]] = defaultdict(list)
    for c in matching.unmatched_old():
        k = key(c)
        if k is not None:
            olds[k].append(c)
    for c in matching.unmatched_new():
        k = key(c)
        if k is not None:
            news[k].append(c)
    for k, old_group in olds.items():
        new_group = news.get(k, [])
        for o, n in zip(old_group, new_group, strict=False):
            if how not in ("hash", "similar") or _one_unnamed(o, n):
                matching.add(o, n, how)


_SEVERAL = object()  # stands for a key that more than one function has


def _pair_unique(matching: Matching, key, how: str) -> None:
    """Pair unmatched functions whose key is equal and unique on both sides (one dict per side of
    key → function, no list per key: a large image has hundreds of thousands of keys)."""
    olds: dict[object, object] = {}
    for c in matching.unmatched_old():
        k = key(c)
        if k is not None:
            olds[k] = _SEVERAL if k in olds else c
    news: dict[object, object] = {}
    for c in matching.unmatched_new():
        k = key(c)
        if k is not None and k in olds:
            news[k] = _SEVERAL if k in news else c
    for k, o in olds.items():
        n = news.get(k)
        if o is _SEVERAL or n is None or n is _SEVERAL:
            continue
        if how not in ("hash", "similar") or _one_unnamed(o, n):  # type: ignore[arg-type]
            matching.add(o, n, how)  # type: ignore[arg-type]


_NOT_READ = object()


def _find_callees(
    c: CanonicalFunction, entries: list, shared: Callable[[tuple], tuple]
) -> tuple[CalleeEntry, ...]:
    targets = c.table.targets
    function = TargetKind.FUNCTION
    seen: set[int] = set()
    out = []
    for tid in c.target_ids():
        if tid >= 0:
            entry = entries[tid]
            if entry is _NOT_READ:
                t = targets[tid]
                entry = entries[tid] = (t[3], shared(hash_key(t))) if t[0] is function and t[2] == 0 else None
            if entry is not None and entry[0] not in seen:
                seen.add(entry[0])
                out.append(entry)
    return tuple(out)


def _with_callee_without_twin(
    functions: tuple[CanonicalFunction, ...], unpaired: Callable[[int], bool]
) -> set[int]:
    """ids of the functions that refer to a function start `unpaired` says has no twin yet.

    Only their callee lists can pair anything in a call-graph pass: every callee of the others is
    paired already, and stays so. One scan of each target column against the table entries of such
    starts, instead of a callee list for every function of a large image.
    """
    starts: dict[int, set[int]] = {}
    out: set[int] = set()
    for c in functions:
        table = c.table
        tids = starts.get(id(table))
        if tids is None:
            tids = starts[id(table)] = {tid for tid, address in table.function_starts() if unpaired(address)}
        if tids and not tids.isdisjoint(c.target_ids()):
            out.add(id(c))
    return out


def _match_call_graph(matching: Matching) -> None:
    """Pair the unmatched callees of matched pairs at corresponding positions, until nothing moves."""
    if not matching.unmatched_old() or not matching.unmatched_new():
        return  # nothing left to pair (a rebuild, or a fix that only changed code)
    old_by_address, new_by_address = matching.by_address()
    # Each caller once per callee (callee lists hold each function once). Only callers without a twin
    # are ever used (and a function with one keeps it), so only theirs are listed.
    callers_old = _callers(matching, matching.unmatched_old())
    callers_new = _callers(matching, matching.unmatched_new())
    # A pair whose two sides do not both refer to a function without a twin aligns nothing; nor
    # does one without callers without a twin on both sides pair callers: those are left out.
    old_open = _with_callee_without_twin(matching.old, lambda a: a not in matching.pairs)
    new_open = _with_callee_without_twin(matching.new, lambda a: a not in matching.taken)
    pending = [
        (old_address, new_address)
        for old_address, new_address in matching.pairs.items()
        if (old_address in callers_old and new_address in callers_new)
        or (id(old_by_address[old_address]) in old_open and id(new_by_address[new_address]) in new_open)
    ]
    while pending:
        next_round: list = []
        for old_address, new_address in pending:
            o, n = old_by_address[old_address], new_by_address[new_address]
            # Callers too: a unique unmatched caller on each side of a matched pair is a pair.
            co = [x for x in _callers_of(callers_old, old_address) if x not in matching.pairs]
            cn = [x for x in _callers_of(callers_new, new_address) if x not in matching.taken]
            if len(co) == 1 and len(cn) == 1 and not (
                old_by_address[co[0]].function.named and new_by_address[cn[0]].function.named
            ):
                matching.add(old_by_address[co[0]], new_by_address[cn[0]], "call-graph")
                next_round.append((co[0], cn[0]))
            if id(o) not in old_open or id(n) not in new_open:
                continue  # every callee of one side had a twin already: nothing to align
            a, b = matching.callees(o), matching.callees(n)
            if all(x in matching.pairs for x, _ in a) or all(x in matching.taken for x, _ in b):
                continue  # nothing left to pair on one side: skip the alignment
            # A key that several callees share and whose count differs between the builds (one
            # call inlined, or a new one added) leaves the position of each call meaningless.
            count_a, count_b = Counter(k for _, k in a), Counter(k for _, k in b)
            ambiguous = {
                k for k in count_a | count_b if count_a[k] != count_b[k] and count_a[k] + count_b[k] > 2
            }
            key_of = dict(a)
            sm = difflib.SequenceMatcher(a=[k for _, k in a], b=[k for _, k in b], autojunk=False)
            for tag, i1, i2, j1, j2 in sm.get_opcodes():
                if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
                    for oa, na in _aligned(a[i1:i2], b[j1:j2]):
                        if oa in matching.pairs or na in matching.taken or key_of[oa] in ambiguous:
                            continue
                        if oa not in old_by_address or na not in new_by_address:
                            continue
                        if old_by_address[oa].function.named and new_by_address[na].function.named:
                            continue  # two different names: the name pass already decided
                        matching.add(old_by_address[oa], new_by_address[na], "call-graph")
                        next_round.append((oa, na))
        pending = next_round


Callers = dict[int, "int | list[int]"]  # callee address → its caller's address, or a list of several


def _callers(matching: Matching, functions: list[CanonicalFunction]) -> Callers:
    """Who calls each function, among `functions`. Most functions have one caller: its address is
    the entry itself, and only a second caller makes a list (a list per callee cost ~90 bytes, and a
    large image's call-graph pass lists hundreds of thousands of callees)."""
    callers: Callers = {}
    for c in functions:
        caller = c.function.address
        for address, _ in matching.callees(c):
            found = callers.get(address)
            if found is None:
                callers[address] = caller
            elif isinstance(found, list):
                found.append(caller)
            else:
                callers[address] = [found, caller]
    return callers


def _callers_of(callers: Callers, address: int) -> tuple[int, ...] | list[int]:
    """The callers listed for `address`, in the order they were listed."""
    found = callers.get(address)
    if found is None:
        return ()
    return found if isinstance(found, list) else (found,)


def _aligned(a: tuple[CalleeEntry, ...], b: tuple[CalleeEntry, ...]) -> list[tuple[int, int]]:
    """Pair two aligned runs of callees; callees that look alike (unnamed ones all do) pair in address
    order, since a compiler emits a unit's functions in source order while a fix may reorder calls."""
    if len(a) < 2 or len({k for _, k in a}) == len(a):
        return [(oa, na) for (oa, _), (na, _) in zip(a, b, strict=True)]
    olds: dict[tuple, list[int]] = defaultdict(list)
    news: dict[tuple, list[int]] = defaultdict(list)
    for (oa, ka), (na, kb) in zip(a, b, strict=True):
        olds[ka].append(oa)
        news[kb].append(na)
    if {k: len(v) for k, v in olds.items()} != {k: len(v) for k, v in news.items()}:
        return [(oa, na) for (oa, _), (na, _) in zip(a, b, strict=True)]
    return [pair for k in olds for pair in zip(sorted(olds[k]), sorted(news[k]), strict=True)]


def _match_by_order(matching: Matching) -> None:
    """Between two consecutive matched pairs, equal numbers of unmatched functions pair up in order."""
    if not _both_unmatched(matching):
        return  # nothing left to pair on one side
    old_sorted = sorted(matching.old, key=lambda c: c.function.address)
    new_sorted = sorted(matching.new, key=lambda c: c.function.address)
    new_index = {c.function.address: i for i, c in enumerate(new_sorted)}
    gap_old: list[CanonicalFunction] = []
    last_new = -1
    for c in old_sorted + [None]:  # type: ignore[list-item]
        if c is not None and c.function.address not in matching.pairs:
            gap_old.append(c)
            continue
        next_new = new_index[matching.pairs[c.function.address]] if c is not None else len(new_sorted)
        if gap_old and next_new > last_new:
            gap_new = [
                n for n in new_sorted[last_new + 1 : next_new] if n.function.address not in matching.taken
            ]
            same_section = all(
                o.function.section == n.function.section for o, n in zip(gap_old, gap_new, strict=False)
            )
            if len(gap_new) == len(gap_old) and same_section:
                for o, n in zip(gap_old, gap_new, strict=True):
                    if _one_unnamed(o, n):
                        matching.add(o, n, "order")
        gap_old = []
        if c is not None:
            last_new = max(last_new, next_new)


def function_pointers(image: Image) -> dict[str, array]:
    """Per data section, the function addresses its relocated pointer words hold, in address order.

    Tables of function pointers (callbacks, vtables, dispatch arrays) keep their order between
    builds; they tie functions that no code calls directly to their twins.
    """
    # Each word as one int (address << 64 | value), sorted: a tuple each would cost three times as much.
    # RELATIVE addends are signed: biased by 2**63 so that the ints sort as the pairs would.
    bias = _BIAS
    words = [address << 64 | value + bias for address, value in image.dynamic_relocations.relative()]
    if not words:
        bias = 0
        for r in image.static_relocations:
            if r.type == "X86_64_64":
                section = image.section_at(r.address)
                if section is not None and not section.executable:
                    words.append(r.address << 64 | int.from_bytes(image.read(r.address, 8), "little"))
    words.sort()
    # The values as unsigned words (a negative addend names no function either way): an array per
    # section, not a list of int objects (a large library has hundreds of thousands of words).
    out: dict[str, array] = {}
    for word in words:
        section = image.section_at(word >> 64)
        if section is not None:
            values = out.get(section.name)
            if values is None:
                values = out[section.name] = array("Q")
            values.append((word & _WORD) - bias & _WORD)
    return out


_WORD = (1 << 64) - 1
_BIAS = 1 << 63


def _match_pointer_tables(matching: Matching, old_pointers, new_pointers) -> None:
    """Pair unmatched unnamed functions at the same position of the same data section's pointers."""
    old_by_address, new_by_address = matching.by_address()
    for section, old_list in old_pointers.items():
        new_list = new_pointers.get(section, [])
        if len(old_list) != len(new_list):
            continue
        for oa, na in zip(old_list, new_list, strict=True):
            o, n = old_by_address.get(oa), new_by_address.get(na)
            if o is None or n is None or oa in matching.pairs or na in matching.taken:
                continue
            if _one_unnamed(o, n):
                matching.add(o, n, "pointer-table")


def _both_unmatched(matching: Matching) -> bool:
    """Whether each side has a function without a twin (else no later pass can pair anything)."""
    return any(c.function.address not in matching.pairs for c in matching.old) and any(
        c.function.address not in matching.taken for c in matching.new
    )


def _names(c: CanonicalFunction) -> Iterable[str]:
    yield c.function.name
    yield from c.function.aliases


def match_functions(
    old: tuple[CanonicalFunction, ...],
    new: tuple[CanonicalFunction, ...],
    old_image: Image | None = None,
    new_image: Image | None = None,
) -> tuple[dict[int, int], dict[int, str]]:
    """(old function address → new function address, old address → how matched) for every function
    with a twin."""
    matching = Matching(old, new)
    # 1. The same symbol name (exported and static functions of unstripped builds).
    _pair_groups(matching, lambda c: c.function.name if c.function.named else None, "name")
    new_names: dict[str, CanonicalFunction] = {}
    for c in matching.unmatched_new():
        if c.function.named:
            for name in _names(c):
                new_names.setdefault(name, c)
    for c in matching.unmatched_old():
        if not c.function.named:
            continue
        for name in _names(c):
            twin = new_names.get(name)
            if twin is not None and twin.function.address not in matching.taken:
                matching.add(c, twin, "name")
                break
    # 2. Clones and parts renumbered or re-specialised: foo.constprop.0 ↔ foo.constprop.1, then by origin.
    _pair_groups(
        matching,
        lambda c: stable_name(c.function.name) if c.function.parent else None,
        "clone",
        unique_only=True,
    )
    _pair_groups(
        matching,
        lambda c: (c.function.parent, c.function.origin) if c.function.parent else None,
        "clone",
        unique_only=True,
    )
    # A clone on one side, the plain function (or another kind of clone) on the other: same origin.
    _pair_groups(
        matching,
        lambda c: (c.function.parent or c.function.name) if c.function.named else None,
        "clone",
        unique_only=True,
    )
    # 3. Identical canonical form, unique on both sides.
    _pair_groups(matching, lambda c: c.digest, "hash", unique_only=True)
    # 4. Call-graph neighbours of matched pairs.
    _match_call_graph(matching)
    # 5. Position in function-pointer tables (when both sides have functions left to pair: the tables
    # of a large library hold hundreds of thousands of words); 6. position between matched pairs.
    if old_image is not None and new_image is not None and _both_unmatched(matching):
        _match_pointer_tables(matching, function_pointers(old_image), function_pointers(new_image))
        _match_call_graph(matching)
    _match_by_order(matching)
    _match_call_graph(matching)
    # 7. Identical forms again, unique among what is left though not in the whole image; then the
    # same shape (length, instruction count, targets) with other bytes: a changed constant, such
    # as a __LINE__ passed to an error routine.
    _pair_groups(matching, lambda c: c.digest, "hash", unique_only=True)
    _pair_groups(matching, lambda c: _shape(c, matching), "similar", unique_only=True)
    _match_call_graph(matching)
    _match_by_order(matching)
    return matching.pairs, matching.how


def _shape(c: CanonicalFunction, matching: Matching) -> tuple:
    """What stays when only immediates change: section, sizes, and the targets in order, each by its
    hash key's number (the keys of a large image's unmatched functions, as tuples, took gigabytes)."""
    numbers = matching.entry_numbers(c.table)
    targets = c.table.targets
    shape = array("q")
    for t in c.target_ids():
        if t >= 0:
            number = numbers[t]
            if number < 0:
                number = numbers[t] = matching.key_number(hash_key(targets[t]))
        else:
            number = matching.key_number(("i", -1 - t))
        shape.append(number)
    return (c.function.section, c.masked_size, c.instruction_count, shape.tobytes())
