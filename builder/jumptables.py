"""Recover the jump tables of dense switches (PIC and non-PIC) as lists of in-function targets.

Non-PIC: `jmp [table + idx*8]`, entries are absolute addresses. PIC: `lea base,[rip+T]`,
`movsxd r,[base+idx*4]`, `add r,base`, `jmp r`, entries are int32 offsets from the table. The
case count comes from the `cmp idx, N; ja default` guard when there is one. Tested with GCC 12;
Clang emits the same two shapes but is not installed here to test. Only functions whose scan saw
an indirect `jmp` are decoded again, with operands, to look at the instructions before it.
"""

from __future__ import annotations

import struct

from iced_x86 import Instruction, MemorySizeExt, Mnemonic, OpKind, Register

from hpkg.builder.decode import GPR64, SIGNED_IMMEDIATES, UNSIGNED_IMMEDIATES, Scan, instructions_of
from hpkg.builder.model import Function, Reference, ReferenceKind, Target, TargetKind
from hpkg.builder.symbolize import TargetResolver

_JUMP_TABLE_LIMIT = 4096
_UPPER_BOUND_JUMPS = frozenset({Mnemonic.JA, Mnemonic.JBE})  # `cmp idx, N; ja default`: N + 1 cases
_LIMIT_JUMPS = frozenset({Mnemonic.JAE, Mnemonic.JB})  # `cmp idx, N; jae default`: N cases


def _compared_constant(ins: Instruction) -> int | None:
    """N of `cmp reg, N` when N is not negative (a negative N never bounds a switch)."""
    if ins.op_count != 2 or ins.op0_kind != OpKind.REGISTER:
        return None
    kind = ins.op1_kind
    if kind in UNSIGNED_IMMEDIATES:
        return ins.immediate(1)
    if kind in SIGNED_IMMEDIATES:
        value = ins.immediate(1)
        return value if value < 1 << 63 else None
    return None


def _cmp_bound(instructions: list[Instruction], index: int) -> int | None:
    """The case count of a dense switch: GCC guards its table with `cmp reg, N; ja default`."""
    for j in range(index - 1, max(-1, index - 16), -1):
        if instructions[j].mnemonic != Mnemonic.CMP:
            continue
        bound = _compared_constant(instructions[j])
        if bound is not None and j + 1 < len(instructions):
            guard = instructions[j + 1].mnemonic
            if guard in _LIMIT_JUMPS:
                return bound
            if guard in _UPPER_BOUND_JUMPS:
                return bound + 1
    return None


def _jump_table(
    resolver: TargetResolver,
    fn: Function,
    instructions: list[Instruction],
    index: int,
    table: int,
    entry: int,
) -> tuple[int, ...] | None:
    """In-function offsets listed by a jump table at `table` (entry 4: int32 from table, 8: absolute)."""
    bound = _cmp_bound(instructions, index)
    limit = bound if bound is not None and 0 < bound <= _JUMP_TABLE_LIMIT else _JUMP_TABLE_LIMIT
    data = resolver.image.read(table, limit * entry)
    offsets: list[int] = []
    for i in range(0, len(data) - entry + 1, entry):
        if entry == 4:
            target = table + struct.unpack_from("<i", data, i)[0]
        else:
            target = struct.unpack_from("<Q", data, i)[0]
        if not fn.address <= target < fn.address + fn.size:
            break
        offsets.append(target - fn.address)
    return tuple(offsets) if offsets else None


def _indexed_table_load(ins: Instruction) -> int | None:
    """The base register of `movsxd r, dword ptr [base + idx*4]` (no displacement, no segment), else None."""
    if ins.op_count != 2 or ins.op0_kind != OpKind.REGISTER or ins.op1_kind != OpKind.MEMORY:
        return None
    if ins.segment_prefix != Register.NONE or ins.memory_displacement != 0:
        return None
    if ins.memory_base in (Register.NONE, Register.RIP) or ins.memory_index == Register.NONE:
        return None
    if ins.memory_index_scale != 4 or MemorySizeExt.size(ins.memory_size) != 4:
        return None
    return ins.memory_base


def _pic_jump_table_base(
    instructions: list[Instruction], index: int, rip_targets: dict[int, int]
) -> tuple[int, int] | None:
    """The table of a PIC switch and the index of its load: `lea base,[rip+T]` (often hoisted out of
    a loop, far above), `movsxd r,[base+idx*4]`, `add r,base`, `jmp r`."""
    for j in range(index - 1, max(-1, index - 8), -1):
        if instructions[j].mnemonic != Mnemonic.MOVSXD:
            continue
        base = _indexed_table_load(instructions[j])
        if base is None:
            return None
        for k in range(j - 1, -1, -1):
            ins = instructions[k]
            # The last instruction before the load whose first of two or more operands is `base`.
            if ins.op_count >= 2 and ins.op0_kind == OpKind.REGISTER and ins.op0_register == base:
                if ins.mnemonic == Mnemonic.LEA and k in rip_targets:
                    return rip_targets[k], j
                return None
        return None
    return None


def _is_table_jump(ins: Instruction) -> bool:
    """`jmp qword ptr [table + idx*8]`: an indexed memory operand without segment override.

    A DS prefix is allowed: it is CET's `notrack` (DS is a no-op segment in 64-bit mode), while FS
    or GS would make the table thread-local, which no switch is."""
    return (
        ins.op0_kind == OpKind.MEMORY
        and ins.segment_prefix in (Register.NONE, Register.DS)
        and ins.memory_index != Register.NONE
        and ins.memory_index_scale == 8
    )


def _is_register_jump(ins: Instruction) -> bool:
    return ins.op0_kind == OpKind.REGISTER and ins.op0_register in GPR64


def _with_jump_table(
    ref: Reference, resolver: TargetResolver, fn: Function, instructions, index: int, entry: int
) -> Reference:
    entries = _jump_table(resolver, fn, instructions, index, ref.target.address, entry)
    if entries is None:
        return ref
    t = ref.target
    target = Target(TargetKind.JUMP_TABLE, t.name, t.offset, t.address, None, entries)
    return Reference(ref.location, ref.width, ref.kind, target, ref.addend)


def scan_jump_tables(
    refs_by_insn: dict[int, Reference], resolver: TargetResolver, fn: Function, scan: Scan
) -> None:
    """Turn the references that are switch-table bases into JUMP_TABLE targets, in place."""
    if not scan.jumps:
        return
    instructions = instructions_of(fn, scan.count)
    rip_targets = {i: r.target.address for i, r in refs_by_insn.items() if r.kind is ReferenceKind.PC32}
    for index in scan.jumps:
        ins = instructions[index]
        if _is_table_jump(ins):
            ref = refs_by_insn.get(index)
            if ref is not None:
                refs_by_insn[index] = _with_jump_table(ref, resolver, fn, instructions, index, 8)
        elif _is_register_jump(ins):
            found = _pic_jump_table_base(instructions, index, rip_targets)
            if found is None:
                continue
            base, load = found
            # Every reference to the table base is the table (GCC may re-materialise the lea later).
            for j, ref in refs_by_insn.items():
                if ref.target.address == base and ref.target.kind is not TargetKind.JUMP_TABLE:
                    refs_by_insn[j] = _with_jump_table(ref, resolver, fn, instructions, load, 4)


def _scaled_by_4(ins: Instruction) -> bool:
    """A memory operand `[… + idx*4]` with no displacement: how a switch loads an int32 table entry."""
    return (
        ins.op_count == 2
        and ins.op1_kind == OpKind.MEMORY
        and ins.memory_index != Register.NONE
        and ins.memory_index_scale == 4
        and ins.memory_displacement == 0
    )


def switch_dispatches(fn: Function, scan: Scan) -> list[int]:
    """Offsets of indirect jumps that look like a switch dispatch, recovered or not: `jmp [table +
    idx*8]` (non-PIC), or `jmp r` after a `movsxd r, [base + idx*4]` (PIC)."""
    if not scan.jumps:
        return []
    instructions = instructions_of(fn, scan.count)
    found = []
    for index in scan.jumps:
        ins = instructions[index]
        loads = instructions[max(0, index - 8) : index]
        if _is_table_jump(ins) or (
            _is_register_jump(ins) and any(i.mnemonic == Mnemonic.MOVSXD and _scaled_by_4(i) for i in loads)
        ):
            found.append(ins.ip - fn.address)
    return found
