"""`python -m bench --quick` on the small pair: real rows, real numbers, deltas that really apply.

No network: only the gcc-built pair runs. No timed assertions: times are checked to be
measured (positive floats), never compared with a budget.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_bench(*arguments: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "bench", *arguments]
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-work")


@pytest.fixture(scope="module")
def bench_json(workdir) -> dict:
    done = run_bench("--quick", "--pair", "small", "--json", "--no-download", "--workdir", str(workdir))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def small(bench_json) -> dict:
    (pair,) = bench_json["pairs"]
    assert pair["name"] == "small" and pair["error"] is None
    return pair


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_records_date_machine_and_engine_status(bench_json):
    assert bench_json["date"].endswith("UTC")
    assert bench_json["pause"] == []  # not selected
    assert int(bench_json["machine"]["cpus"]) >= 1
    assert "GNU objdump" in bench_json["machine"]["objdump"]
    assert set(bench_json["engine"]) == {"in_process_diff", "cli_diff", "cli_build"}


def test_small_pair_is_two_different_gcc_builds(small):
    old, new = Path(small["old"]), Path(small["new"])
    assert old.read_bytes()[:4] == b"\x7fELF" and new.read_bytes()[:4] == b"\x7fELF"
    assert sha256(old) != sha256(new)
    assert small["old_size"] == old.stat().st_size and small["new_size"] == new.stat().st_size


def test_speed_rows_are_measured_medians_and_positive_ratios(small, bench_json):
    speed = small["speed"]
    assert speed["runs"] == 3
    objdump = speed["timings"]["objdump -d (both files)"]
    assert len(objdump["samples"]) == 3
    assert all(isinstance(s, float) and s > 0 for s in objdump["samples"])
    assert sorted(objdump["samples"])[1] == objdump["median"]
    engine = bench_json["engine"]
    measured = {
        "hpkg diff (in-process)": engine["in_process_diff"],
        "hpkg diff (CLI)": engine["cli_diff"],
        "hpkg build (in-process)": engine["cli_build"],
        "hpkg build (CLI)": engine["cli_build"],
    }
    for name, reason in measured.items():
        if reason is None:
            assert len(speed["timings"][name]["samples"]) == 3
            assert all(s > 0 for s in speed["timings"][name]["samples"])
        else:  # not landed yet: a reason, and no number anywhere for it
            assert speed["not_measured"][name] == reason
            assert name not in speed["timings"]
    for name in ("hpkg diff (in-process)", "hpkg diff (CLI)"):
        if name in speed["timings"]:
            ratio = speed["ratios"][name]
            assert isinstance(ratio, float) and ratio > 0
        else:
            assert name not in speed["ratios"]


def test_build_is_timed_against_the_diff_in_the_same_rounds(small):
    speed = small["speed"]
    timings, ratios = speed["timings"], speed["build_ratios"]
    pairs = {"hpkg build (in-process)": "hpkg diff (in-process)", "hpkg build (CLI)": "hpkg diff (CLI)"}
    for build, diff in pairs.items():
        if build in timings and diff in timings:
            assert ratios[build] == timings[build]["median"] / timings[diff]["median"]
        else:
            assert build not in ratios
    # The in-process build's figure in the build-time table is the one from these rounds.
    if "hpkg build (in-process)" in timings:
        assert small["build_in_process"] == timings["hpkg build (in-process)"]


def test_peak_memory_of_diff_and_build_is_measured_in_fresh_processes(small, bench_json):
    engine = bench_json["engine"]
    expected = {"hpkg diff (CLI)": engine["cli_diff"], "hpkg build (CLI)": engine["cli_build"]}
    for name, reason in expected.items():
        if reason is not None:
            assert small["memory_not_measured"][name] == reason and name not in small["memory"]
            continue
        used = small["memory"][name]
        (run,) = used["runs"]  # --quick: one memory run per command
        assert run["returncode"] == 0 and run["samples"] > 0
        assert used["max_rss"] == run["max_rss"] and used["tree_peak"] == run["tree_peak"]
        # A Python interpreter with LIEF and Capstone loaded holds tens of MiB; the file is 16 KB.
        assert used["max_rss"] > 20 << 20 and used["tree_peak"] > 10 << 20
        assert used["max_rss"] > 100 * max(small["old_size"], small["new_size"])


def test_byte_compare_flags_the_fixed_function_among_shifted_ones(small):
    compared = small["byte_compare"]
    assert compared["symbol_source"] == ".symtab"
    assert "read_field" in compared["differing_names_sample"]
    # The fix grows read_field, so code behind it moves: the byte compare reports more than the fix.
    assert compared["symbols_differ"] > 1
    assert compared["symbols_differ"] + compared["symbols_same"] >= 9
    assert compared["fde_new"] >= compared["symbols_differ"] + compared["symbols_same"]
    assert 1 <= compared["fde_new_without_twin"] <= compared["fde_new"]


def test_touched_function_is_checked_against_both_reports(small, bench_json):
    touched = small["touched"]
    assert touched["touched"] == ["read_field"] and touched["named"] == ["read_field"]
    assert touched["flagged_by_byte_compare"] == ["read_field"]
    if bench_json["engine"]["cli_diff"] is None:
        assert "read_field" in small["hpkg_diff"]["changed"]
        assert touched["reported_by_hpkg"] == ["read_field"] and touched["missed_by_hpkg"] == []
    else:
        assert small["hpkg_diff"] is None and small["hpkg_diff_error"] == bench_json["engine"]["cli_diff"]
        assert touched["reported_by_hpkg"] is None


def zstd_decode(old: str, delta: str, out: str) -> list[str]:
    return ["zstd", "-q", "-d", "-f", f"--patch-from={old}", delta, "-o", out]


DECODERS = {
    "bsdiff": lambda old, delta, out: ["bspatch", old, out, delta],
    "xdelta3": lambda old, delta, out: ["xdelta3", "-d", "-f", "-s", old, delta, out],
    "zstd --patch-from": zstd_decode,
    "zstd -19 --patch-from": zstd_decode,
}


def test_every_delta_was_written_and_applies_back_to_the_fix(small, workdir, tmp_path):
    deltas = {d["tool"]: d for d in small["deltas"]}
    assert set(deltas) == set(DECODERS)
    for tool, delta in deltas.items():
        assert delta["error"] is None and delta["verified"] is True, tool
        path = Path(delta["delta_path"])
        assert path.is_relative_to(workdir) and path.stat().st_size == delta["size"] > 0
        assert delta["size"] < small["new_size"]  # a one-function fix: the delta is smaller than the file
        assert delta["encode_seconds"] > 0 and delta["apply_seconds"] > 0
        rebuilt = tmp_path / f"rebuilt-{path.suffix.lstrip('.')}-{len(tool)}"
        subprocess.run(DECODERS[tool](small["old"], str(path), str(rebuilt)), check=True, capture_output=True)
        assert sha256(rebuilt) == sha256(Path(small["new"])), tool


def test_hpkg_build_column_is_never_a_made_up_number(small, bench_json):
    if bench_json["engine"]["cli_build"] is None:
        build = small["hpkg_build"]
        assert build["outcome"] == "built" and build["seconds"] > 0
        package = Path(small["new"]).parent / "fix.hpkg"
        assert package.stat().st_size == build["package_size"]
        assert build["replaced_names"] == ["read_field"]  # read back from the file by hpkg inspect
        assert 0 < build["compressed_payload"] < build["package_size"]
        in_process = small["build_in_process"]
        assert len(in_process["samples"]) == 3 and all(s > 0 for s in in_process["samples"])
    else:
        assert small["hpkg_build"] is None and small["hpkg_build_error"] == "builder not available"


def test_table_output_has_the_six_pair_tables_and_the_small_row(workdir):
    done = run_bench("--quick", "--pair", "small", "--no-download", "--workdir", str(workdir / "table"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    titles = (
        "Speed:", "Build vs diff:", "Peak memory", "Changed functions:", "Package size vs deltas",
        "Build time vs delta",
    )
    for title in titles:
        assert any(line.startswith(title) for line in lines), title
    assert not any(line.startswith("Pause vs restart") for line in lines)  # not selected
    small_rows = [line for line in lines if line.startswith("small ")]
    assert len(small_rows) == 6
    speed_row, build_row, memory_row, changes_row, sizes_row, times_row = small_rows
    assert "x " in speed_row or "n/a (" in speed_row
    assert build_row.count("x ") == 2
    assert memory_row.count("x ") == 4 and "16,808" in memory_row
    assert "differ" in changes_row and "(.symtab)" in changes_row
    assert "NOT REPRODUCED" not in sizes_row
    sizes = sizes_row.split()
    assert len([cell for cell in sizes if cell.replace(",", "").isdigit()]) >= 5  # file, .hpkg, 4 deltas
    assert len([cell for cell in times_row.split() if cell.replace(".", "").isdigit()]) >= 6


EXPECTED_REPLACED = {"01-bounds-check": ["read_slot"], "16-shared-library": ["pct_decode"]}  # sample.toml


def test_sample_pairs_report_the_package_beside_the_deltas(tmp_path):
    selected = ("--pair", "01-bounds", "--pair", "16-shared")
    done = run_bench("--quick", *selected, "--json", "--no-download", "--workdir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    pairs = {pair["name"]: pair for pair in json.loads(done.stdout)["pairs"]}
    assert set(pairs) == {"01-bounds-check", "16-shared-library"}
    assert pairs["16-shared-library"]["new"].endswith("out/fixed/libpct.so.1")  # the library, not the host
    for name, pair in pairs.items():
        assert pair["role"] == "sample" and pair["error"] is None and pair["speed"] is None
        assert all(d["verified"] for d in pair["deltas"]), name
        build = pair["hpkg_build"]
        assert build["outcome"] == "built", name
        package = tmp_path / "samples" / name / "fix.hpkg"
        assert package.stat().st_size == build["package_size"]
        assert build["replaced_names"] == EXPECTED_REPLACED[name]  # read back by hpkg inspect
        assert pair["build_in_process"]["median"] > 0


def test_a_debian_pair_without_download_is_reported_not_measured(workdir):
    done = run_bench("--pair", "libpng", "--no-download", "--workdir", str(workdir / "nodl"))
    assert done.returncode == 1
    assert "libpng16 deb12u5 -> deb12u6: not measured: downloads disabled" in done.stdout
    assert "Traceback" not in done.stderr


def test_the_scale_pair_is_listed_and_measured_only_when_selected(workdir):
    listed = run_bench("--list")
    assert listed.returncode == 0
    scale = [line for line in listed.stdout.splitlines() if line.startswith("scale ")]
    assert len(scale) == 2 and "libxul" in scale[0] and "libwebkit2gtk" in scale[1]
    done = run_bench("--pair", "scale", "--no-download", "--json", "--workdir", str(workdir / "scale"))
    assert done.returncode == 1
    pairs = json.loads(done.stdout)["pairs"]
    assert [pair["role"] for pair in pairs] == ["scale", "scale"]
    assert all(pair["error"] == "downloads disabled (--no-download)" for pair in pairs)


def test_a_default_run_leaves_the_scale_pair_out():
    from bench.corpus import load_specs
    from bench.run import select_specs

    specs = load_specs()
    assert any(spec.role == "scale" for spec in specs)
    assert not any(spec.role == "scale" for spec in select_specs(specs, []))
    assert [spec.role for spec in select_specs(specs, ["scale"])] == ["scale", "scale"]
    assert [spec.name for spec in select_specs(specs, ["libxul"])] == ["libxul firefox-esr 140.12 -> 153.8"]


def test_markdown_output_has_one_well_formed_table_per_section(tmp_path):
    selected = ("--quick", "--pair", "01-bounds", "--markdown", "--no-download")
    done = run_bench(*selected, "--workdir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("|")]
    tables: list[list[str]] = []
    for line in done.stdout.splitlines():
        if line.startswith("|") and (not tables or not tables[-1]):
            tables.append([])
        if line.startswith("|"):
            tables[-1].append(line)
        elif tables and tables[-1]:
            tables.append([])
    tables = [t for t in tables if t]
    assert len(tables) == 2  # a sample pair has sizes and build times only
    for table in tables:
        header, rule, *body = table
        assert set(rule) <= set("|-:") and rule.count("|") == header.count("|")
        assert [row.split(" | ")[0] for row in body] == ["| 01-bounds-check"]
        assert all(row.count("|") == header.count("|") for row in body)
    assert len(rows) == 6
