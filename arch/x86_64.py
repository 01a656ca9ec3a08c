"""x86-64 facts, as tables named after ABI constants: relocation types, instruction bytes, jump encodings.

Relocation types follow the System V x86-64 psABI (Table "Relocation Types"; S = the symbol's
address, A = the addend, P = the address of the field, G = a GOT slot holding S). Each entry says
what the diff sees in its field (`FieldKind`), how wide the field is and which values fit it; the
builder reads the kind and width, the loader computes values and checks ranges from the same entry.
`relocation_type` is the one lookup, and names an unknown type in its error.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass


class FieldKind(enum.Enum):
    """How a reference field encodes its target (the builder calls it `ReferenceKind`)."""

    PC32 = "pc32"  # field = target + addend - field address (rip-relative operands, call/jmp rel32)
    PC8 = "pc8"  # short branch rel8 (only ever inside a function)
    ABS32 = "abs32"  # field = target + addend, zero-extended 32 bits (non-PIC)
    ABS32S = "abs32s"  # sign-extended 32 bits (non-PIC, e.g. jmp [table + rax*8])
    ABS64 = "abs64"  # 64-bit absolute (movabs)
    GOTPC32 = "gotpc32"  # field = GOT slot + addend - field address (mov foo@GOTPCREL(%rip))
    TPOFF32 = "tpoff32"  # a TLS offset from the thread pointer (fs:)


INT32_RANGE = (-(1 << 31), (1 << 31) - 1)
UINT32_RANGE = (0, (1 << 32) - 1)
ANY64_RANGE = (-(1 << 63), (1 << 64) - 1)  # a 64-bit field holds any address or offset
NO_RANGE = (0, -1)  # a type with no field of its own


@dataclass(frozen=True)
class RelocationType:
    """One psABI relocation type: its number, what its field holds, and which values fit."""

    name: str  # the ABI constant, e.g. "R_X86_64_PC32"
    number: int  # ELF64_R_TYPE(r_info)
    field: FieldKind | None  # what the diff sees at the field; None: it names no code or data reference
    width: int  # field width in bytes (0: the type writes no field in code or data)
    value_range: tuple[int, int] = NO_RANGE  # inclusive bounds of a value that fits the field
    pc_relative: bool = False  # the value is S + A - P
    through_got: bool = False  # the value is G + A - P: the field reaches a GOT slot holding S
    relaxable: bool = False  # the linker may turn `mov foo@GOTPCREL(%rip)` into `lea foo(%rip)`
    binds_got_slot: bool = False  # a dynamic relocation that fills a GOT slot with S

    @property
    def short_name(self) -> str:
        """The name without "R_" (how LIEF and pyelftools spell the enum member): "X86_64_PC32"."""
        return self.name.removeprefix("R_")

    def fits(self, value: int) -> bool:
        """Whether `value` can be stored in this type's field without truncation."""
        low, high = self.value_range
        return low <= value <= high


def _type(name: str, number: int, field: FieldKind | None = None, width: int = 0, **facts) -> RelocationType:
    return RelocationType(f"R_X86_64_{name}", number, field, width, **facts)


_K = FieldKind
# The psABI table. Types that carry no code or data reference (NONE, SIZE32/64, the dynamic ones)
# have no field kind: the diff ignores them, the loader never writes them.
R_X86_64_NONE = _type("NONE", 0)
R_X86_64_64 = _type("64", 1, _K.ABS64, 8, value_range=ANY64_RANGE, binds_got_slot=True)
R_X86_64_PC32 = _type("PC32", 2, _K.PC32, 4, value_range=INT32_RANGE, pc_relative=True)
R_X86_64_GOT32 = _type("GOT32", 3)
R_X86_64_PLT32 = _type("PLT32", 4, _K.PC32, 4, value_range=INT32_RANGE, pc_relative=True)
R_X86_64_COPY = _type("COPY", 5)
R_X86_64_GLOB_DAT = _type("GLOB_DAT", 6, binds_got_slot=True)
R_X86_64_JUMP_SLOT = _type("JUMP_SLOT", 7, binds_got_slot=True)
R_X86_64_RELATIVE = _type("RELATIVE", 8)
R_X86_64_GOTPCREL = _type("GOTPCREL", 9, _K.GOTPC32, 4, value_range=INT32_RANGE, through_got=True)
R_X86_64_32 = _type("32", 10, _K.ABS32, 4, value_range=UINT32_RANGE)
R_X86_64_32S = _type("32S", 11, _K.ABS32S, 4, value_range=INT32_RANGE)
R_X86_64_16 = _type("16", 12)
R_X86_64_PC16 = _type("PC16", 13)
R_X86_64_8 = _type("8", 14)
R_X86_64_PC8 = _type("PC8", 15)
R_X86_64_DTPMOD64 = _type("DTPMOD64", 16)
R_X86_64_DTPOFF64 = _type("DTPOFF64", 17)
R_X86_64_TPOFF64 = _type("TPOFF64", 18, binds_got_slot=True)
# The TLS types reach a GOT entry pc-relatively (TLSGD, TLSLD, GOTTPOFF) or hold a signed offset.
R_X86_64_TLSGD = _type("TLSGD", 19, _K.GOTPC32, 4, value_range=INT32_RANGE, pc_relative=True)
R_X86_64_TLSLD = _type("TLSLD", 20, _K.GOTPC32, 4, value_range=INT32_RANGE, pc_relative=True)
R_X86_64_DTPOFF32 = _type("DTPOFF32", 21, _K.TPOFF32, 4, value_range=INT32_RANGE)
R_X86_64_GOTTPOFF = _type("GOTTPOFF", 22, _K.GOTPC32, 4, value_range=INT32_RANGE, pc_relative=True)
R_X86_64_TPOFF32 = _type("TPOFF32", 23, _K.TPOFF32, 4, value_range=INT32_RANGE)
# PC64 is S + A - P in 8 bytes; the diff compares it like an absolute word (its target, not its bits).
R_X86_64_PC64 = _type("PC64", 24, _K.ABS64, 8, value_range=ANY64_RANGE, pc_relative=True)
R_X86_64_GOTOFF64 = _type("GOTOFF64", 25)
R_X86_64_GOTPC32 = _type("GOTPC32", 26, _K.PC32, 4, value_range=INT32_RANGE, pc_relative=True)
R_X86_64_GOT64 = _type("GOT64", 27)
R_X86_64_GOTPCREL64 = _type("GOTPCREL64", 28)
R_X86_64_GOTPC64 = _type("GOTPC64", 29)
R_X86_64_GOTPLT64 = _type("GOTPLT64", 30)
R_X86_64_PLTOFF64 = _type("PLTOFF64", 31)
R_X86_64_SIZE32 = _type("SIZE32", 32)
R_X86_64_SIZE64 = _type("SIZE64", 33)
R_X86_64_GOTPC32_TLSDESC = _type("GOTPC32_TLSDESC", 34)
R_X86_64_TLSDESC_CALL = _type("TLSDESC_CALL", 35)
R_X86_64_TLSDESC = _type("TLSDESC", 36)
R_X86_64_IRELATIVE = _type("IRELATIVE", 37)
R_X86_64_RELATIVE64 = _type("RELATIVE64", 38)
R_X86_64_GOTPCRELX = _type(
    "GOTPCRELX", 41, _K.GOTPC32, 4, value_range=INT32_RANGE, through_got=True, relaxable=True
)
R_X86_64_REX_GOTPCRELX = _type(
    "REX_GOTPCRELX", 42, _K.GOTPC32, 4, value_range=INT32_RANGE, through_got=True, relaxable=True
)

RELOCATION_TYPES: dict[str, RelocationType] = {
    t.name: t
    for t in (
        R_X86_64_NONE, R_X86_64_64, R_X86_64_PC32, R_X86_64_GOT32, R_X86_64_PLT32, R_X86_64_COPY,
        R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT, R_X86_64_RELATIVE, R_X86_64_GOTPCREL, R_X86_64_32,
        R_X86_64_32S, R_X86_64_16, R_X86_64_PC16, R_X86_64_8, R_X86_64_PC8, R_X86_64_DTPMOD64,
        R_X86_64_DTPOFF64, R_X86_64_TPOFF64, R_X86_64_TLSGD, R_X86_64_TLSLD, R_X86_64_DTPOFF32,
        R_X86_64_GOTTPOFF, R_X86_64_TPOFF32, R_X86_64_PC64, R_X86_64_GOTOFF64, R_X86_64_GOTPC32,
        R_X86_64_GOT64, R_X86_64_GOTPCREL64, R_X86_64_GOTPC64, R_X86_64_GOTPLT64, R_X86_64_PLTOFF64,
        R_X86_64_SIZE32, R_X86_64_SIZE64, R_X86_64_GOTPC32_TLSDESC, R_X86_64_TLSDESC_CALL,
        R_X86_64_TLSDESC, R_X86_64_IRELATIVE, R_X86_64_RELATIVE64, R_X86_64_GOTPCRELX,
        R_X86_64_REX_GOTPCRELX,
    )
}
RELOCATION_TYPES_BY_NUMBER: dict[int, RelocationType] = {t.number: t for t in RELOCATION_TYPES.values()}

# Dynamic relocation types that bind a GOT slot to a symbol, in LIEF's spelling ("X86_64_GLOB_DAT").
GOT_RELOCATIONS = frozenset(t.short_name for t in RELOCATION_TYPES.values() if t.binds_got_slot)


class UnknownRelocationType(ValueError):
    """A relocation type that is not in the x86-64 psABI table."""


def relocation_type(name: str) -> RelocationType:
    """The psABI entry of a relocation type, by ABI name ("R_X86_64_PC32") or LIEF's ("X86_64_PC32")."""
    found = RELOCATION_TYPES.get(name if name.startswith("R_") else "R_" + name)
    if found is None:
        raise UnknownRelocationType(f"unknown x86-64 relocation type {name!r} (not in the psABI table)")
    return found


def relocation_recipe(name: str) -> tuple[FieldKind, int] | None:
    """The field kind and width of a static relocation type, or None when it names no reference.

    A type outside the psABI table names nothing the diff can follow either, so it is None too
    (`relocation_type` is the lookup that raises for it).
    """
    found = RELOCATION_TYPES.get("R_" + name.removeprefix("R_"))
    if found is None or found.field is None:
        return None
    return found.field, found.width


PAGE_SIZE = 4096  # the base page: ELF segments and the loader's areas are aligned to it

# -- instruction bytes -------------------------------------------------------------------------
ENDBR64 = b"\xf3\x0f\x1e\xfa"  # the IBT landing pad at an indirect-branch target
INT3 = 0xCC  # the one-byte trap that fills gaps between functions
NOP = 0x90
# Bytes a linker or assembler leaves after a function's last instruction: never code to patch.
FILL_BYTES = frozenset({0x00, INT3, NOP})
BND_PREFIX = 0xF2  # MPX `bnd` prefix, still emitted by ld in IBT/BND PLT entries
CALL_REL32_OPCODE = 0xE8
JMP_REL32_OPCODE = 0xE9
JCC_REL32_OPCODE = (0x0F, range(0x80, 0x90))  # 0F 80..8F: jo … jg with a rel32 displacement
JMP_RIP_INDIRECT = b"\xff\x25"  # jmp *disp32(%rip): FF /4 with ModRM mod=00 rm=101
JMP_RIP_INDIRECT_SIZE = 6

def is_padding(mnemonic: str) -> bool:
    """Alignment fill between or inside functions: every nop form, and int3 fill."""
    return mnemonic in ("nop", "int3") or mnemonic.startswith("nop")


def is_rel32_branch_field(code: bytes, offset: int) -> bool:
    """Whether the rel32 field at `offset` belongs to call/jmp rel32 (E8/E9) or jcc rel32 (0F 80..8F).

    A rip-relative operand's disp32 always follows a ModRM byte with mod=00, rm=101 (0x05, 0x0D, … 0x3D),
    which is never one of those opcodes, so the byte before the field tells them apart.
    """
    if offset >= 1 and code[offset - 1] in (CALL_REL32_OPCODE, JMP_REL32_OPCODE):
        return True
    return offset >= 2 and code[offset - 2] == JCC_REL32_OPCODE[0] and code[offset - 1] in JCC_REL32_OPCODE[1]


def rip_indirect_jump_slot(code: bytes, offset: int, address: int) -> int | None:
    """The slot a `jmp *disp32(%rip)` at `offset` of `code` (at link address `address`) reads, or None."""
    end = offset + JMP_RIP_INDIRECT_SIZE
    if end > len(code) or code[offset : offset + 2] != JMP_RIP_INDIRECT:
        return None
    return address + end + struct.unpack_from("<i", code, offset + 2)[0]


# -- jump encodings the loader writes ------------------------------------------------------------
# `jmp rel32` is E9 and a signed 32-bit displacement counted from the end of the instruction: 5 bytes,
# the shortest jump that reaches anywhere within ±2 GiB, so a patch site is a function's first 5 bytes.
# Beyond ±2 GiB (a call from package code to a library mapped far away) the stub `jmp *0(%rip)`
# (FF 25 00000000) followed by the 8-byte target reaches any address, at 14 bytes.
JMP_REL32_SIZE = 5
ABS_JMP_PREFIX = JMP_RIP_INDIRECT + b"\x00\x00\x00\x00"  # jmp qword [rip+0]: the target is the next 8 bytes
ABS_JMP_SIZE = len(ABS_JMP_PREFIX) + 8


def rel32_displacement(site: int, target: int, size: int = JMP_REL32_SIZE) -> int:
    """The displacement an instruction of `size` bytes at address `site` needs to reach `target`."""
    return target - (site + size)


def rel32_reaches(site: int, target: int, size: int = JMP_REL32_SIZE) -> bool:
    """Whether a rel32 branch or rip-relative reference of `size` bytes at `site` can reach `target`."""
    low, high = INT32_RANGE
    return low <= rel32_displacement(site, target, size) <= high


def encode_jmp_rel32(site: int, target: int) -> bytes:
    """The 5 bytes of `jmp target` placed at address `site`; ValueError if out of reach."""
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
    """The 14-byte stub `jmp *0(%rip); .quad target` that reaches any 64-bit address."""
    return ABS_JMP_PREFIX + struct.pack("<Q", target)


def decode_abs_jmp(code: bytes) -> int | None:
    """The target of an absolute stub, or None if `code` does not start with one."""
    if len(code) < ABS_JMP_SIZE or code[: len(ABS_JMP_PREFIX)] != ABS_JMP_PREFIX:
        return None
    return struct.unpack_from("<Q", code, len(ABS_JMP_PREFIX))[0]


def encode_jmp_through_slot(site: int, slot: int) -> bytes:
    """`jmp *slot(%rip)` at `site`: a jump through a GOT slot that holds the target (6 bytes)."""
    return JMP_RIP_INDIRECT + struct.pack("<i", rel32_displacement(site, slot, JMP_RIP_INDIRECT_SIZE))


def encode_jump(site: int, target: int) -> bytes:
    """The shortest jump from `site` to `target`: rel32 when it reaches, else the absolute stub."""
    return encode_jmp_rel32(site, target) if rel32_reaches(site, target) else encode_abs_jmp(target)
