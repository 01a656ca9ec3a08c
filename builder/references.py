"""Find the references in a function's bytes, from static relocations or from decoding, as the same records.

Two sources, one output (zucchini's Disassembler): `relocation_references` reads the fields that
`-Wl,--emit-relocs` kept; `disassembly_references` takes rip-relative operands, direct branch
targets and (non-PIC) absolute addresses from the decoder's scan. Both resolve every field's
link address to a symbolic Target through one TargetResolver, and both recover jump tables.
This module finds references; it never compares two builds.
"""

from __future__ import annotations

import bisect
import struct

from hpkg.arch.x86_64 import relocation_recipe
from hpkg.builder.decode import ABSOLUTE_IMM64, ABSOLUTE_MOV32, Scan, memory_access
from hpkg.builder.jumptables import scan_jump_tables
from hpkg.builder.model import (
    Function,
    Image,
    LinkAddress,
    Reference,
    ReferenceKind,
    Target,
    TargetKind,
)
from hpkg.builder.symbolize import CODE_SUFFIX, TargetResolver

__all__ = [
    "TargetResolver",
    "disassembly_references",
    "relocation_references",
    "relocations_by_function",
]


def _field_offset(code: bytes, offset: int, size: int, value: int, width: int) -> int | None:
    """Where an absolute address of known value sits inside an instruction's bytes (non-PIC).

    x86 puts disp32 right before any immediate (0, 1, 2 or 4 bytes), so the last match that
    leaves room for such an immediate is the field.
    """
    raw = code[offset : offset + size]
    fmt = {4: "<i", 8: "<q"}[width]
    try:
        packed = struct.pack(fmt, value)
    except struct.error:
        packed = struct.pack({4: "<I", 8: "<Q"}[width], value & ((1 << (8 * width)) - 1))
    pos = raw.rfind(packed)
    while pos > 0:
        if size - (pos + width) in (0, 1, 2, 4):
            return offset + pos
        pos = raw.rfind(packed, 0, pos + width - 1)
    return None


# Stands for "an instruction of this function" until canon numbers it (see build_canonical).
_INTERNAL = Target(TargetKind.INTERNAL, "", -1, LinkAddress(0))


def _branch_reference(
    offset: int, size: int, target: int, resolver: TargetResolver, fn: Function
) -> Reference:
    """A direct call/jmp/jcc: its displacement is the instruction's last 4 bytes (1 for short forms)."""
    width = 4 if size >= 5 else 1
    location = offset + size - width
    kind = ReferenceKind.PC32 if width == 4 else ReferenceKind.PC8
    if fn.address <= target < fn.address + fn.size:
        # Most branches stay inside their function; canon gives them their final Target.
        return Reference(location, width, kind, _INTERNAL, -width, target - fn.address)
    resolved = resolver.resolve(target, fn)
    if resolved.kind is TargetKind.RODATA and resolved.name in resolver.code_sections:
        # A branch into code no symbol or FDE covers (crt glue such as deregister_tm_clones):
        # known only as "code in this section"; its bytes are not compared.
        resolved = Target(TargetKind.SECTION, f"{resolved.name}{CODE_SUFFIX}", 0, resolved.address)
    internal = resolved.offset if resolved.kind is TargetKind.INTERNAL else None
    return Reference(location, width, kind, resolved, -width, internal)


def _rip_reference(
    fn: Function, operand: tuple[int, int, int, int, int, int], resolver: TargetResolver
) -> Reference:
    """The reference of a `[rip ± disp]` operand, from its `Scan.rip` entry."""
    _, offset, size, location, address, access = operand
    target = resolver.resolve(address, fn, access)
    kind = ReferenceKind.GOTPC32 if resolver.is_import_slot(address) else ReferenceKind.PC32
    return Reference(location, 4, kind, target, location - (offset + size))


def _containing_instruction(starts: list[int], end: int, offset: int) -> tuple[int, int, int] | None:
    """(index, start, end) of the instruction holding byte `offset`, given every instruction's start."""
    i = bisect.bisect_right(starts, offset) - 1
    if i < 0:
        return None
    stop = starts[i + 1] if i + 1 < len(starts) else end
    return (i, starts[i], stop) if offset < stop else None


def _absolute_references(
    fn: Function,
    scan: Scan,
    resolver: TargetResolver,
    found: dict[int, list[Reference]],
    single: dict[int, Reference],
) -> None:
    """Non-PIC: displacements and immediates that hold link addresses (into or one past a section)."""
    code = fn.code
    for index, offset, size, form, values in scan.absolutes:
        refs = []
        for value in values:
            if resolver.section_at(value) is None and resolver.section_at(value - 1) is None:
                continue  # not an address: addresses one past a section's end count (__TMC_END__)
            width = 8 if form == ABSOLUTE_IMM64 else 4
            location = _field_offset(code, offset, size, value, width)
            if location is None:
                continue
            if width == 8:
                kind = ReferenceKind.ABS64
            elif form == ABSOLUTE_MOV32:
                kind = ReferenceKind.ABS32  # `mov r32, imm32` zero-extends: R_X86_64_32
            else:
                kind = ReferenceKind.ABS32S  # displacements and imm32 in 64-bit operations
            refs.append(Reference(location, width, kind, resolver.resolve(value, fn), 0))
        if refs:
            found[index] = refs
            if len(refs) == 1:
                single[index] = refs[0]


def disassembly_references(fn: Function, scan: Scan, resolver: TargetResolver) -> dict[int, list[Reference]]:
    """References found by decoding: instruction index → its references."""
    found: dict[int, list[Reference]] = {}
    single: dict[int, Reference] = {}
    for index, offset, size, target in scan.branches:
        found[index] = [_branch_reference(offset, size, target, resolver, fn)]
    for operand in scan.rip:
        ref = _rip_reference(fn, operand, resolver)
        found[operand[0]] = [ref]
        single[operand[0]] = ref
    if scan.absolutes:
        _absolute_references(fn, scan, resolver, found, single)
    scan_jump_tables(single, resolver, fn, scan)
    for index, ref in single.items():
        found[index] = [ref]
    return found


def relocation_references(
    fn: Function, scan: Scan, resolver: TargetResolver, relocations
) -> dict[int, list[Reference]]:
    """References from the static relocations inside the function, plus relocation-free branches.

    The field's final value in the linked file gives the exact target (after linker relaxations
    such as GOTPCRELX → lea), so targets are resolved from it, not from the relocation's symbol.
    `scan` must carry every instruction's start.
    """
    code = fn.code
    starts = scan.starts
    assert starts is not None, "relocation mode scans with_starts"
    found: dict[int, list[Reference]] = {}
    single: dict[int, Reference] = {}
    covered: set[int] = set()
    for reloc in relocations:
        recipe = relocation_recipe(reloc.type)
        if recipe is None:
            continue
        kind, width = recipe
        location = reloc.address - fn.address
        if location < 0 or location + width > fn.size:
            continue
        containing = _containing_instruction(starts, scan.end, location)
        if containing is None:
            continue
        index, start, end = containing
        raw = code[location : location + width]
        if kind in (ReferenceKind.PC32, ReferenceKind.GOTPC32):
            address = fn.address + end + struct.unpack("<i", raw)[0]
            addend = location - end
            if resolver.is_import_slot(address):
                kind = ReferenceKind.GOTPC32
            target = resolver.resolve(address, fn, memory_access(fn, start))
        elif kind is ReferenceKind.TPOFF32:
            value = struct.unpack("<i", raw)[0]
            target, addend = Target(TargetKind.SECTION, "tls", value, LinkAddress(value)), 0
        else:
            value = struct.unpack({4: "<I", 8: "<Q"}[width], raw)[0]
            if kind is ReferenceKind.ABS32S and value & 0x80000000:
                value -= 1 << 32
            target, addend = resolver.resolve(value, fn), 0
        ref = Reference(location, width, kind, target, addend)
        found.setdefault(index, []).append(ref)
        covered.add(index)
    for index, refs in found.items():
        if len(refs) == 1:
            single[index] = refs[0]
    for index, offset, size, target in scan.branches:
        if index not in covered:
            found[index] = [_branch_reference(offset, size, target, resolver, fn)]
    for operand in scan.rip:
        # The assembler resolves a rip-relative reference to a local symbol of the same section
        # itself (`lea rax, [rip + static_fn]`), so no static relocation marks the field.
        if operand[0] not in covered:
            ref = _rip_reference(fn, operand, resolver)
            found[operand[0]] = [ref]
            single[operand[0]] = ref
    scan_jump_tables(single, resolver, fn, scan)
    for index, ref in single.items():
        found[index] = [ref]
    return found


def relocations_by_function(image: Image, functions: tuple[Function, ...]) -> dict[int, list]:
    """Static relocations grouped by the function (start address) whose bytes they patch."""
    starts = [f.address for f in functions]
    grouped: dict[int, list] = {}
    for reloc in image.static_relocations:
        i = bisect.bisect_right(starts, reloc.address) - 1
        if i >= 0 and reloc.address < functions[i].address + functions[i].size:
            grouped.setdefault(functions[i].address, []).append(reloc)
    return grouped
