"""`hpkg install PKG [--key PUB | --allow-unsigned] [--store DIR]`: verify a package, keep it in the store."""

from __future__ import annotations

import click

from hpkg.cli.app import Application
from hpkg.cli.command import HpkgCommand, json_option
from hpkg.cli.paths import KEY, PACKAGE, STORE


@click.command("install", cls=HpkgCommand)
@click.argument("package", type=PACKAGE)
@click.option(
    "--key", type=KEY, help="Public key the package must be signed by; the store trusts it from now on."
)
@click.option(
    "--allow-unsigned", is_flag=True,
    help="Install without requiring a valid signature (recorded in the store: the agent serves it as such).",
)
@click.option("--store", type=STORE, help="The package store  [default: $HPKG_STORE, else /var/lib/hpkg].")
@json_option
@click.pass_obj
def command(
    app: Application, package: str, key: str | None, allow_unsigned: bool, store: str | None, as_json: bool
) -> None:
    """Verify a package and copy it into the package store, from where `hpkg agent` applies it to every
    process that runs its baseline, now and as they start. Nothing is applied by install itself: run
    `hpkg apply PKG --all` (or the agent) for that.

    Signature policy: with --key PUB the package must be signed by that key, which the store keeps as a
    trusted key; with neither --key nor --allow-unsigned it must be signed by a key the store already
    trusts; --allow-unsigned takes it unchecked, and the store records the waiver.

    Installing is idempotent: the same package installed the same way again changes nothing
    (changed: false in --json).

    Exit codes: 0 installed or already installed, 2 usage, 3 invalid, tampered, unsigned or wrongly
    signed package (or a package id that cannot name a file), 6 the store cannot be written, 7 a Windows
    PE32+ package (the agent does not patch programs under Wine; `hpkg apply PKG --all` does).
    """
    if key is not None and allow_unsigned:
        raise click.UsageError("--key and --allow-unsigned exclude each other")
    from hpkg.loader.store import Store

    result = Store.open(store).install(package, key, allow_unsigned)
    if as_json:
        app.display_json(result.to_json())
        return
    stored = result.stored
    trust = f"signed by key id {stored.key_id}" if stored.key_id else "unsigned (--allow-unsigned recorded)"
    verb = "installed" if result.changed else "already installed"
    what = f"{stored.package_id} (level {stored.patch_level}, baseline {stored.build_id})"
    app.display(f"{verb}: {what}, {trust}")
    app.display(f"  stored as {stored.path}")
    if result.key_added:
        app.display(f"  the store now trusts key id {stored.key_id}")
