"""A trusted package whose patch site is not a function entry of the baseline is refused by `apply --file`
and `verify --against` (exit 4, one line naming the site and where it lies), and nothing is written.

Each package is built by `hpkg build` from a real sample pair, then its first site is moved to another
place of the baseline with a matching pre-image and SHA-256, and re-signed with the trusted key: only the
bounds check (hpkg.loader.bounds) stands between it and a write.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from apply_file_helpers import Keys, Packages, run_hpkg
from sample_corpus import load_samples
from site_crafting import first_site, image_end, retarget, section_address

from hpkg.elf.file import ElfFile
from hpkg.formats import load_private_key, read_package, write_package

SAMPLE = {s.name: s for s in load_samples()}["01-bounds-check"]


def _place(binary: Path, package: Path, where: str) -> int:
    """A link address of the baseline that is not a function entry: in a section, mid-function, beyond."""
    if where == "mid-function":
        _, site, size = first_site(package)
        assert size > 8
        return site + 8
    if where == "beyond the image":
        return image_end(binary) + 0x1000
    return section_address(binary, where)


PLACES = (".rodata", ".data", ".got", ".eh_frame", "mid-function", "beyond the image")
REASONS = {
    ".rodata": "not in an executable segment",
    ".data": "not in an executable segment",
    ".got": "not in an executable segment",
    ".eh_frame": "not in an executable segment",
    "mid-function": "is not a function entry",
    "beyond the image": "beyond the image",
}


@pytest.mark.parametrize("where", PLACES)
def test_a_site_outside_the_function_entries_is_refused_and_nothing_written(
    packages: Packages, keys: Keys, tmp_path: Path, where: str
) -> None:
    baseline = SAMPLE.binary("baseline", "ready")
    package = packages.build(SAMPLE, "ready")
    before = hashlib.sha256(baseline.read_bytes()).digest()
    address = _place(baseline, package, where)
    crafted = retarget(package, keys.private, tmp_path / "crafted.hpkg", address, ElfFile(baseline).read)
    output = tmp_path / "patched"

    applied = run_hpkg("apply", crafted, "--file", baseline, "-o", output, "--key", keys.public)
    verified = run_hpkg("verify", crafted, "--key", keys.public, "--against", baseline)

    assert applied.returncode == 4, applied.stderr
    assert applied.stderr.count("\n") == 1 and applied.stderr.startswith("error: patch site of ")
    assert f"at {address:#x}" in applied.stderr and REASONS[where] in applied.stderr
    assert "nothing written" in applied.stderr
    assert not output.exists()
    assert hashlib.sha256(baseline.read_bytes()).digest() == before
    assert verified.returncode == 4 and REASONS[where] in verified.stderr


def test_a_package_for_another_image_size_is_refused(packages: Packages, keys: Keys, tmp_path: Path) -> None:
    baseline = SAMPLE.binary("baseline", "ready")
    pkg = read_package(packages.build(SAMPLE, "ready").read_bytes()).package
    target = dataclasses.replace(pkg.target, image_size=pkg.target.image_size + 0x10000)
    crafted = tmp_path / "bigger.hpkg"
    signed = write_package(dataclasses.replace(pkg, target=target), load_private_key(keys.private))
    crafted.write_bytes(signed)

    applied = run_hpkg("apply", crafted, "--file", baseline, "-o", tmp_path / "out", "--key", keys.public)

    assert applied.returncode == 4 and "image_size" in applied.stderr
    assert not (tmp_path / "out").exists()


def test_the_real_package_still_applies(packages: Packages, keys: Keys, tmp_path: Path) -> None:
    """The same package, not retargeted, passes the bounds check (it is what the builder makes)."""
    baseline = SAMPLE.binary("baseline", "ready")
    package = packages.build(SAMPLE, "ready")
    run = run_hpkg("apply", package, "--file", baseline, "-o", tmp_path / "out", "--key", keys.public)
    assert run.returncode == 0, run.stderr
