"""`hpkg keygen PATH`: a new Ed25519 signing key in PATH (mode 0600) and its public key in PATH.pub."""

from __future__ import annotations

import os
import stat

import click

from hpkg.cli.app import Application
from hpkg.cli.paths import file_kind
from hpkg.errors import EXIT_USAGE


def _write_new(path: str, content: bytes, mode: int, force: bool) -> None:
    """Write `content` to `path` created with `mode`; O_EXCL unless forced, so no key is lost by accident."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # an existing file keeps its old mode under O_TRUNC; set it explicitly
        os.write(fd, content)
    finally:
        os.close(fd)


@click.command("keygen")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace PATH and PATH.pub if they exist.")
@click.pass_obj
def command(app: Application, path: str, force: bool) -> None:
    """Generate an Ed25519 key pair for signing packages: PATH (private) and PATH.pub (public)."""
    from hpkg.formats.signing import generate_keypair, key_id, public_key_from_bytes

    public_path = f"{path}.pub"
    for existing in (path, public_path):
        if not force and os.path.lexists(existing):
            app.abort(f"{existing} already exists; pass --force to replace it", EXIT_USAGE)
        # Even forced, a key never goes into a device or a FIFO: the open would block or the write vanish,
        # and the mode change would hit the device node.
        if os.path.exists(existing) and not stat.S_ISREG(mode := os.stat(existing).st_mode):
            app.abort(f"{existing} is {file_kind(mode)}; refusing to write a key there", EXIT_USAGE)
    private_pem, public_pem = generate_keypair()
    try:
        _write_new(path, private_pem, 0o600, force)
        _write_new(public_path, public_pem, 0o644, force)
    except OSError as exc:
        app.abort(f"cannot write {exc.filename or path}: {exc.strerror or exc}", EXIT_USAGE)
    app.info(f"private key: {path} (keep it secret)")
    app.info(f"public key:  {public_path}")
    app.display(f"key id {key_id(public_key_from_bytes(public_pem)).hex()}")
