"""The one PLT reader: every entry of `.plt`, `.plt.sec` and `.plt.got`, and the GOT slot it jumps through.

What GNU ld writes on x86-64 (entry sizes in sh_entsize):

  .plt      16 bytes. PLT0 (`push GOT+8; jmp *GOT+16`) first, then lazy entries
            `jmp *slot(%rip); push n; jmp PLT0`. With IBT (`-z ibtplt`, or every input marked
            IBT) the lazy entries are `endbr64; push n; bnd jmp PLT0` and jump through no slot:
            code calls their `.plt.sec` twin instead.
  .plt.sec  16 bytes: `endbr64; [bnd] jmp *slot(%rip); nop` (8 bytes `bnd jmp *slot; nop` with MPX only).
  .plt.got  8 bytes `jmp *slot(%rip); xchg %ax,%ax` (66 90), or 16 bytes with IBT
            `endbr64; [bnd] jmp *slot(%rip); nop`: entries for functions whose GOT slot is also
            read as data (their address is taken) or bound at load time (`-z now`).

An entry is recognised by its jump `jmp *disp32(%rip)` (FF 25), after an optional endbr64 and bnd
prefix. The entry size is sh_entsize when the section has a usable one, else what the first entry's
pattern shows. Entries that jump through no slot (PLT0, IBT lazy entries) are not returned.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpkg.arch.x86_64 import (
    BND_PREFIX,
    ENDBR64,
    JMP_RIP_INDIRECT,
    JMP_RIP_INDIRECT_SIZE,
    rip_indirect_jump_slot,
)

PLT_SECTIONS = (".plt", ".plt.sec", ".plt.got")
LAZY_PLT_ENTRY_SIZE = 16  # .plt: PLT0 and lazy entries are always 16 bytes on x86-64
SHORT_PLT_ENTRY_SIZE = 8  # `[bnd] jmp *slot(%rip)` padded to 8
IBT_PLT_ENTRY_SIZE = 16  # `endbr64; [bnd] jmp *slot(%rip)` padded to 16


@dataclass(frozen=True)
class PltEntry:
    """One PLT entry that jumps through a GOT slot (link addresses)."""

    address: int  # the entry's first byte, where calls go (its endbr64, when it has one)
    slot: int  # the GOT slot its `jmp *slot(%rip)` reads


def _jump_offset(code: bytes, start: int) -> int:
    """Offset in `code` of the `jmp *disp32(%rip)` of an entry starting at `start`, or -1."""
    position = start + len(ENDBR64) if code[start : start + len(ENDBR64)] == ENDBR64 else start
    if position < len(code) and code[position] == BND_PREFIX:
        position += 1
    return position if code[position : position + len(JMP_RIP_INDIRECT)] == JMP_RIP_INDIRECT else -1


def plt_entry_size(name: str, code: bytes, entsize: int = 0) -> int:
    """The size of one entry of the PLT section `name`: sh_entsize if usable, else by its first entry."""
    if entsize in (SHORT_PLT_ENTRY_SIZE, IBT_PLT_ENTRY_SIZE) and len(code) % entsize == 0:
        return entsize
    if name == ".plt" or code[: len(ENDBR64)] == ENDBR64:
        return LAZY_PLT_ENTRY_SIZE if name == ".plt" else IBT_PLT_ENTRY_SIZE
    return SHORT_PLT_ENTRY_SIZE


def plt_entries(name: str, address: int, code: bytes, entsize: int = 0) -> tuple[PltEntry, ...]:
    """Every entry of one PLT section (its name, link address and bytes) that jumps through a GOT slot."""
    size = plt_entry_size(name, code, entsize)
    entries = []
    for start in range(0, len(code) - size + 1, size):
        jump = _jump_offset(code, start)
        if jump < 0 or jump + JMP_RIP_INDIRECT_SIZE > start + size:
            continue
        slot = rip_indirect_jump_slot(code, jump, address)
        if slot is not None:
            entries.append(PltEntry(address + start, slot))
    return tuple(entries)
