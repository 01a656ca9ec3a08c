"""Where `diff` and `build` find the debug files of stripped binaries: the option they share and the
lookup they hand to load_image (local roots first, then the debuginfod servers of DEBUGINFOD_URLS)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click

if TYPE_CHECKING:
    from hpkg.builder.image import DebugLookup

F = TypeVar("F", bound=Callable[..., object])

_HELP = (
    "Do not fetch missing debug files from the debuginfod servers of DEBUGINFOD_URLS"
    " (an empty DEBUGINFOD_URLS does the same)."
)


def no_debuginfod_option(command: F) -> F:
    """`--no-debuginfod`, passed to the command as `no_debuginfod`."""
    return click.option("--no-debuginfod", is_flag=True, help=_HELP)(command)


def debuginfod_fetch(no_debuginfod: bool) -> DebugLookup | None:
    """The debuginfod lookup for load_image(fetch_debug=…), or None when it is off or names no server.

    A DEBUGINFOD_* variable that elfutils' client would not accept is a usage error (exit 2).
    """
    if no_debuginfod:
        return None
    from hpkg.builder.debuginfod import debuginfod_lookup

    try:
        return debuginfod_lookup()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
