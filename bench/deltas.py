"""What a user would ship instead of a hotpatch: binary deltas from bsdiff, xdelta3 and zstd.

Every delta is applied back to the baseline and the result compared with the fix, so a size in the
table is the size of a delta that really reproduces the new file.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DeltaTool:
    """How to make and apply one kind of delta; {old}, {new}, {delta}, {out} are filled in."""

    name: str
    program: str
    encode: tuple[str, ...]
    apply: tuple[str, ...]
    suffix: str


TOOLS = (
    DeltaTool(
        "bsdiff",
        "bsdiff",
        ("bsdiff", "{old}", "{new}", "{delta}"),
        ("bspatch", "{old}", "{out}", "{delta}"),
        "bsdiff",
    ),
    DeltaTool(
        "xdelta3",
        "xdelta3",
        ("xdelta3", "-e", "-f", "-s", "{old}", "{new}", "{delta}"),
        ("xdelta3", "-d", "-f", "-s", "{old}", "{delta}", "{out}"),
        "xd3",
    ),
    DeltaTool(
        "zstd --patch-from",
        "zstd",
        ("zstd", "-q", "-f", "--patch-from={old}", "{new}", "-o", "{delta}"),
        ("zstd", "-q", "-d", "-f", "--patch-from={old}", "{delta}", "-o", "{out}"),
        "zst",
    ),
    DeltaTool(
        "zstd -19 --patch-from",
        "zstd",
        ("zstd", "-q", "-f", "-19", "--patch-from={old}", "{new}", "-o", "{delta}"),
        ("zstd", "-q", "-d", "-f", "--patch-from={old}", "{delta}", "-o", "{out}"),
        "19.zst",
    ),
)


@dataclass(frozen=True)
class DeltaResult:
    """One tool's delta for one pair: size, encode and apply time, and whether it applied back."""

    tool: str
    size: int | None
    encode_seconds: float | None
    apply_seconds: float | None
    verified: bool
    delta_path: str | None
    error: str | None = None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(argv: list[str]) -> float:
    """Run one command, raising with its stderr on failure; return its wall time."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exit {done.returncode}: {done.stderr.strip()[:200]}")
    return seconds


def make_delta(tool: DeltaTool, old: Path, new: Path, workdir: Path, runs: int = 1) -> DeltaResult:
    """Encode `runs` times (median time), apply once, and check the result is byte-identical to `new`."""
    if shutil.which(tool.program) is None:
        return DeltaResult(tool.name, None, None, None, False, None, f"{tool.program} is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    delta = workdir / f"delta.{tool.suffix}"
    out = workdir / f"rebuilt.{tool.suffix}"
    fill = {"old": str(old), "new": str(new), "delta": str(delta), "out": str(out)}
    try:
        encode = statistics.median(_run([a.format(**fill) for a in tool.encode]) for _ in range(max(runs, 1)))
        apply = _run([a.format(**fill) for a in tool.apply])
    except RuntimeError as exc:
        return DeltaResult(tool.name, None, None, None, False, None, str(exc))
    verified = out.is_file() and _sha256(out) == _sha256(new)
    return DeltaResult(tool.name, delta.stat().st_size, encode, apply, verified, str(delta))


def make_deltas(old: Path, new: Path, workdir: Path, runs: int = 1) -> list[DeltaResult]:
    """Every tool's delta for one pair."""
    return [make_delta(tool, old, new, workdir, runs) for tool in TOOLS]
