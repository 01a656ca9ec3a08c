"""Compare data objects (.data, .rodata, .bss, TLS) by symbol: added, removed, resized, re-initialised.

Objects are compared with their twins (data_twins, paired once by the diff); an initial value is
compared with every relocated pointer word in it said as what it points to.
"""

from __future__ import annotations

import bisect
import struct

from hpkg.builder.canon import stable_name
from hpkg.builder.data_twins import RUNTIME_OBJECTS, twin_names
from hpkg.builder.model import (
    CanonicalFunction,
    DataChange,
    DataChangeKind,
    DataTwins,
    Image,
    Symbol,
    SymbolKind,
)


def _link_address(image: Image, sym: Symbol) -> int:
    """Where an object's initial value lies: TLS symbols hold an offset into the PT_TLS template."""
    if sym.kind is SymbolKind.TLS:
        tls = next((seg for seg in image.segments if seg.kind == "TLS"), None)
        if tls is not None:
            return tls.address + sym.address
    return sym.address


def _value(image: Image, sym: Symbol, pointer_words: dict[int, str], word_addresses: list[int]) -> bytes:
    """An object's initial bytes, with each relocated pointer word replaced by what it points to."""
    start = _link_address(image, sym)
    raw = bytearray(image.read(start, sym.size))
    described: list[bytes] = []
    first = bisect.bisect_left(word_addresses, start)
    last = bisect.bisect_left(word_addresses, start + max(len(raw) - 7, 0))
    for address in word_addresses[first:last]:
        offset = address - start
        raw[offset : offset + 8] = bytes(8)
        described.append(f"{offset}:{pointer_words[address]}".encode())
    return bytes(raw) + b"|" + b",".join(described)


def _pointer_words(
    image: Image, functions: tuple[CanonicalFunction, ...], rename: dict[int, str]
) -> dict[int, str]:
    """Address of each pointer word a relocation fills (or, non-PIC, holding a function) → its target."""
    starts = {c.function.address: rename.get(c.function.address, c.function.name) for c in functions}
    objects = {s.address: stable_name(s.name) for s in image.symbols if s.kind is not SymbolKind.FUNCTION}
    words: dict[int, str] = {}

    def describe(value: int) -> str:
        if value in starts:
            return f"fn:{starts[value]}"
        if value in objects:
            return f"obj:{objects[value]}"
        section = image.section_at(value)
        return f"{section.name if section else '?'}"

    for relocations in (image.dynamic_relocations, image.static_relocations):
        for r in relocations.records(("X86_64_RELATIVE", "X86_64_64", "X86_64_GLOB_DAT")):
            if r.type == "X86_64_RELATIVE":
                words[r.address] = describe(r.addend)
            elif r.symbol:
                words[r.address] = f"sym:{r.symbol}"
    if image.kind == "executable":
        # Non-PIC: pointers are plain words; any aligned word that is a function's address is one.
        for section in image.sections:
            if section.executable or section.nobits or not section.alloc:
                continue
            data = image.section_bytes.get(section.name, b"")
            for i in range(0, len(data) - 7, 8):
                value = struct.unpack_from("<Q", data, i)[0]
                if value in starts:
                    words.setdefault(section.address + i, describe(value))
    return words


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
    old_words = _pointer_words(old, old_functions, {})
    new_words = _pointer_words(new, new_functions, twin_names(old_functions, function_twins))
    old_sorted, new_sorted = sorted(old_words), sorted(new_words)
    changes: list[DataChange] = []
    for sym, twin in data_twins.pairs:
        if (sym or twin).name in RUNTIME_OBJECTS:
            continue
        if twin is None:
            changes.append(DataChange(sym.name, DataChangeKind.REMOVED, sym, None))
        elif sym is None:
            changes.append(DataChange(twin.name, DataChangeKind.ADDED, None, twin))
        elif twin.size != sym.size:
            changes.append(DataChange(sym.name, DataChangeKind.SIZE, sym, twin))
        elif _value(old, sym, old_words, old_sorted) != _value(new, twin, new_words, new_sorted):
            changes.append(DataChange(sym.name, DataChangeKind.VALUE, sym, twin))
    return tuple(changes)
