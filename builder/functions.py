"""Find every function of an image: symbols, then .eh_frame FDEs, the entry point and init/fini arrays."""

from __future__ import annotations

import bisect
import re

from hpkg.builder.model import (
    Function,
    FunctionOrigin,
    FunctionStore,
    Image,
    LinkAddress,
    Section,
    SymbolKind,
)

# GCC's names for pieces and copies of a function: foo.cold, foo.part.0, foo.constprop.0.isra.0 …
_SUFFIX = re.compile(r"\.(cold|part|constprop|isra|lto_priv|localalias|specialized)(\.\d+)?")
# Sections whose code is not the program's own functions (PLT stubs, linker-made init glue).
_NON_FUNCTION_SECTIONS = frozenset({".plt", ".plt.sec", ".plt.got", ".init", ".fini"})


def split_clone_name(name: str) -> tuple[str, FunctionOrigin]:
    """The origin name and kind of a GCC part or clone: `foo.part.0.cold` → ("foo", COLD)."""
    match = _SUFFIX.search(name)
    if match is None or match.start() == 0:
        return name, FunctionOrigin.SOURCE
    kinds = [m.group(1) for m in _SUFFIX.finditer(name)]
    if "cold" in kinds:
        origin = FunctionOrigin.COLD
    elif "part" in kinds:
        origin = FunctionOrigin.PART
    else:
        origin = FunctionOrigin.CLONE
    return name[: match.start()], origin


def unnamed(address: int) -> str:
    """The name of a function no symbol names."""
    return f"sub_{address:x}"


def _function_sections(image: Image) -> list[Section]:
    """The code sections that hold the program's own functions."""
    return [
        s
        for s in image.sections
        if s.executable and s.alloc and not s.nobits and s.name not in _NON_FUNCTION_SECTIONS
    ]


def code_size(image: Image) -> int:
    """Bytes of the sections `discover_functions` finds functions in: what the functions span, known
    before they are found (to decide where to find them)."""
    return sum(s.size for s in _function_sections(image))


def _section_of(sections: list[Section], address: int) -> Section | None:
    return next((s for s in sections if s.address <= address < s.end), None)


def discover_functions(image: Image) -> tuple[Function, ...]:
    """Every function's bounds and bytes, sorted by address; symbols win, FDEs fill in what they miss."""
    code_sections = _function_sections(image)

    def section_of(address: int) -> Section | None:
        return _section_of(code_sections, address)

    # Symbols: several names may share an address (aliases); a global, source-level name is preferred.
    named: dict[int, list] = {}
    for sym in image.symbols:
        if sym.kind is not SymbolKind.FUNCTION or not sym.defined or sym.address == 0:
            continue
        if section_of(sym.address) is None:
            continue
        named.setdefault(sym.address, []).append(sym)

    bounds: dict[int, int] = {}
    for address, syms in named.items():
        bounds[address] = max(s.size for s in syms)
    for address, size in image.eh_frame:
        if section_of(address) is not None and (address not in bounds or bounds[address] == 0):
            bounds[address] = size
    for address in (image.entry, *image.init_functions):
        if address not in bounds and section_of(address) is not None:
            bounds[address] = 0

    starts = sorted(bounds)
    store = FunctionStore(image.section_bytes.data)
    functions: list[Function] = []
    for i, address in enumerate(starts):
        section = section_of(address)
        assert section is not None
        size = bounds[address]
        limit = starts[i + 1] if i + 1 < len(starts) else section.end
        limit = min(limit, section.end)
        if size == 0 or address + size > limit:
            size = limit - address  # a symbol without size (hand-written asm): up to the next function
        syms = named.get(address, [])
        if syms:
            syms = sorted(
                syms, key=lambda s: (s.local, s.dynamic, "." in s.name, s.name.startswith("_"), s.name)
            )
            name = syms[0].name
            aliases = tuple(sorted({s.name for s in syms[1:]} - {name}))
            local = all(s.local for s in syms)
        else:
            name, aliases, local = unnamed(address), (), True
        parent, origin = split_clone_name(name)
        functions.append(
            store.add(
                name=name,
                address=LinkAddress(address),
                size=size,
                section=section.name,
                named=bool(syms),
                parent=parent if origin is not FunctionOrigin.SOURCE else None,
                origin=origin,
                aliases=aliases,
                local=local,
                start=image.section_bytes.spans[section.name][0] + address - section.address,
            )
        )
    return tuple(functions)


def functions_at(
    image: Image, addresses: set[int] | list[int], known: tuple[Function, ...]
) -> tuple[Function, ...]:
    """Unnamed functions starting at code addresses that calls reach but no symbol or FDE covers
    (crt glue like deregister_tm_clones, assembly without CFI); each ends at the next known start."""
    code_sections = _function_sections(image)
    wanted = sorted(set(addresses))
    # Each list of starts sorted on its own, searched for the next start after an address: one set
    # of every start of a large library (known functions and FDEs) costs ~20 MiB for a few lookups.
    start_lists = (sorted(f.address for f in known), wanted, sorted(image.eh_frame.starts))
    store = FunctionStore(image.section_bytes.data)
    out: list[Function] = []
    for address in wanted:
        section = _section_of(code_sections, address)
        if section is None:
            continue
        after = (bisect.bisect_right(found, address) for found in start_lists)
        following = (found[i] for found, i in zip(start_lists, after, strict=True) if i < len(found))
        limit = min(min(following, default=section.end), section.end)
        out.append(unnamed_function(image, unnamed(address), address, limit - address, section.name, store))
    return tuple(out)


def unnamed_function(
    image: Image, name: str, address: int, size: int, section: str, store: FunctionStore | None = None
) -> Function:
    """A function no symbol names, found by following calls, with its bytes in its section's (a row of
    `store` when given)."""
    header = image.section(section)
    assert header is not None
    start = image.section_bytes.spans[section][0] + address - header.address
    if store is None:
        store = FunctionStore(image.section_bytes.data)
    return store.add(name, LinkAddress(address), size, section, named=False, local=True, start=start)
