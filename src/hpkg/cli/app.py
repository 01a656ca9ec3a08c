"""The application object shared by every command: output helpers and the one way to abort."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from hpkg.errors import CODE_USAGE, EXIT_OK, HpkgError, RefusedError, TargetError

# The N of every `hpkg.<command>/N` schema name: raised when a document changes incompatibly.
JSON_CONTRACT_VERSION = 1


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
    """Carries global options and the running command; data goes to stdout, messages to stderr.

    Under `--json` every document on stdout carries `"schema": "hpkg.<command>/1"`, and a failure is a
    document too (`{"schema": …, "error": {"code", "exit", "message"}}`) beside its `error:` line.
    """

    quiet: bool = False
    verbose: bool = False
    command: str | None = None  # the subcommand being run (set by HpkgCommand before it parses)
    as_json: bool = False  # `--json` was given to it (set before parsing, so usage errors know too)

    @property
    def schema(self) -> str:
        """The schema name of this command's documents (docs/json.md, schemas/<command>.json)."""
        return f"hpkg.{self.command or 'hpkg'}/{JSON_CONTRACT_VERSION}"

    def display(self, text: str = "") -> None:
        """Write results to stdout."""
        _echo_result(text)

    def display_json(self, document: dict[str, Any]) -> None:
        """Write one JSON document to stdout (for `--json`), its schema name first. A value of a
        top-level key may be an iterator: it is written as a list, item by item (the diff of a large
        library lists hundreds of thousands of functions, which as dicts and then as text at once took
        gigabytes)."""
        _echo_pieces(json_pieces({"schema": self.schema, **document}))

    def info(self, text: str) -> None:
        """A progress or context message on stderr, hidden by --quiet."""
        if not self.quiet:
            click.echo(text, err=True)

    def detail(self, text: str) -> None:
        """A detail line on stderr shown only with -v (and never with --quiet)."""
        if self.verbose and not self.quiet:
            click.echo(text, err=True)

    def warning(self, text: str) -> None:
        click.echo(f"warning: {text}", err=True)

    def fail(
        self, message: str, exit_code: int, code: str, reasons: tuple[str, ...] = (),
        extra: dict[str, Any] | None = None,
    ) -> NoReturn:
        """The one way a run ends in failure: `error: …` (plus one line per reason) on stderr, the error
        document on stdout under `--json` (with `extra` top-level facts, e.g. build's inputs), exit."""
        if self.as_json:
            error: dict[str, Any] = {"code": code, "exit": exit_code, "message": message}
            if reasons:
                error["reasons"] = list(reasons)
            # When stdout is gone, the error line below is all that can be said.
            with contextlib.suppress(HpkgError, SystemExit):
                self.display_json({**(extra or {}), "error": error})
        click.echo(f"error: {message}", err=True)
        for reason in reasons:
            click.echo(f"  - {reason}", err=True)
        sys.exit(exit_code)

    def abort(self, text: str, exit_code: int, code: str = CODE_USAGE) -> NoReturn:
        """Print one error line (and its document under --json) and exit with `exit_code`."""
        self.fail(text, exit_code, code)

    def abort_with(self, exc: HpkgError, extra: dict[str, Any] | None = None) -> NoReturn:
        """Turn an HpkgError into `error: …` (plus one line per refusal reason) and its exit code."""
        reasons = exc.reasons if isinstance(exc, RefusedError) else ()
        self.fail(str(exc), exc.exit_code, exc.code, reasons, extra)
