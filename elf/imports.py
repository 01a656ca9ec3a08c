"""Where a linked file reaches each imported symbol: its PLT entry and its GOT slot.

The GOT slots are the dynamic relocations that bind a slot to a symbol (GLOB_DAT, JUMP_SLOT, 64,
TPOFF64); a PLT entry belongs to the symbol whose slot its `jmp *slot(%rip)` reads. Every undefined
function, object or TLS symbol of .dynsym is listed (in .dynsym order, with whatever it has), then
the defined symbols the file reaches through its own GOT (interposable calls in a shared library).
"""

from __future__ import annotations

from dataclasses import dataclass

from hpkg.arch.x86_64 import RELOCATION_TYPES_BY_NUMBER
from hpkg.elf.constants import STT_FUNC, STT_GNU_IFUNC, STT_OBJECT, STT_TLS
from hpkg.elf.dynamic import DynamicSymbol, dynamic_relocations, dynamic_symbols
from hpkg.elf.file import ElfFile
from hpkg.elf.plt import PLT_SECTIONS, plt_entries

_IMPORTED_TYPES = (STT_FUNC, STT_GNU_IFUNC, STT_OBJECT, STT_TLS)


@dataclass(frozen=True)
class ImportSlots:
    """How a file reaches one symbol it imports (link addresses)."""

    name: str
    version: str | None
    plt_address: int | None  # its PLT entry, if calls go through one
    got_address: int | None  # the GOT slot the dynamic linker fills with its address


@dataclass(frozen=True)
class GotBinding:
    """A GOT slot and the symbol the dynamic linker fills it with."""

    address: int
    name: str
    version: str | None


def plt_slots(elf: ElfFile) -> dict[int, int]:
    """PLT entry address → the GOT slot it jumps through, over every PLT section of the file."""
    found: dict[int, int] = {}
    for section in elf.section_headers:
        name = elf.section_name(section)
        if name in PLT_SECTIONS:
            for entry in plt_entries(name, section.addr, elf.section_contents(section), section.entsize):
                found[entry.address] = entry.slot
    return found


def got_bindings(elf: ElfFile, symbols: tuple[DynamicSymbol, ...] | None = None) -> tuple[GotBinding, ...]:
    """The GOT slots bound to a named symbol, in relocation order (`symbols`: the file's .dynsym, if read)."""
    symbols = dynamic_symbols(elf) if symbols is None else symbols
    found = []
    for rela in dynamic_relocations(elf):
        kind = RELOCATION_TYPES_BY_NUMBER.get(rela.kind)
        if kind is None or not kind.binds_got_slot or not 0 < rela.symbol < len(symbols):
            continue
        symbol = symbols[rela.symbol]
        if symbol.name:
            found.append(GotBinding(rela.offset, symbol.name, symbol.version))
    return tuple(found)


def read_imports(elf: ElfFile) -> tuple[ImportSlots, ...]:
    """Every imported symbol with its PLT entry and GOT slot, as `builder.image` lists them."""
    symbols = dynamic_symbols(elf)
    bindings = got_bindings(elf, symbols)
    got_by_name: dict[str, GotBinding] = {}
    for binding in bindings:
        got_by_name.setdefault(binding.name, binding)
    binding_at = {b.address: b for b in bindings}
    plt_by_name: dict[str, int] = {}
    for entry, slot in sorted(plt_slots(elf).items()):
        if slot in binding_at:
            plt_by_name.setdefault(binding_at[slot].name, entry)
    imports: list[ImportSlots] = []
    seen: set[str] = set()
    for symbol in symbols:
        if symbol.defined or not symbol.name or symbol.type not in _IMPORTED_TYPES or symbol.name in seen:
            continue
        seen.add(symbol.name)
        got = got_by_name.get(symbol.name)
        got_address = got.address if got is not None else None
        imports.append(ImportSlots(symbol.name, symbol.version, plt_by_name.get(symbol.name), got_address))
    for name, got in got_by_name.items():
        if name not in seen:
            seen.add(name)
            imports.append(ImportSlots(name, got.version, plt_by_name.get(name), got.address))
    return tuple(imports)
