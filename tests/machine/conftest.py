"""Fixtures for the machine-wide verbs: samples compiled with a build-id of their own, packages for them,
hpkg's host directories in a temporary place, and processes started and always stopped again.

`apply --all` patches every process of the machine that maps a baseline. The samples' own builds are
deterministic (the same build-id wherever the tree is), so other test sessions on this machine may run
them at the same time: the samples here are compiled from the same sources with the corpus's ready
flags but a random build-id (`-Wl,--build-id=0x…`), so that a machine-wide run of these tests meets
only the processes they started. For the same reason the tests' record key lives in a temporary
HPKG_STATE_DIR: records sealed by anyone else are refused here, never acted on.
"""

from __future__ import annotations

import dataclasses
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "live"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from live_helpers import hpkg  # noqa: E402
from sample_corpus import SAMPLES_DIR, Conversation, Sample, load_sample  # noqa: E402

# The corpus's hotpatch-ready flags (samples/Makefile READY_CFLAGS, READY_LDFLAGS) minus the build-id.
READY_FLAGS = (
    "-O2", "-g", "-fno-omit-frame-pointer", "-flive-patching=inline-clone", "-fcf-protection=none",
    "-Wall", "-Wno-format-security", "-Wl,--emit-relocs",
)  # fmt: skip


def _unique_build_id() -> str:
    return f"-Wl,--build-id=0x{secrets.token_hex(20)}"


def _gcc(*args: str | Path) -> None:
    subprocess.run(["gcc", *READY_FLAGS, *map(str, args)], check=True, capture_output=True)


def _server_sample(out: Path) -> Sample:
    """14-threaded-server: out/baseline and out/fixed, each with a build-id of its own."""
    sample = load_sample(SAMPLES_DIR / "14-threaded-server")
    for build, define in (("baseline", ()), ("fixed", ("-DFIX",))):
        _gcc(*define, _unique_build_id(), "-pthread", "-o", out / "out" / build,
             sample.directory / "sample.c")  # fmt: skip
    return dataclasses.replace(sample, directory=out)


def _library_sample(out: Path) -> Sample:
    """16-shared-library: out/{baseline,fixed}/libpct.so.1 with build-ids of their own, and out/host."""
    sample = load_sample(SAMPLES_DIR / "16-shared-library")
    source = sample.directory
    for build, define in (("baseline", ()), ("fixed", ("-DFIX",))):
        (out / "out" / build).mkdir(parents=True)
        library = out / "out" / build / "libpct.so.1"
        _gcc(*define, _unique_build_id(), "-fPIC", "-shared", "-Wl,-soname,libpct.so.1", "-o", library,
             source / "pct.c")  # fmt: skip
    _gcc(f"-I{source}", "-o", out / "out" / "host", source / "host.c", f"-L{out / 'out' / 'baseline'}",
         "-l:libpct.so.1")  # fmt: skip
    return dataclasses.replace(sample, directory=out)


def _lingering(out: Path) -> tuple[Path, Path]:
    """tests/live/programs/lingering.c as baseline and fix: a thread never leaves the replaced linger()."""
    source = Path(__file__).resolve().parents[1] / "live" / "programs" / "lingering.c"
    builds = (out / "lingering.baseline", out / "lingering.fixed")
    for path, define in zip(builds, ((), ("-DFIX",)), strict=True):
        _gcc(*define, _unique_build_id(), "-pthread", "-o", path, source)
    return builds


@pytest.fixture(scope="session")
def own_samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sample]:
    """The threaded server and the shared-library sample, compiled with build-ids no one else runs."""
    server_dir, library_dir = tmp_path_factory.mktemp("server"), tmp_path_factory.mktemp("library")
    (server_dir / "out").mkdir()
    return {"server": _server_sample(server_dir), "library": _library_sample(library_dir)}


@pytest.fixture(scope="session", autouse=True)
def host_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """hpkg's record key and locks in temporary directories, for this process and the `hpkg` it runs."""
    root = tmp_path_factory.mktemp("hpkg-host")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPKG_STATE_DIR", str(root / "state"))
        patch.setenv("HPKG_RUN_DIR", str(root / "run"))
        yield


@pytest.fixture(scope="session")
def public_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The public half of a key pair from `hpkg keygen`; the private half is `public_key.with_suffix("")`."""
    path = tmp_path_factory.mktemp("keys") / "release"
    run = hpkg("keygen", path)
    assert run.returncode == 0, run.stderr
    yield Path(f"{path}.pub")


@pytest.fixture(scope="session")
def lingering(tmp_path_factory: pytest.TempPathFactory, public_key: Path) -> tuple[Path, Path]:
    """The lingering program's baseline and a signed package for its fix."""
    out = tmp_path_factory.mktemp("lingering")
    baseline, fixed = _lingering(out)
    package = out / "fix.hpkg"
    run = hpkg("build", baseline, fixed, "-o", package, "--key", public_key.with_suffix(""))
    assert run.returncode == 0, run.stderr
    return baseline, package


@pytest.fixture(scope="session")
def packages(own_samples: dict[str, Sample], public_key: Path) -> dict[str, tuple[Path, str]]:
    """A signed package for each sample (path, package id), built by `hpkg build`."""
    built = {}
    for name, sample in own_samples.items():
        path = sample.directory / "fix.hpkg"
        run = hpkg("build", sample.binary("baseline", "ready"), sample.binary("fixed", "ready"), "-o", path,
                   "--key", public_key.with_suffix(""), "--json")  # fmt: skip
        assert run.returncode == 0, run.stderr
        built[name] = (path, run.json()["package_id"])
    return built


@pytest.fixture
def start() -> Iterator[Callable[..., Conversation]]:
    """Start a sample's build as a process a test talks to; every one is ended when the test ends."""
    started: list[Conversation] = []

    def launch(sample: Sample, build: str = "baseline") -> Conversation:
        talk = Conversation(sample, build, "ready")
        started.append(talk)
        return talk

    yield launch
    for talk in started:
        talk.close()


@pytest.fixture
def unrelated() -> Iterator[subprocess.Popen[bytes]]:
    """A process that maps neither baseline (nor anything of hpkg's)."""
    process = subprocess.Popen(["sleep", "600"])
    yield process
    process.kill()
    process.wait()
