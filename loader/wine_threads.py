"""Where the Windows frames of a Wine thread are while the thread waits in a system call.

A Wine thread runs Windows code on its Windows stack, described by its TEB (whose address is the
thread's GS base: NT_TIB StackBase at TEB+0x08, StackLimit at TEB+0x10). A Windows call into the
Unix side (NtWaitForSingleObject, recv, …) goes through Wine's syscall dispatcher, which saves the
Windows registers in a `struct syscall_frame` and switches to a separate kernel stack; a thread
blocked there has its rsp on that kernel stack, so the safety check's scan from rsp would never see
the Windows frames — whose return addresses are exactly what it must see. Wine 8.0 (x86-64) keeps
the frame's address at TEB+0x328 (`amd64_thread_data()->syscall_frame`) and the Windows rip and rsp
at +0x70 and +0x88 in it. The frame is believed only when its rsp lies in the thread's Windows stack;
otherwise the whole Windows stack is scanned (conservative: a dead frame's stale return address can
make the check wait or refuse, never pass).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hpkg.errors import TargetError
from hpkg.loader.process import StoppedThreads

TIB_STACK = struct.Struct("<QQ")  # NT_TIB at TEB+0x08: StackBase, StackLimit
TIB_STACK_AT = 0x08
SYSCALL_FRAME_AT = 0x328
FRAME_RIP, FRAME_RSP = 0x70, 0x88
MAX_STACK = 1 << 30  # a larger span is not a thread's stack


@dataclass(frozen=True)
class WindowsFrames:
    """The Windows side of one thread waiting on the Unix side: its saved rip and the stack span to scan."""

    rip: int | None  # None when the saved frame could not be believed
    low: int
    high: int


def windows_frames(stopped: StoppedThreads, tid: int, rsp: int) -> WindowsFrames | None:
    """The Windows frames of thread `tid` when its rsp is off its Windows stack; None when the thread has
    no TEB (a Unix-only thread) or is on its Windows stack already (the ordinary scan sees its frames)."""
    process = stopped.process
    try:
        teb = stopped.regs(tid).gs_base
        if not teb:
            return None
        base, limit = TIB_STACK.unpack(process.read(teb + TIB_STACK_AT, TIB_STACK.size))
    except TargetError:
        return None
    if not limit < base or base - limit > MAX_STACK or limit <= rsp < base:
        return None
    try:
        (frame,) = struct.unpack("<Q", process.read(teb + SYSCALL_FRAME_AT, 8))
        (rip,) = struct.unpack("<Q", process.read(frame + FRAME_RIP, 8))
        (saved_rsp,) = struct.unpack("<Q", process.read(frame + FRAME_RSP, 8))
    except TargetError:
        return WindowsFrames(None, limit, base)
    if limit <= saved_rsp < base:
        return WindowsFrames(rip, saved_rsp & ~7, base)
    return WindowsFrames(None, limit, base)
