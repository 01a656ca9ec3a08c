"""The bench's view of hpkg itself: `hpkg diff` in-process and through the CLI, and `hpkg build`.

Each entry point is probed before use. While the diff engine or the package builder has not
landed, the bench says "n/a (…)" for it; it never prints a number it did not measure.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpkg.errors import EXIT_NO_CHANGE, EXIT_REFUSED


class EngineError(Exception):
    """hpkg failed on a pair in a way the bench reports instead of a figure."""


@dataclass(frozen=True)
class EngineStatus:
    """Which hpkg entry points exist in this tree; a reason string where one does not."""

    in_process_diff: str | None
    cli_diff: str | None
    cli_build: str | None


@dataclass(frozen=True)
class DiffReport:
    """What `hpkg diff --json` reported for a pair, reduced to what the bench tabulates."""

    mode: str | None
    changed: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged_count: int | None
    data_changes: int
    change_kinds: dict[str, int]
    kind_by_name: dict[str, str]


@dataclass(frozen=True)
class BuildReport:
    """What `hpkg build --json` did for a pair: a package and its size, or a refusal."""

    outcome: str  # "built", "refused" or "no change"
    package_size: int | None
    seconds: float
    reasons: tuple[str, ...]
    functions_replaced: int | None = None
    functions_added: int | None = None
    code_bytes: int | None = None
    compressed_payload: int | None = None  # as `hpkg inspect --json` reports it; the rest is manifest
    replaced_names: tuple[str, ...] = ()  # as `hpkg inspect --json` reads them back from the package


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpkg", *args]


def _help_works(command: str) -> bool:
    done = subprocess.run(_cli(command, "--help"), capture_output=True, text=True)
    return done.returncode == 0


def _missing_attribute(module_name: str, attribute: str) -> str | None:
    """None when `module_name.attribute` imports; else why not, in a few words."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return f"{module_name} not importable ({exc.__class__.__name__})"
    if not hasattr(module, attribute):
        return f"{module_name}.{attribute} missing"
    return None


def compile_bytecode() -> None:
    """Compile every hpkg module's bytecode, as installing the package does: a CLI run then times the
    command, not the compiling of its sources (which `PYTHONDONTWRITEBYTECODE`, set on some machines,
    would otherwise repeat on every run: ~0.1 s more for `hpkg build`, which imports more modules)."""
    import compileall

    for name in ("hpkg", "hpkg.cli", "hpkg.builder", "hpkg.formats", "hpkg.loader", "hpkg.elf", "hpkg.pe",
                 "hpkg.arch"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for folder in getattr(module, "__path__", ()):
            compileall.compile_dir(folder, maxlevels=0, quiet=2)


def probe() -> EngineStatus:
    """Find out which of the in-process diff, `hpkg diff` and `hpkg build` this tree has (their
    bytecode compiled first, see `compile_bytecode`)."""
    compile_bytecode()
    in_process = None
    if _missing_attribute("hpkg.builder.image", "load_image") or _missing_attribute(
        "hpkg.builder.diff", "diff_images"
    ):
        in_process = "diff engine not available"
    cli_diff = None if _help_works("diff") else "`hpkg diff` not available"
    # The build hook: filled in as soon as the package builder (hpkg.builder.plan) and its CLI exist.
    cli_build = None
    if _missing_attribute("hpkg.builder.plan", "__name__") or not _help_works("build"):
        cli_build = "builder not available"
    return EngineStatus(in_process, cli_diff, cli_build)


def in_process_diff(old: Path, new: Path) -> Callable[[], object]:
    """A task that loads both images and diffs them in this process, the way a build system would."""
    from hpkg.builder.diff import diff_images
    from hpkg.builder.image import load_image

    def task() -> object:
        return diff_images(load_image(old), load_image(new))

    return task


def in_process_build(old: Path, new: Path) -> Callable[[], object]:
    """A task that builds the package in this process (diff, plan, verdict, encode; nothing written),
    the way a build system would call it; a refusal is a result here, it took its time too."""
    from hpkg.builder.build import build_package
    from hpkg.errors import NoChange, UnsupportedChange

    def task() -> object:
        try:
            return build_package(old, new)
        except (UnsupportedChange, NoChange) as exc:
            return exc

    return task


def diff_command(old: Path, new: Path) -> list[str]:
    """The command line of `hpkg diff OLD NEW --json` in a fresh interpreter."""
    return _cli("diff", str(old), str(new), "--json")


def build_command(old: Path, new: Path, package: Path) -> list[str]:
    """The command line of `hpkg build OLD NEW -o PACKAGE --json` in a fresh interpreter."""
    return _cli("build", str(old), str(new), "-o", str(package), "--json")


# Exit statuses of `hpkg build` that are an answer (a package, a refusal, no change), not a failure.
BUILD_ANSWERS = (0, EXIT_REFUSED, EXIT_NO_CHANGE)


def cli_diff(old: Path, new: Path) -> subprocess.CompletedProcess[str]:
    """Run `hpkg diff OLD NEW --json` as a user would, in a fresh interpreter."""
    return subprocess.run(diff_command(old, new), capture_output=True, text=True)


def cli_build_run(old: Path, new: Path, package: Path) -> subprocess.CompletedProcess[str]:
    """Run `hpkg build OLD NEW -o PACKAGE --json` as a user would (for timing; see `cli_build`)."""
    return subprocess.run(build_command(old, new, package), capture_output=True, text=True)


def _last_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The last line hpkg wrote to stderr (its `error:` line), or the exit status when it wrote none."""
    return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]


def _names(entries: list[dict]) -> tuple[str, ...]:
    return tuple(str(entry.get("name")) for entry in entries)


def parse_diff(done: subprocess.CompletedProcess[str]) -> DiffReport:
    """Read the JSON `hpkg diff --json` printed; an empty report for exit 5 (no change)."""
    if done.returncode not in (0, EXIT_NO_CHANGE):
        last = _last_error_line(done)
        raise EngineError(f"hpkg diff exit {done.returncode}: {last}")
    if done.returncode == EXIT_NO_CHANGE and not done.stdout.strip():
        return DiffReport(None, (), (), (), None, 0, {}, {})
    try:
        document = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise EngineError(f"hpkg diff --json printed no JSON: {exc}") from exc
    changed = document.get("changed", [])
    kind_by_name = {str(entry.get("name")): str(entry.get("change_kind", "?")) for entry in changed}
    kinds = Counter(str(entry.get("change_kind", "?")) for entry in changed)
    return DiffReport(
        mode=document.get("mode"),
        changed=_names(changed),
        added=_names(document.get("added", [])),
        removed=_names(document.get("removed", [])),
        unchanged_count=document.get("unchanged_count"),
        data_changes=len(document.get("data", [])),
        change_kinds=dict(kinds),
        kind_by_name=kind_by_name,
    )


def _inspect(package: Path) -> dict:
    """Read a package back with `hpkg inspect --json`, so the bench reports what the file holds."""
    done = subprocess.run(_cli("inspect", str(package), "--json"), capture_output=True, text=True)
    if done.returncode != 0:
        last = _last_error_line(done)
        raise EngineError(f"hpkg inspect of the built package failed: {last}")
    return json.loads(done.stdout)


def cli_build(old: Path, new: Path, package: Path) -> BuildReport:
    """Run `hpkg build OLD NEW -o PACKAGE --json` and report the package size or the refusal."""
    import time

    start = time.perf_counter()
    done = cli_build_run(old, new, package)
    seconds = time.perf_counter() - start
    try:
        document = json.loads(done.stdout)
    except json.JSONDecodeError:
        document = {}
    if done.returncode == 0:
        if not package.is_file():
            raise EngineError("hpkg build exit 0 but wrote no package")
        counts, sizes = document.get("counts", {}), document.get("sizes", {})
        inspected = _inspect(package)
        return BuildReport(
            "built",
            package.stat().st_size,
            seconds,
            (),
            counts.get("functions_replaced"),
            counts.get("functions_added"),
            sizes.get("code"),
            inspected.get("compressed_size"),
            tuple(str(f.get("name")) for f in inspected.get("functions", [])),
        )
    if done.returncode in (EXIT_REFUSED, EXIT_NO_CHANGE):
        reasons = tuple(str(r) for r in document.get("reasons", ()))
        if not document:
            reasons = tuple(line.strip() for line in done.stderr.splitlines()[1:] if line.strip())
        outcome = "refused" if done.returncode == EXIT_REFUSED else "no change"
        return BuildReport(outcome, None, seconds, reasons)
    last = _last_error_line(done)
    raise EngineError(f"hpkg build exit {done.returncode}: {last}")
