"""Decode x86-64 instructions with Capstone, cheaply: no details, plain tuples, base address 0."""

from __future__ import annotations

from hpkg.builder.model import Function, Instruction

_ACCESS_SIZES = {"byte": 1, "word": 2, "dword": 4, "qword": 8, "tbyte": 10, "xmmword": 16, "ymmword": 32,
                 "zmmword": 64}


def access_size(operands: str) -> int:
    """Bytes a memory operand reads (`qword ptr [...]` → 8); 0 when the address is only taken (lea)."""
    i = operands.find(" ptr [")
    if i < 0:
        return 0
    return _ACCESS_SIZES.get(operands[:i].rsplit(" ", 1)[-1], 0)


def _decoder():
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = False
    return md


_MD = None


def decode(function: Function) -> tuple[list[Instruction], int]:
    """Decode a function (Capstone, no details): instructions, and how many leading bytes decoded.

    Decoding at base 0 makes each address an offset into the function; branch operands then read
    as offsets too (negative ones wrap to 64 bits, see `branch_offset`).
    """
    return decode_bytes(function.code)


def decode_bytes(code: bytes) -> tuple[list[Instruction], int]:
    """`decode` for bytes that are not a whole function (e.g. the padding after one)."""
    global _MD
    if _MD is None:
        _MD = _decoder()
    # Plain (offset, size, mnemonic, operands) tuples: wrapping 600,000 of them in Instruction costs.
    out = list(_MD.disasm_lite(code, 0))
    end = out[-1][0] + out[-1][1] if out else 0
    return out, end


def decode_instructions(function: Function) -> list[Instruction]:
    """`decode` with named fields, for the few places that are not the hot path."""
    instructions, _ = decode(function)
    return [Instruction._make(i) for i in instructions]


def branch_offset(operands: str) -> int:
    """A direct branch's target as an offset from the function start (decoded at base 0)."""
    value = int(operands, 16)
    return value - (1 << 64) if value >= 1 << 63 else value
