"""Decode x86-64 functions into the facts the diff needs: iced-x86 on the hot path, Capstone for listings.

The hot path (`scan`, every function of both builds) reads no instruction text: one pass of iced-x86
keeps plain ints for the few instructions that matter — direct branches and their targets,
rip-relative operands with the exact place of their displacement, padding, indirect jumps — and
only counts the rest. A scan is dropped once its function is canonical. Capstone's text
(`decode_bytes`, `decode_instructions`) serves the listing of `hpkg diff --function` and the cold
checks of a few changed functions.
"""

from __future__ import annotations

from functools import cache
from itertools import islice
from typing import NamedTuple

from iced_x86 import (
    Code,
    Decoder,
    MemorySize,
    MemorySizeExt,
    Mnemonic,
    OpCodeInfo,
    OpCodeOperandKind,
    OpKind,
    Register,
)

from hpkg.builder.model import Function, Instruction

# What one instruction form (iced Code) is, as far as the scan cares.
_OTHER = 0  # no operand that can address memory
_MEMORY = 1  # may address memory (rip-relative or not)
_BRANCH = 2  # direct call/jmp/jcc/jrcxz/loop: the operand is a code address
_PADDING = 3  # alignment fill: every nop form, int3, and endbr64
_JUMP = 4  # indirect near jmp (register or memory): a switch dispatch candidate
_INVALID = 5  # bytes that do not decode

_BRANCH_OPERANDS = frozenset(
    {
        OpCodeOperandKind.BR16_1, OpCodeOperandKind.BR16_2, OpCodeOperandKind.BR32_1,
        OpCodeOperandKind.BR32_4, OpCodeOperandKind.BR64_1, OpCodeOperandKind.BR64_4,
    }
)
# Every operand kind that may be a ModRM/SIB memory operand (moffs never is rip-relative).
_MEMORY_OPERANDS = frozenset(
    value for name, value in vars(OpCodeOperandKind).items() if "MEM" in name and name != "MEM_OFFS"
)
_PADDING_MNEMONICS = frozenset({Mnemonic.NOP, Mnemonic.RESERVEDNOP, Mnemonic.INT3, Mnemonic.ENDBR64})
# `jmp far` (Capstone: ljmp) goes through a far pointer, never a switch table.
_FAR_JUMPS = frozenset({Code.JMP_PTR1616, Code.JMP_PTR1632, Code.JMP_M1616, Code.JMP_M1632, Code.JMP_M1664})
# Immediates the CPU sign-extends: Capstone spells a negative one with a minus sign.
SIGNED_IMMEDIATES = frozenset(
    {OpKind.IMMEDIATE8TO16, OpKind.IMMEDIATE8TO32, OpKind.IMMEDIATE8TO64, OpKind.IMMEDIATE32TO64}
)
UNSIGNED_IMMEDIATES = frozenset(
    {OpKind.IMMEDIATE8, OpKind.IMMEDIATE8_2ND, OpKind.IMMEDIATE16, OpKind.IMMEDIATE32, OpKind.IMMEDIATE64}
)
_REG32 = frozenset(range(Register.EAX, Register.R15D + 1))
GPR64 = frozenset(range(Register.RAX, Register.R15 + 1))


def _count(enum_class: type) -> int:
    """How many values an iced enum class (plain int constants) has."""
    return max(v for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)) + 1


def _class_of(code: int) -> int:
    if code == Code.INVALID:
        return _INVALID
    info = OpCodeInfo(code)
    kinds = info.op_kinds()
    if info.mnemonic in _PADDING_MNEMONICS:
        return _PADDING
    if kinds and kinds[0] in _BRANCH_OPERANDS and info.mnemonic != Mnemonic.XBEGIN:
        return _BRANCH
    if info.mnemonic == Mnemonic.JMP and code not in _FAR_JUMPS:
        return _JUMP
    return _MEMORY if any(k in _MEMORY_OPERANDS for k in kinds) else _OTHER


class _Forms(NamedTuple):
    classes: bytes  # iced Code → _OTHER … _INVALID
    sizes: tuple[int, ...]  # iced MemorySize → bytes accessed (0: none, or an address only, as lea)
    moffs: frozenset[int]  # `mov` forms with a 64-bit absolute address (Capstone: movabs)


@cache
def _forms() -> _Forms:
    """Tables over every instruction form iced-x86 knows (~5,000), built once per process."""
    codes = range(_count(Code))
    return _Forms(
        bytes(_class_of(code) for code in codes),
        tuple(MemorySizeExt.size(m) for m in range(_count(MemorySize))),
        frozenset(c for c in codes if OpCodeOperandKind.MEM_OFFS in OpCodeInfo(c).op_kinds()),
    )


class Scan(NamedTuple):
    """What the hot path needs of one function's instructions, as plain ints.

    Every list is ordered by instruction; `index` is the instruction's number in the function.
    """

    count: int  # instructions decoded
    end: int  # bytes decoded from the start; less than the function's size when its tail does not decode
    padding: list[tuple[int, int]]  # (start, end) offsets of nop forms, int3 and endbr64
    branches: list[tuple[int, int, int, int]]  # (index, offset, size, target link address)
    # (index, offset, size, offset of the disp32 field, link address it names, bytes accessed there)
    rip: list[tuple[int, int, int, int, int, int]]
    jumps: list[int]  # indices of indirect `jmp` (notrack and bnd too): switch dispatch candidates
    # non-PIC: (index, offset, size, form, values that may be link addresses)
    absolutes: list[tuple[int, int, int, int, tuple[int, ...]]]
    starts: list[int] | None  # every instruction's offset, when asked for (relocation mode)


# `Scan.absolutes` form: how a value the instruction holds would be relocated.
ABSOLUTE_IMM64 = 8  # movabs: a 64-bit field
ABSOLUTE_MOV32 = 1  # `mov r32, imm32`: zero-extends (R_X86_64_32)
ABSOLUTE_OTHER = 0  # displacements and imm32 of 64-bit operations (R_X86_64_32S)


def scan(
    fn: Function, absolute_range: tuple[int, int] | None = None, with_starts: bool = False
) -> Scan:
    """Decode a function once and keep the facts references, jump tables and padding need.

    `absolute_range` (non-PIC images): also keep displacements and immediates within this range of
    link addresses. `with_starts`: also keep every instruction's offset.
    """
    classes, sizes, _ = _forms()
    code = fn.code
    address = fn.address
    padding: list[tuple[int, int]] = []
    branches: list[tuple[int, int, int, int]] = []
    rip: list[tuple[int, int, int, int, int, int]] = []
    jumps: list[int] = []
    absolutes: list[tuple[int, int, int, int, tuple[int, ...]]] = []
    starts: list[int] | None = [] if with_starts else None
    decoder = Decoder(64, code, ip=address)
    count = 0
    end = len(code)
    # Locals, not globals, in the loop that runs for every instruction of both builds.
    memory, jump, branch, fill, invalid = _MEMORY, _JUMP, _BRANCH, _PADDING, _INVALID
    absolute = absolute_range is not None
    for count, ins in enumerate(decoder):  # noqa: B007  (count is the number decoded when the loop ends)
        kind = classes[ins.code]
        if starts is not None:
            starts.append(ins.ip - address)
        if kind in (memory, jump):
            if ins.is_ip_rel_memory_operand:
                offset = ins.ip - address
                field = offset + decoder.get_constant_offsets(ins).displacement_offset
                rip.append((count, offset, ins.len, field, ins.ip_rel_memory_address, sizes[ins.memory_size]))
                continue  # a rip-relative operand is the instruction's one reference
            # `notrack jmp` (a 0x3e DS prefix: CET builds dispatch switches with it so that case
            # labels need no endbr64) and `bnd jmp` (MPX's 0xf2) are switch dispatches all the same.
            if kind == jump:
                jumps.append(count)
        elif kind == branch:
            branches.append((count, ins.ip - address, ins.len, ins.near_branch_target))
            continue
        elif kind == fill:
            offset = ins.ip - address
            padding.append((offset, offset + ins.len))
        elif kind == invalid:  # the rest of the function does not decode
            end = ins.ip - address
            if starts is not None:
                starts.pop()
            break
        if absolute:
            _absolutes(ins, count, address, absolute_range, absolutes)
    else:
        count += 1 if code else 0
    return Scan(count, end, padding, branches, rip, jumps, absolutes, starts)


def _absolutes(ins, index: int, address: int, bounds: tuple[int, int], out: list) -> None:
    """Values an instruction holds that may be link addresses (non-PIC): displacements and immediates,
    in operand order, as Capstone spelled them (magnitudes: `[rax - 0x10]` reads as 0x10)."""
    low, high = bounds
    values = []
    form = ABSOLUTE_OTHER
    for i in range(ins.op_count):
        kind = ins.op_kind(i)
        if kind == OpKind.MEMORY:
            value = ins.memory_displacement
            if ins.code in _forms().moffs:
                form = ABSOLUTE_IMM64  # moffs: `movabs eax, dword ptr [0x…]`, a 64-bit address
            elif value >= 1 << 63:
                value = (1 << 64) - value
        elif kind in UNSIGNED_IMMEDIATES or kind in SIGNED_IMMEDIATES:
            value = ins.immediate(i)
            if kind in SIGNED_IMMEDIATES and value >= 1 << 63:
                value = (1 << 64) - value
            elif kind == OpKind.IMMEDIATE64:
                form = ABSOLUTE_IMM64
        else:
            continue
        if low <= value <= high:
            values.append(value)
    if values:
        if (
            form != ABSOLUTE_IMM64
            and ins.mnemonic == Mnemonic.MOV
            and ins.op0_kind == OpKind.REGISTER
            and ins.op0_register in _REG32
        ):
            form = ABSOLUTE_MOV32
        out.append((index, ins.ip - address, ins.len, form, tuple(values)))


def instructions_of(fn: Function, count: int) -> list:
    """The first `count` instructions of a function as iced-x86 Instructions (ip = link address),
    for the rare analysis that looks at operands (switch dispatch)."""
    return list(islice(Decoder(64, fn.code, ip=fn.address), count))


def memory_access(fn: Function, offset: int) -> int:
    """Bytes the instruction at `offset` reads or writes through its memory operand (0 for lea)."""
    # At most one instruction's 15 bytes, cut at the function's end as a decode of its code would be.
    start = fn.start + offset
    decoder = Decoder(64, fn.contents[start : fn.start + min(fn.size, offset + 15)], ip=fn.address + offset)
    return _forms().sizes[decoder.decode().memory_size]


# -- Capstone text: listings and the cold checks of a few changed functions -----------------------------

_MD = None


def _capstone():
    global _MD
    if _MD is None:
        import capstone

        _MD = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        _MD.skipdata = False
    return _MD


def decode_bytes(code: bytes) -> tuple[list[Instruction], int]:
    """Capstone (no details) from offset 0: (offset, size, mnemonic, operands) tuples, and how many
    leading bytes decoded."""
    out = list(_capstone().disasm_lite(code, 0))
    end = out[-1][0] + out[-1][1] if out else 0
    return out, end


def decode_instructions(function: Function) -> list[Instruction]:
    """A function's instructions with Capstone text, decoded at base 0 (addresses read as offsets)."""
    instructions, _ = decode_bytes(function.code)
    return [Instruction._make(i) for i in instructions]


def instruction_text(fn: Function, offset: int) -> str:
    """`mnemonic operands` of the instruction at `offset`, as Capstone spells it (for messages)."""
    for insn in decode_instructions(fn):
        if insn.offset == offset:
            return f"{insn.mnemonic} {insn.operands}"
    return "(bytes Capstone does not decode)"
