"""The last check on a package function: every operand that names an address was covered by a reference.

A reference the finder missed would be copied with its fix-relative value and point into nowhere
once the code runs from the package; an indirect jump through a switch table that was not recovered
would leave the package. Either is a refusal reason.
"""

from __future__ import annotations

import bisect

from hpkg.arch.x86_64 import FILL_BYTES, relocation_recipe
from hpkg.builder.decode import instruction_text, scan
from hpkg.builder.fixups import FixRelocations, Fixups
from hpkg.builder.jumptables import switch_dispatches
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
        decoded = scan(fn)  # the decoding the references were found in
        if decoded.end < fn.size and any(b not in FILL_BYTES for b in fn.code[decoded.end :]):
            self._unresolved(fn, decoded.end, "bytes that do not decode as instructions")
        has_table = any(r.target.kind is TargetKind.JUMP_TABLE for r in references)
        # Instruction order: operands that need a reference (False), switch dispatches (True).
        checks = [(i[1], i[2], False) for i in decoded.branches + decoded.rip]
        if not has_table:
            checks += [(offset, 0, True) for offset in switch_dispatches(fn, decoded)]
        for offset, size, dispatch in sorted(checks):
            if dispatch:
                self._reason(
                    "jump-table-unrecovered", self._label,
                    f"function '{self._label}' at +{offset:#x}: an indirect jump through a switch table"
                    " that was not recovered",
                )
                continue
            inside = bisect.bisect_left(covered, offset)
            if not (inside < len(covered) and covered[inside] < offset + size):
                text = instruction_text(fn, offset)
                self._unresolved(fn, offset, f"an operand no reference covers ({text})")
        first = bisect.bisect_left(self._static_addresses, fn.address)
        last = bisect.bisect_left(self._static_addresses, fn.end)
        for reloc in self._static[first:last]:
            if relocation_recipe(reloc.type) is not None:
                offset = reloc.address - fn.address
                if offset not in covered:
                    self._unresolved(fn, offset, f"static relocation {reloc.type} against '{reloc.symbol}'")
