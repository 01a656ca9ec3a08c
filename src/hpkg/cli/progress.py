"""The progress bar of `hpkg diff` and `hpkg build`: bytes of code decoded, on a terminal only.

In bytes, not functions: the total is known before any function is found (`functions.code_size`), so a
large pair's functions are found only in its forked children, bar or not."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import click

# Show a progress bar only when both images hold at least this much code (and stderr is a terminal).
PROGRESS_MIN_CODE_BYTES = 32 << 10


@contextlib.contextmanager
def progress_bar(label: str, total: int, wanted: bool) -> Iterator[Callable[[int], None] | None]:
    """A bar of `total` bytes of code on stderr when `wanted`, stderr is a terminal and the diff is big
    enough to take a while; else None (the diff then reports no progress). The functions span less
    than their sections (padding between them): the bar is filled when the work ends."""
    if not (wanted and sys.stderr.isatty() and total >= PROGRESS_MIN_CODE_BYTES):
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update
        bar.update(total - bar.pos)
