"""x86-64 facts the diff needs, as tables named after ABI constants (relocation recipes, padding)."""

from __future__ import annotations

from hpkg.builder.model import ReferenceKind

# Static relocation types (LIEF names without the "R_" prefix) → (field kind, width in bytes).
# Types that carry no code or data reference (R_X86_64_NONE, SIZE32/64) are left out on purpose.
RELOCATION_RECIPES: dict[str, tuple[ReferenceKind, int]] = {
    "X86_64_PC32": (ReferenceKind.PC32, 4),
    "X86_64_PLT32": (ReferenceKind.PC32, 4),
    "X86_64_GOTPCREL": (ReferenceKind.GOTPC32, 4),
    "X86_64_GOTPCRELX": (ReferenceKind.GOTPC32, 4),
    "X86_64_REX_GOTPCRELX": (ReferenceKind.GOTPC32, 4),
    "X86_64_GOTTPOFF": (ReferenceKind.GOTPC32, 4),
    "X86_64_TLSGD": (ReferenceKind.GOTPC32, 4),
    "X86_64_TLSLD": (ReferenceKind.GOTPC32, 4),
    "X86_64_GOTPC32": (ReferenceKind.PC32, 4),
    "X86_64_32": (ReferenceKind.ABS32, 4),
    "X86_64_32S": (ReferenceKind.ABS32S, 4),
    "X86_64_64": (ReferenceKind.ABS64, 8),
    "X86_64_PC64": (ReferenceKind.ABS64, 8),
    "X86_64_TPOFF32": (ReferenceKind.TPOFF32, 4),
    "X86_64_DTPOFF32": (ReferenceKind.TPOFF32, 4),
}

# Dynamic relocation types that bind a GOT slot to a symbol.
GOT_RELOCATIONS = frozenset({"X86_64_GLOB_DAT", "X86_64_JUMP_SLOT", "X86_64_64", "X86_64_TPOFF64"})

ENDBR64 = b"\xf3\x0f\x1e\xfa"
INT3 = 0xCC


def relocation_recipe(relocation_type: str) -> tuple[ReferenceKind, int] | None:
    """The field kind and width of a static relocation type, or None for kinds that name nothing."""
    return RELOCATION_RECIPES.get(relocation_type)


def is_padding(mnemonic: str) -> bool:
    """Alignment fill between or inside functions: every nop form, and int3 fill."""
    return mnemonic in ("nop", "int3") or mnemonic.startswith("nop")


def is_rel32_branch_field(code: bytes, offset: int) -> bool:
    """Whether the rel32 field at `offset` belongs to call/jmp rel32 (E8/E9) or jcc rel32 (0F 80..8F).

    A rip-relative operand's disp32 always follows a ModRM byte with mod=00, rm=101 (0x05, 0x0D, … 0x3D),
    which is never one of those opcodes, so the byte before the field tells them apart.
    """
    if offset >= 1 and code[offset - 1] in (0xE8, 0xE9):
        return True
    return offset >= 2 and code[offset - 2] == 0x0F and 0x80 <= code[offset - 1] <= 0x8F
