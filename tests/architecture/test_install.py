"""A non-editable install works from any directory, the repository root included.

The wheel is built offline from a copy of the project (no build isolation: setuptools and wheel
come from the test environment) and installed into a fresh virtual environment, whose site
directory then sees the test environment's dependencies (LIEF, Capstone, click, …) through a .pth
line. From the repository root, `python -m hpkg` must import the installed package, whose
`hpkg.builder` comes from builder/: a top-level hpkg/ folder there would shadow it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    run = subprocess.run([*map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert run.returncode == 0, f"{args}: {run.stdout}{run.stderr}"
    return run


def _copy_project(destination: Path) -> Path:
    with open(ROOT / "pyproject.toml", "rb") as f:
        package_dirs = tomllib.load(f)["tool"]["setuptools"]["package-dir"].values()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, destination / name)
    for folder in {d.split("/")[0] for d in package_dirs}:
        shutil.copytree(ROOT / folder, destination / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def test_installed_wheel_runs_from_the_repository_root(tmp_path):
    (tmp_path / "source").mkdir()
    source = _copy_project(tmp_path / "source")
    wheels = tmp_path / "wheels"
    pip = (sys.executable, "-m", "pip")
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, source)
    [wheel] = wheels.glob("hpkg-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(*pip, "--python", python, "install", "--no-deps", "--no-index", wheel)
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    # Dependencies only: the test environment's site directory, whose editable hpkg finder is not
    # activated (a .pth line adds a path; it does not run that directory's own .pth files).
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    imports = "import hpkg.builder, hpkg.elf, hpkg.arch; print(hpkg.builder.__file__)"
    where = _run(python, "-c", imports, cwd=ROOT)
    assert Path(where.stdout.strip()).is_relative_to(site)
    shown = _run(python, "-m", "hpkg", "--help", cwd=ROOT)
    assert "apply" in shown.stdout and "diff" in shown.stdout
    assert "SPEC.md" in {p.name for p in (site / "hpkg" / "formats").iterdir()}
    # Packaging hygiene: typed (PEP 561), an SPDX licence expression and the licence text shipped.
    assert (site / "hpkg" / "py.typed").is_file()
    [dist_info] = site.glob("hpkg-*.dist-info")
    metadata = (dist_info / "METADATA").read_text()
    assert "License-Expression: MIT" in metadata
    assert (dist_info / "licenses" / "LICENSE").read_text().startswith("MIT License")
