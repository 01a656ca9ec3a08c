"""`hpkg build` on the samples corpus: what each package holds, checked through `hpkg inspect --json`."""

from __future__ import annotations

from pathlib import Path

import pytest
from build_support import Result, readelf_build_id, run_hpkg, symbol_address

# Patchable samples whose function set the package must hold exactly: the diff's expectation plus the
# pieces that must move with a changed piece (sample 19: only parse_setting.cold changed).
PIECES = {"19-cold-split": {"parse_setting"}}
READY = ["01-bounds-check", "03-string-literal", "04-new-helper", "08-jump-table", "10-static-counter",
         "11-new-global", "14-threaded-server", "15-ipa-ra-main-loop", "18-two-functions", "19-cold-split"]


@pytest.fixture(scope="module")
def built(samples, key_pair, tmp_path_factory):
    """Build (and inspect) each sample's package at most once: (build result, inspect document)."""
    out = tmp_path_factory.mktemp("sample-packages")
    cache: dict[tuple[str, str], tuple[Result, dict]] = {}

    def build(name: str, flavour: str = "ready") -> tuple[Result, dict]:
        if (name, flavour) not in cache:
            sample = samples[name]
            target = out / f"{name}-{flavour}.hpkg"
            result = run_hpkg(
                "build", sample.binary("baseline", flavour), sample.binary("fixed", flavour),
                "-o", target, "--key", key_pair[0], "--json",
            )
            assert result.code == 0, result.err
            inspected = run_hpkg("inspect", target, "--json")
            assert inspected.code == 0, inspected.err
            cache[(name, flavour)] = (result, inspected.json())
        return cache[(name, flavour)]

    return build


@pytest.mark.parametrize("name", READY)
def test_package_holds_exactly_the_changed_and_added_functions(name, samples, built):
    sample = samples[name]
    expect = sample.expectations["ready"]
    _, doc = built(name)
    replaced = {f["name"] for f in doc["functions"]}
    added = {f["name"] for f in doc["added_functions"]}
    assert replaced == (set(expect.changed) | PIECES.get(name, set())) - set(expect.added)
    assert added == set(expect.added)
    assert doc["target"]["build_id"] == readelf_build_id(sample.binary("baseline", "ready"))
    assert doc["signed"] is True
    # Every replaced function's patch site is its baseline link address, with the 5 bytes found there.
    for f in doc["functions"]:
        assert f["baseline_address"] == symbol_address(sample.binary("baseline", "ready"), f["name"])
        assert len(bytes.fromhex(f["pre_image"])) == 5


def test_build_json_reports_verdict_sizes_and_counts(built):
    result, doc = built("11-new-global")
    report = result.json()
    assert report["verdict"] == "patchable"
    assert report["sizes"]["bss"] == 8 and report["sizes"]["file"] == doc["file_size"]
    assert report["counts"]["functions_replaced"] == 2
    assert report["counts"]["relocations_by_space"] == doc["relocations_by_space"]
    assert report["package_id"] == doc["package_id"]


def test_reference_to_an_existing_static_local_resolves_to_the_baseline_object(samples, built):
    """Live state: the fixed issue_ticket() must count in the baseline's issued.0, not in a copy."""
    _, doc = built("10-static-counter")
    assert doc["data_objects"] == []  # nothing copied: the counter stays in the baseline
    counter = symbol_address(samples["10-static-counter"].binary("baseline", "ready"), "issued.0")
    package = _load(built, "10-static-counter")
    assert counter in {r.target for r in package.relocations if r.space.name == "BASELINE"}


def _load(built, name: str, flavour: str = "ready"):
    """The decoded package of a built sample (read back from the file the build wrote)."""
    from hpkg.formats import read_package

    result, _ = built(name, flavour)
    return read_package(Path(result.json()["output"]).read_bytes()).package


def test_new_string_literal_lands_in_package_rodata(built):
    package = _load(built, "03-string-literal")
    assert b"https://app.example.org\0" in package.rodata
    rodata_refs = [r for r in package.relocations if r.space.name == "RODATA" and r.section.name == "CODE"]
    assert rodata_refs and all(r.kind.name == "R_X86_64_PC32" for r in rodata_refs)
    # An unchanged string the old code also used is read from the baseline, not copied.
    assert b'"*"' not in package.rodata


def test_added_helper_is_called_in_package_code(built):
    package = _load(built, "04-new-helper")
    helpers = {f.code_offset: f.name for f in package.added_functions}
    assert set(helpers.values()) == {"path_is_safe", "path_is_safe.part.0"}
    calls = [r for r in package.relocations if r.space.name == "CODE" and r.kind.name == "R_X86_64_PLT32"]
    # handle() calls the new helper (GCC calls its outlined part directly) inside the package's code
    assert {helpers.get(r.target) for r in calls} == {"path_is_safe.part.0"}
    # strchr is imported by the fix only: the loader resolves it by name and version.
    assert [(i.name, i.version) for i in package.imports] == [("strchr", "GLIBC_2.2.5")]


def test_new_global_lives_in_package_bss_and_old_globals_in_the_baseline(samples, built):
    package = _load(built, "11-new-global")
    assert [(d.name, d.section.value, d.size) for d in package.data_objects] == [("failed_logins", "bss", 8)]
    assert package.bss_size == 8
    assert {r.kind.name for r in package.relocations if r.space.name == "BSS"} == {"R_X86_64_PC32"}
    logins = symbol_address(samples["11-new-global"].binary("baseline", "ready"), "logins")
    assert logins in {r.target for r in package.relocations if r.space.name == "BASELINE"}


def test_switch_table_is_copied_with_pc32_entries_to_code(built):
    package = _load(built, "08-jump-table")
    entries = [r for r in package.relocations if r.section.name == "RODATA"]
    assert len(entries) >= 4
    assert {(r.kind.name, r.space.name) for r in entries} == {("R_X86_64_PC32", "CODE")}
    # GCC's PIC table entry i holds case - table; as a PC32 at P = table + 4i that is addend 4i.
    table_start = min(r.offset for r in entries)
    assert all(r.addend == r.offset - table_start for r in entries)
    assert all(package.rodata[r.offset : r.offset + 4] == bytes(4) for r in entries)


def test_cold_piece_change_replaces_its_parent_too(built):
    package = _load(built, "19-cold-split")
    assert {f.name for f in package.functions} == {"parse_setting", "parse_setting.cold"}
    assert sum(1 for r in package.relocations if r.space.name == "CODE") >= 2


def test_relocated_fields_are_zero_in_the_emitted_code(built):
    for name in ("03-string-literal", "08-jump-table", "11-new-global"):
        package = _load(built, name)
        for r in package.relocations:
            section = {"CODE": package.code, "RODATA": package.rodata, "DATA": package.data}[r.section.name]
            assert section[r.offset : r.offset + 4] == bytes(4), (name, r)


def test_same_inputs_and_key_give_byte_identical_packages(samples, key_pair, tmp_path):
    sample = samples["08-jump-table"]
    blobs = []
    for n in range(2):
        target = tmp_path / f"p{n}.hpkg"
        result = run_hpkg(
            "build", sample.binary("baseline", "ready"), sample.binary("fixed", "ready"), "-o", target,
            "--key", key_pair[0],
        )
        assert result.code == 0, result.err
        blobs.append(target.read_bytes())
    assert blobs[0] == blobs[1]
    verified = run_hpkg("verify", tmp_path / "p0.hpkg", "--key", key_pair[1])
    assert verified.code == 0, verified.err + verified.out


def test_unsigned_package_is_marked_unsigned_and_level_recorded(samples, tmp_path):
    sample = samples["01-bounds-check"]
    first = run_hpkg(
        "build", sample.binary("baseline", "ready"), sample.binary("fixed", "ready"),
        "-o", tmp_path / "a.hpkg",
        "--json",
    )
    assert first.code == 0, first.err
    assert first.json()["signed"] is False
    old, new = sample.binary("baseline", "ready"), sample.binary("fixed", "ready")
    second = run_hpkg(
        "build", old, new, "-o", tmp_path / "b.hpkg",
        "--level", "2", "--supersedes", first.json()["package_id"], "--json",
    )
    assert second.code == 0, second.err
    assert second.json()["patch_level"] == 2
    doc = run_hpkg("inspect", tmp_path / "b.hpkg", "--json").json()
    assert doc["signed"] is False and doc["patch_level"] == 2
    assert doc["supersedes"] == first.json()["package_id"]
    assert doc["package_id"] != first.json()["package_id"]


def test_shared_library_package_names_its_soname(samples, tmp_path):
    sample = samples["16-shared-library"]
    result = run_hpkg(
        "build", sample.binary("baseline", "ready"), sample.binary("fixed", "ready"),
        "-o", tmp_path / "l.hpkg",
    )
    assert result.code == 0, result.err
    doc = run_hpkg("inspect", tmp_path / "l.hpkg", "--json").json()
    assert doc["target"]["soname_hint"] == "libpct.so.1"
    assert [f["name"] for f in doc["functions"]] == ["pct_decode"]
    # the library's own counter `decoded` is reached in the baseline (live state)
    assert doc["relocations_by_space"] == {"BASELINE": 1}


@pytest.mark.parametrize("name", ["01-bounds-check", "03-string-literal", "19-cold-split"])
def test_stripped_builds_are_packaged_in_disassembly_mode(name, samples, built):
    result, doc = built(name, "stripped")
    assert result.json()["mode"] == "disassembly"
    assert doc["target"]["build_id"] == readelf_build_id(samples[name].binary("baseline", "stripped"))
    expected = len(samples[name].expectations["ready"].changed) + len(PIECES.get(name, ()))
    assert len(doc["functions"]) == expected


@pytest.mark.parametrize("name", ["08-jump-table", "14-threaded-server"])
def test_stripped_builds_with_debug_files_reach_the_baseline_variables(name, samples, tmp_path):
    """Variables only the changed code uses are told apart by the distribution's debug symbols."""
    sample = samples[name]
    result = run_hpkg(
        "build", sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped"),
        "-o", tmp_path / "p.hpkg",
        "--old-debug", sample.symbols_twin("baseline", "stripped"),
        "--new-debug", sample.symbols_twin("fixed", "stripped"), "--json",
    )
    assert result.code == 0, result.err
    report = result.json()
    assert report["mode"] == "disassembly"
    assert {f["name"] for f in report["functions"]} == set(sample.expectations["ready"].changed)
    assert report["sizes"]["data"] == report["sizes"]["bss"] == 0  # nothing copied: live state stays put


def test_new_initialised_variables_carry_relocated_pointers(compiler, tmp_path):
    """New pointers to an old function stay baseline addresses; a new string is copied with them."""
    from hpkg.formats import read_package

    source = (Path(__file__).parent / "programs" / "new_data.c").read_text()
    old, new = compiler.pair("new_data", source)
    result = run_hpkg("build", old, new, "-o", tmp_path / "p.hpkg")
    assert result.code == 0, result.err
    package = read_package((tmp_path / "p.hpkg").read_bytes()).package
    objects = {d.name: d for d in package.data_objects}
    layout = {(n, d.section.value, d.size) for n, d in objects.items()}
    assert layout == {("handlers", "data", 16), ("refusal", "data", 8)}
    pointers = {r.offset: r for r in package.relocations if r.section.name == "DATA"}
    assert {r.kind.name for r in pointers.values()} == {"R_X86_64_64"}
    table = objects["handlers"].offset
    first, second = pointers[table], pointers[table + 8]
    assert (first.space.name, first.target) == ("BASELINE", symbol_address(old, "twice"))
    assert (second.space.name, second.target) == ("BASELINE", symbol_address(old, "negate"))
    message = pointers[objects["refusal"].offset]
    assert message.space.name == "RODATA"
    assert package.rodata[message.target :].startswith(b"refused: negative input\0")
    # The counter the fixed serve() increments is the baseline's.
    baseline_targets = {r.target for r in package.relocations if r.space.name == "BASELINE"}
    assert symbol_address(old, "served") in baseline_targets


def test_ipa_ra_spread_into_main_is_built_with_a_warning(samples, tmp_path):
    """Plain -O2: -fipa-ra ties main() to score(), so main must be replaced too, which only a file patch
    can use: the build says so."""
    sample = samples["15-ipa-ra-main-loop"]
    plain = run_hpkg(
        "build", sample.binary("baseline", "plain"), sample.binary("fixed", "plain"),
        "-o", tmp_path / "p.hpkg", "--json",
    )
    assert plain.code == 0, plain.err
    assert {f["name"] for f in plain.json()["functions"]} == {"main", "score"}
    assert "warning: 'main' is replaced, and a running process is always inside it" in plain.err
    assert len(plain.json()["warnings"]) == 1


def test_a_change_only_in_moved_references_is_left_out(samples):
    """13: the diff calls main changed because PLT entries and stdout's copy moved; every reference
    still resolves to the baseline's own target, so main (which never returns) stays out."""
    from hpkg.builder.diff import diff_files
    from hpkg.builder.plan import plan_patch

    sample = samples["13-struct-layout"]
    diff = diff_files(sample.binary("baseline", "ready"), sample.binary("fixed", "ready"))
    plan = plan_patch(diff)
    assert {f.name for f in plan.functions} == {"find_account", "handle"}
    assert [r.code for r in plan.verdict.reasons] == ["data-size-changed"]


def test_zero_size_marker_never_stands_for_the_object_at_its_address(samples):
    """`__TMC_END__` (size 0) and the copy-relocated `stdout` share an address in 13's fix: a reference
    there means stdout, whose baseline twin is elsewhere than the baseline's marker."""
    from hpkg.builder.baseline_index import BaselineIndex
    from hpkg.builder.diff import diff_files

    sample = samples["13-struct-layout"]
    fixed = sample.binary("fixed", "ready")
    marker = symbol_address(fixed, "__TMC_END__")
    assert marker == symbol_address(fixed, "stdout@GLIBC_2.2.5")
    index = BaselineIndex(diff_files(sample.binary("baseline", "ready"), fixed))
    chosen = index.new_object(marker, "__TMC_END__")
    assert chosen.name.startswith("stdout") and chosen.size == 8
    baseline_stdout = symbol_address(sample.binary("baseline", "ready"), "stdout@GLIBC_2.2.5")
    assert index.twin(chosen).old.address == baseline_stdout
