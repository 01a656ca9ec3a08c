"""Unwind rules for package code: the fix's CIEs, FDEs and LSDAs, copied into the package's unwind section.

An exception (C++ `throw`, `-fexceptions` cleanups) is carried up the stack by the unwinder, which
finds each frame's rules in the .eh_frame of the object that contains the code. Package code lives
in memory no object describes, so the package carries its functions' rules (format 1.1 `unwind`
section, formats/SPEC.md) and the loader makes the unwinder find them. A CIE whose augmentation
names a personality routine ('P') marks an image whose code takes part in exception handling.

Section layout: the CIEs used, then one FDE per package function, a 4-byte zero terminator, then
the LSDAs. Fields that depend on placement become relocations: pc_begin → CODE, the LSDA pointer →
UNWIND, the personality pointer and type-table entries → the baseline's own slot (DW.ref.*) holding
the same symbol, else an IMPORT through a loader GOT slot. Call sites and landing pads are relative
to the function start (LPStart omitted), so the copy keeps them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from hpkg.builder.model import Image, Section
from hpkg.elf.ehframe import (
    DW_EH_PE_INDIRECT,
    DW_EH_PE_OMIT,
    DW_EH_PE_PCREL_SDATA4,
    Fde,
    personality_used,
    read_encoded_pointer,
    read_sleb128,
    read_uleb128,
)
from hpkg.formats.model import PackageSection, Relocation, RelocationKind, TargetSpace

_SLOT_RELOCATIONS = ("X86_64_64", "X86_64_GLOB_DAT")


class UnwindError(ValueError):
    """An entry the emitter cannot carry over faithfully (an encoding or construct it does not relocate)."""


@dataclass(frozen=True)
class UnwindSection:
    """The unwind section's bytes (fields zeroed), its relocations, and which functions it covers."""

    content: bytes
    relocations: tuple[Relocation, ...]
    covered: frozenset[int]  # NEW addresses of the functions whose FDE was emitted
    problems: dict[int, str]  # NEW address → why its FDE could not be carried


def exception_frames(image: Image) -> set[int]:
    """Start addresses of the functions whose .eh_frame entry names a personality routine (none
    without parsing the FDEs when no CIE names one: C code, most of the time)."""
    eh = image.section(".eh_frame")
    if eh is None or not personality_used(image.section_bytes.get(".eh_frame", b""), eh.address):
        return set()
    return {f.start for f in image.frames if f.cie.personality_encoding != DW_EH_PE_OMIT}


# -- emission ---------------------------------------------------------------------------------------
ImportIndex = Callable[[str, "str | None"], int]


@dataclass(frozen=True)
class _Pointer:
    """Where a pc-relative pointer field of the copy must point: a relocation without its field offset."""

    kind: RelocationKind
    space: TargetSpace
    target: int


class _Emitter:
    """Copies records into the unwind section and turns their pointer fields into relocations."""

    def __init__(self, new: Image, old: Image, import_index: ImportIndex) -> None:
        self.new, self.old, self.import_index = new, old, import_index
        self.relocations: list[Relocation] = []

    def _version(self, name: str) -> str | None:
        for imp in self.new.imports:
            if imp.name == name:
                return imp.version
        for sym in self.new.symbols:
            if sym.name.split("@")[0] == name and sym.dynamic and sym.version:
                return sym.version
        return None

    def slot_pointer(self, slot: int) -> _Pointer:
        """A pointer to a slot of NEW (DW.ref.*, GOT) holding a symbol: the baseline's slot holding the
        same symbol, else a loader GOT slot for the import."""
        symbol = next(
            (
                r.symbol
                for r in self.new.dynamic_relocations
                if r.address == slot and r.type in _SLOT_RELOCATIONS and r.addend == 0
            ),
            None,
        )
        if not symbol:
            raise UnwindError(f"the slot at {slot:#x} holds no symbol the package can name")
        old_slot = next(
            (
                r.address
                for r in self.old.dynamic_relocations
                if r.symbol == symbol and r.type in _SLOT_RELOCATIONS and r.addend == 0
            ),
            None,
        )
        if old_slot is not None:
            return _Pointer(RelocationKind.R_X86_64_PC32, TargetSpace.BASELINE, old_slot)
        index = self.import_index(symbol, self._version(symbol))
        return _Pointer(RelocationKind.R_X86_64_GOTPCREL, TargetSpace.IMPORT, index)

    def relocate(self, out: bytearray, at: int, pointer: _Pointer) -> None:
        out[at : at + 4] = bytes(4)
        self.relocations.append(
            Relocation(PackageSection.UNWIND, at, pointer.kind, pointer.space, pointer.target, 0)
        )

    def encoded_pointer(self, encoding: int, value: int) -> _Pointer:
        if encoding & ~DW_EH_PE_INDIRECT != DW_EH_PE_PCREL_SDATA4:
            raise UnwindError(f"pointer encoding {encoding:#x} is not pc-relative sdata4")
        if encoding & DW_EH_PE_INDIRECT:
            return self.slot_pointer(value)
        raise UnwindError(f"a direct pointer to {value:#x} (only indirect ones through a slot are relocated)")


def _lsda_extent(data: bytes, pos: int) -> tuple[int, int, int, int]:
    """(end, type-table base or 0, type-table encoding, entry count) of the LSDA at section offset `pos`."""
    if data[pos] != DW_EH_PE_OMIT:
        raise UnwindError("the LSDA names a landing-pad base (LPStart)")
    ttype_encoding = data[pos + 1]
    p = pos + 2
    ttype_base = 0
    if ttype_encoding != DW_EH_PE_OMIT:
        offset, p = read_uleb128(data, p)
        ttype_base = p + offset
    call_site_encoding = data[p]
    length, p = read_uleb128(data, p + 1)
    call_sites_end = p + length
    actions: set[int] = set()
    while p < call_sites_end:
        for _ in range(3):  # start, length, landing pad
            p = read_encoded_pointer(data, p, call_site_encoding, 0)[1]
        action, p = read_uleb128(data, p)
        if action:
            actions.add(call_sites_end + action - 1)
    end, entries, seen = call_sites_end, 0, set()
    while actions:
        record = actions.pop()
        if record in seen:
            continue
        seen.add(record)
        type_filter, q = read_sleb128(data, record)
        next_offset, after = read_sleb128(data, q)
        end = max(end, after)
        if type_filter < 0:
            raise UnwindError("the LSDA has an exception specification")
        entries = max(entries, type_filter)
        if next_offset:
            actions.add(q + next_offset)
    if ttype_base:
        end = max(end, ttype_base)
    elif entries:
        raise UnwindError("the LSDA has catch clauses but no type table")
    return end, ttype_base, ttype_encoding, entries


def emit_unwind(
    new: Image,
    old: Image,
    functions: tuple[tuple[int, int], ...],
    code_offset: Callable[[int], int | None],
    import_index: ImportIndex,
) -> UnwindSection:
    """The unwind section for package functions given as (NEW address, size), from NEW's .eh_frame."""
    section = new.section(".eh_frame")
    data = new.section_bytes.get(".eh_frame", b"")
    table = new.section(".gcc_except_table")
    table_bytes = new.section_bytes.get(".gcc_except_table", b"")
    if section is None or not data:
        return UnwindSection(b"", (), frozenset(), {})
    by_start = {f.start: f for f in new.frames}
    emitter = _Emitter(new, old, import_index)
    problems: dict[int, str] = {}
    chosen: list[tuple[int, Fde]] = []
    for address, size in functions:
        fde = by_start.get(address)
        if fde is None:
            continue
        if fde.length > size or code_offset(address) is None:
            problems[address] = f"its FDE covers {fde.length} bytes, the package copy {size}"
        elif fde.cie.fde_encoding != DW_EH_PE_PCREL_SDATA4:
            problems[address] = f"FDE pointer encoding {fde.cie.fde_encoding:#x} is not pc-relative sdata4"
        else:
            try:
                if fde.lsda:
                    _check_lsda(emitter, fde, table, table_bytes)
            except (UnwindError, IndexError, struct.error) as exc:
                problems[address] = f"its LSDA: {exc}"
                continue
            chosen.append((address, fde))

    out = bytearray()
    cie_at: dict[int, int] = {}
    for cie in dict.fromkeys(f.cie for _, f in chosen):
        cie_at[cie.offset] = len(out)
        out += data[cie.offset : cie.offset + cie.size]
        if cie.personality_field is not None:
            raw = struct.unpack_from("<i", data, cie.personality_field)[0]
            encoding = cie.personality_encoding & ~DW_EH_PE_INDIRECT
            slot = read_encoded_pointer(data, cie.personality_field, encoding, section.address)[0]
            try:
                pointer = emitter.encoded_pointer(cie.personality_encoding, slot if raw else 0)
            except UnwindError as exc:
                for address, fde in chosen:
                    if fde.cie is cie:
                        problems[address] = f"personality routine: {exc}"
                continue
            emitter.relocate(out, cie_at[cie.offset] + cie.personality_field - cie.offset, pointer)
    lsda_fields: list[tuple[int, int]] = []  # (unwind offset of an LSDA pointer, LSDA link address)
    covered: set[int] = set()
    for address, fde in chosen:
        if address in problems:
            continue
        at = len(out)
        out += data[fde.offset : fde.offset + fde.size]
        struct.pack_into("<I", out, at + 4, at + 4 - cie_at[fde.cie.offset])  # back to the copied CIE
        code = code_offset(address)
        assert code is not None
        emitter.relocate(out, at + 8, _Pointer(RelocationKind.R_X86_64_PC32, TargetSpace.CODE, code))
        if fde.lsda and fde.lsda_field is not None:
            lsda_fields.append((at + fde.lsda_field - fde.offset, fde.lsda))
        covered.add(address)
    out += bytes(4)  # the terminator a linear .eh_frame walk stops at

    lsda_at: dict[int, int] = {}
    for field, lsda in lsda_fields:
        if lsda not in lsda_at:
            assert table is not None  # _check_lsda proved it
            lsda_at[lsda] = _copy_lsda(emitter, out, table_bytes, lsda - table.address, table.address)
        pointer = _Pointer(RelocationKind.R_X86_64_PC32, TargetSpace.UNWIND, lsda_at[lsda])
        emitter.relocate(out, field, pointer)
    relocations = tuple(sorted(emitter.relocations, key=lambda r: r.offset))
    return UnwindSection(bytes(out), relocations, frozenset(covered), problems)


def _check_lsda(emitter: _Emitter, fde: Fde, table: Section | None, table_bytes: bytes) -> None:
    """Raise UnwindError unless the FDE's LSDA can be copied and every type-table entry relocated."""
    if fde.cie.lsda_encoding != DW_EH_PE_PCREL_SDATA4 or fde.lsda_field is None:
        raise UnwindError(f"LSDA pointer encoding {fde.cie.lsda_encoding:#x} is not pc-relative sdata4")
    if table is None or not table.address <= fde.lsda < table.end:
        raise UnwindError(f"LSDA at {fde.lsda:#x} is outside .gcc_except_table")
    pos = fde.lsda - table.address
    _, ttype_base, ttype_encoding, entries = _lsda_extent(table_bytes, pos)
    if entries and ttype_encoding & ~DW_EH_PE_INDIRECT != DW_EH_PE_PCREL_SDATA4:
        raise UnwindError(f"type-table encoding {ttype_encoding:#x} is not pc-relative sdata4")
    for k in range(1, entries + 1):
        entry = ttype_base - 4 * k
        if struct.unpack_from("<i", table_bytes, entry)[0]:
            value = read_encoded_pointer(table_bytes, entry, DW_EH_PE_PCREL_SDATA4, table.address)[0]
            emitter.encoded_pointer(ttype_encoding, value)


def _copy_lsda(emitter: _Emitter, out: bytearray, table: bytes, pos: int, base: int) -> int:
    """Append the LSDA at `pos` of .gcc_except_table to `out` (4-aligned), relocating its type table."""
    end, ttype_base, ttype_encoding, entries = _lsda_extent(table, pos)
    while len(out) % 4:
        out.append(0)
    # Keep the LSDA's offset modulo 4: the type table's alignment padding was computed for it.
    out += bytes((pos - len(out)) % 4)
    at = len(out)
    out += table[pos:end]
    for k in range(1, entries + 1):
        entry = ttype_base - 4 * k
        raw = struct.unpack_from("<i", table, entry)[0]
        if raw == 0:
            continue  # catch (...): a null entry stays null
        value = read_encoded_pointer(table, entry, ttype_encoding & ~DW_EH_PE_INDIRECT, base)[0]
        emitter.relocate(out, at + entry - pos, emitter.encoded_pointer(ttype_encoding, value))
    return at
