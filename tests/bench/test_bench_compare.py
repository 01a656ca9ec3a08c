"""The bench's own baselines on a gcc-built pair: raw bytes over-report, masked objdump does not."""

import subprocess
from pathlib import Path

import pytest

from bench.bytecompare import compare_bytes, load_code
from bench.objdiff import changed_functions
from bench.touched import touched_functions

PROGRAM = Path(__file__).resolve().parents[2] / "bench" / "programs" / "small.c"


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("compare")
    old, new = out / "old", out / "new"
    subprocess.run(["gcc", "-O2", "-o", str(old), str(PROGRAM)], check=True)
    subprocess.run(["gcc", "-O2", "-DHPKG_BENCH_FIX", "-o", str(new), str(PROGRAM)], check=True)
    return old, new


def test_byte_compare_reports_functions_that_only_moved(small_pair):
    old, new = (load_code(p) for p in small_pair)
    compared = compare_bytes(old, new)
    assert "read_field" in compared.differing_names
    assert compared.symbols_differ > 1  # callers and followers of read_field differ only by address
    assert compared.symbols_added == compared.symbols_removed == 0
    assert compared.fde_new == len(new.fdes) and compared.fde_new_without_twin >= 1


def test_masked_objdump_compare_reports_only_the_fixed_function(small_pair):
    old_path, new_path = small_pair
    old, new = load_code(old_path), load_code(new_path)
    assert changed_functions(old_path, new_path, old.symbols, new.symbols) == {"read_field"}


def test_masked_objdump_compare_of_a_build_with_itself_is_empty(small_pair):
    old_path, _ = small_pair
    old = load_code(old_path)
    assert changed_functions(old_path, old_path, old.symbols, old.symbols) == frozenset()


def test_touched_maps_changed_source_lines_to_their_functions(tmp_path):
    text = PROGRAM.read_text()
    anchor = "    rec->checksum = fnv1a("
    fixed = text.replace(anchor, "    if (rec->key[0] == '#')\n        return -1;\n" + anchor)
    fixed += "\nint added_helper(int x)\n{\n    return x + 1;\n}\n"
    assert fixed != text
    old, new = tmp_path / "old.c", tmp_path / "new.c"
    old.write_text(text)
    new.write_text(fixed)
    assert touched_functions(old, new) == ({"parse_line", "added_helper"}, {"added_helper"})
