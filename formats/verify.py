"""The package check behind `hpkg verify`: structure, digests and, with a key, the signature.

Kept apart from the command so that checks against a binary or a process can be added beside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hpkg.formats.header import DIGEST_MINOR
from hpkg.formats.model import LoadedPackage
from hpkg.formats.package import read_package, read_package_file
from hpkg.formats.signing import load_public_key


@dataclass(frozen=True)
class PackageCheck:
    """What a successful check established about one package file."""

    loaded: LoadedPackage
    signature_checked: bool  # True only when a key was given and the signature held

    def lines(self) -> list[str]:
        """One human line per thing checked, for `hpkg verify`."""
        loaded = self.loaded
        major, minor = loaded.format_version
        # An unsigned 1.3 package's own digest (header and manifest) held too; a signed one has none.
        package_digest = "header and manifest, " if minor >= DIGEST_MINOR and not loaded.signed else ""
        result = [
            f"structure: ok (.hpkg {major}.{minor}, {loaded.file_size} bytes)",
            f"digests: ok ({package_digest}payload and {len(loaded.section_digests)} sections)",
        ]
        if self.signature_checked:
            result.append(f"signature: ok (Ed25519, key id {loaded.key_id.hex() if loaded.key_id else '?'})")
        elif loaded.signed:
            key = loaded.key_id.hex() if loaded.key_id else "?"
            result.append(f"signature: not checked (signed by key id {key}; pass --key to check it)")
        else:
            result.append("signature: none (the package is unsigned)")
        return result


def check_package_file(
    path: str | os.PathLike[str], public_key_path: str | os.PathLike[str] | None = None
) -> PackageCheck:
    """Read and check a package file; raise PackageError or VerifyError on the first thing that fails."""
    public_key = load_public_key(public_key_path) if public_key_path is not None else None
    loaded = read_package(read_package_file(path), public_key)
    return PackageCheck(loaded, signature_checked=public_key is not None)
