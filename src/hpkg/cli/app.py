"""The application object shared by every command: output helpers and the one way to abort."""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from hpkg.errors import EXIT_OK, HpkgError, RefusedError, TargetError


def _echo_result(text: str) -> None:
    """Write one result line to stdout; a reader that went away ends the run quietly, a full disk is one
    `error:` line (exit 6), neither a traceback."""
    try:
        click.echo(text)
    except BrokenPipeError:
        # `hpkg … | head`: the reader has all it wanted. Point stdout at /dev/null so that the
        # interpreter's final flush does not fail again, and stop as `head` would have us stop.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        sys.exit(EXIT_OK)
    except OSError as exc:
        raise TargetError(f"cannot write to standard output: {exc.strerror or exc}") from None


def hide_library_warnings() -> None:
    """Keep Python warnings of the libraries hpkg uses off stderr, where a user expects results and one
    `error:` line; `python -W …` or HPKG_DEBUG=1 shows them again (the fuzz harness runs with the latter,
    so that a warning is still found and fixed where it arises)."""
    if not sys.warnoptions and not os.environ.get("HPKG_DEBUG"):
        warnings.simplefilter("ignore")


@dataclass
class Application:
    """Carries global options; data goes to stdout, messages to stderr."""

    quiet: bool = False

    def display(self, text: str = "") -> None:
        """Write results to stdout."""
        _echo_result(text)

    def display_json(self, document: Any) -> None:
        """Write one JSON document to stdout (for `--json`)."""
        _echo_result(json.dumps(document, indent=2, sort_keys=False))

    def info(self, text: str) -> None:
        """A progress or context message on stderr, hidden by --quiet."""
        if not self.quiet:
            click.echo(text, err=True)

    def warning(self, text: str) -> None:
        click.echo(f"warning: {text}", err=True)

    def abort(self, text: str, code: int) -> NoReturn:
        """Print one error line and exit with `code`."""
        click.echo(f"error: {text}", err=True)
        sys.exit(code)

    @staticmethod
    def abort_with(exc: HpkgError) -> NoReturn:
        """Turn an HpkgError into `error: …` (plus one line per refusal reason) and its exit code."""
        click.echo(f"error: {exc}", err=True)
        if isinstance(exc, RefusedError):
            for reason in exc.reasons:
                click.echo(f"  - {reason}", err=True)
        sys.exit(exc.exit_code)
