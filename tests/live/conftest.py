"""Fixtures for the live loader tests: the samples corpus, a signing key, packages built by `hpkg build`,
the `hpkg` command line run as a subprocess, and checks that a target is running and not traced."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from live_helpers import hpkg  # noqa: E402
from sample_corpus import Sample, build_corpus, load_samples  # noqa: E402

PROGRAMS = Path(__file__).parent / "programs"
READY_FLAGS = (
    "-O2", "-g", "-fno-omit-frame-pointer", "-flive-patching=inline-clone", "-fcf-protection=none",
    "-Wall", "-Wl,--emit-relocs", "-Wl,--build-id=sha1", "-pthread",
)  # fmt: skip


@pytest.fixture(scope="session")
def samples() -> dict[str, Sample]:
    """Every sample, built once per session."""
    build_corpus()
    return {sample.name: sample for sample in load_samples()}


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """A signing key pair from `hpkg keygen`."""
    path = tmp_path_factory.mktemp("keys") / "release"
    run = hpkg("keygen", path)
    assert run.returncode == 0, run.stderr
    return Keys(path, Path(f"{path}.pub"))


@pytest.fixture(scope="session")
def build_package(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Callable[..., Path]:
    """`hpkg build OLD NEW` into a session directory, once per distinct set of arguments."""
    out = tmp_path_factory.mktemp("packages")
    cache: dict[tuple[str, ...], Path] = {}

    def build(old: Path, new: Path, *extra: str, signed: bool = True) -> Path:
        key = (str(old), str(new), *extra, str(signed))
        if key not in cache:
            path = out / f"package-{len(cache)}.hpkg"
            args = ["build", old, new, "-o", path, *extra] + (["--key", keys.private] if signed else [])
            run = hpkg(*args)
            assert run.returncode == 0, f"hpkg build {old} {new}: {run.stderr}"
            cache[key] = path
        return cache[key]

    return build


@dataclass(frozen=True)
class Program:
    """A test program from tests/live/programs compiled as baseline and fix with the ready flags."""

    baseline: Path
    fixed: Path


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Program]:
    """stream_server (16 workers), lingering (a thread asleep in linger()) and new_import (a fix that
    calls an IFUNC the baseline never imports; also as a non-PIE executable), each compiled once as
    baseline and fix."""
    out = tmp_path_factory.mktemp("live-programs")
    compiled = {}
    no_pie = ("-no-pie", "-fno-pie")
    variants = {"stream_server": (), "lingering": (), "new_import": (), "new_import-nopie": no_pie}
    for variant, extra in variants.items():
        name = variant.split("-")[0]
        paths = []
        for build, defines in (("baseline", ()), ("fixed", ("-DFIX",))):
            path = out / f"{variant}.{build}"
            cmd = ["gcc", *READY_FLAGS, *extra, *defines, "-o", str(path), str(PROGRAMS / f"{name}.c")]
            subprocess.run(cmd, check=True, capture_output=True)
            paths.append(path)
        compiled[variant] = Program(*paths)
    return compiled
