"""Delta debugging (Zeller's ddmin): the smallest part of a mutation that still shows the crash class.

An ELF mutant is described against its seed as byte patches plus an optional new length; ddmin drops
patches (and the truncation) while the crash class stays. A package mutant is its list of edits;
ddmin drops edits. Each test is one forked run, so a budget bounds the work per class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def ddmin(items: Sequence[T], still_fails: Callable[[list[T]], bool], budget: int = 400) -> list[T]:
    """A 1-minimal subset of `items` for which `still_fails` holds (or the best found within `budget`)."""
    current = list(items)
    granularity = 2
    tests = 0
    while len(current) >= 2 and tests < budget:
        size = max(1, len(current) // granularity)
        chunks = [current[i : i + size] for i in range(0, len(current), size)]
        reduced = False
        for index, chunk in enumerate(chunks):
            complement = [x for j, c in enumerate(chunks) if j != index for x in c]
            for candidate in (chunk, complement):
                if not candidate or tests >= budget:
                    continue
                tests += 1
                if still_fails(candidate):
                    current = candidate
                    granularity = max(granularity - 1, 2) if candidate is complement else 2
                    reduced = True
                    break
            if reduced:
                break
        if not reduced:
            if granularity >= len(current):
                break
            granularity = min(len(current), granularity * 2)
    return current


# An ELF change: ("set", offset, byte) or ("length", new_length).
ElfChange = tuple


def elf_changes(seed: bytes, mutant: bytes) -> list[ElfChange]:
    """The mutant as changes of its seed: each differing byte, and the new length if it is shorter."""
    common = min(len(seed), len(mutant))
    changes: list[ElfChange] = [("set", i, mutant[i]) for i in range(common) if seed[i] != mutant[i]]
    if len(mutant) != len(seed):
        changes.append(("length", len(mutant)))
    return changes


def apply_elf_changes(seed: bytes, changes: Sequence[ElfChange]) -> bytes:
    """The seed with `changes` applied (the recipe of a regression case)."""
    data = bytearray(seed)
    for change in changes:
        if change[0] == "set" and change[1] < len(data):
            data[change[1]] = change[2]
    for change in changes:
        if change[0] == "length":
            del data[change[1] :]
    return bytes(data)
