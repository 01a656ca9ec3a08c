"""`line-number-only` only when proven: an immediate is a line number only as the argument after a
source-path string in a call; every other differing immediate is a code change, and `hpkg build`
ships it. Real gcc builds in every flavour, and the real Debian libcrypto case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_diff_cases import MORE_FLAVOURS

from hpkg.builder.diff import diff_files
from hpkg.builder.image import load_image
from hpkg.builder.model import ChangeKind, SymbolKind

REPO = Path(__file__).resolve().parents[2]

# The OpenSSL shape: ERR_set_debug(file, line, func) then ERR_set_error(lib, reason); the fix changes
# the library code of the raised error (ERR_LIB_CRYPTO 15 → ERR_LIB_RAND 36), not the line.
ERROR_LIBRARY = """
#include <stdio.h>
struct err {{ const char *file; int line; const char *func; int lib; int reason; }};
struct err last;
__attribute__((noipa)) void err_set_debug(const char *file, int line, const char *func)
{{ last.file = file; last.line = line; last.func = func; }}
__attribute__((noipa)) void err_set_error(int lib, int reason) {{ last.lib = lib; last.reason = reason; }}
__attribute__((noinline)) int set_drbg_type(const char *name)
{{
    if (name == NULL || name[0] == 0) {{
        err_set_debug(__FILE__, __LINE__, __func__);
        err_set_error({lib}, 103);
        return 0;
    }}
    return 1;
}}
int main(int argc, char **argv)
{{
    int ok = set_drbg_type(argc > 1 ? argv[1] : "");
    printf("%d %d %d\\n", ok, last.lib, last.reason);
    return 0;
}}
"""

# A limit passed to strncpy and snprintf in a function that asserts: the fix shortens both.
COPY_LIMIT = """
#include <assert.h>
#include <stdio.h>
#include <string.h>
char name[64], label[64];
__attribute__((noinline)) void set_name(const char *src)
{{
    assert(src != NULL);
    strncpy(name, src, {limit});
    snprintf(label, {limit}, "%s", src);
}}
int main(int argc, char **argv)
{{
    set_name(argc > 1 ? argv[1] : "a fairly long default name for the test");
    printf("%s|%s\\n", name, label);
    return 0;
}}
"""

# A real __LINE__ shift: the fix inserts lines above a function that asserts and logs with __LINE__.
LINE_SHIFT = """
#include <assert.h>
#include <stdio.h>
__attribute__((noipa)) void log_at(const char *file, int line, const char *message)
{{ fprintf(stderr, "%s:%d: %s\\n", file, line, message); }}
{inserted}__attribute__((noinline)) long checked(long n)
{{
    assert(n >= 0);
    if (n > 1000)
        log_at(__FILE__, __LINE__, "large");
    return n * 2;
}}
int main(int argc, char **argv)
{{
    printf("%ld\\n", checked(argc * 600L));
    return 0;
}}
"""
INSERTED = "/* the fix adds a comment\n   of three lines\n   above the function */\n"


def hpkg(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpkg", *map(str, args)], capture_output=True, text=True)


def _diff(compiler, name: str, old_src: str, new_src: str, flavour: str):
    old = compiler.build(f"{name}-old", old_src, flavour)
    new = compiler.build(f"{name}-new", new_src, flavour)
    result = diff_files(old.path, new.path)
    image = load_image(old.unstripped)
    addresses = {s.address: s.name for s in image.symbols if s.kind is SymbolKind.FUNCTION and s.defined}
    kinds = {addresses[p.old.function.address]: p.change_kind for p in result.changed}
    return old, new, kinds


@pytest.mark.parametrize("flavour", MORE_FLAVOURS)
def test_an_error_library_code_beside_a_line_number_is_code(compiler, flavour):
    _, _, kinds = _diff(
        compiler, "errlib", ERROR_LIBRARY.format(lib=15), ERROR_LIBRARY.format(lib=36), flavour
    )
    assert kinds == {"set_drbg_type": ChangeKind.CODE}


@pytest.mark.parametrize("flavour", MORE_FLAVOURS)
def test_a_copy_limit_in_an_asserting_function_is_code(compiler, flavour):
    _, _, kinds = _diff(compiler, "limit", COPY_LIMIT.format(limit=32), COPY_LIMIT.format(limit=16), flavour)
    assert kinds == {"set_name": ChangeKind.CODE}


@pytest.mark.parametrize("flavour", MORE_FLAVOURS)
def test_lines_inserted_above_an_asserting_and_logging_function_are_line_numbers_only(compiler, flavour):
    _, _, kinds = _diff(
        compiler, "shift", LINE_SHIFT.format(inserted=""), LINE_SHIFT.format(inserted=INSERTED), flavour
    )
    assert kinds == {"checked": ChangeKind.LINE_NUMBER_ONLY}


def test_build_packages_a_changed_copy_limit(compiler, tmp_path):
    """Before, the limit counted as a line number and `hpkg build` said "nothing to patch" (exit 5)."""
    old = compiler.build("limit-old", COPY_LIMIT.format(limit=32), "relocs")
    new = compiler.build("limit-new", COPY_LIMIT.format(limit=16), "relocs")
    built = hpkg("build", old.path, new.path, "-o", tmp_path / "limit.hpkg", "--json")
    assert built.returncode == 0, built.stderr
    doc = json.loads(built.stdout)
    assert [(f["name"], f["why"]) for f in doc["functions"]] == [("set_name", "changed")]
    assert doc["left_out_line_number_only"] == []


def test_build_leaves_a_line_shift_out_and_names_it(compiler, tmp_path):
    old = compiler.build("shift-old", LINE_SHIFT.format(inserted=""), "relocs")
    new = compiler.build("shift-new", LINE_SHIFT.format(inserted=INSERTED), "relocs")
    out = tmp_path / "shift.hpkg"
    left_out = hpkg("build", old.path, new.path, "-o", out)
    assert left_out.returncode == 5
    assert "only line-number changes (checked)" in left_out.stderr
    assert not out.exists()
    as_json = hpkg("build", old.path, new.path, "-o", out, "--json")
    assert as_json.returncode == 5
    doc = json.loads(as_json.stdout)
    assert doc["verdict"] == "no-change"
    assert doc["left_out_line_number_only"] == ["checked"]


def test_debian_libcrypto_error_library_change_is_code():
    """libcrypto 3.0.17 → 3.0.20: RAND_set_DRBG_type and RAND_set_seed_source_type raise their error
    with ERR_LIB_RAND instead of ERR_LIB_CRYPTO (`mov edi, 0xf` → `mov edi, 0x24` before
    ERR_set_error); before, both were reported line-number-only and left out of packages."""
    sys.path.insert(0, str(REPO))
    from bench.corpus import default_cache_dir, fetch_debian_pair, load_specs

    spec = next(s for s in load_specs() if s.name == "libcrypto 3.0.17 -> 3.0.20")
    pair = fetch_debian_pair(spec, default_cache_dir())
    result = diff_files(pair.old, pair.new)
    kinds = {p.name: p.change_kind for p in result.changed}
    assert kinds["RAND_set_DRBG_type"] is ChangeKind.CODE
    assert kinds["RAND_set_seed_source_type"] is ChangeKind.CODE
    # Their neighbours that only moved ERR_set_debug's line argument stay line-number-only.
    assert kinds["BN_new"] is ChangeKind.LINE_NUMBER_ONLY
    assert kinds["ASN1_OBJECT_free"] is ChangeKind.LINE_NUMBER_ONLY


def test_build_ships_the_code_change_and_lists_the_line_shift_it_left_out(compiler, tmp_path):
    """A fix that shifts `checked`'s lines and shortens a copy limit: the package replaces set_name,
    and both outputs name `checked` as left out, so a reviewer sees what was not shipped."""
    both = LINE_SHIFT.replace("int main", "int unused_main") + COPY_LIMIT.replace("#include", "// #include")
    both = both.replace("set_name(argc", "checked(argc); set_name(argc")
    old_src, new_src = both.format(inserted="", limit=32), both.format(inserted=INSERTED, limit=16)
    old = compiler.build("mixed-old", "#include <string.h>\n" + old_src, "relocs")
    new = compiler.build("mixed-new", "#include <string.h>\n" + new_src, "relocs")
    out = tmp_path / "mixed.hpkg"
    human = hpkg("build", old.path, new.path, "-o", out)
    assert human.returncode == 0, human.stderr
    assert "left out 1 line-number-only change(s): checked" in human.stderr
    doc = json.loads(hpkg("build", old.path, new.path, "-o", out, "--json").stdout)
    assert [f["name"] for f in doc["functions"]] == ["set_name"]
    assert doc["left_out_line_number_only"] == ["checked"]


# __LINE__ passed where no source path precedes it (a levelled logger): only the DWARF line tables
# of a -g build prove it a line number — the whole function moved by the lines inserted above it.
LEVELLED_LOG = """
#include <stdio.h>
__attribute__((noipa)) void log_line(int level, int line, const char *message)
{{ fprintf(stderr, "%d:%d: %s\\n", level, line, message); }}
{inserted}__attribute__((noinline)) long scaled(long n)
{{
    if (n > 1000)
        log_line({level}, __LINE__, "large");
    return n * 2;
}}
int main(int argc, char **argv)
{{
    printf("%ld\\n", scaled(argc * 600L));
    return 0;
}}
"""


def _kinds_with_debug_info(compiler, name: str, old_src: str, new_src: str, flavour: str):
    """Change kinds of a pair built with -g (`name` must be unique per source pair: builds are cached)."""
    old = compiler.build(f"{name}-old", old_src, flavour, ("-g",))
    new = compiler.build(f"{name}-new", new_src, flavour, ("-g",))
    result = diff_files(old.path, new.path)
    image = load_image(old.unstripped)
    addresses = {s.address: s.name for s in image.symbols if s.kind is SymbolKind.FUNCTION and s.defined}
    return {addresses[p.old.function.address]: p.change_kind for p in result.changed}


@pytest.mark.parametrize("flavour", ["relocs", "plain", "nopie", "shared"])
def test_a_line_shift_the_line_tables_prove_is_line_numbers_only(compiler, flavour):
    kinds = _kinds_with_debug_info(
        compiler, "levelled",
        LEVELLED_LOG.format(inserted="", level=2), LEVELLED_LOG.format(inserted=INSERTED, level=2), flavour,
    )
    assert kinds == {"scaled": ChangeKind.LINE_NUMBER_ONLY}


def test_without_line_tables_the_same_shift_is_code(compiler):
    """Stripped, nothing proves that `mov esi, 8` → `mov esi, 11` is a line: it is shipped as code."""
    kinds = _kinds_with_debug_info(
        compiler, "levelled",
        LEVELLED_LOG.format(inserted="", level=2),
        LEVELLED_LOG.format(inserted=INSERTED, level=2),
        "stripped",
    )
    assert list(kinds.values()) == [ChangeKind.CODE]


@pytest.mark.parametrize("flavour", ["relocs", "shared"])
def test_a_constant_that_moves_by_the_shift_but_is_no_line_of_the_function_is_code(compiler, flavour):
    """The level goes 2 → 5 as the lines move by 3: the delta fits, but 2 is no line of `scaled`."""
    kinds = _kinds_with_debug_info(
        compiler, "levelled-5",
        LEVELLED_LOG.format(inserted="", level=2), LEVELLED_LOG.format(inserted=INSERTED, level=5), flavour,
    )
    assert kinds == {"scaled": ChangeKind.CODE}
