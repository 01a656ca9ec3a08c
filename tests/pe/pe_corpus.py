"""The Windows x64 samples (samples/pe/) as data, and a conversation with one running under Wine.

A PE sample has the same sample.toml schema as an ELF one (tests/samples/sample_corpus.py reads it);
only its files and its launch differ: out/<build>.exe (and .stripped.exe), run by `wine` with the
test session's WINEPREFIX. Wine writes a console program's text-mode "\\r\\n"; answers drop the "\\r".
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_corpus import SAMPLES_DIR, Conversation, Launch, Sample, load_sample  # noqa: E402

PE_SAMPLES_DIR = SAMPLES_DIR / "pe"
# Set by tests/conftest.py for the whole session: where the one Wine prefix of the run lives.
WINEPREFIX_VARIABLE = "HPKG_TEST_WINEPREFIX"


@dataclass(frozen=True)
class PeSample(Sample):
    """A sample built by mingw-w64: its files end in .exe and it runs under Wine."""

    def binary(self, build: str, flavour: str) -> Path:
        suffix = ".stripped.exe" if flavour == "stripped" else ".exe"
        return self.out / f"{build}{suffix}"

    def symbols_twin(self, build: str, flavour: str) -> Path:
        return self.binary(build, "ready")

    def sources(self) -> set[str]:
        """The file names of its own translation units (as the COFF `.file` records name them)."""
        spec = (self.directory / "sample.mk").read_text() if (self.directory / "sample.mk").exists() else ""
        sources = {"sample.c"}
        for line in spec.splitlines():
            if line.startswith("SRCS"):
                sources = {Path(word).name for word in line.split(":=", 1)[1].split()}
        return sources | ({"stdio_main.c"} if self.kind == "stdio" else set())

    def launch(self, build: str, flavour: str) -> Launch:
        return Launch(("wine", str(self.binary(build, flavour)), *self.server_args), wine_environment())


def wine_environment() -> dict[str, str]:
    """The variables every Wine run of the session gets: its prefix, and no debug channels."""
    return {"WINEPREFIX": str(wine_prefix()), "WINEDEBUG": "-all"}


def wine_prefix() -> Path:
    """The session's Wine prefix, created on first use (~15 s) by one process while the others wait."""
    root = Path(os.environ[WINEPREFIX_VARIABLE])
    prefix = root / "prefix"
    with open(root / "prefix.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (prefix / "system.reg").exists():
            env = {**os.environ, "WINEPREFIX": str(prefix), "WINEDEBUG": "-all"}
            subprocess.run(["wineboot", "--init"], env=env, capture_output=True, check=True)
    return prefix


def load_pe_samples() -> list[PeSample]:
    """Every PE sample, in directory order."""
    samples = []
    for directory in sorted(PE_SAMPLES_DIR.glob("[0-9][0-9]-*")):
        if (directory / "sample.toml").is_file():
            samples.append(PeSample(**vars(load_sample(directory))))
    return samples


def build_pe_corpus() -> None:
    """Build every PE sample with `make -C samples/pe`, one builder at a time across processes."""
    lock_path = PE_SAMPLES_DIR / "out" / "build.lock"
    lock_path.parent.mkdir(exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(["make", "-C", str(PE_SAMPLES_DIR), "-j2"], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"building the PE samples failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )


class WineConversation(Conversation):
    """A PE sample running under Wine: one request line in, one answer line out ("\\r" dropped, from
    the server's banner too)."""

    def _read_line(self, fd: int) -> str:
        return super()._read_line(fd).rstrip("\r")
