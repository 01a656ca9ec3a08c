"""`hpkg apply --file` on a shared library whose fix reaches libc objects and functions it never used.

programs/greet_lib.c is built as libgreet.so.1 (baseline and fix) and programs/greet_host.c links
against the baseline. The fix writes to `stderr` (a libc object read through a GOT slot) with a libc
function the library never called: the patched copy binds both at load time. The host, unchanged,
must behave with the patched copy exactly as with the fixed library (stdout and stderr).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from apply_file_helpers import LIBRARY, run_hpkg

NAMES = ["ann", "bartholomew the third", "x", "a name of many words"]


def _run(host: Path, library_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(host)], input="".join(f"{n}\n" for n in NAMES), capture_output=True, text=True, timeout=30,
        env={**os.environ, "LD_LIBRARY_PATH": str(library_dir)},
    )


def test_a_patched_library_binds_new_imports_and_behaves_like_the_fix(
    greet: dict[str, Path], tmp_path: Path
) -> None:
    patched = tmp_path / LIBRARY

    result = run_hpkg(
        "apply", greet["package"], "--file", greet["baseline"], "-o", patched, "--allow-unsigned", "--json"
    )

    assert result.returncode == 0, result.stderr
    assert "stderr@GLIBC_2.2.5" in json.loads(result.stdout)["bound_imports"]
    directories = (tmp_path, greet["fixed"].parent, greet["baseline"].parent)
    ours, fixed, baseline = (_run(greet["host"], directory) for directory in directories)
    assert ours.returncode == 0, ours.stderr
    assert (ours.stdout, ours.stderr) == (fixed.stdout, fixed.stderr)
    assert ours.stdout != baseline.stdout and "too long" in ours.stderr
