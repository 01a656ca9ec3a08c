"""Compile pairs of small C programs (baseline, fix) with gcc in three flavours for the diff-engine tests."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

# relocation mode, disassembly mode, and disassembly mode on a stripped binary.
FLAVOURS = {
    "relocs": ["-O2", "-Wl,--emit-relocs"],
    "plain": ["-O2"],
    "stripped": ["-O2"],
    # Non-PIC code: absolute addresses in immediates and `jmp [table + rax*8]` switch tables.
    "nopie": ["-O2", "-no-pie", "-fno-pie"],
    # A shared library: exported functions are interposable, so calls between them go via the PLT.
    "shared": ["-O2", "-shared", "-fPIC"],
}


@dataclass(frozen=True)
class Build:
    """One compiled program: the binary the test diffs and, for stripped ones, its unstripped twin."""

    path: Path
    unstripped: Path


class Compiler:
    """Compiles C sources once per session, keyed by (name, flavour, extra flags)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[tuple, Build] = {}

    def build(self, name: str, source: str, flavour: str, extra: tuple[str, ...] = ()) -> Build:
        key = (name, flavour, extra)
        if key in self.cache:
            return self.cache[key]
        directory = self.root / f"{name}-{flavour}-{abs(hash(extra)) % 10000}"
        directory.mkdir(parents=True, exist_ok=True)
        # The same file name for baseline and fix, compiled from its directory: __FILE__ must not differ.
        (directory / "prog.c").write_text(source)
        binary = directory / name
        subprocess.run(
            ["gcc", *FLAVOURS[flavour], *extra, "prog.c", "-o", str(binary)],
            check=True,
            capture_output=True,
            cwd=directory,
        )
        build = Build(binary, binary)
        if flavour == "stripped":
            stripped = directory / f"{name}.stripped"
            subprocess.run(["strip", "-o", str(stripped), str(binary)], check=True)
            build = Build(stripped, binary)
        self.cache[key] = build
        return build


@pytest.fixture(scope="session")
def compiler(tmp_path_factory: pytest.TempPathFactory) -> Compiler:
    return Compiler(tmp_path_factory.mktemp("builder-programs"))
