"""The seeds: real compiled samples (samples/*/out) and packages built from them, signed by a test key.

Targets say which command an input goes to and which side of it is mutated:

  diff-old      hpkg diff MUTANT FIXED              diff-new      hpkg diff BASELINE MUTANT
  build         hpkg build MUTANT FIXED -o OUT      inspect       hpkg inspect MUTANT
  verify        hpkg verify MUTANT --key PUB        verify-file   … --against BASELINE
  apply-file    hpkg apply MUTANT --file BASELINE -o OUT --key PUB
  apply-elf     hpkg apply PACKAGE --file MUTANT -o OUT --key PUB   (the ELF readers of the loader side)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "samples"

# (sample, baseline file, fixed file) under samples/NAME/out: ready, stripped and distribution links,
# an executable, a shared library, C++ with exceptions, a jump table, a .cold piece.
ELF_SEEDS: tuple[tuple[str, str, str], ...] = (
    ("01-bounds-check", "baseline", "fixed"),
    ("01-bounds-check", "baseline.stripped", "fixed.stripped"),
    ("08-jump-table", "baseline", "fixed"),
    ("14-threaded-server", "baseline", "fixed"),
    ("14-threaded-server", "baseline.unstripped", "fixed.unstripped"),
    ("16-shared-library", "baseline/libpct.so.1", "fixed/libpct.so.1"),
    ("17-cpp-virtual", "baseline", "fixed"),
    ("19-cold-split", "baseline.stripped", "fixed.stripped"),
)
# Packages are built from these (ready flavour), signed by the test key.
PACKAGE_SEEDS: tuple[str, ...] = ("01-bounds-check", "08-jump-table", "16-shared-library", "17-cpp-virtual")
ELF_TARGETS = ("diff-old", "diff-new", "build", "apply-elf")
PACKAGE_TARGETS = ("inspect", "verify", "verify-file", "apply-file")
# How often each target is drawn: diff is the cheapest way into the ELF readers, build goes further.
TARGET_WEIGHTS = {"diff-old": 5, "diff-new": 2, "build": 2, "apply-elf": 3, "inspect": 2, "verify": 2,
                  "verify-file": 2, "apply-file": 4}  # fmt: skip
# The test key: a fixed seed, so a reproducer's package is the same bytes wherever it is rebuilt.
TEST_KEY_SEED = hashlib.sha256(b"hpkg fuzz test key").digest()


def test_key() -> Ed25519PrivateKey:
    """The private key that signs every seed package and every mutant."""
    return Ed25519PrivateKey.from_private_bytes(TEST_KEY_SEED)


@dataclass(frozen=True)
class ElfSeed:
    """A baseline/fix pair of one sample flavour."""

    sample: str
    baseline: Path
    fixed: Path

    @property
    def name(self) -> str:
        return f"{self.sample}/{self.baseline.relative_to(SAMPLES_DIR / self.sample / 'out')}"


def build_samples() -> None:
    """Build the samples the seeds come from (`make -C samples`, a no-op when up to date)."""
    names = sorted({sample for sample, _, _ in ELF_SEEDS} | set(PACKAGE_SEEDS))
    subprocess.run(["make", "-s", "-C", str(SAMPLES_DIR), "-j2", *names], check=True)


def elf_seeds() -> list[ElfSeed]:
    out = []
    for sample, baseline, fixed in ELF_SEEDS:
        directory = SAMPLES_DIR / sample / "out"
        out.append(ElfSeed(sample, directory / baseline, directory / fixed))
    return out


def write_keys(directory: Path) -> tuple[Path, Path]:
    """The test key pair as files (raw 32-byte seed 0600, raw public key), for --key options."""
    private, public = directory / "test.key", directory / "test.key.pub"
    for path, data in ((private, TEST_KEY_SEED), (public, test_key().public_key().public_bytes_raw())):
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
    return private, public


def seed_for(sample: str, file: str) -> ElfSeed:
    """The seed pair one of whose files is samples/SAMPLE/FILE (a regression case names the file)."""
    wanted = SAMPLES_DIR / sample / file
    for seed in elf_seeds():
        if wanted in (seed.baseline, seed.fixed):
            return seed
    raise KeyError(f"no seed pair holds {wanted}")


def package_seed(sample: str) -> ElfSeed:
    directory = SAMPLES_DIR / sample / "out"
    if sample == "16-shared-library":
        return ElfSeed(sample, directory / "baseline" / "libpct.so.1", directory / "fixed" / "libpct.so.1")
    return ElfSeed(sample, directory / "baseline", directory / "fixed")
