"""Find the references in a function's bytes, from static relocations or from Capstone, as the same records.

Two sources, one output (zucchini's Disassembler): `relocation_references` reads the fields that
`-Wl,--emit-relocs` kept; `disassembly_references` finds rip-relative operands, direct branch
targets and (non-PIC) absolute addresses in the decoded instructions. Both resolve every field's
link address to a symbolic Target through one TargetResolver, and both recover jump tables.
This module finds references; it never compares two builds.
"""

from __future__ import annotations

import bisect
import re
import struct

from hpkg.arch.x86_64 import BRANCH_MNEMONICS, relocation_recipe
from hpkg.builder.decode import access_size, branch_offset
from hpkg.builder.jumptables import scan_jump_tables
from hpkg.builder.model import (
    Function,
    Image,
    Instruction,
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

_RIP = re.compile(r"\[rip ([+-]) (0x[0-9a-f]+|\d+)\]")
_HEX = re.compile(r"(?<![\w])(0x[0-9a-f]+)")
_REG32_DESTINATION = re.compile(r"^(e[a-z]{2}|r\d+d), ")


def _field_offset(code: bytes, insn: Instruction, value: int, width: int) -> int | None:
    """Where a displacement or immediate of known value sits inside an instruction's bytes.

    x86 puts disp32 right before any immediate (0, 1, 2 or 4 bytes), so the last match that
    leaves room for such an immediate is the field.
    """
    raw = code[insn.offset : insn.offset + insn.size]
    fmt = {4: "<i", 8: "<q"}[width]
    try:
        packed = struct.pack(fmt, value)
    except struct.error:
        packed = struct.pack({4: "<I", 8: "<Q"}[width], value & ((1 << (8 * width)) - 1))
    pos = raw.rfind(packed)
    while pos > 0:
        if insn.size - (pos + width) in (0, 1, 2, 4):
            return insn.offset + pos
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


def _rip_reference(fn: Function, insn: Instruction, resolver: TargetResolver) -> Reference | None:
    """The reference of a `[rip ± disp]` operand, found from the decoded displacement."""
    m = _RIP.search(insn.operands)
    if m is None:
        return None
    disp = int(m.group(2), 0) * (-1 if m.group(1) == "-" else 1)
    location = _field_offset(fn.code, insn, disp, 4)
    if location is None:
        return None
    address = fn.address + insn.offset + insn.size + disp
    target = resolver.resolve(address, fn, 0 if insn.mnemonic == "lea" else access_size(insn.operands))
    kind = ReferenceKind.GOTPC32 if resolver.is_import_slot(address) else ReferenceKind.PC32
    return Reference(location, 4, kind, target, location - (insn.offset + insn.size))


def _containing_instruction(instructions: list[Instruction], starts: list[int], offset: int) -> int | None:
    i = bisect.bisect_right(starts, offset) - 1
    if i >= 0 and offset < instructions[i][0] + instructions[i][1]:
        return i
    return None


def disassembly_references(
    fn: Function, instructions: list[Instruction], resolver: TargetResolver
) -> dict[int, list[Reference]]:
    """References found by decoding: instruction index → its references."""
    code = fn.code
    found: dict[int, list[Reference]] = {}
    single: dict[int, Reference] = {}
    non_pic = resolver.non_pic
    base = fn.address
    for index, (offset, size, mnemonic, operands) in enumerate(instructions):
        # The cheap tests first: most instructions neither branch nor touch rip-relative memory.
        if mnemonic in BRANCH_MNEMONICS and operands[:2] == "0x":
            found[index] = [_branch_reference(offset, size, base + branch_offset(operands), resolver, fn)]
            continue
        if "rip" in operands:
            ref = _rip_reference(fn, Instruction._make(instructions[index]), resolver)
            if ref is not None:
                found[index] = [ref]
                single[index] = ref
            continue
        if non_pic and "0x" in operands:
            insn = Instruction._make(instructions[index])
            refs = []
            for hexval in _HEX.findall(operands):
                value = int(hexval, 16)
                if not resolver.low <= value <= resolver.high:
                    continue
                if resolver.section_at(value) is None and resolver.section_at(value - 1) is None:
                    continue  # not an address: addresses one past a section's end count (__TMC_END__)
                width = 8 if insn.mnemonic == "movabs" else 4
                location = _field_offset(code, insn, value, width)
                if location is None:
                    continue
                if width == 8:
                    kind = ReferenceKind.ABS64
                elif insn.mnemonic == "mov" and _REG32_DESTINATION.match(insn.operands):
                    kind = ReferenceKind.ABS32  # `mov r32, imm32` zero-extends: R_X86_64_32
                else:
                    kind = ReferenceKind.ABS32S  # displacements and imm32 in 64-bit operations
                refs.append(Reference(location, width, kind, resolver.resolve(value, fn), 0))
            if refs:
                found[index] = refs
                if len(refs) == 1:
                    single[index] = refs[0]
    scan_jump_tables(single, resolver, fn, instructions)
    for index, ref in single.items():
        found[index] = [ref]
    return found


def relocation_references(
    fn: Function, instructions: list[Instruction], resolver: TargetResolver, relocations
) -> dict[int, list[Reference]]:
    """References from the static relocations inside the function, plus relocation-free branches.

    The field's final value in the linked file gives the exact target (after linker relaxations
    such as GOTPCRELX → lea), so targets are resolved from it, not from the relocation's symbol.
    """
    code = fn.code
    starts = [insn[0] for insn in instructions]
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
        index = _containing_instruction(instructions, starts, location)
        if index is None:
            continue
        insn = Instruction._make(instructions[index])
        raw = code[location : location + width]
        if kind in (ReferenceKind.PC32, ReferenceKind.GOTPC32):
            end = insn.offset + insn.size
            address = fn.address + end + struct.unpack("<i", raw)[0]
            addend = location - end
            if resolver.is_import_slot(address):
                kind = ReferenceKind.GOTPC32
            size = 0 if insn.mnemonic == "lea" else access_size(insn.operands)
            target = resolver.resolve(address, fn, size)
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
    for index, (offset, size, mnemonic, operands) in enumerate(instructions):
        if index in covered:
            continue
        if mnemonic in BRANCH_MNEMONICS and operands.startswith("0x"):
            target = fn.address + branch_offset(operands)
            found[index] = [_branch_reference(offset, size, target, resolver, fn)]
        elif "rip" in operands:
            # The assembler resolves a rip-relative reference to a local symbol of the same section
            # itself (`lea rax, [rip + static_fn]`), so no static relocation marks the field.
            ref = _rip_reference(fn, Instruction._make(instructions[index]), resolver)
            if ref is not None:
                found[index] = [ref]
                single[index] = ref
    scan_jump_tables(single, resolver, fn, instructions)
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
