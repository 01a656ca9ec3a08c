"""Package code that uses a shared library's data object (stderr, optind, environ): the access rewritten.

An executable reaches a library's object through its own copy: the linker gives the copy an
R_X86_64_COPY relocation in the executable's .bss, and code addresses it rip-relative
(`mov rdi, [rip+stderr]`). When the baseline has no such copy, the one live object in the process is
the library's, wherever the library is mapped, and a rip-relative field of the package (±2 GiB) may
not reach it. The package then holds the object's address in an 8-byte slot the loader fills at
apply time (an import by name and version, resolved in the process's own link map, or bound by the
dynamic linker in a patched file), and the instruction goes through that slot:

  lea r64, [rip+obj]            → mov r64, [rip+slot]                        in place, same 7 bytes
  any other memory operand      → jmp thunk (the rest of the instruction int3), and in the thunk:
    writes a whole GPR R          mov R, [rip+slot]; INSN with [R+off]; jmp back
    anything else                 lea rsp, [rsp-128]; push S; mov S, [rip+slot];
                                  INSN with [S+off]; pop S; lea rsp, [rsp+128]; jmp back

S is a general register the instruction does not use at all. The 128 bytes below rsp are the
psABI's red zone, which a leaf function may use without moving rsp: the thunk steps over it before
it pushes. mov, lea, push, pop and jmp leave the flags alone, so a `cmp` or `add` through the slot
sets them exactly as the original did. A thunk is package code without unwind rules of its own; it
calls nothing, so no exception can start in it.

Refused (the reason `library-data-unreachable`), each because no rewrite is sound:
  - an instruction that uses the stack pointer (push/pop/call through memory, rsp as an operand):
    the general form moves rsp;
  - a branch through the object (call/jmp [rip+obj]): control flow through data the package
    cannot follow;
  - a segment override (fs:/gs:), or an address that does not match the reference (an operand the
    decoder reads differently from the relocation);
  - an instruction that uses every candidate scratch register.
"""

from __future__ import annotations

from dataclasses import dataclass

from iced_x86 import (
    Code,
    Decoder,
    Encoder,
    FlowControl,
    Instruction,
    InstructionInfoFactory,
    MemoryOperand,
    OpAccess,
    OpKind,
    Register,
    RegisterExt,
)

from hpkg.arch.x86_64 import INT3, JMP_REL32_OPCODE, JMP_REL32_SIZE
from hpkg.builder.model import Function

# The psABI red zone: a leaf function may keep data in the 128 bytes below rsp without moving it.
RED_ZONE = 128
# Scratch registers the general form may borrow (saved and restored around the access), in order.
_SCRATCH = (
    Register.RAX, Register.RCX, Register.RDX, Register.RSI, Register.RDI,
    Register.R8, Register.R9, Register.R10, Register.R11, Register.RBX,
)  # fmt: skip
_GPR32 = frozenset(range(Register.EAX, Register.R15D + 1))
_GPR64 = frozenset(range(Register.RAX, Register.R15 + 1))
LEA_RIP_SIZE = 7  # REX.W 8D ModRM disp32: `lea r64, [rip+disp32]`
MOV_R64_OPCODE = 0x8B  # `mov r64, r/m64` (8B /r): the same ModRM and displacement as lea's 8D /r


@dataclass(frozen=True)
class SlotLoad:
    """`lea r64, [rip+obj]` turned into `mov r64, [rip+slot]` where it stands: the opcode byte to write."""

    opcode_offset: int  # offset of the opcode byte in the function
    opcode: int


@dataclass(frozen=True)
class AccessThunk:
    """The instruction at `start` (`length` bytes) of a function, moved into a thunk that reads the slot.

    The function gets `jmp thunk` there; `slot_field` (a rip-relative disp32 to the slot) and
    `return_field` (the rel32 of the jump back to `start + length`) are offsets into `code`.
    """

    start: int
    length: int
    code: bytes
    slot_field: int
    return_field: int


def _instruction_at_field(fn: Function, field: int) -> tuple[Instruction, int] | None:
    """The decoded instruction whose displacement field starts at `field`, and its offset in `fn`."""
    decoder = Decoder(64, fn.code, ip=fn.address)
    for ins in decoder:
        offset = ins.ip - fn.address
        if offset + ins.len > field:
            constants = decoder.get_constant_offsets(ins)
            if constants.has_displacement and offset + constants.displacement_offset == field:
                return ins, offset
            return None
    return None


def _used_registers(ins: Instruction) -> list:
    """Every register the instruction reads or writes, explicitly or implicitly (iced-x86's info)."""
    return list(InstructionInfoFactory().info(ins).used_registers())


def _written_register(ins: Instruction) -> int | None:
    """The 64-bit GPR the instruction writes whole and reads nowhere (a 32-bit write zero-extends)."""
    info = InstructionInfoFactory().info(ins)
    if ins.op_count < 1 or ins.op0_kind != OpKind.REGISTER or info.op0_access != OpAccess.WRITE:
        return None
    register = ins.op0_register
    if register not in _GPR32 and register not in _GPR64:
        return None
    full = RegisterExt.full_register(register)
    uses = [u for u in info.used_registers() if RegisterExt.full_register(u.register) == full]
    return full if all(u.access == OpAccess.WRITE for u in uses) else None


def _scratch(ins: Instruction) -> int | None:
    """A general register the instruction neither reads nor writes, explicitly or implicitly."""
    used = {RegisterExt.full_register(u.register) for u in _used_registers(ins)}
    return next((r for r in _SCRATCH if r not in used), None)


def access_through_slot(fn: Function, field: int, address: int, offset: int) -> SlotLoad | AccessThunk | str:
    """How the instruction whose rip-relative disp32 is at `field` of `fn` reaches a library object
    through a slot: in place, by a thunk, or a sentence saying why it cannot.

    `address` is the NEW address the operand names (the decoding must agree) and `offset` how far
    into the object that is.
    """
    found = _instruction_at_field(fn, field)
    if found is None:
        return "an operand the decoder does not read as a rip-relative displacement"
    ins, start = found
    if ins.memory_base != Register.RIP or ins.memory_displacement != address:
        return f"'{ins}' does not address {address:#x} rip-relative as its reference says"
    if ins.segment_prefix != Register.NONE:
        return f"'{ins}' has a segment override"
    if ins.flow_control != FlowControl.NEXT:
        return f"'{ins}' branches through the object"
    used = {RegisterExt.full_register(u.register) for u in _used_registers(ins)}
    if ins.is_stack_instruction or Register.RSP in used:
        return f"'{ins}' uses the stack pointer, which the rewrite must move"
    if ins.code == Code.LEA_R64_M and offset == 0 and ins.len == LEA_RIP_SIZE:
        # REX.W 8D ModRM disp32: the linker's relaxation (mov from a GOT slot → lea) undone.
        return SlotLoad(start + 1, MOV_R64_OPCODE)
    return _thunk(ins, start, offset)


def _thunk(ins: Instruction, start: int, offset: int) -> AccessThunk | str:
    """The thunk for one instruction: the slot's value in a register, the access through it, the jump back."""
    written = _written_register(ins)
    scratch = written if written is not None else _scratch(ins)
    if scratch is None:
        return f"'{ins}' uses every register the rewrite could borrow"
    access = ins.copy()
    access.memory_base = scratch
    access.memory_index = Register.NONE
    access.memory_displacement = offset & 0xFFFF_FFFF_FFFF_FFFF
    access.memory_displ_size = 0 if offset == 0 else (1 if -128 <= offset < 128 else 4)
    load = Instruction.create_reg_mem(Code.MOV_R64_RM64, scratch, MemoryOperand(Register.RIP, displ=0))
    sequence = [load, access]
    if written is None:
        sequence = [
            _move_stack(-RED_ZONE),
            Instruction.create_reg(Code.PUSH_R64, scratch),
            *sequence,
            Instruction.create_reg(Code.POP_R64, scratch),
            _move_stack(RED_ZONE),
        ]
    body = bytearray()
    slot_field = 0
    encoder = Encoder(64)
    for item in sequence:
        try:
            encoder.encode(item, len(body))
        except ValueError as exc:
            return f"'{ins}' cannot be re-encoded through a register ({exc})"
        if item is load:
            slot_field = len(body) + encoder.get_constant_offsets().displacement_offset
        body += encoder.take_buffer()
    code = bytes(body) + bytes([JMP_REL32_OPCODE]) + bytes(4)
    return AccessThunk(start, ins.len, code, slot_field, len(body) + 1)


def _move_stack(delta: int) -> Instruction:
    """`lea rsp, [rsp+delta]`: moves the stack pointer without touching the flags (add/sub would)."""
    return Instruction.create_reg_mem(Code.LEA_R64_M, Register.RSP, MemoryOperand(Register.RSP, displ=delta))


def site_bytes(thunk: AccessThunk) -> bytes:
    """What replaces the moved instruction in the function: `jmp rel32` (field left zero), then int3."""
    return bytes([JMP_REL32_OPCODE]) + bytes(4) + bytes([INT3]) * (thunk.length - JMP_REL32_SIZE)
