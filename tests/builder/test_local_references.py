"""Relocation mode sees references the assembler resolved itself: `lea reg, [rip + static_fn]`.

A reference to a local symbol of the same section gets no static relocation, so only decoding the
operand reveals it; a function whose only change is such a target must still be reported.
"""

from __future__ import annotations

import pytest
from test_diff_cases import reported, run

from hpkg.builder.model import ChangeKind, TargetKind

# The fix swaps which of two static functions the IFUNC resolver returns, and swaps their places in
# the file too: the `lea` displacement is the same number of bytes in both builds, only its target
# differs.
RESOLVER = """
#include <stdio.h>
int feature_level = 2;
static int pick_plain(void) { return 1; }
#ifdef FIX
static int pick_other(void) { return 3; }
static int pick_fast(void) { return 2; }
#define CHOSEN pick_other
#else
static int pick_fast(void) { return 2; }
static int pick_other(void) { return 3; }
#define CHOSEN pick_fast
#endif
int (*volatile keep[])(void) = { pick_fast, pick_other };
static void *resolve_pick(void) { return feature_level > 1 ? (void *)CHOSEN : (void *)pick_plain; }
int pick(void) __attribute__((ifunc("resolve_pick")));
int main(void) { printf("%d\\n", pick()); return 0; }
"""


@pytest.mark.parametrize("flavour", ("relocs", "plain", "stripped"))
def test_changed_local_function_pointer_is_reported(compiler, flavour):
    result, names = run(compiler, "resolver", RESOLVER, "#define FIX\n" + RESOLVER, flavour)
    changed, added, removed = reported(result)
    assert (added, removed) == (set(), set())
    assert changed == names({"pick"})
    assert result.changed[0].change_kind is ChangeKind.REFERENCES


def test_relocation_mode_lists_the_local_function_the_resolver_returns(compiler):
    result, _ = run(compiler, "resolver", RESOLVER, "#define FIX\n" + RESOLVER, "relocs")
    pair = result.pair("pick")
    assert pair is not None and pair.old is not None and pair.new is not None
    old_targets = [r.target.name for r in pair.old.references if r.target.kind is TargetKind.FUNCTION]
    new_targets = [r.target.name for r in pair.new.references if r.target.kind is TargetKind.FUNCTION]
    assert sorted(old_targets) == ["pick_fast", "pick_plain"]
    assert sorted(new_targets) == ["pick_other", "pick_plain"]


def test_unchanged_resolver_is_same_when_its_targets_move(compiler):
    spacer = "int feature_level = 2;\nint spacer(void) { return 9; }"
    moved = RESOLVER.replace("int feature_level = 2;", spacer)
    result, _ = run(compiler, "resolver-moved", RESOLVER, moved, "relocs")
    changed, added, removed = reported(result)
    assert changed == set() and removed == set()
    assert added == {"spacer"}
