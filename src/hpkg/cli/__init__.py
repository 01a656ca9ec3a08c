"""The `hpkg` command line: a root group that takes only global options and one module per command.

A command's module is imported when that command runs (or when `--help` lists them all), so that
`hpkg apply` loads the loader and never the diff engine (`hpkg.builder`, Capstone, LIEF).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from types import FrameType

try:  # Ctrl-C during start-up (imports take most of it) is one line, not an import traceback.
    import click

    from hpkg import __version__
    from hpkg.cli.app import Application, hide_library_warnings
    from hpkg.errors import (
        CODE_INTERNAL,
        CODE_INTERRUPTED,
        CODE_USAGE,
        EXIT_INTERNAL,
        EXIT_INTERRUPTED,
        EXIT_USAGE,
        HpkgError,
    )
except KeyboardInterrupt:
    sys.stderr.write("error: interrupted\n")
    sys.exit(130)

# One module per command under src/hpkg/cli/, each exposing `command` (a click.Command).
COMMAND_MODULES: tuple[str, ...] = (
    "keygen", "inspect", "verify", "diff", "apply", "build", "status", "revert", "install", "uninstall",
    "agent",
)


class LazyCommands(click.Group):
    """A group whose commands are imported from `hpkg.cli.<name>` on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMAND_MODULES:
            return None
        return importlib.import_module(f"hpkg.cli.{cmd_name}").command


@click.group(cls=LazyCommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hpkg")
@click.option("-q", "--quiet", is_flag=True, help="Only print results and errors (also after the command).")
@click.option("-v", "--verbose", is_flag=True, help="Also print details on stderr (also after the command).")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, verbose: bool) -> None:
    """Build hotpatch packages from shipped ELF binaries and apply them to running processes.

    Exit codes: 0 ok, 1 internal error, 2 usage, 3 invalid input or package,
    4 refused, 5 no change, 6 target unavailable, 130 interrupted.
    Every command takes --json: one document on stdout, errors too (docs/json.md).
    """
    app = ctx.ensure_object(Application)
    app.quiet = app.quiet or quiet
    app.verbose = app.verbose or verbose


def _in_import_machinery(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C as KeyboardInterrupt, except inside an import: raised in importlib's module-lock callback,
    the interpreter prints "Exception ignored … Traceback" and drops it (seen at a lazy import of a
    command). There the signal is sent again a few milliseconds later, once the import is done."""
    if _in_import_machinery(frame):
        again = threading.Timer(0.005, os.kill, (os.getpid(), signal.SIGINT))
        again.daemon = True
        again.start()
        return
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; expected failures become one `error: …` line and their exit code (and, under
    `--json`, an error document on stdout)."""
    hide_library_warnings()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # an ignored SIGINT stays ignored
        signal.signal(signal.SIGINT, _interrupt)
    app = Application()
    try:
        cli.main(args=argv, prog_name="hpkg", standalone_mode=False, obj=app)
    except HpkgError as exc:
        app.abort_with(exc)
    except (click.exceptions.Abort, KeyboardInterrupt):
        app.fail("interrupted", EXIT_INTERRUPTED, CODE_INTERRUPTED)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        app.fail(f"{exc.format_message()}{hint}", EXIT_USAGE, CODE_USAGE)
    except click.ClickException as exc:
        app.fail(exc.format_message(), exc.exit_code if exc.exit_code else EXIT_USAGE, CODE_USAGE)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if os.environ.get("HPKG_DEBUG"):
            raise
        app.fail(
            f"internal error: {type(exc).__name__}: {exc} (set HPKG_DEBUG=1 for a traceback)",
            EXIT_INTERNAL, CODE_INTERNAL,
        )
    sys.exit(0)
