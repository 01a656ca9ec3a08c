"""`hpkg apply PKG --file BINARY -o OUT`, `--pid PID` or `--all`: patch a file copy, a process, or all.

The command opens the package under the signature policy of `hpkg.loader.trust`, then dispatches on
the target option: `--file` writes a patched copy of a baseline ELF file (`_apply_to_file`), `--pid`
patches a running process (`_apply_to_process`, hpkg.loader.apply), `--all` every process that maps
the baseline (`_apply_everywhere`, hpkg.loader.machine), sharing the package opening and the output
conventions below.

Signature policy (exit 3 when it fails): `--key PUB` requires a valid signature by that key;
`--allow-unsigned` does not require one; with neither, the package is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from hpkg.cli.app import Application
from hpkg.cli.command import HpkgCommand, json_option
from hpkg.cli.paths import BINARY, JOBS, KEY, PACKAGE, PID, TIMEOUT, OutputFile, refuse_output_onto_input

if TYPE_CHECKING:
    from collections.abc import Callable

    from hpkg.loader.machine import MachineResult, ProcessOutcome
    from hpkg.loader.trust import TrustedPackage


@click.command("apply", cls=HpkgCommand)
@click.argument("package", type=PACKAGE)
@click.option(
    "--file", "binary", type=BINARY, help="Baseline ELF file to patch (into a copy)."
)
@click.option("-o", "--output", type=OutputFile(), help="Where --file writes the patched copy.")
@click.option("--pid", type=PID, help="Running process to patch live.")
@click.option(
    "--all", "everywhere", is_flag=True,
    help="Patch every process whose mappings include the baseline (executable or library, by build-id).",
)
@click.option("--jobs", type=JOBS, help="With --all: processes patched at once  [default: 4].")
@click.option(
    "--timeout", type=TIMEOUT, default=5.0, show_default=True,
    help="With --pid or --all: seconds to wait (per process) for a moment no thread is inside a replaced"
    " function.",
)
@click.option("--key", type=KEY, help="Public key the package must be signed by.")
@click.option("--allow-unsigned", is_flag=True, help="Apply without requiring a valid signature.")
@json_option
@click.pass_obj
def command(
    app: Application,
    package: str,
    binary: str | None,
    output: str | None,
    pid: int | None,
    everywhere: bool,
    jobs: int | None,
    timeout: float,
    key: str | None,
    allow_unsigned: bool,
    as_json: bool,
) -> None:
    """Apply a package to a target: with --file, write a patched copy of the baseline to -o OUT; with
    --pid, switch a running process to the fix (all threads stopped only for the safety check and the
    switch; the pause is reported); with --all, every process of the machine that maps the baseline,
    including a file deleted or replaced on disk since it started, each on its own (one line per
    process: pid, command, image, outcome, reason, pause; then a summary).

    Applying is idempotent: a process or a --file input that already carries the package, or a higher
    level for the same baseline, is reported "already applied" (changed: false in --json) and counts as
    success; with --file, OUT is then an unchanged copy of the input.

    Exit codes: 0 applied or already applied (--all: in every affected process; a process that exited
    meanwhile is reported gone, and no affected process at all is success too), 2 usage (also -o naming
    an input or a device), 3 invalid, tampered or unsigned package, or unreadable binary, 4 refused
    (another build, patch sites changed, a symbol the file cannot provide, a lower or another level, a
    thread inside a replaced function; --all: some process refused, the others are done), 6 OUT not
    writable, or no such process / permission denied.
    """
    if key is not None and allow_unsigned:
        raise click.UsageError("--key and --allow-unsigned exclude each other")
    if sum((binary is not None, pid is not None, everywhere)) != 1:
        raise click.UsageError("name one target: --file BINARY -o OUT, --pid PID, or --all")
    if jobs is not None and not everywhere:
        raise click.UsageError("--jobs is for --all")
    if pid is not None or everywhere:
        if output is not None:
            raise click.UsageError("-o is for --file; --pid and --all patch the processes themselves")
        from hpkg.loader.trust import open_package

        trusted = open_package(package, key, allow_unsigned)
        if pid is not None:
            _apply_to_process(app, trusted, pid, timeout, as_json)
        else:
            _apply_everywhere(app, trusted, jobs, timeout, as_json)
        return
    if output is None:
        raise click.UsageError("--file needs -o OUT, where the patched copy is written")
    refuse_output_onto_input(output, {"the baseline --file": binary, "the package": package, "the key": key})

    from hpkg.loader.trust import open_package

    trusted = open_package(package, key, allow_unsigned)
    _apply_to_file(app, trusted, binary, output, as_json)


def _apply_to_file(
    app: Application, trusted: TrustedPackage, binary: str, output: str, as_json: bool
) -> None:
    """The --file branch: compatibility, relocation at link addresses, a new ELF written to `output`."""
    from hpkg.loader.file_apply import FileCarrying, apply_to_file

    result = apply_to_file(trusted.package, binary, output)
    if as_json:
        app.display_json({**result.to_json(), "signature_checked": trusted.signature_checked})
        return
    app.info(trusted.signature_line())
    if not isinstance(result, FileCarrying):
        for line in result.compat.lines():
            app.info(line)
    for line in result.lines():
        app.display(line)


def _apply_to_process(
    app: Application, trusted: TrustedPackage, pid: int, timeout: float, as_json: bool
) -> None:
    """The --pid branch: compatibility, placement near the image, safety check, switch (loader/apply.py)."""
    from hpkg.loader.apply import apply_to_process

    result = apply_to_process(trusted.package, pid, timeout)
    if as_json:
        app.display_json({**result.to_json(), "signature_checked": trusted.signature_checked})
        return
    app.info(trusted.signature_line())
    for applied in result.images:
        for line in applied.compat.lines():
            app.info(line)
        for warning in applied.warnings:
            app.warning(warning)
    for line in result.lines():
        app.display(line)


def _apply_everywhere(
    app: Application, trusted: TrustedPackage, jobs: int | None, timeout: float, as_json: bool
) -> None:
    """The --all branch: every process mapping the baseline, each on its own (loader/machine.py)."""
    from hpkg.cli.everywhere import report_everywhere
    from hpkg.loader.machine import DEFAULT_JOBS, apply_everywhere

    if not as_json:
        app.info(trusted.signature_line())

    def run(report: Callable[[ProcessOutcome], None] | None) -> MachineResult:
        return apply_everywhere(trusted.package, timeout, jobs or DEFAULT_JOBS, report=report)

    report_everywhere(app, run, as_json, "the package")
