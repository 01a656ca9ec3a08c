"""`hpkg keygen PATH`: a new Ed25519 signing key in PATH (mode 0600) and its public key in PATH.pub.

Both files are written whole or not at all (hpkg.atomic_output): each goes to a fresh temporary
file beside it, both are fsynced before either is renamed into place, so a failure keeps any
previous pair; a symlink at PATH or PATH.pub is refused, never followed or chmodded.
"""

from __future__ import annotations

import os
import stat

import click

from hpkg.cli.app import Application
from hpkg.cli.command import HpkgCommand, json_option
from hpkg.cli.paths import file_kind
from hpkg.errors import EXIT_USAGE, TargetError

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


@click.command("keygen", cls=HpkgCommand)
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace PATH and PATH.pub if they exist (never a symlink).")
@json_option
@click.pass_obj
def command(app: Application, path: str, force: bool, as_json: bool) -> None:
    """Generate an Ed25519 key pair for signing packages: PATH (private) and PATH.pub (public)."""
    from hpkg.atomic_output import write_outputs
    from hpkg.formats.signing import generate_keypair, key_id, public_key_from_bytes

    public_path = f"{path}.pub"
    for existing in (path, public_path):
        if not force and os.path.lexists(existing):
            app.abort(f"{existing} already exists; pass --force to replace it", EXIT_USAGE)
        try:
            mode = os.lstat(existing).st_mode
        except OSError:
            continue  # missing, or unreachable: the writer says which
        # Even forced, a key never replaces a device, a FIFO or a symlink (whose target another user
        # may have chosen): the writer would refuse it too, this says why before generating a key.
        if stat.S_ISLNK(mode):
            app.abort(f"{existing} is a symbolic link; refusing to replace it with a key", EXIT_USAGE)
        if not stat.S_ISREG(mode):
            app.abort(f"{existing} is {file_kind(mode)}; refusing to write a key there", EXIT_USAGE)
    private_pem, public_pem = generate_keypair()
    try:
        write_outputs([(path, private_pem, PRIVATE_MODE), (public_path, public_pem, PUBLIC_MODE)])
    except TargetError as exc:
        app.abort(str(exc), EXIT_USAGE)
    identity = key_id(public_key_from_bytes(public_pem)).hex()
    if as_json:
        app.display_json({"private_key": path, "public_key": public_path, "key_id": identity})
        return
    app.info(f"private key: {path} (keep it secret)")
    app.info(f"public key:  {public_path}")
    app.display(f"key id {identity}")
