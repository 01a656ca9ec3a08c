"""Refusals and overrides of `hpkg build`: every reason at once, named, with the documented exit codes."""

from __future__ import annotations

import hashlib
import re
import subprocess

import pytest
from build_support import PROGRAMS, readelf_build_id, run_hpkg, symbol_address

from hpkg.formats import PackageSection, TargetSpace, read_package


def _reasons(stderr: str) -> dict[str, str]:
    """Reason lines (`  - code: message`) of a refusal, by the name each one quotes."""
    found = {}
    for line in stderr.splitlines():
        m = re.match(r"  - ([a-z-]+): .*?'([^']+)'", line)
        if m:
            found[m.group(2)] = m.group(1)
    return found


def test_changed_global_initializer_is_refused_naming_it(samples, tmp_path):
    sample = samples["12-global-initializer"]
    old, new = sample.binary("baseline", "ready"), sample.binary("fixed", "ready")
    result = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg")
    assert result.code == 4
    assert result.err.startswith("error: not hot-patchable: 1 reason")
    assert _reasons(result.err) == {"config": "data-value-changed"}
    assert not (tmp_path / "p.hpkg").exists()


def test_changed_struct_layout_of_a_live_global_is_refused_and_cannot_be_allowed(samples, tmp_path):
    sample = samples["13-struct-layout"]
    old, new = sample.binary("baseline", "ready"), sample.binary("fixed", "ready")
    args = ("build", old, new, "-o", tmp_path / "p.hpkg")
    result = run_hpkg(*args)
    assert result.code == 4
    assert _reasons(result.err)["accounts"] == "data-size-changed"
    allowed = run_hpkg(*args, "--allow", "data-size-changed")
    assert allowed.code == 2
    assert "cannot be overridden" in allowed.err
    assert not (tmp_path / "p.hpkg").exists()


def test_all_reasons_are_listed_at_once(compiler, tmp_path):
    """A changed initializer, a resized global, a changed constructor and a 3-byte function: four lines."""
    source = (PROGRAMS / "many_reasons.c").read_text()
    old, new = compiler.pair("many_reasons", source, ("-falign-functions=1",))
    result = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg", "--json")
    assert result.code == 4
    assert _reasons(result.err) == {
        "threshold": "data-value-changed",
        "limits": "data-size-changed",
        "setup": "init-changed",
        "tiny": "function-too-small",
    }
    document = result.json()
    assert document["verdict"] == "refused" and len(document["reasons"]) == 4
    # Overriding the two overridable reasons leaves the other two, still refused.
    partial = run_hpkg(
        "build", old, new, "-o", tmp_path / "p.hpkg",
        "--allow", "data-value-changed", "--allow", "init-changed",
    )
    assert partial.code == 4
    assert _reasons(partial.err) == {"limits": "data-size-changed", "tiny": "function-too-small"}


def test_allowed_initializer_change_is_built_and_recorded(compiler, tmp_path):
    old, new = compiler.pair("initializer_and_code", (PROGRAMS / "initializer_and_code.c").read_text())
    refused = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg")
    assert refused.code == 4 and _reasons(refused.err) == {"limit": "data-value-changed"}
    built = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg", "--allow", "data-value-changed")
    assert built.code == 0, built.err
    assert "overridden: data-value-changed" in built.err
    doc = run_hpkg("inspect", tmp_path / "p.hpkg", "--json").json()
    assert doc["allowed_overrides"] == ["data-value-changed"]
    assert [f["name"] for f in doc["functions"]] == ["too_big"]
    # The fixed code compares with the running process's `limit`, in the baseline's memory.
    from hpkg.formats import read_package

    package = read_package((tmp_path / "p.hpkg").read_bytes()).package
    baseline_targets = {r.target for r in package.relocations if r.space.name == "BASELINE"}
    assert symbol_address(old, "limit") in baseline_targets


def test_unknown_allow_reason_is_a_usage_error(compiler, tmp_path):
    old, new = compiler.pair("initializer_and_code", (PROGRAMS / "initializer_and_code.c").read_text())
    result = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg", "--allow", "everything")
    assert result.code == 2
    assert "unknown reason 'everything'" in result.err


def test_no_change_exits_5(compiler, tmp_path):
    old, new = compiler.pair("no_change", (PROGRAMS / "no_change.c").read_text())
    result = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg")
    assert result.code == 5
    assert result.err.strip() == "error: nothing to patch: baseline and fix do not differ in code"


def test_line_number_only_changes_are_left_out_unless_asked_for(compiler, tmp_path):
    old, new = compiler.pair("line_only", (PROGRAMS / "line_only.c").read_text())
    left_out = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg")
    assert left_out.code == 5
    assert "only line-number changes (twice)" in left_out.err
    included = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg", "--include-line-only", "--json")
    assert included.code == 0, included.err
    assert [(f["name"], f["why"]) for f in included.json()["functions"]] == [("twice", "line numbers only")]


def test_stripped_build_refuses_data_it_cannot_identify_and_debug_files_fix_it(samples, tmp_path):
    """Without symbols a variable only changed code uses may be new or old: refuse, never guess."""
    sample = samples["11-new-global"]
    old, new = sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped")
    refused = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg")
    assert refused.code == 4
    assert set(_reasons(refused.err).values()) == {"reference-unresolved"}
    assert ".bss+" in refused.err and "--old-debug" in refused.err
    built = run_hpkg(
        "build", old, new, "-o", tmp_path / "p.hpkg", "--json",
        "--old-debug", sample.symbols_twin("baseline", "stripped"),
        "--new-debug", sample.symbols_twin("fixed", "stripped"),
    )
    assert built.code == 0, built.err
    doc = run_hpkg("inspect", tmp_path / "p.hpkg", "--json").json()
    assert [d["name"] for d in doc["data_objects"]] == ["failed_logins"]


@pytest.mark.parametrize("bad", ["missing-file", "not-elf"])
def test_unreadable_binary_is_one_error_line_exit_3(bad, tmp_path, samples):
    path = tmp_path / "input"
    if bad == "not-elf":
        path.write_text("hello")
    good = samples["01-bounds-check"].binary("fixed", "ready")
    result = run_hpkg("build", path, good, "-o", tmp_path / "p.hpkg")
    assert result.code == 3
    assert len(result.err.strip().splitlines()) == 1 and result.err.startswith("error: ")


def test_tls_growth_and_a_changed_ifunc_resolver_are_refused(compiler, tmp_path):
    old, new = compiler.pair("tls_and_ifunc", (PROGRAMS / "tls_and_ifunc.c").read_text())
    result = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg", "--allow", "data-value-changed")
    assert result.code == 4
    lines = [line.removeprefix("  - ") for line in result.err.splitlines()[1:]]
    assert "tls-changed: thread-local 'failures' was added" in lines
    assert "ifunc-changed: IFUNC resolver 'pick' changed" in lines
    # count() uses a thread-local variable, whose offset from the thread pointer moved: named too.
    assert any(line.startswith("reference-unresolved: function 'count'") for line in lines)


def test_a_function_shorter_than_the_jump_borrows_its_padding(compiler, tmp_path):
    """At the default alignment the 5-byte jump fits over `xor eax,eax; ret` plus the nop fill after it."""
    old, new = compiler.pair("tiny_function", (PROGRAMS / "tiny_function.c").read_text())
    result = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg")
    assert result.code == 0, result.err
    site = run_hpkg("inspect", tmp_path / "p.hpkg", "--json").json()["functions"][0]
    assert site["name"] == "allowed"
    assert site["baseline_size"] == 5  # the function and the padding the jump overwrites
    pre_image = bytes.fromhex(site["pre_image"])
    assert pre_image[:3] == bytes.fromhex("31c0c3") and len(pre_image) == 5
    assert site["baseline_sha256"] == hashlib.sha256(pre_image).hexdigest()


def test_cxx_package_carries_the_unwind_rules_of_its_functions(samples, tmp_path):
    """An exception thrown through a replacement needs .eh_frame rules there: the package carries the
    fix's CIEs, FDEs and LSDAs for its functions (format 1.1), so no override is needed."""
    sample = samples["17-cpp-virtual"]
    old, new = sample.binary("baseline", "ready"), sample.binary("fixed", "ready")
    built = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg")
    assert built.code == 0, built.err
    loaded = read_package((tmp_path / "p.hpkg").read_bytes())
    package = loaded.package
    assert loaded.format_version == (1, 3)  # unwind rules (1.1 on) and, unsigned, the package digest (1.3)
    assert loaded.section_digests["unwind"] == hashlib.sha256(package.unwind).digest()
    assert package.allowed_overrides == ()
    unwind = [r for r in package.relocations if r.section is PackageSection.UNWIND]
    code = {r.target for r in unwind if r.space is TargetSpace.CODE}
    process = "_ZN6Upload7processERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE"
    offsets = {f.name: f.code_offset for f in package.functions}
    # pc_begin of each replaced function's FDE (and of the added to_string) points at its package copy
    assert {offsets[process], offsets[process + ".cold"]} < code
    # both methods have LSDAs (landing pads for their cleanups), copied into the section
    assert sum(r.space is TargetSpace.UNWIND for r in unwind) == 2
    # the personality pointer goes through the baseline's own DW.ref.__gxx_personality_v0 slot
    personality = symbol_address(old, "DW.ref.__gxx_personality_v0")
    assert any(r.space is TargetSpace.BASELINE and r.target == personality for r in unwind)


def test_functions_whose_unwind_rules_cannot_be_carried_are_refused_until_allowed(compiler, tmp_path):
    """-fexceptions C with a cleanup (a personality routine) and a changed function in assembly without
    CFI: the fix has no FDE for it, so an exception through it would terminate the process."""
    source = (PROGRAMS / "uncarried_unwind.c").read_text()
    old, new = compiler.pair("uncarried_unwind", source, ("-fexceptions",))
    refused = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg")
    assert refused.code == 4
    assert _reasons(refused.err) == {"scale": "unwind-info-missing"}
    assert "the fix has no FDE for it" in refused.err
    built = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg", "--allow", "unwind-info-missing")
    assert built.code == 0, built.err
    doc = run_hpkg("inspect", tmp_path / "p.hpkg", "--json").json()
    assert doc["allowed_overrides"] == ["unwind-info-missing"]


def test_c_programs_need_no_unwind_override(samples, tmp_path):
    sample = samples["18-two-functions"]
    old, new = sample.binary("baseline", "ready"), sample.binary("fixed", "ready")
    result = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg")
    assert result.code == 0, result.err
    assert "unwind" not in result.err


def test_usage_and_io_errors_are_one_line_with_their_codes(samples, tmp_path):
    sample = samples["01-bounds-check"]
    old, new = sample.binary("baseline", "ready"), sample.binary("fixed", "ready")
    supersedes = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg", "--supersedes", "abc")
    assert supersedes.code == 2 and "level-1 package supersedes nothing" in supersedes.err
    no_key = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg", "--key", tmp_path / "missing")
    assert no_key.code == 3 and no_key.err.startswith("error: cannot read private key")
    unwritable = run_hpkg("build", old, new, "-o", tmp_path / "no-such-dir" / "p.hpkg")
    assert unwritable.code == 6 and unwritable.err.startswith("error: cannot write")
    for result in (no_key, unwritable):
        assert len(result.err.strip().splitlines()) == 1


def test_installed_debug_files_are_found_by_build_id(samples, tmp_path):
    """A stripped pair with its debug files under ROOT/.build-id/xx/rest.debug needs no options."""
    from hpkg.builder.build import build_package

    sample = samples["11-new-global"]
    root = tmp_path / "debug"
    for build in ("baseline", "fixed"):
        build_id = readelf_build_id(sample.binary(build, "stripped"))
        target = root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(sample.symbols_twin(build, "stripped").read_bytes())
    result = build_package(
        sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped"), debug_roots=(str(root),)
    )
    assert [d.name for d in result.package.data_objects] == ["failed_logins"]
    assert result.plan.mode == "disassembly"


# --- stripped builds: initial values no symbol names ------------------------------------------------


def test_changed_initializer_of_a_stripped_build_is_refused_not_nothing_to_patch(samples, tmp_path):
    """Before, without symbols the changed `config` was invisible and `build` exited 5 "nothing to patch"."""
    sample = samples["12-global-initializer"]
    old, new = sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped")
    result = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg", "--no-debuginfod")
    assert result.code == 4, result.err
    reasons = _reasons(result.err)
    assert list(reasons.values()) == ["data-value-changed"]
    [region] = reasons
    # the region is where `config` lies in the symbols twin (its debug flag inside it)
    config = symbol_address(sample.symbols_twin("baseline", "stripped"), "config")
    section, offset = region.split("+")
    assert section == ".data"
    data_start = int(re.search(
        r"\.data\s+PROGBITS\s+([0-9a-f]+)", _readelf_sections(old)
    ).group(1), 16)
    assert config <= data_start + int(offset, 16) < config + 64
    diff = run_hpkg("diff", old, new, "--json", "--no-debuginfod")
    assert diff.json()["data"] == [{"name": region, "change": "value-changed"}]


def test_resized_variable_section_of_a_stripped_build_is_refused_and_cannot_be_allowed(samples, tmp_path):
    sample = samples["13-struct-layout"]
    old, new = sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped")
    args = ("build", old, new, "-o", tmp_path / "p.hpkg", "--no-debuginfod")
    result = run_hpkg(*args)
    assert result.code == 4
    assert _reasons(result.err)[".data"] == "data-size-changed"
    assert run_hpkg(*args, "--allow", "data-size-changed").code == 2


def test_stripped_table_pointing_at_other_functions_is_a_value_change(compiler, tmp_path):
    old, new = compiler.pair("handler_table", (PROGRAMS / "handler_table.c").read_text(), strip=True)
    result = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg", "--no-debuginfod")
    assert result.code == 4, result.err
    assert set(_reasons(result.err).values()) == {"data-value-changed"}
    assert not (tmp_path / "p.hpkg").exists()


def test_stripped_pointers_that_only_moved_with_their_functions_are_no_change(compiler, tmp_path):
    """The fix grows `allow`, so `deny` and every pointer to it move: the table is still the same."""
    source = (PROGRAMS / "handler_table.c").read_text().replace(
        "#ifdef FIX\nint (*handlers[2])(int) = {deny, allow};\n#else\n", "#if 1\n"
    ).replace(
        "static int allow(int x) { return x + 1; }",
        "static int allow(int x) {\n#ifdef FIX\n"
        "    if (x > 1000) { printf(\"big %d\\n\", x); return 0; }\n#endif\n"
        "    return x + 1;\n}",
    )
    old, new = compiler.pair("handler_table_moved", source, strip=True)
    assert _data_bytes(old) != _data_bytes(new), "the pointers must move for this test to mean anything"
    diff = run_hpkg("diff", old, new, "--json", "--no-debuginfod")
    assert diff.code == 0, diff.err
    assert diff.json()["data"] == []
    assert len(diff.json()["changed"]) == 1 and not diff.json()["added"]


def _readelf_sections(path) -> str:
    return subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True, check=True).stdout


def _data_bytes(path) -> bytes:
    return subprocess.run(
        ["objcopy", "-O", "binary", "--only-section=.data", str(path), "/dev/stdout"],
        capture_output=True, check=True,
    ).stdout


def test_changed_static_between_a_stripped_librarys_exported_variables_is_refused(compiler, tmp_path):
    """.dynsym names `exported_count` in .data; `limit` beside it only its bytes name."""
    old, new = compiler.pair(
        "library_static", (PROGRAMS / "library_static.c").read_text(), ("-shared", "-fPIC"), strip=True
    )
    result = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg", "--no-debuginfod")
    assert result.code == 4, result.err
    reasons = _reasons(result.err)
    assert list(reasons.values()) == ["data-value-changed"]
    assert next(iter(reasons)).startswith(".data+0x")


def test_changed_exported_variable_of_a_stripped_library_is_named_once(compiler, tmp_path):
    """The symbol's bytes are its own: reported by name, not again as unnamed bytes of .data."""
    source = (PROGRAMS / "library_static.c").read_text().replace("#ifdef FIX\n", "#ifdef NEVER\n")
    source = source.replace("#ifdef FIX_EXPORTED", "#ifdef FIX")
    old, new = compiler.pair("library_exported", source, ("-shared", "-fPIC"), strip=True)
    diff = run_hpkg("diff", old, new, "--json", "--no-debuginfod")
    assert diff.code == 0, diff.err
    assert diff.json()["data"] == [{"name": "exported_count", "change": "value-changed"}]
