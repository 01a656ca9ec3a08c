"""Fixtures for the package-builder tests: the samples corpus, small gcc pairs and a signing key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from build_support import PairCompiler, run_hpkg  # noqa: E402
from sample_corpus import Sample, build_corpus, load_samples  # noqa: E402


@pytest.fixture(scope="session")
def samples() -> dict[str, Sample]:
    """The corpus, built once per session (make is a no-op when it is up to date)."""
    build_corpus()
    return {s.name: s for s in load_samples()}


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("build-keys")
    result = run_hpkg("keygen", directory / "release")
    assert result.code == 0, result.err
    return directory / "release", directory / "release.pub"


@pytest.fixture(scope="session")
def compiler(tmp_path_factory: pytest.TempPathFactory) -> PairCompiler:
    return PairCompiler(tmp_path_factory.mktemp("build-pairs"))
