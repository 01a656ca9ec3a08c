"""The application object shared by every command: output helpers and the one way to abort."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from hpkg.errors import EXIT_OK, HpkgError, RefusedError, TargetError


def _echo_result(text: str) -> None:
    """Write one result line to stdout; a reader that went away ends the run quietly, a full disk is one
    `error:` line (exit 6), neither a traceback."""
    _echo_pieces((text,))


# Pieces of a streamed result are written in runs of about this many characters.
_WRITE_RUN = 1 << 20


def _echo_pieces(pieces: Iterable[str]) -> None:
    """Write the pieces as one result line (see _echo_result), a run at a time: never joined whole."""
    try:
        run: list[str] = []
        size = 0
        for piece in pieces:
            run.append(piece)
            size += len(piece)
            if size >= _WRITE_RUN:
                click.echo("".join(run), nl=False)
                run, size = [], 0
        click.echo("".join(run))
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


def json_pieces(document: Any) -> Iterator[str]:
    """The text of `json.dumps(document, indent=2)`, in pieces; in a top-level dict, an iterator value
    stands for a list and is read one item at a time."""
    if not isinstance(document, dict) or not document:
        yield json.dumps(document, indent=2)
        return
    opening = "{"
    for key, value in document.items():
        head = f"{opening}\n  {json.dumps(key)}: "
        opening = ","
        if not isinstance(value, Iterator):
            yield head + json.dumps(value, indent=2).replace("\n", "\n  ")
            continue
        separator = head + "[\n    "
        for item in value:
            # Encoded JSON holds no newline inside a string: every one is indentation.
            yield separator + json.dumps(item, indent=2).replace("\n", "\n    ")
            separator = ",\n    "
        yield head + "[]" if separator.startswith(head) else "\n  ]"
    yield "\n}"


@dataclass
class Application:
    """Carries global options; data goes to stdout, messages to stderr."""

    quiet: bool = False

    def display(self, text: str = "") -> None:
        """Write results to stdout."""
        _echo_result(text)

    def display_json(self, document: Any) -> None:
        """Write one JSON document to stdout (for `--json`). A value of a top-level key may be an
        iterator: it is written as a list, item by item (the diff of a large library lists hundreds
        of thousands of functions, which as dicts and then as text at once took gigabytes)."""
        _echo_pieces(json_pieces(document))

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
