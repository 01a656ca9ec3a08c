"""Fixtures of the PE tests: the mingw-w64 samples built once per run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pe_corpus import build_pe_corpus, load_pe_samples  # noqa: E402


@pytest.fixture(scope="session")
def pe_corpus() -> None:
    build_pe_corpus()


@pytest.fixture(scope="session")
def pe_packages(pe_corpus, tmp_path_factory) -> dict[str, Path]:
    """The package of every patchable PE sample (ready flavour), built once per session."""
    from hpkg.builder.build import build_package

    out = tmp_path_factory.mktemp("pe-packages")
    paths = {}
    for sample in load_pe_samples():
        if sample.expectations["ready"].verdict != "patchable":
            continue
        result = build_package(sample.binary("baseline", "ready"), sample.binary("fixed", "ready"))
        paths[sample.name] = out / f"{sample.name}.hpkg"
        paths[sample.name].write_bytes(result.blob)
    return paths
