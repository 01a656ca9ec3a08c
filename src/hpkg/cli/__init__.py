"""The `hpkg` command line: a root group that takes only global options and one module per command.

A command's module is imported when that command runs (or when `--help` lists them all), so that
`hpkg apply` loads the loader and never the diff engine (`hpkg.builder`, Capstone, LIEF).
"""

from __future__ import annotations

import importlib
import os
import sys

try:  # Ctrl-C during start-up (imports take most of it) is one line, not an import traceback.
    import click

    from hpkg import __version__
    from hpkg.cli.app import Application, hide_library_warnings
    from hpkg.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, HpkgError
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
@click.option("-q", "--quiet", is_flag=True, help="Only print results and errors.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool) -> None:
    """Build hotpatch packages from shipped ELF binaries and apply them to running processes.

    Exit codes: 0 ok, 1 internal error, 2 usage, 3 invalid input or package,
    4 refused, 5 no change, 6 target unavailable, 130 interrupted.
    """
    ctx.obj = Application(quiet=quiet)



def main(argv: list[str] | None = None) -> None:
    """Run the CLI; expected failures become one `error: …` line and their exit code."""
    hide_library_warnings()
    try:
        cli.main(args=argv, prog_name="hpkg", standalone_mode=False)
    except HpkgError as exc:
        Application.abort_with(exc)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if os.environ.get("HPKG_DEBUG"):
            raise
        click.echo(
            f"error: internal error: {type(exc).__name__}: {exc} (set HPKG_DEBUG=1 for a traceback)",
            err=True,
        )
        sys.exit(EXIT_INTERNAL)
    sys.exit(0)
