"""Columns as they cross the pipe from a forked child (`builder/forked`): compact on both sides.

Pickling an `array` copies it into a `bytes` first; a `PickleBuffer` over it is written straight
from its memory (pickle protocol 5). A list of strings pickles every distinct object once but keeps
a memo entry per object while it does; as its distinct values and a number per entry it sends
each text once and the receiving side shares one object per text. On libwebkit2gtk the child's
last moments (the result pickled) had cost ~30 MiB over its canonicalizing peak.
"""

from __future__ import annotations

import pickle
from array import array
from collections.abc import Iterable

WireArray = tuple[str, pickle.PickleBuffer | bytes | bytearray]
WireStrings = tuple[list[str | None], array]


def array_out(column: array) -> WireArray:
    """An array for the pipe: its type code and its memory, not copied."""
    return column.typecode, pickle.PickleBuffer(column)


def array_in(sent: WireArray) -> array:
    """The array `array_out` sent (a pickled PickleBuffer arrives as bytes or a bytearray)."""
    typecode, data = sent
    column = array(typecode)
    column.frombytes(data)
    return column


def strings_out(values: Iterable[str | None]) -> WireStrings:
    """Strings (or None) as their distinct values and one number per entry."""
    numbers: dict[str | None, int] = {}
    ids = array("i", (numbers.setdefault(value, len(numbers)) for value in values))
    return list(numbers), ids


def strings_in(sent: WireStrings) -> list[str | None]:
    """The list `strings_out` sent, each distinct text one object."""
    distinct, ids = sent
    return [distinct[i] for i in ids]
