"""Helpers for the `hpkg apply --file` tests: run the CLI, build packages, drive patched samples.

Packages are built once per session (per xdist worker) by the real command line, signed with a key
made by `hpkg keygen`. A patched copy is run through the corpus's own Conversation by mirroring the
sample's out/ layout in a temporary directory, so each sample is driven exactly as its sample.toml says.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_corpus import Conversation, Sample  # noqa: E402

HPKG = Path(sys.executable).with_name("hpkg")
PROGRAMS = Path(__file__).parent / "programs"
LIBRARY = "libgreet.so.1"  # the soname of programs/greet_lib.c
# The hotpatch-ready flags of samples/README.md (PIE unless a caller adds -fno-pie -no-pie or -shared).
READY_FLAGS = (
    "-O2", "-g", "-fno-omit-frame-pointer", "-flive-patching=inline-clone", "-fcf-protection=none",
    "-Wl,--emit-relocs", "-Wl,--build-id=sha1",
)
COMMAND_DEADLINE = 120  # a safety net against a hung command, not a timing assertion


def run_hpkg(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """Run the installed `hpkg` command line; never raises on a nonzero exit."""
    return subprocess.run(
        [str(HPKG), *map(str, args)], capture_output=True, text=True, timeout=COMMAND_DEADLINE
    )


@dataclasses.dataclass(frozen=True)
class Keys:
    private: Path
    public: Path


class Packages:
    """`hpkg build` once per (sample, flavour, signed), cached for the session.

    The stripped flavour is built from the stripped files with their symbols twins as debug files, the
    way a distribution ships debug symbols separately; the package is applied to the stripped file.
    """

    def __init__(self, root: Path, keys: Keys) -> None:
        self.root = root
        self.keys = keys
        self.cache: dict[tuple[str, str, bool], Path] = {}

    def build(self, sample: Sample, flavour: str, signed: bool = True) -> Path:
        key = (sample.name, flavour, signed)
        if key not in self.cache:
            out = self.root / f"{sample.name}.{flavour}{'' if signed else '.unsigned'}.hpkg"
            sign = ["--key", self.keys.private] if signed else []
            old, new = sample.binary("baseline", flavour), sample.binary("fixed", flavour)
            debug: list[str | Path] = []
            if flavour == "stripped":
                # As a distribution builds it: the stripped files plus their debug symbols (the twins).
                twins = sample.symbols_twin("baseline", flavour), sample.symbols_twin("fixed", flavour)
                debug = ["--old-debug", twins[0], "--new-debug", twins[1]]
            result = run_hpkg("build", old, new, "-o", out, *sign, *debug)
            assert result.returncode == 0, f"hpkg build {sample.name} {flavour}: {result.stderr}"
            self.cache[key] = out
        return self.cache[key]


def mirror(sample: Sample, flavour: str, root: Path) -> tuple[Sample, Path]:
    """A copy of `sample` whose baseline binary of `flavour` is a path to fill (the patched copy).

    Everything else (a library sample's host program) links back to the real build.
    """
    copy = dataclasses.replace(sample, directory=root)
    target = copy.binary("baseline", flavour)
    target.parent.mkdir(parents=True, exist_ok=True)
    if sample.kind == "library-host":
        copy.host_binary(flavour).symlink_to(sample.host_binary(flavour))
    return copy, target


def answers(sample: Sample, flavour: str) -> list[str]:
    """Every step's answer from a fresh process of the (mirrored) baseline build of `flavour`."""
    with Conversation(sample, "baseline", flavour) as conversation:
        return [conversation.ask(step.request) for step in sample.steps]


def compile_ready(
    source: str, out: Path, *flags: str | os.PathLike[str], link: tuple[str | os.PathLike[str], ...] = ()
) -> Path:
    """Compile programs/`source` with the hotpatch-ready flags (plus `flags`) into `out`, then `link`."""
    command = ["gcc", *READY_FLAGS, *map(str, flags), "-o", str(out), str(PROGRAMS / source), *map(str, link)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out
