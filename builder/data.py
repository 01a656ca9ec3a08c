"""Compare data objects (.data, .rodata, .bss, TLS) by symbol: added, removed, resized, re-initialised.

Objects are compared with their twins (data_twins, paired once by the diff); an initial value is
compared with every relocated pointer word in it said as what it points to.
"""

from __future__ import annotations

import bisect
import struct
from array import array
from itertools import pairwise

from hpkg.builder.anonymous_data import diff_anonymous_data
from hpkg.builder.canon import stable_name
from hpkg.builder.data_twins import RUNTIME_OBJECTS, TwinNames, twin_names
from hpkg.builder.heap import ResidentPages
from hpkg.builder.model import (
    CanonicalFunction,
    DataChange,
    DataChangeKind,
    DataTwins,
    Image,
    Symbol,
    SymbolKind,
    relocation_type_number,
)


def _link_address(image: Image, sym: Symbol) -> int:
    """Where an object's initial value lies: TLS symbols hold an offset into the PT_TLS template."""
    if sym.kind is SymbolKind.TLS:
        tls = next((seg for seg in image.segments if seg.kind == "TLS"), None)
        if tls is not None:
            return tls.address + sym.address
    return sym.address


def _value(image: Image, sym: Symbol, words: _PointerWords) -> bytes:
    """An object's initial bytes, with each relocated pointer word replaced by what it points to."""
    start = _link_address(image, sym)
    raw = bytearray(image.read(start, sym.size))
    described: list[bytes] = []
    addresses = words.addresses
    first = bisect.bisect_left(addresses, start)
    last = bisect.bisect_left(addresses, start + max(len(raw) - 7, 0))
    for i in range(first, last):
        offset = addresses[i] - start
        raw[offset : offset + 8] = bytes(8)
        described.append(f"{offset}:{words.describe(i)}".encode())
    return bytes(raw) + b"|" + b",".join(described)


class _PointerWords:
    """Each pointer word a relocation fills (or, non-PIC, holding a function) and what it points to.

    Addresses are sorted in an array; a word is described when an object's value reads it. A large
    library has hundreds of thousands of relocated words and a few thousand data objects.
    """

    def __init__(
        self, image: Image, functions: tuple[CanonicalFunction, ...], rename: TwinNames | dict[int, str]
    ) -> None:
        self.image = image
        self.rename = rename
        ordered = sorted(functions, key=lambda c: c.function.address)
        self.function_starts = [c.function.address for c in ordered]
        self.functions = ordered
        objects = (s for s in image.symbols if s.kind is not SymbolKind.FUNCTION)
        self.objects = {s.address: stable_name(s.name) for s in objects}
        # Of several relocations of one word, the last counts (dynamic ones, then static ones). A
        # word holds a RELATIVE addend, or (`named`) an index into `symbols`.
        places, values, named, symbols = array("Q"), array("q"), bytearray(), []
        relative, absolute, glob_dat = (relocation_type_number(t) for t in _WORD_TYPES)
        for relocations in (image.dynamic_relocations, image.static_relocations):
            names = relocations.names
            columns = (relocations.addresses, relocations.types, relocations.addends, relocations.symbols)
            for address, kind, addend, symbol in zip(*columns, strict=True):
                if kind == relative:
                    places.append(address)
                    values.append(addend)
                    named.append(0)
                elif kind in (absolute, glob_dat) and names[symbol]:
                    places.append(address)
                    values.append(len(symbols))
                    named.append(1)
                    symbols.append(names[symbol])
        self.symbols = symbols
        self.addresses, self.values, self.named = array("Q"), array("q"), bytearray()
        # The relocation tables come sorted by address, as the linker writes them (`-z combreloc`):
        # then table order is address order, without a list of every word's number (and its key) to
        # sort (a large library has hundreds of thousands of words).
        in_order = all(a <= b for a, b in pairwise(places))
        for j in range(len(places)) if in_order else sorted(range(len(places)), key=places.__getitem__):
            if self.addresses and self.addresses[-1] == places[j]:
                self.values[-1], self.named[-1] = values[j], named[j]
            else:
                self.addresses.append(places[j])
                self.values.append(values[j])
                self.named.append(named[j])
        self.extra: dict[int, str] = {}
        if image.kind == "executable":
            self._plain_words()

    def _function_name(self, value: int) -> str | None:
        i = bisect.bisect_right(self.function_starts, value) - 1
        if i >= 0 and self.function_starts[i] == value:
            fn = self.functions[i].function
            return self.rename.get(value, fn.name)
        return None

    def _describe_value(self, value: int) -> str:
        name = self._function_name(value)
        if name is not None:
            return f"fn:{name}"
        if value in self.objects:
            return f"obj:{self.objects[value]}"
        section = self.image.section_at(value)
        if section is None:
            return "?"
        if not (section.writable or section.executable or section.nobits):
            # A string literal has no symbol: say what it holds, so pointing at another string is a change.
            return f"{section.name}:{self.image.read(value, 256).partition(bytes(1))[0].hex()}"
        return section.name

    def get(self, address: int) -> str | None:
        """What the pointer word at `address` points to, or None where no pointer word lies."""
        i = bisect.bisect_left(self.addresses, address)
        if i < len(self.addresses) and self.addresses[i] == address:
            return self.describe(i)
        return None

    def describe(self, i: int) -> str:
        """What word number `i` points to."""
        address = self.addresses[i]
        if address in self.extra:
            return self.extra[address]
        if self.named[i]:
            return f"sym:{self.symbols[self.values[i]]}"
        return self._describe_value(self.values[i])

    def _plain_words(self) -> None:
        """Non-PIC: pointers are plain words; any aligned word that is a function's address is one
        (where no relocation fills the word already)."""
        found: dict[int, str] = {}
        for section in self.image.sections:
            if section.executable or section.nobits or not section.alloc:
                continue
            data = self.image.section_bytes.get(section.name, b"")
            for i in range(0, len(data) - 7, 8):
                value = struct.unpack_from("<Q", data, i)[0]
                if self._function_name(value) is not None:
                    found.setdefault(section.address + i, self._describe_value(value))
        known = {a: i for i, a in enumerate(self.addresses)}
        merged = sorted(set(known) | set(found))
        self.values = array("q", (self.values[known[a]] if a in known else 0 for a in merged))
        self.named = bytearray(self.named[known[a]] if a in known else 0 for a in merged)
        self.addresses = array("Q", merged)
        self.extra = {a: text for a, text in found.items() if a not in known}


_WORD_TYPES = ("X86_64_RELATIVE", "X86_64_64", "X86_64_GLOB_DAT")


def diff_data(
    old: Image,
    new: Image,
    old_functions: tuple[CanonicalFunction, ...],
    new_functions: tuple[CanonicalFunction, ...],
    function_twins: dict[int, int],
    data_twins: DataTwins,
) -> tuple[DataChange, ...]:
    """Data objects added, removed, resized or with a different initial value (the runtime's own
    objects left out: they say nothing about the fix)."""
    old_words = _PointerWords(old, old_functions, {})
    new_words = _PointerWords(new, new_functions, twin_names(old_functions, function_twins))
    changes: list[DataChange] = []
    resident = ResidentPages((old, new))
    for sym, twin in data_twins.pairs:
        resident.check()
        if (sym or twin).name in RUNTIME_OBJECTS:
            continue
        if twin is None:
            changes.append(DataChange(sym.name, DataChangeKind.REMOVED, sym, None))
        elif sym is None:
            changes.append(DataChange(twin.name, DataChangeKind.ADDED, None, twin))
        elif twin.size != sym.size:
            changes.append(DataChange(sym.name, DataChangeKind.SIZE, sym, twin))
        elif _value(old, sym, old_words) != _value(new, twin, new_words):
            changes.append(DataChange(sym.name, DataChangeKind.VALUE, sym, twin))
    return (*changes, *diff_anonymous_data(old, new, old_words, new_words))
