"""The diff engine on real gcc builds: exact changed/added/removed sets, in relocation mode,
disassembly mode, and on stripped binaries."""

from __future__ import annotations

import pytest

from hpkg.builder import canon
from hpkg.builder.diff import diff_files
from hpkg.builder.functions import discover_functions
from hpkg.builder.image import load_image
from hpkg.builder.model import ChangeKind, DataChangeKind, SymbolKind

FLAVOURS = ("relocs", "plain", "stripped")
# Cases that also run on non-PIE executables and on shared libraries.
MORE_FLAVOURS = (*FLAVOURS, "nopie", "shared")

PROLOGUE = """\
#include <assert.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
"""

# main calls every entry through a volatile table: indirect calls keep GCC's interprocedural
# register allocation from tying main to them, so main itself never changes.
EPILOGUE = """
typedef int (*entry_fn)(int);
static entry_fn volatile entries[] = {{ {entries} }};
int main(int argc, char **argv) {{
    int s = 0;
    (void)argv;
    for (unsigned i = 0; i < sizeof entries / sizeof *entries; i++) s += entries[i](argc);
    printf("%d\\n", s);
    return 0;
}}
"""


def program(body: str, entries: str) -> str:
    return PROLOGUE + body + EPILOGUE.format(entries=entries)


INSERT_OLD = """
__attribute__((noinline)) int f1(int x) { return x * 3 + 1; }
__attribute__((noinline)) int f2(int x) { return f1(x) ^ 0x55; }
__attribute__((noinline)) int f3(int x) { return x * 7 - f1(x + 2); }
int f4(int x) { return x - 9; }
"""
INSERT_NEW = (
    "__attribute__((noinline)) int inserted(int x) { return x * x + 11; }\n"
    + INSERT_OLD.replace("return f1(x) ^ 0x55;", "return f1(x) ^ inserted(x);")
)
INSERT_ENTRIES = "f1, f2, f3, f4"

STRING_OLD = """
__attribute__((noinline)) const char *greet(int x) { return x > 5 ? "hello, world" : "bye"; }
__attribute__((noinline)) const char *other(int x) { return x > 3 ? "unchanged text" : "still"; }
int greet_len(int x) { return (int)strlen(greet(x)); }
int other_len(int x) { return (int)strlen(other(x)); }
"""
STRING_NEW = STRING_OLD.replace('"hello, world"', '"hello, there, world"')
STRING_ENTRIES = "greet_len, other_len"

SWITCH_OLD = """
int classify(int x) {
    switch (x & 7) {
    case 0: return x * 3 + 7;
    case 1: return x ^ 0x1234;
    case 2: return x << 5;
    case 3: return x / 7;
    case 4: return x - 100;
    case 5: return ~x;
    case 6: return x * x;
    case 7: return x % 13;
    default: return -1;
    }
}
int classify2(int x) {
    switch (x & 7) {
    case 0: return x * 5 + 3;
    case 1: return x ^ 0x4321;
    case 2: return x << 3;
    case 3: return x / 9;
    case 4: return x - 200;
    case 5: return -x;
    case 6: return x * x * x;
    case 7: return x % 17;
    default: return -2;
    }
}
"""
SWITCH_NEW = SWITCH_OLD.replace("case 5: return ~x;", "case 5: return ~x + (x >> 2);")
SWITCH_ENTRIES = "classify, classify2"

INLINE_OLD = """
static inline int helper(int x) { return x * 5 + 1; }
int user_a(int x) { return helper(x) + 2; }
int user_b(int x) { return helper(x * 2) - 3; }
int bystander(int x) { return x * 11; }
"""
INLINE_NEW = INLINE_OLD.replace("x * 5 + 1", "x * 5 + 4")
INLINE_ENTRIES = "user_a, user_b, bystander"

STATIC_OLD = """
int early(int x) { return x + 1; }
int counter(int x) { static int count; count += x; return count; }
"""
STATIC_NEW = STATIC_OLD.replace("count += x;", "count += x * 2;")
STATIC_SHIFT_NEW = STATIC_OLD.replace(
    "int early(int x) { return x + 1; }",
    "int early(int x) { static int count; count++; return x + count; }",
)
STATIC_ENTRIES = "early, counter"

CLONE_OLD = """
static __attribute__((noinline)) int scale(int x, int k) { return x * k + (x >> 3); }
int use1(int x) { return scale(x, 3) + 1; }
int use2(int x) { return scale(x + 1, 3) - 1; }
"""
CLONE_NEW = CLONE_OLD.replace(
    "int use2(int x) { return scale(x + 1, 3) - 1; }",
    "__attribute__((noinline)) int use3(int x) { return scale(x + 2, 5) - 1; }\n"
    "int use2(int x) { return scale(x + 1, 5) - use3(x); }",
)
CLONE_ENTRIES = "use1, use2"

IPA_OLD = """
__attribute__((noinline)) int leaf(int x) { return x + 1; }
int caller(int a) { int t = a * 3; int u = (a * 5) ^ 0x77; return leaf(a) * t + u; }
"""
IPA_NEW = IPA_OLD.replace("return x + 1; }", "return x + (getpid() & 1); }")
IPA_ENTRIES = "caller"

DATA_OLD = """
__thread int tls_counter = 5;
int get_tls(int x) { return tls_counter += x; }
int limit = 10;
struct config { int a; int b; } config = { 1, 2 };
int get_limit(int x) { return limit + x; }
int get_b(int x) { return config.b + x; }
"""
DATA_NEW = DATA_OLD.replace("int limit = 10;", "int limit = 20;").replace("= 5;", "= 7;").replace(
    "struct config { int a; int b; } config = { 1, 2 };",
    "struct config { int a; long extra; int b; } config = { 1, 5, 2 };",
)
DATA_ENTRIES = "get_limit, get_b, get_tls"

LINE_OLD = """
int plain(int x) { return x * 2 + 1; }
int checked(int x) { assert(x < 1000000); return x * 2; }
"""
LINE_NEW = LINE_OLD.replace("int checked", "\n\n\n/* three lines inserted above */\nint checked")
LINE_ENTRIES = "plain, checked"


def _function_addresses(path) -> dict[str, int]:
    image = load_image(path)
    return {s.name: s.address for s in image.symbols if s.kind is SymbolKind.FUNCTION and s.defined}


def run(compiler, name, old_src, new_src, flavour, extra=()):
    """Build baseline and fix, diff them; returns (result, name translator for this flavour)."""
    old = compiler.build(f"{name}-old", old_src, flavour, tuple(extra))
    new = compiler.build(f"{name}-new", new_src, flavour, tuple(extra))
    result = diff_files(old.path, new.path, parallel=flavour == "plain")
    old_addresses = _function_addresses(old.unstripped)
    new_addresses = _function_addresses(new.unstripped)

    def names(expected_old: set[str], side: str = "old") -> set[str]:
        if flavour != "stripped":
            return set(expected_old)
        table = old_addresses if side == "old" else new_addresses
        return {f"sub_{table[n]:x}" for n in expected_old}

    return result, names


def reported(result) -> tuple[set[str], set[str], set[str]]:
    return (
        {p.name for p in result.changed},
        {p.name for p in result.added},
        {p.name for p in result.removed},
    )


@pytest.mark.parametrize("flavour", MORE_FLAVOURS)
def test_function_inserted_ahead_of_all_reports_only_it_and_its_caller(compiler, flavour):
    result, names = run(
        compiler, "insert", program(INSERT_OLD, INSERT_ENTRIES), program(INSERT_NEW, INSERT_ENTRIES), flavour
    )
    changed, added, removed = reported(result)
    assert changed == names({"f2"})
    assert added == names({"inserted"}, "new")
    assert removed == set()
    assert result.mode == ("relocations" if flavour == "relocs" else "disassembly")


@pytest.mark.parametrize("flavour", MORE_FLAVOURS)
def test_changed_string_literal_changes_only_its_user(compiler, flavour):
    result, names = run(
        compiler, "string", program(STRING_OLD, STRING_ENTRIES), program(STRING_NEW, STRING_ENTRIES), flavour
    )
    assert reported(result) == (names({"greet"}), set(), set())
    assert result.changed[0].change_kind is ChangeKind.REFERENCES


@pytest.mark.parametrize("flavour", MORE_FLAVOURS)
def test_changed_switch_case_reports_the_switch_only(compiler, flavour):
    result, names = run(
        compiler, "switch", program(SWITCH_OLD, SWITCH_ENTRIES), program(SWITCH_NEW, SWITCH_ENTRIES), flavour
    )
    assert reported(result) == (names({"classify"}), set(), set())


@pytest.mark.parametrize("flavour", MORE_FLAVOURS)
def test_changed_inlined_helper_reports_every_caller_that_inlined_it(compiler, flavour):
    result, names = run(
        compiler, "inline", program(INLINE_OLD, INLINE_ENTRIES), program(INLINE_NEW, INLINE_ENTRIES), flavour
    )
    assert reported(result) == (names({"user_a", "user_b"}), set(), set())


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_changed_function_with_static_local(compiler, flavour):
    result, names = run(
        compiler, "static", program(STATIC_OLD, STATIC_ENTRIES), program(STATIC_NEW, STATIC_ENTRIES), flavour
    )
    assert reported(result) == (names({"counter"}), set(), set())
    assert result.data_changes == ()


@pytest.mark.parametrize("flavour", ("relocs", "plain"))
def test_static_local_matched_by_owner_when_its_number_shifts(compiler, flavour):
    result, names = run(
        compiler,
        "static-shift",
        program(STATIC_OLD, STATIC_ENTRIES),
        program(STATIC_SHIFT_NEW, STATIC_ENTRIES),
        flavour,
    )
    assert reported(result) == (names({"early"}), set(), set())
    [change] = result.data_changes
    assert change.change is DataChangeKind.ADDED
    assert change.name.startswith("count.")
    # The added one is early's: the counter's own count kept its place whatever its number.
    counter = result.pair("counter")
    assert counter is not None and counter.new is not None
    data_names = {r.target.name for r in counter.new.references if r.target.kind.value == "data"}
    assert change.name not in data_names


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_clone_renamed_between_builds_is_paired_not_added_and_removed(compiler, flavour):
    result, names = run(
        compiler,
        "clone",
        program(CLONE_OLD, CLONE_ENTRIES),
        program(CLONE_NEW, CLONE_ENTRIES),
        flavour,
    )
    changed, added, removed = reported(result)
    old_build = compiler.build("clone-old", "", flavour)
    old_clone = {n for n in _function_addresses(old_build.unstripped) if n.startswith("scale.")}
    assert old_clone == {"scale.constprop.0"}
    # use1 now passes k=3 to the generic scale instead of calling the k=3 specialisation.
    assert changed == names({"scale.constprop.0", "use1", "use2"})
    assert added == names({"use3"}, "new")
    assert removed == set()
    if flavour != "stripped":
        assert result.pair("scale.constprop.0").new.function.name == "scale"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_ipa_ra_caller_reported_under_plain_o2(compiler, flavour):
    old, new = program(IPA_OLD, IPA_ENTRIES), program(IPA_NEW, IPA_ENTRIES)
    result, names = run(compiler, "ipa", old, new, flavour)
    assert reported(result) == (names({"leaf", "caller"}), set(), set())


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_ipa_ra_caller_not_reported_under_live_patching_flag(compiler, flavour):
    result, names = run(
        compiler,
        "ipa-lp",
        program(IPA_OLD, IPA_ENTRIES),
        program(IPA_NEW, IPA_ENTRIES),
        flavour,
        extra=("-flive-patching=inline-clone",),
    )
    assert reported(result) == (names({"leaf"}), set(), set())


@pytest.mark.parametrize("flavour", ("relocs", "plain", "nopie"))
def test_global_initializer_and_struct_layout_reported_under_data(compiler, flavour):
    result, names = run(
        compiler, "data", program(DATA_OLD, DATA_ENTRIES), program(DATA_NEW, DATA_ENTRIES), flavour
    )
    assert {(d.name, d.change) for d in result.data_changes} == {
        ("limit", DataChangeKind.VALUE),
        ("config", DataChangeKind.SIZE),
        ("tls_counter", DataChangeKind.VALUE),
    }
    # get_b reads config.b at a new offset; get_limit reads the same object and is unchanged.
    assert reported(result) == (names({"get_b"}), set(), set())


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_line_number_only_change_has_its_own_kind(compiler, flavour):
    result, names = run(
        compiler, "line", program(LINE_OLD, LINE_ENTRIES), program(LINE_NEW, LINE_ENTRIES), flavour
    )
    assert reported(result) == (names({"checked"}), set(), set())
    assert result.changed[0].change_kind is ChangeKind.LINE_NUMBER_ONLY


@pytest.mark.parametrize("flavour", MORE_FLAVOURS)
def test_identical_rebuild_reports_nothing(compiler, flavour):
    source = program(SWITCH_OLD + STATIC_OLD + STRING_OLD, "classify, early, counter, greet_len")
    result, _ = run(compiler, "identical", source, source, flavour)
    assert reported(result) == (set(), set(), set())
    assert result.data_changes == ()
    assert len(result.unchanged) >= 5


LOOPS = """
__attribute__((noinline)) int sum(int *a, int n) {
    int s = 0;
    for (int i = 0; i < n; i++) s += a[i] * 3 + (a[i] >> 2);
    return s;
}
__attribute__((noinline)) int count(const char *p) {
    int c = 0;
    while (*p) { if (*p == 'x') c++; p++; }
    return c;
}
int run_sum(int x) { int a[4] = { x, 2, 3, 4 }; return sum(a, 4); }
int run_count(int x) { return count(x > 1 ? "xax" : "bxb"); }
"""


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_endbr64_and_loop_alignment_padding_do_not_make_functions_differ(compiler, flavour):
    source = program(LOOPS, "run_sum, run_count")
    old = compiler.build("padding-old", source, flavour, ("-fcf-protection=none",))
    new = compiler.build("padding-new", source, flavour, ("-fcf-protection=branch", "-falign-loops=32"))
    def code(build) -> dict[str, bytes]:
        return {f.name: f.code for f in discover_functions(load_image(build.unstripped))}

    old_code, new_code = code(old), code(new)
    endbr64 = b"\xf3\x0f\x1e\xfa"
    for name in ("sum", "count"):
        assert new_code[name].startswith(endbr64) and not old_code[name].startswith(endbr64)
    assert len(new_code["sum"]) > len(old_code["sum"]) + 4  # … and padding before its loop
    result = diff_files(old.path, new.path)
    assert reported(result) == (set(), set(), set())
    assert len(result.unchanged) >= 4


def test_two_process_diff_agrees_with_one_process_diff(compiler, monkeypatch):
    old = compiler.build("insert-old", program(INSERT_OLD, INSERT_ENTRIES), "stripped")
    new = compiler.build("insert-new", program(INSERT_NEW, INSERT_ENTRIES), "stripped")
    serial = diff_files(old.path, new.path, parallel=False)
    forked = diff_files(old.path, new.path, parallel=True)

    def summary(result):
        return [
            (p.name, p.status, p.change_kind, *((p.new.digest, p.new.references) if p.new else ()))
            for p in result.pairs
        ]

    assert summary(serial) == summary(forked)
    # A large pair's children run one after the other (here: every pair counts as large), and each
    # finds its image's functions itself: they come back with every fact and byte the parent's had.
    monkeypatch.setattr(canon, "SEPARATE_MIN_BYTES", 0)
    separate = diff_files(old.path, new.path)
    assert summary(separate) == summary(serial)

    def functions(result):
        return [
            (f.address, f.name, f.size, f.section, f.named, f.parent, f.origin, f.aliases, f.local, f.code)
            for p in result.pairs
            for f in (p.old and p.old.function, p.new and p.new.function)
            if f is not None
        ]

    assert functions(separate) == functions(serial)
    assert len(functions(serial)) > 8
    # deregister_tm_clones has neither symbol nor FDE in the stripped build and only a call reaches
    # it: it is found by following that call, in both processes.
    crt = _function_addresses(old.unstripped)["deregister_tm_clones"]
    for result in (serial, forked):
        assert f"sub_{crt:x}" in {p.name for p in result.unchanged}
