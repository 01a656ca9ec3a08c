"""Patch levels live: a level 2 that supersedes level 1 replaces it in place (level 1's memory freed),
level 1 or 2 applied afterwards is "already applied" (level 2 contains level 1; nothing changes, no
silent downgrade), and revert goes back to the baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from live_helpers import assert_running_untraced, hpkg, hpkg_mappings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_corpus import Conversation  # noqa: E402


def _build(sample, keys, out: Path, *extra: str) -> str:
    """Build the ready pair of `sample` with extra options; the package id."""
    run = hpkg(
        "build", sample.binary("baseline", "ready"), sample.binary("fixed", "ready"), "-o", out,
        "--key", keys.private, "--json", *extra,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.json()["package_id"]


@pytest.mark.parametrize("name", ["10-static-counter", "11-new-global"])
def test_level_two_supersedes_level_one_and_contains_it(name, samples, keys, tmp_path) -> None:
    """Level 1 at the sample's patch point, level 2 two steps later: the answers are those of one
    patch all along — the baseline's counter and level 1's new variable carry over both switches."""
    sample = samples[name]
    level1, level2 = tmp_path / "level1.hpkg", tmp_path / "level2.hpkg"
    id1 = _build(sample, keys, level1)
    id2 = _build(sample, keys, level2, "--level", "2", "--supersedes", id1)
    second = min(sample.patch_after + 2, sample.revert_after - 1)
    want = sample.live_answers()
    with Conversation(sample, "baseline", "ready") as talk:
        for number, step in enumerate(sample.steps, start=1):
            assert talk.ask(step.request) == want[number - 1], f"step {number}: {step.request!r}"
            if number == sample.patch_after:
                assert hpkg("apply", level1, "--pid", talk.pid, "--key", keys.public).returncode == 0
            if number == second:
                run = hpkg("apply", level2, "--pid", talk.pid, "--key", keys.public, "--json")
                assert run.returncode == 0, run.stderr
                assert run.json()["images"][0]["superseded"] == id1
                assert_running_untraced(talk.pid)
                [image] = hpkg("status", "--pid", talk.pid, "--json").json()["images"]
                carried = [(p["package_id"], p["patch_level"], p["intact"]) for p in image["packages"]]
                assert carried == [(id2, 2, True)]
                assert all(id1 not in line for line in hpkg_mappings(talk.pid))  # level 1's memory is gone

                # Level 2 contains level 1: applying either again changes nothing and succeeds.
                run = hpkg("apply", level1, "--pid", talk.pid, "--key", keys.public, "--json")
                assert run.returncode == 0, run.stderr
                document = run.json()
                assert document["changed"] is False and document["images"] == []
                carried = [(a["package_id"], a["patch_level"]) for a in document["already_applied"]]
                assert carried == [(id2, 2)]
                run = hpkg("apply", level2, "--pid", talk.pid, "--key", keys.public)
                assert run.returncode == 0 and run.stdout.startswith(f"already applied: {id2}"), run.stderr
                [image] = hpkg("status", "--pid", talk.pid, "--json").json()["images"]
                assert [p["package_id"] for p in image["packages"]] == [id2]
            if number == sample.revert_after:
                reverted = hpkg("revert", "--pid", talk.pid, "--package", id2, "--json")
                assert reverted.returncode == 0, reverted.stderr
                assert [p["package_id"] for p in reverted.json()["images"][0]["packages"]] == [id2]
                assert hpkg_mappings(talk.pid) == []
                assert_running_untraced(talk.pid)
