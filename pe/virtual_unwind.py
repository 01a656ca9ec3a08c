"""Walk a Windows x64 thread's stack frame by frame, as Windows' RtlVirtualUnwind does: pure, values in
and values out (registers, a code lookup, a stack reader), so that a loader can prove where every frame
of a stopped thread returns to without running anything in it.

One frame is unwound by the function holding its pc:

- no RUNTIME_FUNCTION holds it: a leaf, which never touches rsp, so the return address is at [rsp];
- the pc sits in an epilog (`add rsp, n` or `lea rsp, [fp + n]`, then pops, then `ret` or a jump out
  of the function, the only shapes the x64 ABI allows there): the rest of the epilog is simulated;
- otherwise the UNWIND_INFO codes are undone in order, each only when the prolog has run past it
  (its prolog offset ≤ the pc's offset in the entry; every code of a chained primary applies), with
  SAVE_* slots read from the frame base (the frame register minus its offset once set, else rsp);
  then the return address is popped, unless a PUSH_MACHFRAME gave rip and rsp from a machine frame.

The walk ends at the thread's first frame (its return address 0, from just below its stack's base); it
stops short — the thread's frames cannot be proven — at a pc in no Windows code, a word the stack reader does
not have, a frame that does not move up the stack, or MAX_FRAMES.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hpkg.errors import ImageError
from hpkg.pe.constants import (
    UWOP_ALLOC_LARGE,
    UWOP_ALLOC_SMALL,
    UWOP_PUSH_MACHFRAME,
    UWOP_PUSH_NONVOL,
    UWOP_SAVE_NONVOL,
    UWOP_SAVE_NONVOL_FAR,
    UWOP_SET_FPREG,
)
from hpkg.pe.unwind_info import UnwindInfo

# Integer registers by their x64 unwind number (UNWIND_CODE operands, FrameRegister).
REGISTER_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                  "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip
RSP = 4
MAX_FRAMES = 256  # a deeper chain is a loop or a stack hpkg will not walk
# The first frame of a thread returns to 0 from just below its StackBase (Wine 8 starts a thread at
# RtlUserThreadStart with rsp 0x28 below it: its caller's rsp is StackBase - 0x20, measured).
FIRST_FRAME_SLACK = 0x100
EPILOG_BYTES = 32  # enough for `add rsp, imm32`, eight two-byte pops and a `jmp [rip + x]`
# A machine frame: rip, cs, eflags, rsp, ss (an error code before them when the operand is 1).
_MACHINE_FRAME_RSP = 24


@dataclass(frozen=True, slots=True)
class Context:
    """A frame's registers: its pc and the 16 integer registers by unwind number, None where unknown
    (a volatile register after the first frame, or one the starting frame did not save)."""

    rip: int
    registers: tuple[int | None, ...]

    @property
    def rsp(self) -> int:
        rsp = self.registers[RSP]
        assert rsp is not None  # every Context is made with a known rsp
        return rsp

    @staticmethod
    def of(rip: int, **registers: int) -> Context:
        """A context from named registers (the others unknown)."""
        values = tuple(registers.get(name) for name in REGISTER_NAMES)
        if values[RSP] is None:
            raise ValueError("a context needs rsp")
        return Context(rip, values)


@dataclass(frozen=True, slots=True)
class FunctionUnwind:
    """The unwind data of the RUNTIME_FUNCTION holding a pc, at runtime addresses: its [begin, end) and
    its UNWIND_INFO chain as (begin of the entry, info) pairs, the entry's own first, its primary last."""

    begin: int
    end: int
    chain: tuple[tuple[int, UnwindInfo], ...]


@dataclass(frozen=True, slots=True)
class CodeAt:
    """What a code lookup knows of one pc: its function's unwind data (None: a leaf function) and the
    code bytes from the pc on (the epilog check reads up to EPILOG_BYTES)."""

    function: FunctionUnwind | None
    code: bytes


class CodeLookup(Protocol):
    """pc → CodeAt when the pc is Windows code hpkg can unwind (a PE module or package code), else None.
    `caller` says the pc is a return address: its function is the one holding pc - 1 (the call)."""

    def __call__(self, pc: int, caller: bool) -> CodeAt | None: ...


# The 8-byte word at an address of the stack as read, or None when it lies outside what was read.
WordReader = Callable[[int], "int | None"]


@dataclass(frozen=True, slots=True)
class Walk:
    """Every frame's pc, innermost first, and why the walk stopped short of the thread's first frame
    (None: it reached it, so `pcs` is every frame the thread will return through)."""

    pcs: tuple[int, ...]
    problem: str | None


class _Unprovable(Exception):
    """A frame this walker cannot unwind with certainty (the message says why)."""


@dataclass(frozen=True, slots=True)
class FrameRecipe:
    """How one pc's frame unwinds when that depends on rsp alone (no frame register, no machine frame):
    the registers it loads and the return address, as offsets from rsp, and the caller's rsp offset."""

    loads: tuple[tuple[int, int], ...]
    return_at: int
    caller_rsp: int

    def apply(self, context: Context, read_word: WordReader) -> Context:
        rsp = context.rsp
        registers = list(context.registers)
        for register, offset in self.loads:
            registers[register] = _word(read_word, rsp + offset)
        registers[RSP] = rsp + self.caller_rsp
        return Context(_word(read_word, rsp + self.return_at), _volatile_unknown(registers))


_SYMBOLIC_RSP = 1 << 40  # where a recipe's symbolic stack starts; its words read as _MARK | offset
_MARK = 1 << 62


def frame_recipe(pc: int, at: CodeAt) -> FrameRecipe | None:
    """The rsp-relative recipe of the frame at `pc`, or None when its unwind needs more than rsp (a frame
    register's value, a machine frame's saved rsp): found by unwinding once with every register but rsp
    unknown, over a stack whose words say where they were read."""

    def symbolic(address: int) -> int | None:
        offset = address - _SYMBOLIC_RSP
        return _MARK | offset if 0 <= offset < 1 << 32 else None

    start = Context(pc, tuple(_SYMBOLIC_RSP if n == RSP else None for n in range(len(REGISTER_NAMES))))
    try:
        after = unwind_frame(start, at, symbolic)
    except _Unprovable:
        return None
    if not after.rip & _MARK or not 0 < after.rsp - _SYMBOLIC_RSP < 1 << 32:
        return None
    loaded = ((n, v) for n, v in enumerate(after.registers) if n != RSP and v is not None and v & _MARK)
    loads = tuple((n, v & ~_MARK) for n, v in loaded)
    return FrameRecipe(loads, after.rip & ~_MARK, after.rsp - _SYMBOLIC_RSP)


def walk(
    start: Context,
    lookup: CodeLookup,
    read_word: WordReader,
    stack_base: int,
    max_frames: int = MAX_FRAMES,
    recipes: dict[tuple[int, bool], FrameRecipe | None] | None = None,
) -> Walk:
    """The frames of a thread from `start` (a stopped thread's registers, or the Windows registers Wine
    saved when the thread entered a system call) up to its first frame, which returns to 0 from within
    FIRST_FRAME_SLACK below `stack_base` (the TEB's StackBase). `recipes` keeps each pc's FrameRecipe
    across walks over the same code (the threads of one process pass the same pcs)."""
    pcs: list[int] = []
    context, caller = start, False
    recipes = {} if recipes is None else recipes
    try:
        for _ in range(max_frames):
            key = (context.rip, caller)
            recipe = recipes.get(key)
            if recipe is not None:
                pcs.append(context.rip)
                after = recipe.apply(context, read_word)
            else:
                at = lookup(context.rip, caller)
                if at is None:
                    raise _Unprovable(f"pc {context.rip:#x} is in no Windows code (frame {len(pcs)})")
                pcs.append(context.rip)
                recipe = frame_recipe(context.rip, at) if key not in recipes else None
                recipes[key] = recipe
                after = recipe.apply(context, read_word) if recipe else unwind_frame(context, at, read_word)
            if after.rsp <= context.rsp:
                raise _Unprovable(f"frame {len(pcs) - 1} at pc {context.rip:#x} does not move up the stack")
            if after.rip == 0 and stack_base - FIRST_FRAME_SLACK <= after.rsp <= stack_base:
                return Walk(tuple(pcs), None)
            if after.rip == 0 or after.rsp >= stack_base:
                where = f"rsp {after.rsp:#x}, the stack's base {stack_base:#x}"
                frame = len(pcs) - 1
                raise _Unprovable(f"frame {frame} returns to {after.rip:#x} ({where}): not the first frame")
            context, caller = after, True
        raise _Unprovable(f"deeper than {max_frames} frames")
    except (_Unprovable, ImageError) as why:  # ImageError: the lookup met an UNWIND_INFO it cannot read
        return Walk(tuple(pcs), str(why))


def unwind_frame(context: Context, at: CodeAt, read_word: WordReader) -> Context:
    """The caller's context of one frame (RtlVirtualUnwind's rules, module docstring); _Unprovable when
    a word it needs is not on the stack as read or a register it needs is unknown."""
    function = at.function
    if function is None:  # a leaf: nothing pushed, the return address at [rsp]
        return _pop_return(context.rip, list(context.registers), read_word)
    pc = context.rip
    own_begin, own = function.chain[0]
    in_prolog = 0 <= pc - own_begin < own.prolog_size
    if not in_prolog and function.begin <= pc < function.end:
        after = _epilog(context, at.code, function, own.frame_register, read_word)
        if after is not None:
            return after
    registers = list(context.registers)
    frame_base = _frame_base(pc - own_begin, own, registers)
    machine_frame, rip = False, 0
    for begin, info in function.chain:
        offset = pc - begin if pc >= begin else 1 << 32  # a chained primary's prolog has all run
        for code in info.codes:
            if code.prolog_offset > offset:
                continue  # the prolog has not run this far: nothing to undo
            op = code.op
            if op == UWOP_PUSH_NONVOL:
                registers[code.register] = _word(read_word, _known(registers, RSP))
                registers[RSP] = _known(registers, RSP) + 8
            elif op in (UWOP_ALLOC_LARGE, UWOP_ALLOC_SMALL):
                registers[RSP] = _known(registers, RSP) + code.amount
            elif op == UWOP_SET_FPREG:
                registers[RSP] = _known(registers, info.frame_register) - info.frame_offset
            elif op in (UWOP_SAVE_NONVOL, UWOP_SAVE_NONVOL_FAR):
                registers[code.register] = _word(read_word, frame_base + code.amount)
            elif op == UWOP_PUSH_MACHFRAME:
                at_frame = _known(registers, RSP) + (8 if code.register else 0)
                rip = _word(read_word, at_frame)
                registers[RSP] = _word(read_word, at_frame + _MACHINE_FRAME_RSP)
                machine_frame = True
            # UWOP_SAVE_XMM128(_FAR): an xmm register, which no unwind step needs.
    if machine_frame:
        return Context(rip, _volatile_unknown(registers))
    return _pop_return(pc, registers, read_word)


def _frame_base(offset: int, info: UnwindInfo, registers: list[int | None]) -> int:
    """Where SAVE_* slots are counted from: the frame register minus its offset once the prolog has set
    it (or in a chained part), else rsp as the pc sees it (Windows' establisher frame)."""
    if info.frame_register:
        set_at = info.frame_set_at()
        past_prolog = offset >= info.prolog_size or (set_at is not None and offset >= set_at)
        if info.chained is not None or past_prolog:
            return _known(registers, info.frame_register) - info.frame_offset
    return _known(registers, RSP)


def _pop_return(pc: int, registers: list[int | None], read_word: WordReader) -> Context:
    rsp = _known(registers, RSP)
    registers[RSP] = rsp + 8
    return Context(_word(read_word, rsp), _volatile_unknown(registers))


def _volatile_unknown(registers: list[int | None]) -> tuple[int | None, ...]:
    """The caller's view: a callee may have changed rax, rcx, rdx, r8-r11 (the x64 volatile registers)."""
    for volatile in (0, 1, 2, 8, 9, 10, 11):
        registers[volatile] = None
    return tuple(registers)


def _known(registers: list[int | None], number: int) -> int:
    value = registers[number]
    if value is None:
        raise _Unprovable(f"register {REGISTER_NAMES[number]} is not known here")
    return value


def _word(read_word: WordReader, address: int) -> int:
    value = read_word(address)
    if value is None:
        raise _Unprovable(f"stack word {address:#x} was not read (outside the thread's stack)")
    return value


def _epilog(
    context: Context, code: bytes, function: FunctionUnwind, frame_register: int, read_word: WordReader
) -> Context | None:
    """The caller's context when the pc is in an epilog (the code from the pc on is one), else None.

    The shapes x64 epilogs may take, as Windows recognises them: one optional `add rsp, imm` or
    `lea rsp, [framereg + disp]`, pops of non-volatile registers, then `ret`, `rep ret`, or a jump
    leaving the function (a tail call: `jmp rel` outside [begin, end), `jmp [rip + x]`, `rex.w jmp r/m`).
    """
    registers = list(context.registers)
    rsp, at = context.rsp, 0
    if code[:3] == b"\x48\x83\xc4" and len(code) >= 4:  # add rsp, imm8
        rsp += struct.unpack_from("<b", code, 3)[0]
        at = 4
    elif code[:3] == b"\x48\x81\xc4" and len(code) >= 7:  # add rsp, imm32
        rsp += struct.unpack_from("<i", code, 3)[0]
        at = 7
    elif len(code) >= 4 and code[0] in (0x48, 0x49) and code[1] == 0x8D and (code[2] >> 3) & 7 == 4:
        mod, rm = code[2] >> 6, (code[2] & 7) | (8 if code[0] & 1 else 0)  # lea rsp, [rm + disp]
        if rm != frame_register or rm & 7 == 4 or mod not in (1, 2):
            return None
        if mod == 1:
            disp, at = struct.unpack_from("<b", code, 3)[0], 4
        elif len(code) >= 7:
            disp, at = struct.unpack_from("<i", code, 3)[0], 7
        else:
            return None
        rsp = _known(registers, rm) + disp
    pops: list[int] = []
    while at < len(code):
        if code[at] & 0xF8 == 0x58:  # pop r64
            pops.append(code[at] & 7)
            at += 1
        elif code[at] in (0x41, 0x40) and at + 1 < len(code) and code[at + 1] & 0xF8 == 0x58:  # rex pop
            pops.append((code[at + 1] & 7) | (8 if code[at] & 1 else 0))
            at += 2
        else:
            break
    if not _ends_epilog(code[at:], context.rip + at, function):
        return None
    for register in pops:
        registers[register] = _word(read_word, rsp)
        rsp += 8
    registers[RSP] = rsp
    return _pop_return(context.rip, registers, read_word)


def _ends_epilog(code: bytes, address: int, function: FunctionUnwind) -> bool:
    """Whether the instruction at `address` ends an epilog: a return, or a jump out of the function."""
    if code[:1] in (b"\xc3", b"\xc2") or code[:2] == b"\xf3\xc3":  # ret, ret imm16, rep ret
        return True
    if code[:1] == b"\xeb" and len(code) >= 2:  # jmp rel8
        target = address + 2 + struct.unpack_from("<b", code, 1)[0]
    elif code[:1] == b"\xe9" and len(code) >= 5:  # jmp rel32
        target = address + 5 + struct.unpack_from("<i", code, 1)[0]
    else:  # jmp [rip + disp32] (an import's slot), or rex.w jmp r/m64
        rex_jump = len(code) >= 3 and code[0] & 0xF8 == 0x48 and code[1] == 0xFF and (code[2] >> 3) & 7 == 4
        return code[:2] == b"\xff\x25" or rex_jump
    return target <= function.begin or target >= function.end
