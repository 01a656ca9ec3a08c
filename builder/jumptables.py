"""Recover the jump tables of dense switches (PIC and non-PIC) as lists of in-function targets.

Non-PIC: `jmp [table + idx*8]`, entries are absolute addresses. PIC: `lea base,[rip+T]`,
`movsxd r,[base+idx*4]`, `add r,base`, `jmp r`, entries are int32 offsets from the table. The
case count comes from the `cmp idx, N; ja default` guard when there is one. Tested with GCC 12;
Clang emits the same two shapes but is not installed here to test.
"""

from __future__ import annotations

import re
import struct

from hpkg.builder.model import Function, Instruction, Reference, ReferenceKind, Target, TargetKind
from hpkg.builder.symbolize import TargetResolver

_CMP_IMM = re.compile(r"^(\w+), (0x[0-9a-f]+|\d+)$")
_JUMP_TABLE_LIMIT = 4096

def _cmp_bound(instructions: list[Instruction], index: int) -> int | None:
    """The case count of a dense switch: GCC guards its table with `cmp reg, N; ja default`."""
    for j in range(index - 1, max(-1, index - 16), -1):
        _, _, mnemonic, operands = instructions[j]
        if mnemonic == "cmp":
            m = _CMP_IMM.match(operands)
            if m and j + 1 < len(instructions) and instructions[j + 1][2] in ("ja", "jbe", "jae", "jb"):
                bound = int(m.group(2), 0)
                if instructions[j + 1][2] in ("jae", "jb"):
                    return bound
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


_TABLE_LOAD = re.compile(r"^\w+, dword ptr \[(\w+) \+ \w+\*4\]$")


def _pic_jump_table_base(
    instructions: list[Instruction], index: int, rip_targets: dict[int, int]
) -> tuple[int, int] | None:
    """The table of a PIC switch and the index of its load: `lea base,[rip+T]` (often hoisted out of
    a loop, far above), `movsxd r,[base+idx*4]`, `add r,base`, `jmp r`."""
    for j in range(index - 1, max(-1, index - 8), -1):
        _, _, mnemonic, operands = instructions[j]
        if mnemonic == "movsxd":
            m = _TABLE_LOAD.match(operands)
            if m is None:
                return None
            base = m.group(1) + ", "
            for k in range(j - 1, -1, -1):
                _, _, mnemonic_k, operands_k = instructions[k]
                if operands_k.startswith(base):
                    if mnemonic_k == "lea" and k in rip_targets:
                        return rip_targets[k], j
                    return None
            return None
    return None


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
    refs_by_insn: dict[int, Reference],
    resolver: TargetResolver,
    fn: Function,
    instructions: list[Instruction],
) -> None:
    """Turn the references that are switch-table bases into JUMP_TABLE targets, in place."""
    rip_targets = {i: r.target.address for i, r in refs_by_insn.items() if r.kind is ReferenceKind.PC32}
    for index, (_, _, mnemonic, operands) in enumerate(instructions):
        if mnemonic != "jmp" or operands.startswith("0x"):
            continue
        if operands.startswith("qword ptr [") and "*8" in operands and index in refs_by_insn:
            refs_by_insn[index] = _with_jump_table(refs_by_insn[index], resolver, fn, instructions, index, 8)
        elif re.fullmatch(r"r\w+", operands):
            found = _pic_jump_table_base(instructions, index, rip_targets)
            if found is None:
                continue
            base, load = found
            # Every reference to the table base is the table (GCC may re-materialise the lea later).
            for j, ref in refs_by_insn.items():
                if ref.target.address == base and ref.target.kind is not TargetKind.JUMP_TABLE:
                    refs_by_insn[j] = _with_jump_table(ref, resolver, fn, instructions, load, 4)
