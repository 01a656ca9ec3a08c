"""Compare data objects (.data, .rodata, .bss, TLS) by symbol: added, removed, resized, re-initialised.

Static locals carry GCC's numbering (`count.0`), which shifts when another function gains one,
so they are keyed by name without the number plus the functions that reference them (their
owner): references are already known, and no DWARF is needed.
"""

from __future__ import annotations

import bisect
import struct
from collections import defaultdict
from dataclasses import replace

from hpkg.builder.canon import stable_name
from hpkg.builder.model import (
    CanonicalFunction,
    DataChange,
    DataChangeKind,
    Image,
    Symbol,
    SymbolKind,
    TargetKind,
)

# Objects the C runtime and the linker add to every program; they say nothing about the fix.
_RUNTIME_OBJECTS = frozenset(
    {"__dso_handle", "_IO_stdin_used", "__TMC_END__", "completed.0", "__FRAME_END__", "_DYNAMIC",
     "_GLOBAL_OFFSET_TABLE_", "__GNU_EH_FRAME_HDR", "__init_array_start", "__init_array_end",
     "__fini_array_start", "__fini_array_end", "__bss_start", "_edata", "_end", "__data_start", "data_start",
     "__abi_tag", "__frame_dummy_init_array_entry", "__do_global_dtors_aux_fini_array_entry"}
)


def data_objects(image: Image, *, compared: bool = False) -> list[Symbol]:
    """Defined object and TLS symbols in allocated non-code sections, static table first.

    `compared`: only the objects a data diff compares — no linker/CRT markers, and a copy-relocated
    object that .symtab names `name@VERSION` and .dynsym names `name` counted once, as `name`.
    Otherwise every object, one per (address, name), as the package builder resolves references.
    """
    code = {s.name for s in image.sections if s.executable}
    seen: set[tuple[int, str]] = set()
    out = []
    for sym in sorted(image.symbols, key=lambda s: (s.dynamic, s.address, s.name)):
        if sym.kind not in (SymbolKind.OBJECT, SymbolKind.TLS) or not sym.defined or not sym.section:
            continue
        if sym.section in code or (compared and sym.name in _RUNTIME_OBJECTS):
            continue
        name = sym.name.partition("@")[0] if compared else sym.name
        if (sym.address, name) in seen:
            continue
        seen.add((sym.address, name))
        out.append(replace(sym, name=name) if name != sym.name else sym)
    return out


def _owners(functions: tuple[CanonicalFunction, ...], rename: dict[int, str]) -> dict[int, set[str]]:
    """Object start address → names (baseline names, via the match) of the functions referencing it."""
    owners: dict[int, set[str]] = defaultdict(set)
    for c in functions:
        name = rename.get(c.function.address, c.function.name)
        for row in c.rows:
            t = row[3]
            if t[0] is TargetKind.DATA:
                owners[t[3] - t[2]].add(name)
    return owners


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

    for r in image.dynamic_relocations + image.static_relocations:
        if r.type == "X86_64_RELATIVE":
            words[r.address] = describe(r.addend)
        elif r.type in ("X86_64_64", "X86_64_GLOB_DAT") and r.symbol:
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
    function_map: dict[int, int],
) -> tuple[DataChange, ...]:
    """Data objects added, removed, resized or with a different initial value (by symbol, not address)."""
    old_names = {c.function.address: c.function.name for c in old_functions}
    back = {new_address: old_names[old_address] for old_address, new_address in function_map.items()}
    old_keyed = _keyed(data_objects(old, compared=True), _owners(old_functions, {}))
    new_keyed = _keyed(data_objects(new, compared=True), _owners(new_functions, back))
    _pair_static_locals(old_keyed, new_keyed)
    old_words = _pointer_words(old, old_functions, {})
    new_words = _pointer_words(new, new_functions, back)
    old_sorted, new_sorted = sorted(old_words), sorted(new_words)
    changes: list[DataChange] = []
    for key, sym in old_keyed.items():
        twin = new_keyed.get(key)
        if twin is None:
            changes.append(DataChange(sym.name, DataChangeKind.REMOVED, sym, None))
        elif twin.size != sym.size:
            changes.append(DataChange(sym.name, DataChangeKind.SIZE, sym, twin))
        elif _value(old, sym, old_words, old_sorted) != _value(new, twin, new_words, new_sorted):
            changes.append(DataChange(sym.name, DataChangeKind.VALUE, sym, twin))
    for key, sym in new_keyed.items():
        if key not in old_keyed:
            changes.append(DataChange(sym.name, DataChangeKind.ADDED, None, sym))
    return tuple(changes)
