"""`hpkg verify PKG [--key PUB | --allow-unsigned] [--against BINARY | --pid PID]`: structure, digests,
signature, and optionally the compatibility check against a file or a running process; 0 only if all hold.

Alone, `verify` checks what it is given: the signature when --key names a key, otherwise structure and
digests, and says whether a signature was checked. With --against or --pid it answers "would apply
accept this package here?", so it follows apply's signature policy (hpkg.loader.trust): --key PUB
requires that key's valid signature, --allow-unsigned waives it, neither refuses the package (exit 3).
"""

from __future__ import annotations

import click

from hpkg.cli.app import Application
from hpkg.cli.paths import BINARY, KEY, PACKAGE, PID


@click.command("verify")
@click.argument("package", type=PACKAGE)
@click.option("--key", type=KEY, help="Public key to check (PEM or raw 32 bytes).")
@click.option(
    "--allow-unsigned", is_flag=True,
    help="With --against or --pid: check compatibility without requiring a valid signature, as apply does.",
)
@click.option(
    "--against", type=BINARY, help="Also check that it applies to this baseline ELF file."
)
@click.option("--pid", type=PID, help="Also check that it applies to this running process (changes nothing).")
@click.pass_obj
def command(
    app: Application,
    package: str,
    key: str | None,
    allow_unsigned: bool,
    against: str | None,
    pid: int | None,
) -> None:
    """Check a package's structure and digests, and with --key its Ed25519 signature.

    With --against BINARY, also the compatibility check `apply --file` runs (build-id, patch-site
    pre-images, function SHA-256), changing nothing; exit 4 naming each function that does not match.
    With --pid PID, the same check against every baseline image in a running process (a site may also
    hold the jump of the applied level the package supersedes; an image that already carries the
    package, or a higher level, is reported "already applied" and passes, as apply would succeed
    changing nothing); nothing is stopped or written; exit 6 when the process cannot be read.
    Both follow apply's signature policy: --key PUB, or --allow-unsigned, or the package is refused
    (exit 3).
    """
    from hpkg.formats.verify import PackageCheck, check_package_file

    if key is not None and allow_unsigned:
        raise click.UsageError("--key and --allow-unsigned exclude each other")
    if allow_unsigned and against is None and pid is None:
        raise click.UsageError("--allow-unsigned is for --against or --pid (apply's signature policy)")
    if against is None and pid is None:
        check = check_package_file(package, key)
    else:
        from hpkg.loader.trust import open_package

        trusted = open_package(package, key, allow_unsigned)
        check = PackageCheck(trusted.loaded, trusted.signature_checked)
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
            for line in verified.lines(check.loaded.package):
                app.display(f"  {line}")
