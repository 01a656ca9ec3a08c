"""Anonymous .bss/.data of stripped builds: an object that only moved is the same object, one that a
function stopped using for another is a change."""

from __future__ import annotations

import pytest
from test_diff_cases import reported, run

# GCC lays out a unit's variables in reverse order of definition: `failures`, defined after
# `served`, goes in front of it and moves it 8 bytes up.
SHIFTED = """
#include <stdio.h>
static long served;
#ifdef FIX
static long failures;
#endif
__attribute__((noinline)) long serve(int x) { served += x; return served; }
__attribute__((noinline)) long check(int x) {
#ifdef FIX
    if (x > 100) { failures++; return -failures; }
#endif
    return x * 2;
}
int main(int argc, char **argv) { (void)argv; printf("%ld %ld\\n", serve(argc), check(argc)); return 0; }
"""

# The fix makes note() count into the other variable; total() reads both in either build.
SWITCHED = """
#include <stdio.h>
long errors, warnings;
__attribute__((noinline)) void note(int x) {
#ifdef FIX
    warnings += x;
#else
    errors += x;
#endif
}
__attribute__((noinline)) long total(void) { return errors * 1000 + warnings; }
int main(int argc, char **argv) { (void)argv; note(argc); printf("%ld\\n", total()); return 0; }
"""


@pytest.mark.parametrize("flavour", ("stripped", "plain", "relocs"))
def test_variable_moved_by_a_new_one_does_not_change_its_user(compiler, flavour):
    result, names = run(compiler, "bss-shift", SHIFTED, "#define FIX\n" + SHIFTED, flavour)
    changed, added, removed = reported(result)
    assert changed == names({"check"})
    assert (added, removed) == (set(), set())


@pytest.mark.parametrize("flavour", ("stripped", "plain", "relocs"))
def test_function_switching_to_another_variable_is_a_change(compiler, flavour):
    result, names = run(compiler, "bss-switch", SWITCHED, "#define FIX\n" + SWITCHED, flavour)
    changed, added, removed = reported(result)
    assert changed == names({"note"})
    assert (added, removed) == (set(), set())
