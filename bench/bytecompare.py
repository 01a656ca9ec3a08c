"""What a raw byte compare of two builds reports: the baseline the diff engine is measured against.

Two views, both deliberately naive:
- by symbol: every named function (`.symtab` when present, else `.dynsym`) whose bytes differ;
- by FDE bounds: every function range (stripped binaries included) whose exact bytes occur
  nowhere among the other build's function ranges.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import lief

from bench.ehframe import FdeRange, fde_ranges


@dataclass(frozen=True)
class ElfCode:
    """The parts of one ELF file a byte compare reads: raw bytes, load map, functions."""

    path: Path
    raw: bytes
    loads: tuple[tuple[int, int, int], ...]  # (link address, file offset, file size) per PT_LOAD
    symbols: dict[str, FdeRange]  # named functions
    symbol_source: str  # ".symtab" or ".dynsym"
    fdes: tuple[FdeRange, ...]
    fde_error: str | None

    def code(self, start: int, size: int) -> bytes | None:
        """The file bytes of [start, start+size) at link addresses, or None if not file-backed."""
        for address, offset, file_size in self.loads:
            if address <= start and start + size <= address + file_size:
                begin = offset + start - address
                return self.raw[begin : begin + size]
        return None


@dataclass(frozen=True)
class ByteCompare:
    """Counts a byte compare reports for one pair."""

    symbol_source: str
    symbols_differ: int
    symbols_same: int
    symbols_added: int
    symbols_removed: int
    differing_names: frozenset[str]
    added_names: frozenset[str]
    function_names: frozenset[str]  # every named function of either build
    fde_old: int
    fde_new: int
    fde_new_without_twin: int  # new ranges whose bytes appear in no old range
    fde_old_without_twin: int
    fde_error: str | None


def load_code(path: Path) -> ElfCode:
    """Read the function symbols, FDE ranges and load map of one ELF file."""
    binary = lief.ELF.parse(str(path))
    if binary is None:
        raise ValueError(f"{path}: not an ELF file LIEF can read")
    raw = path.read_bytes()
    loads = tuple(
        (seg.virtual_address, seg.file_offset, seg.physical_size)
        for seg in binary.segments
        if seg.type == lief.ELF.Segment.TYPE.LOAD
    )
    source, chosen = ".symtab", [s for s in binary.symtab_symbols if _is_function(s)]
    if not chosen:
        source, chosen = ".dynsym", [s for s in binary.dynamic_symbols if _is_function(s)]
    symbols = {s.name: FdeRange(s.value, s.size) for s in chosen}
    fdes: tuple[FdeRange, ...] = ()
    fde_error = None
    section = binary.get_section(".eh_frame")
    if section is None:
        fde_error = "no .eh_frame section"
    else:
        fdes = tuple(fde_ranges(bytes(section.content), section.virtual_address))
        if not fdes:
            fde_error = ".eh_frame holds no FDE the builder's parser can read"
    return ElfCode(path, raw, loads, symbols, source, fdes, fde_error)


def _is_function(symbol: lief.ELF.Symbol) -> bool:
    return (
        symbol.type in (lief.ELF.Symbol.TYPE.FUNC, lief.ELF.Symbol.TYPE.GNU_IFUNC)
        and symbol.size > 0
        and symbol.value != 0
        and bool(symbol.name)
    )


def compare_bytes(old: ElfCode, new: ElfCode) -> ByteCompare:
    """Byte-compare two builds by symbol and by FDE bounds."""
    common = old.symbols.keys() & new.symbols.keys()
    differing = frozenset(
        name
        for name in common
        if old.code(old.symbols[name].start, old.symbols[name].size)
        != new.code(new.symbols[name].start, new.symbols[name].size)
    )
    old_bodies = Counter(old.code(r.start, r.size) for r in old.fdes)
    new_bodies = Counter(new.code(r.start, r.size) for r in new.fdes)
    return ByteCompare(
        symbol_source=new.symbol_source,
        symbols_differ=len(differing),
        symbols_same=len(common) - len(differing),
        symbols_added=len(new.symbols.keys() - old.symbols.keys()),
        symbols_removed=len(old.symbols.keys() - new.symbols.keys()),
        differing_names=differing,
        added_names=frozenset(new.symbols.keys() - old.symbols.keys()),
        function_names=frozenset(old.symbols.keys() | new.symbols.keys()),
        fde_old=len(old.fdes),
        fde_new=len(new.fdes),
        fde_new_without_twin=sum(n for body, n in new_bodies.items() if body not in old_bodies),
        fde_old_without_twin=sum(n for body, n in old_bodies.items() if body not in new_bodies),
        fde_error=old.fde_error or new.fde_error,
    )
