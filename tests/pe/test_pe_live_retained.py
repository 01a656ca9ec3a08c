"""Revert under Wine when a word of the process still points into the package memory: the sites get
their pre-images back, the memory stays mapped and the record says "retired" (loader/revert.py).

04-new-helper reproduces it: once the fix has answered "error: path escapes the root", a word holding
the address of that string (package rodata) stays behind on main's Windows stack, in a frame's
uninitialised buffer. Waiting does not clear it, so the revert keeps the memory instead of refusing.
Everything else must see the retired package as not applied: status, a second revert, apply of the same
package again, and the maps-only scan for package memory (loader/affected.py); a later revert frees the
retired memory once no word points into it. Where no word points into the package (01-bounds-check),
revert unmaps it as before.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "live"))

from json_contract import check_document  # noqa: E402
from live_helpers import assert_running_untraced, hpkg, hpkg_mappings  # noqa: E402
from pe_corpus import PeSample, WineConversation, load_pe_samples  # noqa: E402

from hpkg.loader.affected import scan_for_packages  # noqa: E402

SAMPLES = {s.name: s for s in load_pe_samples()}


def _allocations(pid: int) -> dict[int, list[tuple[int, int, str]]]:
    """Each hpkg allocation of the process by its start: its maps lines as (start, end, perms)."""
    by_name: dict[str, list[tuple[int, int, str]]] = {}
    for line in hpkg_mappings(pid):
        span, perms, *_rest = line.split()
        start, end = (int(v, 16) for v in span.split("-"))
        by_name.setdefault(line.split("/memfd:")[1], []).append((start, end, perms))
    return {min(s for s, _, _ in lines): sorted(lines) for lines in by_name.values()}


def _tids(pid: int) -> set[int]:
    return {int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()}


def _ask(talk: WineConversation, sample: PeSample, step: int, build: str) -> None:
    want = getattr(sample.steps[step], build)
    assert talk.ask(sample.steps[step].request) == want, f"step {step + 1} should answer like the {build}"


def test_a_word_on_a_windows_stack_keeps_the_reverted_package_mapped_and_retired(pe_packages) -> None:
    sample = SAMPLES["04-new-helper"]
    package = pe_packages[sample.name]
    with WineConversation(sample, "baseline", "ready") as talk:
        pid = talk.pid
        _ask(talk, sample, 0, "baseline")
        applied = hpkg("apply", package, "--allow-unsigned", "--pid", pid, "--json")
        assert applied.returncode == 0, applied.stderr
        package_id = applied.json()["package_id"]
        _ask(talk, sample, 1, "fixed")  # the package's "error: path escapes the root" answered
        [(start, lines)] = _allocations(pid).items()

        reverted = hpkg("revert", "--pid", pid, "--json")
        assert reverted.returncode == 0, reverted.stderr
        document = reverted.json()
        check_document(document, "revert")
        [image] = document["images"]
        assert image["restored"] and image["packages"] == [{"package_id": package_id, "patch_level": 1}]
        [kept] = image["retained"]
        assert kept["package_id"] == package_id and kept["start"] == start
        assert kept["size"] == lines[-1][1] - start
        assert start <= kept["word"] < start + kept["size"]  # the word points into the package memory
        assert kept["tid"] in _tids(pid) and kept["where"] == "Windows stack"
        assert_running_untraced(pid)

        # The sites are the baseline's again, the memory is still there: its record page inaccessible,
        # its code and data as they were.
        _ask(talk, sample, 2, "baseline")
        after = _allocations(pid)
        assert list(after) == [start]
        assert after[start][0][2] == "---p"
        assert [perms for _, _, perms in after[start][1:]] == [perms for _, _, perms in lines[1:]]
        assert scan_for_packages([pid]).carrying == ()  # the maps alone say: no package applied here

        status = hpkg("status", "--pid", pid, "--json")
        assert status.returncode == 0, status.stderr
        check_document(status.json(), "status")
        [carried] = status.json()["images"][0]["packages"]
        assert carried["package_id"] == package_id and carried["state"].startswith("retired")
        assert {f["state"] for f in carried["functions"]} == {"original"}
        again = hpkg("revert", "--pid", pid, "--package", package_id, "--json")
        assert again.returncode == 0 and again.json()["changed"] is False, again.stdout
        assert list(_allocations(pid)) == [start]

        # The same package applies again (new memory beside the retired one), answers like the fix, and
        # reverts again, in the text form this time.
        applied = hpkg("apply", package, "--allow-unsigned", "--pid", pid, "--json")
        assert applied.returncode == 0, applied.stderr
        assert applied.json()["changed"], applied.stdout
        assert_running_untraced(pid)
        [second] = [s for s in _allocations(pid) if s != start]
        assert [c.allocations[0].start for c in scan_for_packages([pid]).carrying] == [second]
        _ask(talk, sample, 3, "fixed")
        states = {p["state"].split(":")[0] for p in hpkg("status", "--pid", pid, "--json").json()["images"][0]
                  ["packages"]}  # fmt: skip
        assert states == {"applied", "retired"}
        reverted = hpkg("revert", "--pid", pid)
        assert reverted.returncode == 0, reverted.stderr
        assert "pre-image restored" in reverted.stdout
        kept_lines = [line for line in reverted.stdout.splitlines() if "kept mapped" in line]
        assert kept_lines, reverted.stdout  # "error: path escapes the root" answered again: a word again
        assert f"points into the memory of package {package_id}" in kept_lines[0]
        assert "Windows stack word 0x" in kept_lines[0] and "KiB at" in kept_lines[0]
        # The word now points into the second package: the first one's retired memory is freed.
        assert f"freed the retired memory of package {package_id} at {start:#x}" in reverted.stdout
        assert list(_allocations(pid)) == [second] and _allocations(pid)[second][0][2] == "---p"
        assert_running_untraced(pid)
        _ask(talk, sample, 1, "baseline")
        assert scan_for_packages([pid]).carrying == ()
        nothing = hpkg("revert", "--pid", pid)
        assert nothing.returncode == 0 and nothing.stdout.startswith("nothing to revert"), nothing.stdout


def test_a_revert_no_word_points_into_unmaps_the_package(pe_packages) -> None:
    sample = SAMPLES["01-bounds-check"]
    with WineConversation(sample, "baseline", "ready") as talk:
        _ask(talk, sample, 0, "baseline")
        applied = hpkg("apply", pe_packages[sample.name], "--allow-unsigned", "--pid", talk.pid)
        assert applied.returncode == 0, applied.stderr
        _ask(talk, sample, 2, "fixed")
        [start] = _allocations(talk.pid)
        reverted = hpkg("revert", "--pid", talk.pid, "--json")
        assert reverted.returncode == 0, reverted.stderr
        [image] = reverted.json()["images"]
        assert image["retained"] == [] and image["restored"]
        assert f"{start:x}-" not in Path(f"/proc/{talk.pid}/maps").read_text()
        assert hpkg_mappings(talk.pid) == []
        assert_running_untraced(talk.pid)
        _ask(talk, sample, 4, "baseline")


def test_a_word_into_a_superseded_level_keeps_its_memory_retired(pe_corpus, tmp_path) -> None:
    """Level 2 supersedes level 1 while a word on main's Windows stack points into level 1's memory (its
    string answered): level 1 stays mapped and retired, level 2 is the one applied and reverted."""
    sample = SAMPLES["04-new-helper"]
    baseline, fixed = sample.binary("baseline", "ready"), sample.binary("fixed", "ready")
    level1, level2 = tmp_path / "level1.hpkg", tmp_path / "level2.hpkg"
    built = hpkg("build", baseline, fixed, "-o", level1, "--json")
    assert built.returncode == 0, built.stderr
    id1 = built.json()["package_id"]
    built = hpkg("build", baseline, fixed, "-o", level2, "--level", "2", "--supersedes", id1, "--json")
    assert built.returncode == 0, built.stderr
    id2 = built.json()["package_id"]
    with WineConversation(sample, "baseline", "ready") as talk:
        pid = talk.pid
        _ask(talk, sample, 0, "baseline")  # the image is mapped once the first answer came
        assert hpkg("apply", level1, "--allow-unsigned", "--pid", pid).returncode == 0
        _ask(talk, sample, 1, "fixed")
        [first] = _allocations(pid)
        applied = hpkg("apply", level2, "--allow-unsigned", "--pid", pid)
        assert applied.returncode == 0, applied.stderr
        assert f"superseded package {id1} (its memory kept mapped, retired" in applied.stdout, applied.stdout
        assert f"points into the memory of superseded package {id1}" in applied.stderr, applied.stderr
        assert_running_untraced(pid)
        _ask(talk, sample, 2, "fixed")
        packages = hpkg("status", "--pid", pid, "--json").json()["images"][0]["packages"]
        states = {(p["package_id"], p["state"].split(":")[0]) for p in packages}
        assert states == {(id1, "retired"), (id2, "applied")}
        assert _allocations(pid)[first][0][2] == "---p"
        [second] = [start for start in _allocations(pid) if start != first]
        assert [[a.start for a in c.allocations] for c in scan_for_packages([pid]).carrying] == [[second]]
        reverted = hpkg("revert", "--pid", pid, "--json")
        assert reverted.returncode == 0, reverted.stderr
        check_document(reverted.json(), "revert")
        [image] = reverted.json()["images"]
        assert [p["package_id"] for p in image["packages"]] == [id2]
        # Level 2's string answered last: the word points there now, level 1's retired memory is freed.
        assert [(f["package_id"], f["start"]) for f in image["freed_retired"]] == [(id1, first)]
        assert [start for start, lines in _allocations(pid).items() if lines[0][2] == "---p"] == [second]
        assert_running_untraced(pid)
        _ask(talk, sample, 3, "baseline")
        assert scan_for_packages([pid]).carrying == ()
