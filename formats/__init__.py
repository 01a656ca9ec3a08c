"""The .hpkg container: byte layout, writer, strict reader, signatures. Knows bytes, not ELF.

The byte layout is specified in formats/SPEC.md. Public API:
  write_package(pkg, signing_key=None) -> bytes
  read_package(blob, public_key=None) -> LoadedPackage
  verify_signature(loaded, public_key)
  check_package_file(path, public_key_path=None) -> PackageCheck
  generate_keypair(), load_private_key(path), load_public_key(path), key_id(public_key)
"""

from hpkg.formats.model import (
    FIELD_WIDTH,
    AddedFunction,
    DataObject,
    DataSection,
    ImportRecord,
    LoadedPackage,
    Package,
    PackageSection,
    PatchIdentity,
    Relocation,
    RelocationKind,
    ReplacedFunction,
    TargetRecord,
    TargetSpace,
)
from hpkg.formats.package import read_package, read_package_file, verify_signature, write_package
from hpkg.formats.signing import generate_keypair, key_id, load_private_key, load_public_key
from hpkg.formats.verify import PackageCheck, check_package_file

__all__ = [
    "FIELD_WIDTH",
    "AddedFunction",
    "DataObject",
    "DataSection",
    "ImportRecord",
    "LoadedPackage",
    "Package",
    "PackageCheck",
    "PackageSection",
    "PatchIdentity",
    "Relocation",
    "RelocationKind",
    "ReplacedFunction",
    "TargetRecord",
    "TargetSpace",
    "check_package_file",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "read_package",
    "read_package_file",
    "verify_signature",
    "write_package",
]
