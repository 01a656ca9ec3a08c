"""UNWIND_INFO decoded: how a function's prolog changed rsp and where it saved which register.

    byte 0  Version (3 bits) | Flags << 3          byte 2  CountOfCodes (2-byte slots)
    byte 1  SizeOfProlog                           byte 3  FrameRegister (4 bits) | FrameOffset << 4
    CountOfCodes slots, padded to an even count; then, with UNW_FLAG_CHAININFO, the RUNTIME_FUNCTION
    this entry continues (its primary), or with a handler flag, the handler's RVA and data.

Each code's first byte is the prolog offset just past the instruction it describes, its second the
operation (low 4 bits) and its operand (high 4 bits: a register, or a size); some take one or two more
slots for a size or an offset. The codes are listed in reverse prolog order, so an unwinder applies
them first to last (pe/virtual_unwind.py). Version 1 is what every compiler emits; version 2 adds
UWOP_EPILOG hints, which carry no operation. Microsoft's "x64 exception handling" documentation is the
reference; the slot counts match Windows' own unwinder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hpkg.errors import ImageError
from hpkg.pe.constants import (
    UNW_FLAG_CHAININFO,
    UWOP_ALLOC_LARGE,
    UWOP_ALLOC_SMALL,
    UWOP_EPILOG,
    UWOP_PUSH_MACHFRAME,
    UWOP_PUSH_NONVOL,
    UWOP_SAVE_NONVOL,
    UWOP_SAVE_NONVOL_FAR,
    UWOP_SAVE_XMM128,
    UWOP_SAVE_XMM128_FAR,
    UWOP_SET_FPREG,
)
from hpkg.pe.headers import RvaReader
from hpkg.pe.pdata import RUNTIME_FUNCTION, UNWIND_INFO_HEADER, RuntimeFunction

MAX_CODES = 255  # CountOfCodes is one byte


@dataclass(frozen=True, slots=True)
class UnwindCode:
    """One operation of a prolog: done once the prolog has run `prolog_offset` bytes.

    `register` is the operand register (PUSH_NONVOL, SAVE_*) or the machine frame's error-code flag
    (PUSH_MACHFRAME); `amount` the bytes allocated (ALLOC_*) or the save slot's offset from the frame
    base (SAVE_*), already scaled.
    """

    prolog_offset: int
    op: int
    register: int
    amount: int


@dataclass(frozen=True, slots=True)
class UnwindInfo:
    """One UNWIND_INFO: its prolog size, frame register (0: none) and offset (bytes), its codes in the
    order an unwinder applies them, and the primary RUNTIME_FUNCTION when it is chained (by RVA)."""

    version: int
    flags: int
    prolog_size: int
    frame_register: int
    frame_offset: int
    codes: tuple[UnwindCode, ...]
    chained: RuntimeFunction | None

    def frame_set_at(self) -> int | None:
        """The prolog offset after which the frame register holds the frame (its SET_FPREG), if any."""
        return next((c.prolog_offset for c in self.codes if c.op == UWOP_SET_FPREG), None)


# Slots an operation takes beyond its own (ALLOC_LARGE: 1 or 2, by its operand; others are unknown).
_EXTRA_SLOTS: dict[int, int] = {
    UWOP_PUSH_NONVOL: 0, UWOP_ALLOC_SMALL: 0, UWOP_SET_FPREG: 0, UWOP_SAVE_NONVOL: 1,
    UWOP_SAVE_NONVOL_FAR: 2, UWOP_EPILOG: 1, UWOP_SAVE_XMM128: 1, UWOP_SAVE_XMM128_FAR: 2,
    UWOP_PUSH_MACHFRAME: 0,
}  # fmt: skip


def decode_unwind_info(read: RvaReader, rva: int) -> UnwindInfo:
    """The UNWIND_INFO at `rva`; ImageError when it is cut short, of an unknown version or uses an
    operation Windows' unwinder does not know (an unwinder cannot guess what such a prolog did)."""
    head = read(rva, UNWIND_INFO_HEADER.size)
    if len(head) < UNWIND_INFO_HEADER.size:
        raise ImageError(f"UNWIND_INFO at RVA {rva:#x} is cut short")
    version_flags, prolog_size, count, frame = UNWIND_INFO_HEADER.unpack(head)
    version, flags = version_flags & 7, version_flags >> 3
    if version not in (1, 2):
        raise ImageError(f"UNWIND_INFO at RVA {rva:#x} has version {version}")
    slots_size = 2 * ((count + 1) & ~1)
    raw = read(rva + UNWIND_INFO_HEADER.size, slots_size)
    if len(raw) < 2 * count:
        raise ImageError(f"UNWIND_INFO at RVA {rva:#x}: its {count} codes are cut short")
    codes, index = [], 0
    while index < count:
        offset, op_info = raw[2 * index], raw[2 * index + 1]
        op, operand = op_info & 0xF, op_info >> 4
        extra = (1 + operand if operand < 2 else None) if op == UWOP_ALLOC_LARGE else _EXTRA_SLOTS.get(op)
        if extra is None:
            raise ImageError(f"UNWIND_INFO at RVA {rva:#x}: code {index} has unknown operation {op}")
        if index + extra >= count:
            raise ImageError(f"UNWIND_INFO at RVA {rva:#x}: code {index} (operation {op}) is cut short")
        slot16 = struct.unpack_from("<H", raw, 2 * index + 2)[0] if extra else 0
        slot32 = struct.unpack_from("<I", raw, 2 * index + 2)[0] if extra == 2 else 0
        amount = {
            UWOP_ALLOC_LARGE: slot32 if operand else slot16 * 8,
            UWOP_ALLOC_SMALL: operand * 8 + 8,
            UWOP_SAVE_NONVOL: slot16 * 8,
            UWOP_SAVE_NONVOL_FAR: slot32,
            UWOP_SAVE_XMM128: slot16 * 16,
            UWOP_SAVE_XMM128_FAR: slot32,
        }.get(op, 0)
        if op != UWOP_EPILOG:  # a version 2 epilog hint: no operation of the prolog
            codes.append(UnwindCode(offset, op, operand, amount))
        index += 1 + extra
    chained = None
    if flags & UNW_FLAG_CHAININFO:
        tail = read(rva + UNWIND_INFO_HEADER.size + slots_size, RUNTIME_FUNCTION.size)
        if len(tail) < RUNTIME_FUNCTION.size:
            raise ImageError(f"UNWIND_INFO at RVA {rva:#x}: its chained entry is cut short")
        chained = RuntimeFunction(*RUNTIME_FUNCTION.unpack(tail))
    return UnwindInfo(version, flags, prolog_size, frame & 0xF, (frame >> 4) * 16, tuple(codes), chained)
