"""The progress bar of `hpkg diff` and `hpkg build`: functions decoded, on a terminal only."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import click

# Show a progress bar only when the diff has at least this many functions (and stderr is a terminal).
PROGRESS_MIN_FUNCTIONS = 2000


@contextlib.contextmanager
def progress_bar(label: str, total: int, wanted: bool) -> Iterator[Callable[[int], None] | None]:
    """A bar of `total` functions on stderr when `wanted`, stderr is a terminal and the diff is big
    enough to take a while; else None (the diff then reports no progress)."""
    if not (wanted and sys.stderr.isatty() and total >= PROGRESS_MIN_FUNCTIONS):
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update
