"""`hpkg apply --file` on the samples corpus: each patched baseline answers exactly like the fixed build.

For every sample and flavour whose package the spec says can be built, the package is built with
`hpkg build` (signed), applied to the baseline file with `hpkg apply --file --key`, and the patched
copy is fed the sample's steps in a fresh process; its answers must be the `fixed` answers. The
library sample patches the .so and runs the unchanged host against the patched copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from apply_file_helpers import Keys, Packages, answers, mirror, run_hpkg
from sample_corpus import Sample, load_samples

CASES = [
    pytest.param(sample, flavour, id=f"{sample.name}-{flavour}")
    for sample in load_samples()
    for flavour in sample.flavours
    if flavour in ("ready", "stripped")
    and sample.expectations[flavour].verdict == "patchable"
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("sample", "flavour"), CASES)
def test_patched_file_answers_like_the_fix(
    sample: Sample, flavour: str, packages: Packages, keys: Keys, tmp_path: Path
) -> None:
    package = packages.build(sample, flavour)
    baseline = sample.binary("baseline", flavour)
    before = _digest(baseline)
    patched_sample, patched = mirror(sample, flavour, tmp_path)

    result = run_hpkg("apply", package, "--file", baseline, "-o", patched, "--key", keys.public, "--json")

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["signature_checked"] is True
    assert document["patch_sites"], "a package that replaces nothing"
    assert answers(patched_sample, flavour) == sample.answers("fixed")
    assert stat.S_IMODE(os.stat(patched).st_mode) == stat.S_IMODE(os.stat(baseline).st_mode)
    assert _digest(baseline) == before, "apply --file changed its input"


@pytest.mark.parametrize(
    ("name", "flavour"), [("06-static-function", "ready"), ("04-new-helper", "stripped")]
)
def test_new_imports_are_bound_by_the_dynamic_linker(
    name: str, flavour: str, packages: Packages, keys: Keys, tmp_path: Path
) -> None:
    """A fix that calls a libc function the baseline never called gets a new dynamic symbol."""
    sample = next(s for s in load_samples() if s.name == name)
    package = packages.build(sample, flavour)
    patched_sample, patched = mirror(sample, flavour, tmp_path)

    result = run_hpkg(
        "apply", package, "--file", sample.binary("baseline", flavour), "-o", patched, "--key", keys.public,
        "--json",
    )

    assert result.returncode == 0, result.stderr
    bound = json.loads(result.stdout)["bound_imports"]
    assert bound and all("@GLIBC_" in symbol for symbol in bound)
    assert answers(patched_sample, flavour) == sample.answers("fixed")


def test_the_patched_file_is_a_well_formed_elf_that_survives_strip(
    packages: Packages, keys: Keys, tmp_path: Path
) -> None:
    """binutils read the copy cleanly, show the jumps and the package code, and `strip` keeps it working."""
    sample = next(s for s in load_samples() if s.name == "18-two-functions")
    patched_sample, patched = mirror(sample, "ready", tmp_path / "patched")
    result = run_hpkg(
        "apply", packages.build(sample, "ready"), "--file", sample.binary("baseline", "ready"), "-o", patched,
        "--key", keys.public, "--json",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)

    readelf = subprocess.run(["readelf", "-W", "-l", "-S", str(patched)], capture_output=True, text=True)
    assert readelf.returncode == 0 and readelf.stderr == ""
    assert ".hpkg.text" in readelf.stdout
    for site in document["patch_sites"]:
        start = site["link_address"]
        dump = subprocess.run(
            ["objdump", "-d", f"--start-address={start:#x}", f"--stop-address={start + 5:#x}", str(patched)],
            capture_output=True, text=True, check=True,
        ).stdout
        assert f"jmp    {site['replacement']:x}" in dump, dump

    stripped_sample, stripped = mirror(sample, "ready", tmp_path / "stripped")
    subprocess.run(["strip", "-o", str(stripped), str(patched)], capture_output=True, check=True)
    assert answers(stripped_sample, "ready") == sample.answers("fixed")
