"""Tie the anonymous data addresses of two stripped builds together by the functions that use them.

Without symbols a reference into .data or .bss is known only as `.bss+0x20`; a fix that adds a
variable shifts the others (GCC lays out a unit's variables in reverse order of definition), and
an unchanged function would differ by that offset alone. The identity both builds share is who
uses the address: the same (matched) functions reference it in the baseline and in the fix.

Two steps, one before and one after the functions are compared: `correspond_section_data` proposes
ties for the comparison (users alone may mislead: a function that switched variables has the same
users); `anonymous_twins` keeps what the comparison proved, the addresses unchanged functions refer
to at the same place. Only those are twins for the package builder, which must not guess live state.
"""

from __future__ import annotations

from collections import defaultdict

from hpkg.builder.model import CanonicalFunction, FunctionPair, Image, Status, TargetKind

Users = frozenset[int]


def _section_users(
    functions: tuple[CanonicalFunction, ...], writable: frozenset[str], identity: dict[int, int]
) -> dict[int, tuple[str, Users]]:
    """Address of each writable-section reference target → (section, the functions referencing it).

    A function is named by `identity` (its baseline address); one without a twin by its own address
    negated, so that it matches nothing on the other side.
    """
    users: dict[int, set[int]] = defaultdict(set)
    sections: dict[int, str] = {}
    section_kind = TargetKind.SECTION
    for c in functions:
        who = identity.get(c.function.address, -c.function.address - 1)
        for t in c.targets_of(section_kind):
            if t[1] in writable:
                users[t[3]].add(who)
                sections[t[3]] = t[1]
    return {address: (sections[address], frozenset(found)) for address, found in users.items()}


def _writable(image: Image) -> frozenset[str]:
    return frozenset(s.name for s in image.sections if s.alloc and s.writable and not s.executable)


def correspond_section_data(
    old: tuple[CanonicalFunction, ...],
    new: tuple[CanonicalFunction, ...],
    function_map: dict[int, int],
    old_image: Image,
    new_image: Image,
) -> dict[int, int]:
    """Baseline address → fix address of anonymous data that the same functions use on both sides.

    Only one-to-one ties count: an address whose set of users is unique in its section on both
    sides. Everything else keeps comparing by section offset.
    """
    back = {n: o for o, n in function_map.items()}
    itself = {c.function.address: c.function.address for c in old}
    old_users = _section_users(old, _writable(old_image), itself)
    new_users = _section_users(new, _writable(new_image), back)

    def unique(users: dict[int, tuple[str, Users]]) -> dict[tuple[str, Users], int]:
        count: dict[tuple[str, Users], list[int]] = defaultdict(list)
        for address, key in users.items():
            count[key].append(address)
        return {key: found[0] for key, found in count.items() if len(found) == 1}

    old_unique, new_unique = unique(old_users), unique(new_users)
    candidates: dict[str, dict[int, int]] = defaultdict(dict)
    for key, address in old_unique.items():
        if key in new_unique:
            candidates[key[0]][address] = new_unique[key]
    ties: dict[int, int] = {}
    for name, pairs in candidates.items():
        ties.update(_plausible(pairs, old_image.section(name), new_image.section(name)))
    return ties


def _plausible(pairs: dict[int, int], old_section, new_section) -> dict[int, int]:
    """The ties a layout shift explains: the same distance from the section's start or end, or the same
    shift as a tie next to it. A function that merely switched objects (`errors++` became
    `warnings++`, each used by it alone) moves by a distance nothing else moved by, and stays a change.
    """
    if old_section is None or new_section is None:
        return {}
    start_shift = new_section.address - old_section.address
    end_shift = new_section.end - old_section.end
    accepted = {o: n for o, n in pairs.items() if n - o in (start_shift, end_shift)}
    order = sorted(pairs)
    grew = True
    while grew:
        grew = False
        for i, o in enumerate(order):
            if o in accepted:
                continue
            shift = pairs[o] - o
            neighbours = [order[j] for j in (i - 1, i + 1) if 0 <= j < len(order) and order[j] in accepted]
            if any(accepted[x] - x == shift for x in neighbours):
                accepted[o] = pairs[o]
                grew = True
    return accepted


def anonymous_twins(pairs: tuple[FunctionPair, ...]) -> dict[int, int]:
    """NEW address → OLD address of data that unchanged functions refer to at the same place in both
    builds, when that place names one OLD address only.

    Only exact evidence counts: two builds' sections can have the same size while a new variable sits
    where an old one was, so a common shift of the neighbours proves nothing.
    """
    section, data = TargetKind.SECTION, TargetKind.DATA
    seen: dict[int, set[int]] = defaultdict(set)
    for pair in pairs:
        if pair.status is not Status.SAME or pair.old is None or pair.new is None:
            continue
        old_ids, new_ids = pair.old.target_ids(), pair.new.target_ids()
        if len(old_ids) != len(new_ids):
            continue
        old_table, new_table = pair.old.table, pair.new.table
        for x, y in zip(old_ids, new_ids, strict=True):
            if x < 0 or y < 0:
                continue  # in-function targets
            kind = old_table.kind_of(x)
            if (kind is section or kind is data) and new_table.kind_of(y) is kind:
                seen[new_table.address_of(y)].add(old_table.address_of(x))
    return {new: next(iter(old)) for new, old in seen.items() if len(old) == 1}


def unchanged_layouts(
    pairs: tuple[FunctionPair, ...], old_image: Image, new_image: Image
) -> dict[str, tuple[int, int, int]]:
    """Writable sections whose layout unchanged code shows to be the same in both builds: name →
    (OLD start, NEW start, size).

    A section qualifies when both builds have it with the same size and every reference an unchanged
    function makes into it names the same offset on both sides. Then the fix's offset is taken to be
    the baseline's same object: a well-founded inference for stripped builds, not a proof (a new
    variable may sit in what was padding), so the package builder asks `--allow` for it.
    """
    old_sections = {s.name: s for s in old_image.sections if s.name in _writable(old_image)}
    new_sections = {s.name: s for s in new_image.sections if s.name in _writable(new_image)}
    layouts = {
        name: (old.address, new.address, old.size)
        for name, old in old_sections.items()
        if (new := new_sections.get(name)) is not None and new.size == old.size and old.size
    }
    section, data = TargetKind.SECTION, TargetKind.DATA
    for pair in pairs:
        if pair.status is not Status.SAME or pair.old is None or pair.new is None:
            continue
        if pair.old.reference_count != pair.new.reference_count:
            continue
        for a, b in zip(pair.old.targets(), pair.new.targets(), strict=True):
            if a[0] not in (section, data) or b[0] is not a[0]:
                continue
            old_address, new_address = a[3], b[3]
            for name, (old_start, new_start, size) in list(layouts.items()):
                inside = old_start <= old_address < old_start + size
                inside = inside or new_start <= new_address < new_start + size
                if inside and old_address - old_start != new_address - new_start:
                    del layouts[name]
    return layouts
