"""Check the import contracts of pyproject.toml ([tool.importlinter]) with import-linter's `lint-imports`.

import-linter (through grimp) finds a package's modules by walking its one directory, while hpkg's
subpackages live in top-level folders that [tool.setuptools.package-dir] maps into the `hpkg`
namespace (builder/ is installed as hpkg/builder/). So the packages are first laid out as they
are installed, in a scratch directory, and `lint-imports` runs there. Exit status: lint-imports'.

    python scripts/lint-imports.py [ROOT]    # ROOT: the project to check (default: this one)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path


def stage(root: Path, destination: Path) -> None:
    """Copy every package of `root` to `destination` where its installed name puts it."""
    with open(root / "pyproject.toml", "rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    for package in setuptools["packages"]:
        source = root / setuptools["package-dir"][package]
        target = destination.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for module in source.glob("*.py"):
            shutil.copy2(module, target / module.name)


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent).resolve()
    lint_imports = shutil.which("lint-imports", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                                     os.environ.get("PATH", "")]))
    if lint_imports is None:
        sys.stderr.write("error: lint-imports not found (pip install import-linter)\n")
        return 2
    with tempfile.TemporaryDirectory(prefix="hpkg-imports-") as scratch:
        stage(root, Path(scratch))
        env = {**os.environ, "PYTHONPATH": scratch}
        command = [lint_imports, str(root / "pyproject.toml"), "--no-cache"]
        return subprocess.run(command, cwd=scratch, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
