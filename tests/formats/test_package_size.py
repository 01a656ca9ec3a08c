"""Package size: a one-function fix from real gcc output beats bsdiff; the dictionary is the spec's."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
from real_package import DATA, build_real_package, compile_program

from hpkg.formats import Package, PatchIdentity, TargetSpace, read_package, write_package
from hpkg.formats.dictionary import MANIFEST_DICTIONARY, MANIFEST_DICTIONARY_SHA256
from hpkg.formats.header import HEADER_SIZE

SPEC = Path(__file__).parents[2] / "formats" / "SPEC.md"
FIXED_FUNCTION = "copy_field"  # the only function data/one_fix.c changes under -DHPKG_FIX


@pytest.fixture(scope="module")
def one_fix_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The one-function pair: baseline and fix of data/one_fix.c (a bounds check added to copy_field)."""
    out = tmp_path_factory.mktemp("formats-one-fix")
    source = DATA / "one_fix.c"
    return compile_program(source, out / "baseline"), compile_program(source, out / "fix", ("HPKG_FIX",))


@pytest.fixture(scope="module")
def one_fix_package(one_fix_pair: tuple[Path, Path]) -> Package:
    baseline, fix = one_fix_pair
    # An identity of the shape `hpkg build` writes: a 32-hex-digit package id, level 1, nothing superseded.
    package_id = hashlib.sha256(fix.read_bytes()).hexdigest()[:32]
    identity = PatchIdentity(package_id, 1, builder_version="hpkg 0.1.0")
    return build_real_package(baseline, fix, (FIXED_FUNCTION,), added=(), new_data={}, identity=identity)


def _bsdiff(old: Path, new: Path, out: Path) -> int:
    """Size of bsdiff's delta from `old` to `new`, after checking that bspatch rebuilds `new` from it."""
    delta, rebuilt = out / "delta.bsdiff", out / "rebuilt"
    subprocess.run(["bsdiff", str(old), str(new), str(delta)], check=True)
    subprocess.run(["bspatch", str(old), str(rebuilt), str(delta)], check=True)
    assert rebuilt.read_bytes() == new.read_bytes()
    return delta.stat().st_size


def test_one_function_package_is_smaller_than_bsdiff(one_fix_pair, one_fix_package: Package,
                                                     tmp_path: Path) -> None:
    baseline, fix = one_fix_pair
    pkg = one_fix_package
    # The package is the real thing: one replaced function with its calls relocated, nothing else.
    assert [f.name for f in pkg.functions] == [FIXED_FUNCTION] and pkg.added_functions == ()
    assert {r.space for r in pkg.relocations} == {TargetSpace.BASELINE, TargetSpace.IMPORT}
    assert baseline.read_bytes() != fix.read_bytes()
    blob = write_package(pkg)
    assert read_package(blob).package == pkg

    delta = _bsdiff(baseline, fix, tmp_path)
    assert len(blob) < delta, f"package {len(blob)} B, bsdiff delta {delta} B"


def test_manifest_is_stored_compressed(one_fix_package: Package) -> None:
    loaded = read_package(write_package(one_fix_package))
    # Most of the manifest is key names, which the dictionary holds: what is left is mostly digests.
    assert loaded.manifest_size < loaded.manifest_json_size // 3
    assert loaded.file_size == HEADER_SIZE + loaded.manifest_size + loaded.compressed_size


def test_spec_records_the_manifest_dictionary() -> None:
    spec = SPEC.read_text(encoding="utf-8")
    assert hashlib.sha256(MANIFEST_DICTIONARY).hexdigest() == MANIFEST_DICTIONARY_SHA256
    assert f"SHA-256 `{MANIFEST_DICTIONARY_SHA256}`" in spec
    (block,) = re.findall(r"<!-- manifest dictionary -->\n```\n(.*?)```\n", spec, flags=re.DOTALL)
    assert block.encode("ascii") == MANIFEST_DICTIONARY
