"""Switch jump tables in builds with Intel CET (`-fcf-protection=full`, Ubuntu's default).

With indirect-branch tracking GCC dispatches a switch with `notrack jmp` (a 0x3e prefix), so that the
case labels need no `endbr64`. The dispatch is still a switch whose table must be recovered: a package
whose copied code kept reading the baseline's table would jump back into the baseline's cases and
silently run the unfixed code. The patched file must answer like the fixed build, PIE and fixed-address.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from apply_file_helpers import compile_ready, run_hpkg

from hpkg.formats import read_package, read_package_file

LAYOUTS = {"pie": ["-fPIE", "-pie"], "fixed-address": ["-fno-pie", "-no-pie"]}
SAMPLES = Path(__file__).resolve().parents[2] / "samples"
# samples/08-jump-table: `op N` dispatches through a switch GCC compiles to a table; the fix changes
# case 5 only, so only a recovered table reaches the fixed case.
SOURCES = (SAMPLES / "08-jump-table" / "sample.c", SAMPLES / "common" / "stdio_main.c")
REQUESTS = ["op 5", "op 2 x", "op 1", "op 9", "op 4", "op 0 a", "op 3 z", "op 6", "op 7", "op 5"]


def _answers(binary: Path) -> list[str]:
    stdin = "".join(f"{r}\n" for r in REQUESTS)
    result = subprocess.run([str(binary)], input=stdin, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_notrack_switch_dispatch_gets_the_fixed_table(layout: str, tmp_path: Path) -> None:
    baseline, fixed, package, patched = (tmp_path / n for n in ("baseline", "fixed", "p.hpkg", "patched"))
    flags = (*LAYOUTS[layout], "-fcf-protection=full", f"-I{SAMPLES / 'common'}", *SOURCES[1:])
    compile_ready(SOURCES[0], baseline, *flags)
    compile_ready(SOURCES[0], fixed, *flags, "-DFIX")
    dump = subprocess.run(["objdump", "-d", str(baseline)], capture_output=True, text=True, check=True)
    assert "notrack jmp" in dump.stdout  # the shape under test is really there

    built = run_hpkg("build", baseline, fixed, "-o", package)
    assert built.returncode == 0, built.stderr
    applied = run_hpkg("apply", package, "--file", baseline, "-o", patched, "--allow-unsigned")
    assert applied.returncode == 0, applied.stderr

    assert read_package(read_package_file(package)).package.functions
    assert _answers(patched) == _answers(fixed)
    assert _answers(patched) != _answers(baseline)
