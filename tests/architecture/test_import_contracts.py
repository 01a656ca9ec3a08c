"""The architecture check `make test` runs: import-linter's contracts hold, and a violation fails it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "lint-imports.py"


def _check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True)


def _copy_project(destination: Path) -> Path:
    """pyproject.toml and every package folder it maps, copied to `destination`."""
    shutil.copy2(ROOT / "pyproject.toml", destination / "pyproject.toml")
    with open(ROOT / "pyproject.toml", "rb") as f:
        package_dirs = tomllib.load(f)["tool"]["setuptools"]["package-dir"].values()
    folders = {folder.split("/")[0] for folder in package_dirs}
    for folder in folders:
        shutil.copytree(ROOT / folder, destination / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def test_every_contract_is_kept():
    run = _check(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("loader/link.py", "from hpkg.builder import model", "builder and loader never import each other"),
        ("builder/layout.py", "import hpkg.loader.placement", "builder and loader never import each other"),
        ("elf/plt.py", "import hpkg.builder.model", "the shared layers import neither side"),
        ("arch/x86_64.py", "import hpkg.elf.constants", "x86-64 facts stand below the ELF layer"),
        ("formats/model.py", "import hpkg.arch.x86_64", "formats knows bytes, not ELF, PE or x86-64"),
        ("formats/model.py", "import hpkg.pe.identity", "formats knows bytes, not ELF, PE or x86-64"),
        ("pe/identity.py", "import hpkg.builder.model", "the shared layers import neither side"),
        ("pe/headers.py", "import lief", "applying a package needs no ELF parser library"),
        ("loader/file_imports.py", "import lief", "applying a package needs no ELF parser library"),
        ("builder/image.py", "import lief", "hpkg reads ELF with its own layer"),
        ("src/hpkg/atomic_output.py", "import hpkg.formats.header", "atomic output files know no layer"),
    ],
)
def test_a_forbidden_import_breaks_the_build(tmp_path, module, line, contract):
    copy = _copy_project(tmp_path)
    path = copy / module
    path.write_text(path.read_text() + f"\n{line}\n")
    run = _check(copy)
    assert run.returncode != 0
    broken = [text for text in run.stdout.splitlines() if " BROKEN" in text]
    assert any(text.startswith(contract) for text in broken), run.stdout
