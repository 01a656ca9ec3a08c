"""check_compatibility() over the ELF file reader: patch levels, superseded jumps and downgrades.

A file patched with level 1 (by `hpkg apply --file`) stands in for an image carrying level 1's jumps;
the AppliedLevel records say where level 1's code is, as the live loader's record would (and as the
patched file's own .hpkg.record section does, which lets `apply --file` take level 2 onto it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apply_file_helpers import Keys, Packages, answers, mirror, run_hpkg
from sample_corpus import load_samples

from hpkg.elf.file import ElfFile
from hpkg.errors import IncompatibleTarget
from hpkg.formats import Package, read_package, read_package_file
from hpkg.loader.compat import AppliedLevel, check_compatibility
from hpkg.loader.file_apply import applied_levels

SAMPLE = next(s for s in load_samples() if s.name == "18-two-functions")


def _load(path: Path, keys: Keys) -> Package:
    return read_package(read_package_file(path), keys.public).package


@pytest.fixture(scope="module")
def levels(packages: Packages, keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Level 1 applied to a file, its code area, and level-2 packages that do and do not supersede it."""
    out = tmp_path_factory.mktemp("levels")
    level1_path = packages.build(SAMPLE, "ready")
    level1 = _load(level1_path, keys)
    patched = out / "patched"
    baseline = SAMPLE.binary("baseline", "ready")
    applied = run_hpkg(
        "apply", level1_path, "--file", baseline, "-o", patched, "--key", keys.public, "--json"
    )
    assert applied.returncode == 0, applied.stderr
    code = json.loads(applied.stdout)["areas"]["code"]
    fixed = SAMPLE.binary("fixed", "ready")
    built = {}
    for name, extra in (("level2", ["--supersedes", level1.identity.package_id]), ("stranger", [])):
        path = out / f"{name}.hpkg"
        result = run_hpkg("build", baseline, fixed, "-o", path, "--key", keys.private, "--level", "2", *extra)
        assert result.returncode == 0, result.stderr
        built[name] = _load(path, keys)
        built[f"{name}_path"] = path
    return {
        "level1": level1,
        "patched": ElfFile(patched),
        "patched_path": patched,
        "level1_path": level1_path,
        "baseline": ElfFile(baseline),
        "area": AppliedLevel(
            level1.identity.package_id, 1, ((code["address"], code["address"] + code["size"]),)
        ),
        **built,
    }


def test_a_superseding_level_accepts_the_lower_levels_jumps(levels: dict) -> None:
    report = check_compatibility(levels["level2"], levels["patched"], [levels["area"]])

    assert report.superseded == levels["level1"].identity.package_id
    assert {s.name for s in report.sites} == {f.name for f in levels["level2"].functions}
    assert all(s.state.startswith("superseded jump of") for s in report.sites)
    assert all("pre-image in place of the jump" in s.hash_checked for s in report.sites)


def test_jumps_of_a_level_not_superseded_are_refused(levels: dict) -> None:
    with pytest.raises(IncompatibleTarget) as refused:
        check_compatibility(levels["stranger"], levels["patched"], [levels["area"]])

    assert all("which this package does not supersede" in r for r in refused.value.reasons)
    assert len(refused.value.reasons) == len(levels["stranger"].functions)


def test_jumps_without_an_applied_record_are_refused(levels: dict) -> None:
    with pytest.raises(IncompatibleTarget) as refused:
        check_compatibility(levels["level2"], levels["patched"])

    assert all("already patched" in r for r in refused.value.reasons)


def test_the_file_records_what_was_applied(levels: dict) -> None:
    assert applied_levels(levels["patched"]) == (levels["area"],)
    assert applied_levels(levels["baseline"]) == ()


def test_a_file_carrying_level_1_takes_level_2_which_then_contains_level_1(
    levels: dict, keys: Keys, tmp_path: Path
) -> None:
    """Levels are cumulative, as live: level 1 applied to a file carrying level 2 (which supersedes it)
    changes nothing and says that level 2 contains it; the output is the level-2 file as it was."""
    level2_file, again = tmp_path / "level2", tmp_path / "again"

    key = ("--key", keys.public, "--json")
    level1_file = levels["patched_path"]
    upgraded = run_hpkg("apply", levels["level2_path"], "--file", level1_file, "-o", level2_file, *key)
    downgraded = run_hpkg("apply", levels["level1_path"], "--file", level2_file, "-o", again, *key)

    assert upgraded.returncode == 0, upgraded.stderr
    assert json.loads(upgraded.stdout)["superseded"] == levels["level1"].identity.package_id
    patched_sample, copy = mirror(SAMPLE, "ready", tmp_path / "run")
    copy.write_bytes(level2_file.read_bytes())
    copy.chmod(0o755)
    assert answers(patched_sample, "ready") == SAMPLE.answers("fixed")
    assert [level.patch_level for level in applied_levels(ElfFile(level2_file))] == [1, 2]
    assert downgraded.returncode == 0, downgraded.stderr
    document = json.loads(downgraded.stdout)
    level2_id = levels["level2"].identity.package_id
    assert document["changed"] is False
    assert document["already_applied"] == {"package_id": level2_id, "patch_level": 2}
    assert again.read_bytes() == level2_file.read_bytes()
    shown = run_hpkg("apply", levels["level1_path"], "--file", level2_file, "-o", again, "--key", keys.public)
    assert f"level 2 (package {level2_id}) is applied and contains it" in shown.stdout


def test_a_level_not_above_the_applied_one_is_refused(levels: dict) -> None:
    applied_level3 = AppliedLevel("level-3-package", 3, levels["area"].areas)

    with pytest.raises(IncompatibleTarget) as refused:
        check_compatibility(levels["level2"], levels["baseline"], [applied_level3])

    assert any("no downgrade" in r for r in refused.value.reasons)


def test_the_unpatched_baseline_passes_site_by_site(levels: dict) -> None:
    report = check_compatibility(levels["level1"], levels["baseline"])

    assert report.superseded is None
    assert [s.state for s in report.sites] == ["pre-image"] * len(levels["level1"].functions)
    assert report.build_id == levels["level1"].target.build_id
