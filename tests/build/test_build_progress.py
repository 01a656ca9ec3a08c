"""`hpkg build` shows the same progress bar as `hpkg diff` on a terminal, and never with --json.

The bar needs a program of a few thousand functions and a real terminal: stderr is a pseudo-terminal
here, stdout a pipe (so a --json document stays readable).
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from hpkg.cli.progress import PROGRESS_MIN_CODE_BYTES

# Enough code on both sides together for the bar (gcc -O2 aligns each function to 16 bytes); each
# function kept by a table of pointers.
FUNCTIONS = PROGRESS_MIN_CODE_BYTES // 2 // 16 + 100


def _many_functions() -> str:
    lines = ["#include <stdio.h>"]
    for i in range(FUNCTIONS):
        lines.append(f"__attribute__((noinline)) int f{i}(int x) {{ return x + {i}; }}")
    lines.append("#ifdef FIX")
    lines.append("__attribute__((noinline)) int fixed(int x) { return x > 100 ? x * 5 - 99 : x + 5; }")
    lines.append("#else")
    lines.append("__attribute__((noinline)) int fixed(int x) { return x > 100 ? x * 5 - 100 : x + 5; }")
    lines.append("#endif")
    table = ", ".join(f"f{i}" for i in range(FUNCTIONS))
    lines.append(f"int (*const table[])(int) = {{ {table} }};")
    lines.append("int main(int argc, char **argv) {")
    lines.append(f"    int s = fixed(argc); for (int i = 0; i < {FUNCTIONS}; i++) s += table[i](s);")
    lines.append('    printf("%d\\n", s); return 0;')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _build_on_a_terminal(old: Path, new: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    """Run `hpkg build` with stderr on a pseudo-terminal: (exit code, stdout, what the terminal showed)."""
    return _on_a_terminal("build", str(old), str(new), "-o", str(out), *extra)


def _on_a_terminal(*argv: str) -> tuple[int, str, str]:
    """Run `hpkg ARGV` with stderr on a pseudo-terminal: (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpkg", *argv],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
    )
    os.close(slave)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    stdout = proc.stdout.read().decode()
    proc.wait(timeout=300)
    os.close(master)
    return proc.returncode, stdout, shown.decode(errors="replace")


def test_build_shows_the_diff_progress_bar_on_a_terminal_only(compiler, tmp_path):
    old, new = compiler.pair("many-functions", _many_functions())
    code, _, shown = _build_on_a_terminal(old, new, tmp_path / "bar.hpkg")
    assert code == 0, shown
    assert "building" in shown and "100%" in shown
    code, stdout, shown = _build_on_a_terminal(old, new, tmp_path / "json.hpkg", "--json")
    assert code == 0, shown
    assert "building" not in shown and "%" not in shown
    assert [f["name"] for f in json.loads(stdout)["functions"]] == ["fixed"]
    piped = subprocess.run(
        [sys.executable, "-m", "hpkg", "build", str(old), str(new), "-o", str(tmp_path / "pipe.hpkg")],
        capture_output=True, text=True, timeout=300,
    )
    assert piped.returncode == 0 and "building" not in piped.stderr


def test_diff_shows_a_bar_of_code_bytes_that_ends_full_on_a_terminal(compiler):
    old, new = compiler.pair("many-functions", _many_functions())
    code, stdout, shown = _on_a_terminal("diff", str(old), str(new))
    assert code == 0, shown
    assert "diffing" in shown and "100%" in shown
    assert "fixed" in stdout
