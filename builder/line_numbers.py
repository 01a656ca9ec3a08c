"""Prove that the immediates a changed function differs in are source line numbers (`__LINE__`).

A line number is recognisable by where it goes, never by its size or by the company it keeps: it is
the argument right after a source-path string in a call (`__assert_fail(expr, file, line, fn)`,
`ERR_set_debug(file, line, fn)`, `CRYPTO_free(p, file, line)`). By the x86-64 SysV calling convention
the integer arguments travel in rdi, rsi, rdx, rcx, r8, r9, so an immediate is proven a line number
when, in one basic block,

- a `mov reg, imm` puts it in argument register k (k ≥ 1), and the straight-line code after it
  reaches a call (or a tail `jmp` out of the function) without reading or writing that register;
- argument register k-1 holds, at that call and on every path to it through the function, the
  address of a NUL-terminated source path: its last write is `lea reg, [rip+…]` (or `mov reg,
  imm32` in a fixed-address build) naming a string that ends in `.c`, `.h`, `.cc`, …, possibly
  through register copies (`lea rbp, [file]` … `mov rsi, rbp`) and calls that keep the register;
- after the call, in the same block, the register is written before anything reads it (GCC's
  `-fipa-ra` may keep a value a local callee does not clobber; a read would reuse the immediate).

Where the build has DWARF line tables (a `-g` build, or its debug file), an immediate is also proven
a line number when the function's whole line table moved by one delta (lines inserted or removed
above it: the same instructions at the same offsets, every row of its own file `delta` lines
further), the baseline's immediate is one of the function's own lines, and the fix's is that line
plus the delta — `__LINE__` passed to a logging function of any signature.

Any other differing immediate — a library code passed to `ERR_set_error`, a limit passed to
`memcpy`, a constant compared against — makes the function a code change.
"""

from __future__ import annotations

from iced_x86 import (
    Decoder,
    FlowControl,
    Instruction,
    InstructionInfoFactory,
    Mnemonic,
    OpKind,
    Register,
    RegisterExt,
)

from hpkg.builder.decode import scan
from hpkg.builder.jumptables import switch_dispatches
from hpkg.builder.model import CanonicalFunction, Function, Image, TargetKind

# SysV x86-64: the integer/pointer arguments, in order.
ARGUMENT_REGISTERS = (Register.RDI, Register.RSI, Register.RDX, Register.RCX, Register.R8, Register.R9)
# __FILE__ strings end like this.
SOURCE_SUFFIXES = (b".c", b".h", b".cc", b".cpp", b".cxx", b".hpp", b".hh", b".C", b".inc")
LINE_MAX = 1_000_000  # larger immediates are no line numbers of any real source file
_PATH_MAX = 4096

# iced-x86 OpAccess values that read or write a register.
_READS = frozenset({1, 2, 5, 6})  # READ, COND_READ, READ_WRITE, READ_COND_WRITE
_WRITES = frozenset({3, 5})  # WRITE, READ_WRITE: the old value is gone for sure
_MAY_WRITE = frozenset({3, 4, 5, 6})  # … and the conditional writes (cmov)
_WRITE = 3
_SAME_REGISTER_IDIOMS = frozenset({Mnemonic.XOR, Mnemonic.SUB, Mnemonic.SBB})
_CALLS = frozenset({FlowControl.CALL, FlowControl.INDIRECT_CALL})
# Control goes on to the next instruction after these (a call returns; a noreturn one only adds paths).
_FALLS_THROUGH = frozenset({FlowControl.NEXT, FlowControl.CONDITIONAL_BRANCH, *_CALLS})
# SysV x86-64: a call may change these.
CALLER_SAVED = frozenset(
    {Register.RAX, Register.RCX, Register.RDX, Register.RSI, Register.RDI, Register.R8, Register.R9,
     Register.R10, Register.R11}
)
_BRANCHES = frozenset({FlowControl.UNCONDITIONAL_BRANCH, FlowControl.CONDITIONAL_BRANCH, FlowControl.CALL})
_NEAR_BRANCHES = frozenset({OpKind.NEAR_BRANCH16, OpKind.NEAR_BRANCH32, OpKind.NEAR_BRANCH64})
_IMMEDIATES = frozenset(
    {OpKind.IMMEDIATE32, OpKind.IMMEDIATE32TO64, OpKind.IMMEDIATE8TO32, OpKind.IMMEDIATE64}
)


def line_number_only(
    old: CanonicalFunction, new: CanonicalFunction, old_image: Image, new_image: Image
) -> bool:
    """Whether old and new differ only in immediates each proven a line number (see the module docstring).

    The caller has found every reference target to correspond, so reference fields are not compared;
    the instructions must otherwise be the same forms, and the call-argument proof is made on the
    baseline's code (the fix's has the same instructions, registers and, through the corresponding
    targets, strings); the line-table proof reads both builds' tables.
    """
    old_insns, new_insns = _decode(old.function), _decode(new.function)
    if len(old_insns) != len(new_insns):
        return False
    old_fields, new_fields = _fields(old), _fields(new)
    block = None
    shift: _ShiftedLines | None = None
    changed = 0
    for index, (a, b) in enumerate(zip(old_insns, new_insns, strict=True)):
        if a.code != b.code or a.len != b.len:
            return False
        if _masked(old.function, a, old_fields) == _masked(new.function, b, new_fields):
            continue
        if not _line_immediates(a, b, old_fields):
            return False
        block = block or _Block(old, old_insns, old_image)
        if not block.is_line_argument(index):
            if shift is None:
                shift = _ShiftedLines.of(old, new, old_image, new_image)
            if not shift.explains(a.immediate(1), b.immediate(1)):
                return False
        changed += 1
    return changed > 0


class _ShiftedLines:
    """What the two builds' line tables say of one function: whether it only moved by `delta` lines."""

    def __init__(self, delta: int, own_lines: frozenset[int]) -> None:
        self.delta = delta
        self.own_lines = own_lines

    @classmethod
    def of(
        cls, old: CanonicalFunction, new: CanonicalFunction, old_image: Image, new_image: Image
    ) -> _ShiftedLines:
        before = old_image.line_table.function_lines(old.function.address, old.function.size)
        after = new_image.line_table.function_lines(new.function.address, new.function.size)
        if not before or not after or len(before) != len(after):
            return cls(0, frozenset())
        rows = list(zip(before, after, strict=True))
        if any(a_offset != b_offset for (a_offset, _), (b_offset, _) in rows):
            return cls(0, frozenset())  # the same instructions must come from the same lines
        deltas = {b_line - a_line for (_, a_line), (_, b_line) in rows}
        if len(deltas) != 1:
            return cls(0, frozenset())
        return cls(deltas.pop(), frozenset(line for _, line in before))

    def explains(self, old_value: int, new_value: int) -> bool:
        """Whether old → new is one of the function's own lines moved with the whole function."""
        return self.delta != 0 and old_value in self.own_lines and new_value - old_value == self.delta


def _decode(fn: Function) -> list[Instruction]:
    return list(Decoder(64, fn.code, ip=fn.address))


def _fields(canonical: CanonicalFunction) -> list[tuple[int, int]]:
    """(start, end) byte offsets of every reference field of a function."""
    return [(r.location, r.location + r.width) for r in canonical.references]


def _masked(fn: Function, ins: Instruction, fields: list[tuple[int, int]]) -> bytes:
    """An instruction's bytes with the reference fields inside it zeroed (their targets correspond)."""
    start = ins.ip - fn.address
    end = start + ins.len
    code = bytearray(fn.code[start:end])
    for low, high in fields:
        if low < end and high > start:
            for i in range(max(low, start), min(high, end)):
                code[i - start] = 0
    return bytes(code)


def _line_immediates(a: Instruction, b: Instruction, old_fields: list[tuple[int, int]]) -> bool:
    """Whether a and b are `mov reg, imm` to the same register with immediates in the range of lines."""
    if a.mnemonic != Mnemonic.MOV or a.op_count != 2 or a.op0_kind != OpKind.REGISTER:
        return False
    if a.op1_kind not in _IMMEDIATES or a.op0_register != b.op0_register:
        return False
    return 0 < a.immediate(1) < LINE_MAX and 0 < b.immediate(1) < LINE_MAX


class _Block:
    """One function's instructions with what the proof needs: who precedes whom, and register use."""

    def __init__(self, canonical: CanonicalFunction, insns: list[Instruction], image: Image) -> None:
        self.fn = canonical.function
        self.insns = insns
        self.image = image
        self.factory = InstructionInfoFactory()
        # Indirect jumps that look like a switch dispatch (jumptables); the others are tail calls.
        self.dispatches = {canonical.function.address + o for o in switch_dispatches(self.fn, scan(self.fn))}
        self.sources = _branch_sources(canonical, insns, self.dispatches)  # leader → indices jumping there
        self.index_of = {ins.ip: i for i, ins in enumerate(insns)}

    def is_line_argument(self, index: int) -> bool:
        """Whether the `mov reg, imm` at `index` passes a line number to a call (module docstring)."""
        if self.sources is None:
            return False  # an indirect jump whose table was not recovered may enter anywhere
        register = RegisterExt.full_register(self.insns[index].op0_register)
        if register not in ARGUMENT_REGISTERS[1:]:
            return False
        file_register = ARGUMENT_REGISTERS[ARGUMENT_REGISTERS.index(register) - 1]
        call = self._call_after(index, register)
        if call is None:
            return False
        return self._holds_source_path(call, file_register) and self._dead_after(call, register)

    def _access(self, ins: Instruction, register: int) -> set[int]:
        """How `ins` uses `register` (any width of it): iced-x86 OpAccess values."""
        if _same_register_idiom(ins):
            # `sbb esi, esi` or `sub esi, esi`: the result does not depend on the old value.
            return {_WRITE} if RegisterExt.full_register(ins.op0_register) == register else set()
        used = self.factory.info(ins).used_registers()
        return {u.access for u in used if RegisterExt.full_register(u.register) == register}

    def _call_after(self, index: int, register: int) -> int | None:
        """The call the value reaches, nothing touching its register, or None: straight-line code and
        unconditional jumps inside the function (a shared tail: `mov esi, LINE; jmp .Lraise`)."""
        i = index + 1
        visited: set[int] = set()
        while 0 <= i < len(self.insns) and i not in visited:
            visited.add(i)
            ins = self.insns[i]
            flow = ins.flow_control
            if flow in _CALLS or (flow == FlowControl.INDIRECT_BRANCH and ins.ip not in self.dispatches):
                return i  # a call, or a tail call through a pointer (`jmp r9`)
            if flow == FlowControl.UNCONDITIONAL_BRANCH and ins.op0_kind in _NEAR_BRANCHES:
                if not self._inside(ins):
                    return i  # a tail call
                i = self.index_of.get(ins.near_branch_target, -1)
                continue
            if flow != FlowControl.NEXT or self._access(ins, register):
                return None
            i += 1
        return None

    def _inside(self, ins: Instruction) -> bool:
        return self.fn.address <= ins.near_branch_target < self.fn.address + self.fn.size

    def _predecessors(self, index: int) -> list[int | None]:
        """Instructions control may come from to `index`; None stands for the function's caller."""
        found: list[int | None] = [None] if index == 0 else []
        if index > 0 and self.insns[index - 1].flow_control in _FALLS_THROUGH:
            found.append(index - 1)
        found.extend(self.sources.get(self.insns[index].ip, ()))
        return found

    def _holds_source_path(self, call: int, register: int) -> bool:
        """Whether, on every path to the call, `register` was last set to the address of a source path.

        A backward walk over the function's flow graph; a register copy (`mov rsi, rbp`) is followed to
        its source, a call clobbers the caller-saved registers (SysV), the caller's value is unknown.
        """
        pending: list[tuple[int, int]] = [(call, register)]
        seen: set[tuple[int, int]] = set()
        found = False
        while pending:
            index, reg = pending.pop()
            for pred in self._predecessors(index):
                if pred is None:
                    return False
                if (pred, reg) in seen:
                    continue
                seen.add((pred, reg))
                ins = self.insns[pred]
                if ins.flow_control in _CALLS:
                    if reg in CALLER_SAVED:
                        return False
                    pending.append((pred, reg))
                    continue
                access = self._access(ins, reg)
                if not access & _MAY_WRITE:
                    pending.append((pred, reg))
                elif access != {_WRITE}:
                    return False
                elif (source := _copied_from(ins)) is not None:
                    pending.append((pred, source))
                elif self._is_source_path(_address_loaded(ins)):
                    found = True
                else:
                    return False
        return found

    def _dead_after(self, call: int, register: int) -> bool:
        """Whether the straight-line code after the call writes `register` before it reads it."""
        if self.insns[call].flow_control not in _CALLS:
            return True  # a tail call: nothing of this function runs after it
        for ins in self.insns[call + 1 :]:
            if ins.ip in self.sources or ins.flow_control != FlowControl.NEXT:
                return True
            access = self._access(ins, register)
            if access & _READS:
                return False
            if access & _WRITES:
                return True
        return True

    def _is_source_path(self, address: int | None) -> bool:
        if address is None:
            return False
        text = self.image.read(address, _PATH_MAX)
        nul = text.find(b"\0")
        return nul > 0 and text[:nul].isascii() and text[:nul].endswith(SOURCE_SUFFIXES)


def _same_register_idiom(ins: Instruction) -> bool:
    """`xor`/`sub`/`sbb` of a 32- or 64-bit register with itself: a write that reads nothing it keeps."""
    return (
        ins.mnemonic in _SAME_REGISTER_IDIOMS
        and ins.op_count == 2
        and ins.op0_kind == OpKind.REGISTER
        and ins.op1_kind == OpKind.REGISTER
        and ins.op0_register == ins.op1_register
        and RegisterExt.size(ins.op0_register) >= 4
    )


def _address_loaded(ins: Instruction) -> int | None:
    """The link address `lea reg, [rip+…]` or `mov reg32, imm32` (fixed-address builds) puts in a register."""
    if ins.mnemonic == Mnemonic.LEA and ins.is_ip_rel_memory_operand:
        return ins.ip_rel_memory_address
    if ins.mnemonic == Mnemonic.MOV and ins.op_count == 2 and ins.op1_kind in _IMMEDIATES:
        return ins.immediate(1)
    return None


def _copied_from(ins: Instruction) -> int | None:
    """The register `mov reg, reg` copies from (same width), else None."""
    if ins.mnemonic != Mnemonic.MOV or ins.op0_kind != OpKind.REGISTER or ins.op1_kind != OpKind.REGISTER:
        return None
    if RegisterExt.size(ins.op0_register) != RegisterExt.size(ins.op1_register):
        return None
    return RegisterExt.full_register(ins.op1_register)


def _branch_sources(
    canonical: CanonicalFunction, insns: list[Instruction], dispatches: set[int]
) -> dict[int, list[int]] | None:
    """Link address of each branch target inside the function → the indices of the branches to it
    (direct jumps, and every switch dispatch for the cases of its recovered table); None when a
    dispatch's table was not recovered (it may enter anywhere)."""
    fn = canonical.function
    end = fn.address + fn.size
    sources: dict[int, list[int]] = {}
    for index, ins in enumerate(insns):
        inside = fn.address <= ins.near_branch_target < end
        if ins.flow_control in _BRANCHES and ins.op0_kind in _NEAR_BRANCHES and inside:
            sources.setdefault(ins.near_branch_target, []).append(index)
    # Indirect jumps that do not look like a switch dispatch are tail calls through a pointer (as the
    # package builder treats them too); a dispatch enters the cases of its recovered table.
    tables = [r.target.entries for r in canonical.references if r.target.kind is TargetKind.JUMP_TABLE]
    if len(tables) < len(dispatches):
        return None
    if tables:
        indirect = [i for i, ins in enumerate(insns) if ins.ip in dispatches]
        # Switch cases are counted without padding (canon); map them back to link addresses.
        by_canonical = _canonical_starts(fn, insns)
        for entries in tables:
            for entry in entries:
                sources.setdefault(by_canonical.get(entry, fn.address), []).extend(indirect)
    return sources


def _canonical_starts(fn: Function, insns: list[Instruction]) -> dict[int, int]:
    """Padding-free offset (as canon counts in-function targets) → link address, per instruction start."""
    padding = scan(fn).padding
    starts: dict[int, int] = {}
    removed = 0
    k = 0
    for ins in insns:
        offset = ins.ip - fn.address
        while k < len(padding) and padding[k][1] <= offset:
            removed += padding[k][1] - padding[k][0]
            k += 1
        starts.setdefault(offset - removed, ins.ip)
    return starts
