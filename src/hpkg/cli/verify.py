"""`hpkg verify PKG [--key PUB | --allow-unsigned] [--against BINARY | --pid PID]`: structure, digests,
signature, and optionally the compatibility check against a file or a running process; 0 only if all hold.

Alone, `verify` checks what it is given: the signature when --key names a key, otherwise structure and
digests, and says whether a signature was checked. With --against or --pid it answers "would apply
accept this package here?", so it follows apply's signature policy (hpkg.loader.trust): --key PUB
requires that key's valid signature, --allow-unsigned waives it, neither refuses the package (exit 3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from hpkg.cli.app import Application
from hpkg.cli.command import HpkgCommand, json_option
from hpkg.cli.paths import BINARY, KEY, PACKAGE, PID

if TYPE_CHECKING:
    from hpkg.formats.verify import PackageCheck
    from hpkg.loader.apply import ImageVerified


@click.command("verify", cls=HpkgCommand)
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
@json_option
@click.pass_obj
def command(
    app: Application,
    package: str,
    key: str | None,
    allow_unsigned: bool,
    against: str | None,
    pid: int | None,
    as_json: bool,
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
    from hpkg.formats.verify import check_package_file

    if key is not None and allow_unsigned:
        raise click.UsageError("--key and --allow-unsigned exclude each other")
    if allow_unsigned and against is None and pid is None:
        raise click.UsageError("--allow-unsigned is for --against or --pid (apply's signature policy)")
    if against is None and pid is None:
        check = check_package_file(package, key)
    else:
        from hpkg.formats.verify import PackageCheck
        from hpkg.loader.trust import open_package

        trusted = open_package(package, key, allow_unsigned)
        check = PackageCheck(trusted.loaded, trusted.signature_checked)
    document: dict[str, Any] = {**_package_facts(package, check), "against": None, "process": None}
    lines = check.lines()
    if against is not None:
        from hpkg.loader.file_apply import FileCarrying, check_file

        report = check_file(check.loaded.package, against)
        if isinstance(report, FileCarrying):
            document["against"] = {"path": against, **report.against_json()}
            lines.append(report.verdict())
        else:
            document["against"] = {"path": against, **report.to_json()}
            lines += report.lines()
    if pid is not None:
        from hpkg.loader.apply import check_process

        verified = check_process(check.loaded.package, pid)
        document["process"] = {"pid": pid, "images": [_image_facts(v) for v in verified]}
        for image in verified:
            lines.append(f"process {pid}: {image.image.path}")
            lines += [f"  {line}" for line in image.lines(check.loaded.package)]
    if as_json:
        app.display_json(document)
        return
    for line in lines:
        app.display(line)


def _package_facts(path: str, check: PackageCheck) -> dict[str, Any]:
    """What the package check established, in the words of `inspect --json`."""
    loaded = check.loaded
    identity = loaded.package.identity
    signature = "ok" if check.signature_checked else ("not-checked" if loaded.signed else "none")
    return {
        "package": path,
        "package_id": identity.package_id,
        "patch_level": identity.patch_level,
        "baseline_build_id": loaded.package.target.build_id.hex(),
        "format_version": "{}.{}".format(*loaded.format_version),
        "file_size": loaded.file_size,
        "structure": "ok",
        "digests": "ok",
        "signature": signature,
        "signed": loaded.signed,
        "key_id": loaded.key_id.hex() if loaded.key_id else None,
        "signature_checked": check.signature_checked,
    }


def _image_facts(verified: ImageVerified) -> dict[str, Any]:
    """One baseline image of the process: compatible (its site checks), or already carrying the package."""
    image = verified.image
    return {
        "path": image.path,
        "build_id": image.build_id,
        "load_bias": image.load_bias,
        "already_applied": verified.carrying is not None,
        "compatibility": verified.compat.to_json() if verified.compat is not None else None,
    }
