"""The last check on a package function: every operand that names an address was covered by a reference.

A reference the finder missed would be copied with its fix-relative value and point into nowhere
once the code runs from the package; an indirect jump through a switch table that was not recovered
would leave the package. Either is a refusal reason.
"""

from __future__ import annotations

import bisect

from hpkg.arch.x86_64 import BRANCH_MNEMONICS, relocation_recipe
from hpkg.builder.decode import decode
from hpkg.builder.fixups import FixRelocations, Fixups
from hpkg.builder.model import Function, Reference, TargetKind


class OperandCoverage:
    """Checks a package function's decoded operands and static relocations against its references."""

    def __init__(self, placement: Fixups, relocations: FixRelocations) -> None:
        self._placement = placement
        self._static = relocations.static
        self._static_addresses = relocations.static_addresses
        self._unresolved = placement.unresolved
        self._reason = placement.reason

    @property
    def _label(self) -> str:
        return self._placement.label

    def check(self, fn: Function, references: tuple[Reference, ...]) -> None:
        """Report every operand or static relocation of `fn` that no reference covers."""
        self._check_coverage(fn, references)

    def _check_coverage(self, fn: Function, references: tuple[Reference, ...]) -> None:
        """Every rip-relative operand, direct branch and static relocation must have been resolved."""
        covered = sorted(r.location for r in references)
        instructions, decoded = decode(fn)  # the decoding the references were found in
        if decoded < fn.size and any(b not in (0x00, 0xCC, 0x90) for b in fn.code[decoded:]):
            self._unresolved(fn, decoded, "bytes that do not decode as instructions")
        has_table = any(r.target.kind is TargetKind.JUMP_TABLE for r in references)
        for n, (offset, size, mnemonic, operands) in enumerate(instructions):
            inside = bisect.bisect_left(covered, offset)
            hit = inside < len(covered) and covered[inside] < offset + size
            needs = "rip" in operands or (mnemonic in BRANCH_MNEMONICS and operands.startswith("0x"))
            if needs and not hit:
                self._unresolved(fn, offset, f"an operand no reference covers ({mnemonic} {operands})")
            if mnemonic == "jmp" and not has_table and self._looks_like_switch(instructions, n):
                self._reason(
                    "jump-table-unrecovered", self._label,
                    f"function '{self._label}' at +{offset:#x}: an indirect jump through a switch table"
                    " that was not recovered",
                )
        first = bisect.bisect_left(self._static_addresses, fn.address)
        last = bisect.bisect_left(self._static_addresses, fn.end)
        for reloc in self._static[first:last]:
            if relocation_recipe(reloc.type) is not None:
                offset = reloc.address - fn.address
                if offset not in covered:
                    self._unresolved(fn, offset, f"static relocation {reloc.type} against '{reloc.symbol}'")

    @staticmethod
    def _looks_like_switch(instructions: list, n: int) -> bool:
        """`movsxd r, [base + idx*4]; add r, base; jmp r` (PIC) or `jmp [table + idx*8]` (non-PIC)."""
        operands = instructions[n][3]
        if operands.startswith("qword ptr [") and "*8" in operands and "rip" not in operands:
            return True
        if operands.startswith("r") and " " not in operands:
            return any(i[2] == "movsxd" and "*4]" in i[3] for i in instructions[max(0, n - 8) : n])
        return False
