"""Fixtures for the .hpkg container tests: real compiled programs, a package built from them, keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from real_package import DATA, build_real_package, compile_program

from hpkg.formats import Package


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The compiled baseline and fix (each compiled once per session)."""
    out = tmp_path_factory.mktemp("formats-programs")
    return (
        compile_program(DATA / "baseline.c", out / "baseline"),
        compile_program(DATA / "fix.c", out / "fix"),
    )


@pytest.fixture(scope="session")
def real_package(programs: tuple[Path, Path]) -> Package:
    return build_real_package(*programs)


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()
