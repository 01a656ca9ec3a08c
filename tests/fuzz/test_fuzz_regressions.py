"""Every crash class the fuzz harness found, replayed against freshly built samples through the real CLI.

Each case in cases.json is a recipe, not a blob: byte changes of a compiled sample (found by the
harness, minimised by delta debugging), or edits of a package built from a sample and re-signed with
the harness's test key. The command must end as the contract says: a documented exit code, at most one
`error:` line, no "internal error", traceback, signal or Python warning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_corpus import build_corpus  # noqa: E402

from fuzz import corpus  # noqa: E402
from fuzz.campaign import argv_for, read_cases  # noqa: E402
from fuzz.minimise import apply_elf_changes  # noqa: E402
from fuzz.outcome import EXPECTED_EXITS  # noqa: E402
from fuzz.package_mutations import Unpacked, repack  # noqa: E402

CASES = read_cases(Path(__file__).with_name("cases.json"))
HPKG = (sys.executable, "-m", "hpkg")
TIMEOUT = 120  # seconds: a safety net against a hang, not a timing assertion


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    build_corpus()
    return corpus.write_keys(tmp_path_factory.mktemp("fuzz-keys"))


def _hpkg(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command line; HPKG_DEBUG=1 as in the harness: a library warning would show, and an
    escaping exception would be a traceback instead of the "internal error" line."""
    environment = {**os.environ, "HPKG_DEBUG": "1"}
    return subprocess.run([*HPKG, *argv], capture_output=True, text=True, errors="replace", timeout=TIMEOUT,
                          cwd=cwd, stdin=subprocess.DEVNULL, env=environment)  # fmt: skip


def _seed_package(seed: corpus.ElfSeed, keys: tuple[Path, Path], workdir: Path) -> Path:
    """The package the harness builds from a sample, signed by the test key."""
    package = workdir / f"{seed.sample}.hpkg"
    argv = ["build", str(seed.baseline), str(seed.fixed), "-o", str(package), "--key", str(keys[0])]
    built = _hpkg(argv, workdir)
    assert built.returncode == 0, built.stderr
    return package


def _mutant(case: dict, keys: tuple[Path, Path], workdir: Path) -> tuple[corpus.ElfSeed, Path]:
    """The case's input, made from the sample it names."""
    if "changes" in case:
        seed = corpus.seed_for(case["sample"], case["file"])
        original = corpus.SAMPLES_DIR / case["sample"] / case["file"]
        path = workdir / "mutant"
        path.write_bytes(apply_elf_changes(original.read_bytes(), [tuple(c) for c in case["changes"]]))
        return seed, path
    seed = corpus.package_seed(case["sample"])
    package = _seed_package(seed, keys, workdir)
    path = workdir / "mutant.hpkg"
    path.write_bytes(repack(Unpacked.of(package.read_bytes()), case["edits"], corpus.test_key()))
    return seed, path


@pytest.mark.parametrize("case", CASES, ids=[c["class"] for c in CASES])
def test_the_crash_class_ends_in_one_error_line(case: dict, keys: tuple[Path, Path], tmp_path: Path) -> None:
    seed, mutant = _mutant(case, keys, tmp_path)
    package = tmp_path / f"{seed.sample}.hpkg"
    if case["target"] == "apply-elf":
        _seed_package(seed, keys, tmp_path)
    done = _hpkg(argv_for(case["target"], seed, mutant, str(tmp_path / "out"), keys[1], package), tmp_path)
    assert done.returncode in EXPECTED_EXITS, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert "Warning:" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == (0 if done.returncode == 0 else 1), done.stderr
    if "exit" in case:
        assert done.returncode == case["exit"], done.stderr


def test_every_case_names_a_known_target_and_sample() -> None:
    assert CASES, "cases.json holds the harness's findings"
    for case in CASES:
        assert case["target"] in (*corpus.ELF_TARGETS, *corpus.PACKAGE_TARGETS), json.dumps(case)
        assert (corpus.SAMPLES_DIR / case["sample"]).is_dir(), json.dumps(case)
