"""Function bounds from `.eh_frame` FDEs for the byte compare, read by the builder's own parser.

A thin adapter over `hpkg.elf.ehframe.parse_eh_frame`, so the bench and the diff engine see the
same functions: it names the ranges and sorts them by start address. The builder's parser is
lenient: a record it cannot decode (or a truncated section) ends the list early instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpkg.elf.ehframe import parse_eh_frame


@dataclass(frozen=True)
class FdeRange:
    """One function's code range as its FDE states it (link addresses)."""

    start: int
    size: int


def fde_ranges(data: bytes, section_address: int) -> list[FdeRange]:
    """Every FDE's (start, size) in an `.eh_frame` section's bytes, sorted by start address."""
    return sorted((FdeRange(start, size) for start, size in parse_eh_frame(data, section_address)),
                  key=lambda r: r.start)
