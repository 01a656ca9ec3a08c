"""`hpkg apply PKG --file BINARY -o OUT` or `hpkg apply PKG --pid PID`: patch a file copy or a live process.

The command opens the package under the signature policy of `hpkg.loader.trust`, then dispatches on
the target option: `--file` writes a patched copy of a baseline ELF file (`_apply_to_file`), `--pid`
patches a running process (`_apply_to_process`, hpkg.loader.apply), sharing the package opening and
the output conventions below.

Signature policy (exit 3 when it fails): `--key PUB` requires a valid signature by that key;
`--allow-unsigned` does not require one; with neither, the package is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from hpkg.cli.app import Application
from hpkg.cli.paths import BINARY, KEY, PACKAGE, PID, TIMEOUT, OutputFile, refuse_output_onto_input

if TYPE_CHECKING:
    from hpkg.loader.trust import TrustedPackage


@click.command("apply")
@click.argument("package", type=PACKAGE)
@click.option(
    "--file", "binary", type=BINARY, help="Baseline ELF file to patch (into a copy)."
)
@click.option("-o", "--output", type=OutputFile(), help="Where --file writes the patched copy.")
@click.option("--pid", type=PID, help="Running process to patch live.")
@click.option(
    "--timeout", type=TIMEOUT, default=5.0, show_default=True,
    help="With --pid: seconds to wait for a moment no thread is inside a replaced function.",
)
@click.option("--key", type=KEY, help="Public key the package must be signed by.")
@click.option("--allow-unsigned", is_flag=True, help="Apply without requiring a valid signature.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def command(
    app: Application,
    package: str,
    binary: str | None,
    output: str | None,
    pid: int | None,
    timeout: float,
    key: str | None,
    allow_unsigned: bool,
    as_json: bool,
) -> None:
    """Apply a package to a target: with --file, write a patched copy of the baseline to -o OUT; with
    --pid, switch a running process to the fix (all threads stopped only for the safety check and the
    switch; the pause is reported).

    Exit codes: 0 applied, 2 usage (also -o naming an input or a device), 3 invalid, tampered or
    unsigned package, or unreadable binary,
    4 refused (another build, patch sites changed, a symbol the file cannot provide, a lower level, a
    thread inside a replaced function), 6 OUT not writable, or no such process / permission denied.
    """
    if key is not None and allow_unsigned:
        raise click.UsageError("--key and --allow-unsigned exclude each other")
    if (binary is None) == (pid is None):
        raise click.UsageError("name one target: --file BINARY -o OUT, or --pid PID")
    if pid is not None:
        if output is not None:
            raise click.UsageError("-o is for --file; --pid patches the process itself")
        from hpkg.loader.trust import open_package

        _apply_to_process(app, open_package(package, key, allow_unsigned), pid, timeout, as_json)
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
    from hpkg.loader.file_apply import apply_to_file

    result = apply_to_file(trusted.package, binary, output)
    if as_json:
        app.display_json({**result.to_json(), "signature_checked": trusted.signature_checked})
        return
    app.info(trusted.signature_line())
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
