"""`hpkg verify PKG [--key PUB]`: structure, digests and, with a key, the signature; 0 only if all hold."""

from __future__ import annotations

import click

from hpkg.cli.app import Application


@click.command("verify")
@click.argument("package", type=click.Path(dir_okay=False))
@click.option("--key", type=click.Path(dir_okay=False), help="Public key to check (PEM or raw 32 bytes).")
@click.pass_obj
def command(app: Application, package: str, key: str | None) -> None:
    """Check a package's structure and digests, and with --key its Ed25519 signature."""
    from hpkg.formats.verify import check_package_file

    check = check_package_file(package, key)
    for line in check.lines():
        app.display(line)
