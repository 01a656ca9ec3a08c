"""Packages that aim a real patch site somewhere else, re-signed by the trusted test key.

They play a trusted signer that went wrong (a build bug, a compromised pipeline): a package `hpkg build`
made from a real sample pair, whose first replaced function is moved to another address of the
baseline; its pre-image and SHA-256 are made to match the bytes found there, so that only the bounds
check (not the pre-image check) stands between the package and a write.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

from hpkg.elf.file import ElfFile
from hpkg.formats import load_private_key, read_package, write_package


def section_address(binary: Path, name: str) -> int:
    """The link address of a section of `binary`."""
    section = ElfFile(binary).section_header(name)
    assert section is not None and section.size, f"{binary} has no {name}"
    return section.addr


def image_end(binary: Path) -> int:
    """The first link address after the image's highest segment."""
    return ElfFile(binary).image_end


def retarget(
    package: Path,
    private_key: Path,
    out: Path,
    link_address: int,
    read: Callable[[int, int], bytes],
) -> Path:
    """`package` with its first patch site at `link_address`, the pre-image and SHA-256 of what `read`
    finds there (a file's or a process's bytes by link address), signed by `private_key`, to `out`."""
    pkg = read_package(package.read_bytes()).package
    first = pkg.functions[0]
    found = read(link_address, first.baseline_size)
    pre_image = found[: len(first.pre_image)] if len(found) >= len(first.pre_image) else first.pre_image
    moved = dataclasses.replace(
        first,
        baseline_address=link_address,
        pre_image=pre_image,
        baseline_sha256=hashlib.sha256(found).digest(),
    )
    crafted = dataclasses.replace(pkg, functions=(moved, *pkg.functions[1:]))
    out.write_bytes(write_package(crafted, load_private_key(private_key)))
    return out


def first_site(package: Path) -> tuple[str, int, int]:
    """(name, link address, size) of a package's first replaced function."""
    first = read_package(package.read_bytes()).package.functions[0]
    return first.name, first.baseline_address, first.baseline_size
