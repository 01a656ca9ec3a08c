"""Patch sites: the baseline bytes a `jmp rel32` overwrites at a replaced function's entry.

The jump is opcode E9 plus a 32-bit displacement: 5 bytes. A function shorter than that may lend
the alignment padding after it (nop or int3 fill up to the next function); otherwise the jump
would overwrite the next function's first bytes, and it is refused.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass

from hpkg.arch.x86_64 import JMP_REL32_SIZE, is_padding
from hpkg.builder.decode import decode_bytes
from hpkg.builder.model import DiffResult, Function, FunctionPair, Image
from hpkg.builder.verdict import Reason

JUMP_SIZE = JMP_REL32_SIZE  # the patch site's `jmp rel32`: E9 + rel32


@dataclass(frozen=True)
class PatchSite:
    """Where a replaced function's jump goes in the baseline, and what must be there before it is written."""

    address: int  # OLD link address of the function's entry
    size: int  # bytes the site vouches for: the function, plus the padding it borrows when shorter than 5
    sha256: bytes  # SHA-256 of those bytes in the baseline
    pre_image: bytes  # the 5 bytes the jump overwrites


def usable_padding(image: Image, function: Function, limit: int) -> int:
    """How many bytes after `function` (up to `limit`) are alignment fill a jump may overwrite."""
    gap = image.read(function.end, max(0, limit - function.end))
    if not gap:
        return 0
    instructions, _ = decode_bytes(gap)
    usable = 0
    for offset, size, mnemonic, _ in instructions:
        if not is_padding(mnemonic) or offset != usable:
            break
        usable = offset + size
    return usable


def patch_site(image: Image, function: Function, next_start: int) -> PatchSite | None:
    """The site of a baseline function, or None when it is too small for the jump and has no padding."""
    size = function.size
    if size < JUMP_SIZE:
        limit = min(next_start, function.end + 64)
        if size + usable_padding(image, function, limit) < JUMP_SIZE:
            return None
        size = JUMP_SIZE
    covered = image.read(function.address, size)
    return PatchSite(function.address, size, hashlib.sha256(covered).digest(), covered[:JUMP_SIZE])


def patch_sites(
    diff: DiffResult, pairs: tuple[FunctionPair, ...]
) -> tuple[dict[int, PatchSite], list[Reason]]:
    """Patch sites of the replaced functions (keyed by NEW address), or a reason for each too-small one."""
    starts = sorted(
        {p.old.function.address for p in diff.pairs if p.old}
        | {s.end for s in diff.old.sections if s.executable}
    )
    sites: dict[int, PatchSite] = {}
    reasons: list[Reason] = []
    for pair in pairs:
        if pair.old is None:
            continue
        fn = pair.old.function
        following = bisect.bisect_right(starts, fn.address)
        site = patch_site(diff.old, fn, starts[following] if following < len(starts) else fn.end)
        if site is None:
            reasons.append(
                Reason(
                    "function-too-small", pair.name,
                    f"function '{pair.name}' is {fn.size} bytes, shorter than the {JUMP_SIZE}-byte jump,"
                    " and no padding follows it",
                )
            )
            continue
        sites[pair.new.function.address] = site
    return sites, reasons
