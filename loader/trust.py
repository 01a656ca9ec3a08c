"""Opening a package to apply it: digests always, and a valid signature unless the operator waives it.

The policy for `hpkg apply` and `hpkg verify --against` (file or process alike):
  --key PUB          the package must carry a valid Ed25519 signature by that key;
  --allow-unsigned   the signature is not required (nor checked);
  neither            refused: an unsigned package, or a signed one whose key was not given.
Every refusal here is a VerifyError (exit 3): the package cannot be trusted as given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hpkg.errors import VerifyError
from hpkg.formats.model import LoadedPackage, Package
from hpkg.formats.package import read_package, read_package_file
from hpkg.formats.signing import load_public_key


@dataclass(frozen=True)
class TrustedPackage:
    """A package whose digests hold, and whose signature held when one was required."""

    loaded: LoadedPackage
    signature_checked: bool

    @property
    def package(self) -> Package:
        return self.loaded.package

    def signature_line(self) -> str:
        """How the package was trusted, in one line for the operator."""
        key = self.loaded.key_id.hex() if self.loaded.key_id else "?"
        if self.signature_checked:
            return f"signature: ok (Ed25519, key id {key})"
        if self.loaded.signed:
            return f"signature: not checked (--allow-unsigned; signed by key id {key})"
        return "signature: none (unsigned package accepted with --allow-unsigned)"


def open_package(
    path: str | os.PathLike[str], public_key_path: str | os.PathLike[str] | None, allow_unsigned: bool
) -> TrustedPackage:
    """Read and check a package file under the signature policy above."""
    public_key = load_public_key(public_key_path) if public_key_path is not None else None
    loaded = read_package(read_package_file(path), public_key)
    if public_key is not None:
        return TrustedPackage(loaded, signature_checked=True)
    if not allow_unsigned:
        if loaded.signed:
            key = loaded.key_id.hex() if loaded.key_id else "?"
            raise VerifyError(
                f"package {os.fspath(path)} is signed by key id {key}: pass --key PUB to check its signature "
                "(or --allow-unsigned to apply it unchecked)"
            )
        raise VerifyError(
            f"package {os.fspath(path)} is unsigned: pass --allow-unsigned to apply it anyway"
        )
    return TrustedPackage(loaded, signature_checked=False)
