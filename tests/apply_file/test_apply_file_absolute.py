"""`hpkg apply --file` with absolute addresses in the package: pointer tables, function tables, jump tables.

programs/tables.c is compiled as a position-independent executable (the pointers need the dynamic
linker: the patched copy gets R_X86_64_RELATIVE relocations) and as a fixed-address executable
(absolute 32- and 64-bit fields are final at link addresses). Its fix also calls libc functions the
baseline never imports, which the patched copy gets as new dynamic symbols. Either way the patched
file must answer like the fixed build, and the baseline differently (or the test would prove nothing).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from apply_file_helpers import compile_ready, run_hpkg

from hpkg.formats import RelocationKind, read_package, read_package_file

LAYOUTS = {"pie": ["-fPIE", "-pie"], "fixed-address": ["-fno-pie", "-no-pie"]}
REQUESTS = [
    "shape 0", "shape 3", "shape 9", "op 0 5", "op 2 5", "op 7 1", "grade 95", "grade 45", "grade 55",
    "grade 12", "count",
]


def _answers(binary: Path) -> list[str]:
    stdin = "".join(f"{r}\n" for r in REQUESTS)
    result = subprocess.run([str(binary)], input=stdin, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def build(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, Path, Path]:
    """(layout, baseline, fixed, package) for one layout, compiled and built once."""
    layout = request.param
    out = tmp_path_factory.mktemp(f"tables-{layout}")
    baseline, fixed, package = out / "baseline", out / "fixed", out / "tables.hpkg"
    compile_ready("tables.c", baseline, *LAYOUTS[layout])
    compile_ready("tables.c", fixed, *LAYOUTS[layout], "-DFIX")
    result = run_hpkg("build", baseline, fixed, "-o", package)
    assert result.returncode == 0, result.stderr
    return layout, baseline, fixed, package


def test_absolute_addresses_in_the_package_are_right_after_loading(
    build: tuple[str, Path, Path, Path], tmp_path: Path
) -> None:
    layout, baseline, fixed, package = build
    kinds = {r.kind for r in read_package(read_package_file(package)).package.relocations}
    assert RelocationKind.R_X86_64_64 in kinds
    patched = tmp_path / "patched"

    result = run_hpkg("apply", package, "--file", baseline, "-o", patched, "--allow-unsigned", "--json")

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["position_independent"] is (layout == "pie")
    if layout == "pie":
        assert document["relative_relocations"] >= 8  # 5 shape pointers and 3 operations at least
    else:
        assert document["relative_relocations"] == 0
    assert _answers(patched) == _answers(fixed)
    assert _answers(patched) != _answers(baseline)


def test_imports_the_baseline_never_bound_become_dynamic_symbols(
    build: tuple[str, Path, Path, Path], tmp_path: Path
) -> None:
    """strncpy and toupper's __ctype_toupper_loc (GLIBC_2.3, a version the baseline does not need)."""
    _, baseline, _, package = build
    patched = tmp_path / "patched"

    result = run_hpkg("apply", package, "--file", baseline, "-o", patched, "--allow-unsigned", "--json")

    assert result.returncode == 0, result.stderr
    bound = json.loads(result.stdout)["bound_imports"]
    assert "strncpy@GLIBC_2.2.5" in bound
    symbols = _readelf("--dyn-syms", patched)
    versions_before, versions_after = _readelf("-V", baseline), _readelf("-V", patched)
    for symbol in bound:
        name, version = symbol.split("@")
        assert f"UND {name}@{version}" in symbols
        assert f"Name: {version} " in versions_after
    assert any(f"Name: {s.split('@')[1]} " not in versions_before for s in bound), "no new version need"


def _readelf(option: str, binary: Path) -> str:
    result = subprocess.run(["readelf", "-W", option, str(binary)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return " ".join(result.stdout.split())  # one space between fields, whatever the column widths
