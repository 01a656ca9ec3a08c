"""Every frame of every Windows thread of a stopped Wine process, proven by its UNWIND_INFO, or why not.

A Wine thread runs Windows code on its Windows stack, which its TEB describes; the TEB is at the
thread's GS base (NT_TIB StackBase at TEB+0x08, StackLimit at TEB+0x10). Verified on Debian's Wine 8.0:

- a call into the Unix side (a system call such as NtWaitForSingleObject or NtReadFile, or a Unix
  library call) goes through Wine's dispatcher, which saves the Windows registers in the thread's
  `struct syscall_frame` (its address at TEB+0x328) and runs the Unix side on the stack below that
  frame: rip +0x70 (the `ret` of the ntdll stub that made the call), rsp +0x88, rbp +0x98, and the
  other non-volatile registers (rbx +0x08, rsi +0x20, rdi +0x28, r12-r15 +0x50..+0x68);
- TEB+0x330 holds the thread's pthread TEB, which is its FS base: a thread whose FS base is not its
  TEB's own is not that TEB's thread (a Unix thread that inherited a GS base from its creator).

So a thread is classified by its own registers: no TEB of its own → not a Windows thread, checked
like an ELF thread (its rip and every word of its stack); its pc in Windows code (loader/windows_code)
→ its frames start at its registers, its rsp on its Windows stack; its pc elsewhere (the Unix side) →
its frames start at the saved syscall frame, believed only when its rsp lies below that frame within
the Unix side's stack (not on a signal stack, not halfway into or out of the dispatcher), the saved
rip is Windows code and the saved rsp lies on its Windows stack. Then pe/virtual_unwind.walk follows
the frames to the thread's first. A thread whose frames cannot be followed to the end is unproven.

Three process_vm_readv calls for all threads at once, inside the stop: the TEB fields, the syscall
frames, the Windows stacks (loader/vm_read.py).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from hpkg.loader.process import Process
from hpkg.loader.vm_read import read_spans
from hpkg.loader.windows_code import WindowsCode, current
from hpkg.pe.virtual_unwind import Context, Walk, WordReader, walk

TIB_STACK = struct.Struct("<QQ")  # NT_TIB at TEB+0x08: StackBase, StackLimit
TIB_STACK_AT = 0x08
SYSCALL_FRAME_AT = 0x328  # amd64_thread_data()->syscall_frame, then ->pthread_teb at +0x330
FRAME_POINTERS = struct.Struct("<QQ")
# struct syscall_frame's first 0xa0 bytes: rax rbx rcx rdx rsi rdi r8-r15 rip, segments, eflags, rsp,
# ss/gs/pad, rbp (Wine 8.0, x86-64).
SYSCALL_FRAME = struct.Struct("<20Q")
_FRAME_WORD = {"rbx": 1, "rsi": 4, "rdi": 5, "r12": 10, "r13": 11, "r14": 12, "r15": 13, "rbp": 19}
FRAME_RIP, FRAME_RSP = 14, 17
UNIX_STACK = 1 << 20  # Wine 8's kernel stack: where the Unix side runs, below the syscall frame
MAX_WINDOWS_STACK = 1 << 30  # a larger StackBase - StackLimit is not a stack
# struct user_regs_struct words (loader/ptrace.Registers order) of the registers a walk starts from.
USER_REGS = {"r15": 0, "r14": 1, "r13": 2, "r12": 3, "rbp": 4, "rbx": 5, "r11": 6, "r10": 7, "r9": 8,
             "r8": 9, "rax": 10, "rcx": 11, "rdx": 12, "rsi": 13, "rdi": 14}  # fmt: skip
USER_RIP, USER_RSP, USER_FS_BASE, USER_GS_BASE = 16, 19, 21, 22


class Kind(Enum):
    """How a thread's frames were found."""

    UNIX = "no TEB of its own"  # checked as an ELF thread is
    WALKED = "Windows frames walked"
    UNPROVEN = "Windows frames not proven"


@dataclass(frozen=True)
class ThreadFrames:
    """One thread's Windows side: its frames' pcs (innermost first; the first is where it resumes) and
    where they came from, the Windows stack span read [low, high) and its bytes, or why unproven."""

    kind: Kind
    pcs: tuple[int, ...] = ()
    saved: bool = False  # the first pc is the one Wine saved at a system call (not the thread's rip)
    problem: str = ""
    start: Context | None = None  # the registers the walk started from
    stack: tuple[int, bytes] | None = None  # (address, bytes) of the Windows stack as read


@dataclass(frozen=True)
class _Start:
    context: Context
    base: int  # StackBase
    saved: bool


def thread_frames(
    pid: int, registers: Sequence[Sequence[int]], code: WindowsCode, stack_limit: int
) -> list[ThreadFrames]:
    """Each thread's Windows frames, from its registers (struct user_regs_struct words, one per thread)."""
    tebs = [words[USER_GS_BASE] for words in registers]
    fields = read_spans(pid, [(teb + at, 16) for teb in tebs for at in (TIB_STACK_AT, SYSCALL_FRAME_AT)])
    out: list[ThreadFrames | None] = [None] * len(registers)
    starts: dict[int, _Start] = {}
    frames_wanted: dict[int, tuple[int, int, int]] = {}  # index -> (frame, base, limit)
    for index, words in enumerate(registers):
        tib, pointers = fields[2 * index], fields[2 * index + 1]
        if not tebs[index] or tib is None or pointers is None:
            out[index] = ThreadFrames(Kind.UNIX)
            continue
        base, limit = TIB_STACK.unpack(tib)
        frame, pthread_teb = FRAME_POINTERS.unpack(pointers)
        if pthread_teb != words[USER_FS_BASE]:
            out[index] = ThreadFrames(Kind.UNIX)  # not this TEB's thread
            continue
        if not limit < base or base - limit > MAX_WINDOWS_STACK:
            out[index] = _unproven(f"its TEB's stack bounds {limit:#x}-{base:#x} are not a stack")
            continue
        rip, rsp = words[USER_RIP], words[USER_RSP]
        if code.module_at(rip) is not None:  # running Windows code: its own registers are the frame
            if not limit <= rsp < base:
                out[index] = _unproven(f"in Windows code, rsp {rsp:#x} off its stack {limit:#x}-{base:#x}")
                continue
            named = {name: words[at] for name, at in USER_REGS.items()}
            starts[index] = _Start(Context.of(rip, rsp=rsp, **named), base, False)
        elif frame - UNIX_STACK <= rsp < frame and not limit <= rsp < base:
            frames_wanted[index] = (frame, base, limit)
        else:
            out[index] = _unproven(
                f"pc {rip:#x} outside Windows code with rsp {rsp:#x} neither on its Windows stack nor below"
                f" its syscall frame {frame:#x} (a signal handler, or entering or leaving a system call)"
            )
    wanted = sorted(frames_wanted)
    saved_frames = read_spans(pid, [(frames_wanted[i][0], SYSCALL_FRAME.size) for i in wanted])
    for index, raw in zip(wanted, saved_frames, strict=True):
        frame, base, limit = frames_wanted[index]
        if raw is None:
            out[index] = _unproven(f"its syscall frame {frame:#x} is unreadable")
            continue
        words = SYSCALL_FRAME.unpack(raw)
        rip, rsp = words[FRAME_RIP], words[FRAME_RSP]
        if code.module_at(rip) is None or not limit <= rsp < base:
            out[index] = _unproven(f"its syscall frame holds rip {rip:#x}, rsp {rsp:#x}: not a Windows frame")
            continue
        named = {name: words[at] for name, at in _FRAME_WORD.items()}
        starts[index] = _Start(Context.of(rip, rsp=rsp, **named), base, True)
    order = sorted(starts)
    lows = [starts[i].context.rsp & ~7 for i in order]
    spans = [(low, min(starts[i].base, low + stack_limit)) for i, low in zip(order, lows, strict=True)]
    stacks = read_spans(pid, [(low, high - low) for low, high in spans])
    for index, (low, _high), data in zip(order, spans, stacks, strict=True):
        start = starts[index]
        if data is None:
            out[index] = _unproven(f"its Windows stack at {low:#x} is unreadable")
            continue
        result = walk(start.context, code, word_reader(low, data), start.base, recipes=code.recipes)
        out[index] = _walked(result, start, (low, data))
    return [o if o is not None else ThreadFrames(Kind.UNIX) for o in out]


def _unproven(problem: str) -> ThreadFrames:
    return ThreadFrames(Kind.UNPROVEN, problem=problem)


def _walked(result: Walk, start: _Start, stack: tuple[int, bytes]) -> ThreadFrames:
    kind = Kind.WALKED if result.problem is None else Kind.UNPROVEN
    return ThreadFrames(kind, result.pcs, start.saved, result.problem or "", start.context, stack)


def word_reader(low: int, data: bytes) -> WordReader:
    """The walker's stack reader over `data`, the stack's bytes from address `low` on."""
    high = low + len(data)
    unpack = struct.Struct("<Q").unpack_from

    def read_word(address: int) -> int | None:
        if low <= address and address + 8 <= high:
            return unpack(data, address - low)[0]
        return None

    return read_word


class WindowsThreads:
    """The safety check's view of a Wine process's Windows threads: its Windows code, built again before
    a stop when the process's mappings changed, and the frames of every held thread in the stop."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.code: WindowsCode | None = None

    def prepare(self) -> None:
        """While the process runs: the Windows code as the mappings are now."""
        self.code = current(self.process, self.code)

    def frames(self, registers: Sequence[Sequence[int]], stack_limit: int) -> list[ThreadFrames]:
        """Every held thread's Windows frames (`registers`: its struct user_regs_struct words)."""
        if self.code is None:
            self.prepare()
        assert self.code is not None
        return thread_frames(self.process.pid, registers, self.code, stack_limit)
