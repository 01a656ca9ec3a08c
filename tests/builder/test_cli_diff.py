"""`hpkg diff` as a user runs it: human table, --json shape, --function, debug files, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_diff_cases import STRING_ENTRIES, STRING_NEW, STRING_OLD, program


def hpkg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpkg", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def pair(compiler):
    old = compiler.build("string-old", program(STRING_OLD, STRING_ENTRIES), "plain")
    new = compiler.build("string-new", program(STRING_NEW, STRING_ENTRIES), "plain")
    return old.path, new.path


def test_json_document_has_the_documented_shape(pair):
    out = hpkg("diff", str(pair[0]), str(pair[1]), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert out.stdout == json.dumps(doc, indent=2) + "\n"  # written in pieces, the standard text
    assert set(doc) == {
        "schema", "old", "new", "changed", "added", "removed", "data", "unchanged_count", "mode"
    }
    assert doc["schema"] == "hpkg.diff/1"
    assert doc["old"]["path"] == str(pair[0]) and len(doc["old"]["build_id"]) == 40
    assert doc["mode"] == "disassembly"
    assert [c["name"] for c in doc["changed"]] == ["greet"]
    entry = doc["changed"][0]
    assert set(entry) == {"name", "old_address", "new_address", "old_size", "new_size", "change"}
    assert entry["change"] == "references"
    assert isinstance(entry["old_address"], int) and entry["old_address"] > 0
    assert doc["added"] == [] and doc["removed"] == []
    assert doc["unchanged_count"] >= 3


def test_human_table_and_summary_line(pair):
    out = hpkg("diff", str(pair[0]), str(pair[1]))
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert any(line.startswith("changed") and "greet" in line for line in lines)
    assert lines[-1].startswith("1 changed, 0 added, 0 removed, 0 data changes")


def test_function_option_prints_a_symbolic_disassembly_diff(pair):
    out = hpkg("diff", str(pair[0]), str(pair[1]), "--function", "greet")
    assert out.returncode == 0
    removed = [line for line in out.stdout.splitlines() if line.startswith("-lea")]
    added = [line for line in out.stdout.splitlines() if line.startswith("+lea")]
    # The changed literal shows as a different rodata content, not as a different address.
    assert removed and added and "rodata content" in removed[0] and "0x" not in removed[0]


def test_function_option_with_unknown_name_is_a_usage_error(pair):
    out = hpkg("diff", str(pair[0]), str(pair[1]), "--function", "no_such_function")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


def test_function_option_with_json_is_the_functions_diff_and_an_unknown_name_is_a_usage_error(pair):
    out = hpkg("diff", str(pair[0]), str(pair[1]), "--function", "greet", "--json")
    assert out.returncode == 0, out.stderr
    function = json.loads(out.stdout)["function"]
    assert function["name"] == "greet" and function["change"] == "references"
    assert any(line.startswith("+lea") for line in function["unified_diff"])
    unknown = hpkg("diff", str(pair[0]), str(pair[1]), "--json", "--function", "no_such_function")
    assert unknown.returncode == 2
    assert json.loads(unknown.stdout)["error"]["code"] == "usage"
    assert unknown.stderr.startswith("error: ") and "no_such_function" in unknown.stderr


def test_separate_debug_files_give_a_stripped_build_its_names(compiler, tmp_path):
    old = compiler.build("string-old", program(STRING_OLD, STRING_ENTRIES), "stripped")
    new = compiler.build("string-new", program(STRING_NEW, STRING_ENTRIES), "stripped")
    debug = []
    for build, name in ((old, "old.debug"), (new, "new.debug")):
        path = tmp_path / name
        subprocess.run(["objcopy", "--only-keep-debug", str(build.unstripped), str(path)], check=True)
        debug.append(path)
    plain = json.loads(hpkg("diff", str(old.path), str(new.path), "--json").stdout)
    assert plain["changed"][0]["name"].startswith("sub_")
    out = hpkg(
        "diff", str(old.path), str(new.path), "--json",
        "--old-debug", str(debug[0]), "--new-debug", str(debug[1]),
    )
    assert out.returncode == 0, out.stderr
    assert [c["name"] for c in json.loads(out.stdout)["changed"]] == ["greet"]


def _error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 3
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_not_an_elf_file_is_one_error_line_exit_3(pair, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a binary\n")
    assert "not an ELF file" in _error_line(hpkg("diff", str(text), str(pair[1])))


def test_missing_file_is_one_error_line_exit_3(pair, tmp_path):
    assert "no such file" in _error_line(hpkg("diff", str(tmp_path / "missing"), str(pair[1])))


def test_wrong_architecture_is_one_error_line_exit_3(pair, tmp_path):
    source = tmp_path / "m32.c"
    source.write_text("int main(void) { return 0; }\n")
    binary = tmp_path / "m32"
    built = subprocess.run(["gcc", "-m32", "-c", str(source), "-o", str(binary)], capture_output=True)
    if built.returncode != 0:
        # No 32-bit multilib: an x86-64 relocatable object is the wrong kind of file just the same.
        subprocess.run(["gcc", "-c", str(source), "-o", str(binary)], check=True)
        assert "not a linked" in _error_line(hpkg("diff", str(binary), str(pair[1])))
        return
    assert "unsupported architecture i386" in _error_line(hpkg("diff", str(binary), str(pair[1])))


def test_mismatched_debug_file_is_rejected(pair, compiler, tmp_path):
    other = compiler.build("string-new", program(STRING_NEW, STRING_ENTRIES), "plain")
    debug = tmp_path / "other.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(other.path), str(debug)], check=True)
    out = hpkg("diff", str(pair[0]), str(pair[1]), "--old-debug", str(debug))
    assert "debug file is for build-id" in _error_line(out)


def test_truncated_elf_file_is_one_error_line_exit_3(pair, tmp_path):
    truncated = tmp_path / "truncated"
    truncated.write_bytes(pair[0].read_bytes()[:5000])
    assert "truncated ELF file" in _error_line(hpkg("diff", str(truncated), str(pair[1])))



def test_stripped_names_the_table_shows_select_those_functions(compiler):
    """Stripped: `sub_<hex>` is the baseline's address (the fix's for an added function), and `new:sub_<hex>`
    selects by the fix's address. A function inserted ahead of all shifts every address, so the fix's
    addresses name other functions of the baseline; each reported name still selects its own pair."""
    from test_diff_cases import INSERT_ENTRIES, INSERT_NEW, INSERT_OLD

    old = compiler.build("insert-old", program(INSERT_OLD, INSERT_ENTRIES), "stripped").path
    new = compiler.build("insert-new", program(INSERT_NEW, INSERT_ENTRIES), "stripped").path
    doc = json.loads(hpkg("diff", str(old), str(new), "--json").stdout)
    reported = [(e, "changed") for e in doc["changed"]] + [(e, "new") for e in doc["added"]]
    assert {status for _, status in reported} == {"changed", "new"}
    for entry, status in reported:
        shown = hpkg("diff", str(old), str(new), "--function", entry["name"])
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines()[0].startswith(f"{entry['name']}: {status}")
        fix_name = f"new:sub_{entry['new_address']:x}"
        by_fix_address = hpkg("diff", str(old), str(new), "--function", fix_name)
        assert by_fix_address.stdout.splitlines()[0] == shown.stdout.splitlines()[0]
    baseline_only = hpkg("diff", str(old), str(new), "--function", f"old:{doc['added'][0]['name']}")
    assert not baseline_only.stdout.startswith(f"{doc['added'][0]['name']}: new")
