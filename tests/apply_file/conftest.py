"""Fixtures for the `hpkg apply --file` tests: the built corpus, a signing key, and a package cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from apply_file_helpers import LIBRARY, Keys, Packages, compile_ready, run_hpkg
from sample_corpus import build_corpus


@pytest.fixture(scope="session")
def corpus() -> None:
    build_corpus()


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    private = tmp_path_factory.mktemp("apply-file-keys") / "release"
    result = run_hpkg("keygen", private)
    assert result.returncode == 0, result.stderr
    return Keys(private, Path(f"{private}.pub"))


@pytest.fixture(scope="session")
def packages(corpus: None, keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Packages:
    return Packages(tmp_path_factory.mktemp("apply-file-packages"), keys)


@pytest.fixture(scope="session")
def greet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """programs/greet_lib.c as libgreet.so.1 (baseline, fixed), its host, and their package (unsigned)."""
    out = tmp_path_factory.mktemp("greet")
    built = {}
    for build, defines in (("baseline", []), ("fixed", ["-DFIX"])):
        (out / build).mkdir()
        built[build] = compile_ready(
            "greet_lib.c", out / build / LIBRARY, "-fPIC", "-shared", f"-Wl,-soname,{LIBRARY}", *defines
        )
    built["host"] = compile_ready("greet_host.c", out / "host", link=(built["baseline"],))
    built["package"] = out / "greet.hpkg"
    result = run_hpkg("build", built["baseline"], built["fixed"], "-o", built["package"])
    assert result.returncode == 0, result.stderr
    return built
