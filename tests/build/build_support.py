"""Helpers shared by the package-builder tests: the CLI in a child process, gcc pairs, readelf facts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# The hotpatch-ready flags of the corpus (samples/README.md), for the pairs compiled here.
READY_FLAGS = (
    "-O2", "-g", "-fno-omit-frame-pointer", "-flive-patching=inline-clone", "-fcf-protection=none",
    "-fPIE", "-pie", "-Wl,--emit-relocs", "-Wl,--build-id=sha1",
)
PROGRAMS = Path(__file__).parent / "programs"


@dataclass(frozen=True)
class Result:
    """One `hpkg` run: exit code, stdout, stderr."""

    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


def run_hpkg(*args: str | Path) -> Result:
    """Run the real command line in a child process, as a build pipeline would."""
    proc = subprocess.run(
        [sys.executable, "-m", "hpkg", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def readelf_build_id(path: Path) -> str:
    notes = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, check=True).stdout
    return re.search(r"Build ID: ([0-9a-f]+)", notes).group(1)


def symbol_address(path: Path, name: str) -> int:
    """st_value of a symbol, read with readelf (not with hpkg's own loader)."""
    table = subprocess.run(["readelf", "-sW", str(path)], capture_output=True, text=True, check=True).stdout
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[7] == name:
            return int(fields[1], 16)
    raise AssertionError(f"{name} not in {path}")


class PairCompiler:
    """Compiles a baseline/fix pair from one C source with `-DFIX`, once per session per name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[tuple[str, tuple[str, ...]], tuple[Path, Path]] = {}

    def pair(
        self, name: str, source: str, extra: tuple[str, ...] = (), strip: bool = False
    ) -> tuple[Path, Path]:
        key = (name, extra + (("strip",) if strip else ()))
        if key in self.built:
            return self.built[key]
        directory = self.root / f"{name}-{len(self.built)}"
        directory.mkdir(parents=True, exist_ok=True)
        # One file name for both builds, compiled from its directory: __FILE__ must not differ.
        (directory / "prog.c").write_text(source)
        outputs = []
        for build, defines in (("baseline", ()), ("fixed", ("-DFIX",))):
            binary = directory / build
            subprocess.run(
                ["gcc", *READY_FLAGS, *extra, *defines, "prog.c", "-o", str(binary)],
                check=True, capture_output=True, cwd=directory,
            )
            if strip:
                subprocess.run(["strip", str(binary)], check=True)
            outputs.append(binary)
        self.built[key] = (outputs[0], outputs[1])
        return self.built[key]
