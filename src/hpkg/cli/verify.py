"""`hpkg verify PKG [--key PUB] [--against BINARY | --pid PID]`: structure, digests, signature, and
optionally the compatibility check against a file or a running process; 0 only if all hold."""

from __future__ import annotations

import click

from hpkg.cli.app import Application
from hpkg.cli.paths import BINARY, KEY, PACKAGE, PID


@click.command("verify")
@click.argument("package", type=PACKAGE)
@click.option("--key", type=KEY, help="Public key to check (PEM or raw 32 bytes).")
@click.option(
    "--against", type=BINARY, help="Also check that it applies to this baseline ELF file."
)
@click.option("--pid", type=PID, help="Also check that it applies to this running process (changes nothing).")
@click.pass_obj
def command(app: Application, package: str, key: str | None, against: str | None, pid: int | None) -> None:
    """Check a package's structure and digests, and with --key its Ed25519 signature.

    With --against BINARY, also the compatibility check `apply --file` runs (build-id, patch-site
    pre-images, function SHA-256), changing nothing; exit 4 naming each function that does not match.
    With --pid PID, the same check against every baseline image in a running process (a site may also
    hold the jump of the applied level the package supersedes); nothing is stopped or written; exit 6
    when the process cannot be read.
    """
    from hpkg.formats.verify import check_package_file

    check = check_package_file(package, key)
    for line in check.lines():
        app.display(line)
    if against is not None:
        from hpkg.loader.file_apply import check_file

        for line in check_file(check.loaded.package, against).lines():
            app.display(line)
    if pid is not None:
        from hpkg.loader.apply import check_process

        for verified in check_process(check.loaded.package, pid):
            app.display(f"process {pid}: {verified.image.path}")
            for line in verified.compat.lines():
                app.display(f"  {line}")
