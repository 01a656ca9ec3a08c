"""Data references without any symbols (stripped, no debug file): the baseline object at the same
section offset, as an explicit inference (`data-offset-inferred`), never silently."""

from __future__ import annotations

from build_support import run_hpkg, symbol_address

from hpkg.formats import TargetSpace, read_package


def test_static_counter_of_a_stripped_pair_is_inferred_only_when_allowed(samples, tmp_path):
    """10-static-counter: the changed function's static counter (.bss, no symbol) is used by no
    unchanged code; .bss has the same size in both builds and the baseline's function uses the same
    offset, so the inference is offered, refused by default and recorded when allowed."""
    sample = samples["10-static-counter"]
    old, new = sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped")
    out = tmp_path / "p.hpkg"
    refused = run_hpkg("build", old, new, "-o", out)
    assert refused.code == 4
    assert "  - data-offset-inferred: function 'sub_" in refused.err
    assert "reference-unresolved" not in refused.err
    assert not out.exists()
    built = run_hpkg("build", old, new, "-o", out, "--allow", "data-offset-inferred", "--json")
    assert built.code == 0, built.err
    assert built.json()["allowed_overrides"] == ["data-offset-inferred"]
    assert "overridden: data-offset-inferred" in built.err
    shown = run_hpkg("inspect", out, "--json").json()
    assert shown["allowed_overrides"] == ["data-offset-inferred"]
    # The package's code reaches the baseline's own counter: live state carries over.
    counter = symbol_address(sample.symbols_twin("baseline", "stripped"), "issued.0")
    package = read_package(out.read_bytes()).package
    assert counter in {r.target for r in package.relocations if r.space is TargetSpace.BASELINE}


def test_a_variable_only_the_fix_uses_is_never_inferred(samples, tmp_path):
    """11-new-global: the new counter fits in what was padding of .bss (same size), but the baseline's
    function never used that offset: it stays unresolved, whatever is allowed."""
    sample = samples["11-new-global"]
    old, new = sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped")
    result = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg", "--allow", "data-offset-inferred")
    assert result.code == 4
    assert "reference-unresolved: function 'login'" in result.err
    assert ".bss+0x28 is used by no unchanged code" in result.err
