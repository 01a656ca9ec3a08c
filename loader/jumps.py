"""x86-64 jump encodings the loader writes: the 5-byte patch-site jump and the 14-byte absolute stub.

`jmp rel32` is opcode E9 followed by a signed 32-bit displacement counted from the end of the
instruction: 5 bytes, the shortest jump that reaches anywhere within ±2 GiB. A patch site is
therefore the first 5 bytes of a replaced function. Beyond ±2 GiB (e.g. a call from package code
to a shared library mapped far away) a stub `jmp [rip+0]` (FF 25 00000000) followed by the 8-byte
target address reaches any address, at 14 bytes.
"""

from __future__ import annotations

import struct

JMP_REL32_OPCODE = 0xE9
JMP_REL32_SIZE = 5
ABS_JMP_PREFIX = b"\xff\x25\x00\x00\x00\x00"  # jmp qword [rip+0]: the target is the next 8 bytes
ABS_JMP_SIZE = len(ABS_JMP_PREFIX) + 8

_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1


def rel32_displacement(site: int, target: int, size: int = JMP_REL32_SIZE) -> int:
    """The displacement an instruction of `size` bytes at runtime address `site` needs to reach `target`."""
    return target - (site + size)


def rel32_reaches(site: int, target: int, size: int = JMP_REL32_SIZE) -> bool:
    """Whether a rel32 branch or rip-relative reference of `size` bytes at `site` can reach `target`."""
    return _INT32_MIN <= rel32_displacement(site, target, size) <= _INT32_MAX


def encode_jmp_rel32(site: int, target: int) -> bytes:
    """The 5 bytes of `jmp target` placed at runtime address `site`; ValueError if out of reach."""
    if not rel32_reaches(site, target):
        raise ValueError(f"jmp rel32 at {site:#x} cannot reach {target:#x} (beyond ±2 GiB)")
    return struct.pack("<Bi", JMP_REL32_OPCODE, rel32_displacement(site, target))


def decode_jmp_rel32(site: int, code: bytes) -> int | None:
    """The target of a `jmp rel32` at `site` whose first bytes are `code`, or None if it is not one."""
    if len(code) < JMP_REL32_SIZE or code[0] != JMP_REL32_OPCODE:
        return None
    (displacement,) = struct.unpack_from("<i", code, 1)
    return site + JMP_REL32_SIZE + displacement


def encode_abs_jmp(target: int) -> bytes:
    """The 14-byte stub `jmp [rip+0]; .quad target` that reaches any 64-bit address."""
    return ABS_JMP_PREFIX + struct.pack("<Q", target)


def decode_abs_jmp(code: bytes) -> int | None:
    """The target of an absolute stub, or None if `code` does not start with one."""
    if len(code) < ABS_JMP_SIZE or code[: len(ABS_JMP_PREFIX)] != ABS_JMP_PREFIX:
        return None
    return struct.unpack_from("<Q", code, len(ABS_JMP_PREFIX))[0]


def encode_jump(site: int, target: int) -> bytes:
    """The shortest jump from `site` to `target`: rel32 when it reaches, else the absolute stub."""
    return encode_jmp_rel32(site, target) if rel32_reaches(site, target) else encode_abs_jmp(target)
