"""`apply --all`, `status` and `revert --all` on real processes: exactly the baseline processes change, they
answer the fixed way with their state kept, a second run changes nothing, and revert brings each back."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from live_helpers import Run, assert_running_untraced, hpkg, hpkg_mappings
from sample_corpus import Conversation, Sample


def _outcomes(run: Run) -> dict[int, str]:
    assert run.returncode == 0, run.stderr
    return {p["pid"]: p["outcome"] for p in run.json()["processes"]}


def _ask_all(talks: list[Conversation], sample: Sample, step: int) -> None:
    """Every process answers step `step` (1-based) as the sample's live scenario says it must."""
    request, want = sample.steps[step - 1].request, sample.live_answers()[step - 1]
    for talk in talks:
        assert talk.ask(request) == want, f"pid {talk.pid}, step {step}: {request!r}"


def test_apply_all_patches_exactly_the_baseline_processes_and_revert_all_brings_them_back(
    own_samples: dict[str, Sample],
    packages: dict[str, tuple[Path, str]],
    public_key: Path,
    start: Callable[..., Conversation],
    unrelated: subprocess.Popen[bytes],
) -> None:
    server, library = own_samples["server"], own_samples["library"]
    servers = [start(server) for _ in range(3)]
    hosts = [start(library) for _ in range(2)]
    bystanders = [start(server, "fixed"), start(library, "fixed")]  # the fix itself runs: no baseline
    everyone = servers + hosts
    # The sample's live scenario on every process at once: apply after patch_after, revert after
    # revert_after (both samples: 1 and 3), each step answered by every process.
    assert (server.patch_after, server.revert_after) == (library.patch_after, library.revert_after) == (1, 3)
    _ask_all(servers, server, 1)
    _ask_all(hosts, library, 1)

    for sample, talks in (("server", servers), ("library", hosts)):
        path, package_id = packages[sample]
        run = hpkg("apply", path, "--all", "--key", public_key, "--json")
        assert _outcomes(run) == {talk.pid: "applied" for talk in talks}, run.stdout
        document = run.json()
        assert document["changed"] is True and document["summary"]["applied"] == len(talks)
        for process in document["processes"]:
            assert process["package_id"] == package_id and process["pause_ms"] > 0 and process["changed"]
            assert process["image"].endswith("baseline" if sample == "server" else "libpct.so.1")
    for talk in everyone:
        assert_running_untraced(talk.pid)
    for process in [*bystanders, unrelated]:
        assert hpkg_mappings(process.pid) == []
    _ask_all(servers, server, 2)  # the fixed answer, the request counter carried on
    _ask_all(hosts, library, 2)

    # Again: nothing changes, and that is success.
    for sample, talks in (("server", servers), ("library", hosts)):
        run = hpkg("apply", packages[sample][0], "--all", "--key", public_key, "--json")
        assert _outcomes(run) == {talk.pid: "already applied" for talk in talks}
        assert run.json()["changed"] is False
    text = hpkg("apply", packages["server"][0], "--all", "--key", public_key)
    assert text.returncode == 0, text.stderr
    summary = text.stdout.splitlines()[-1]
    assert summary.startswith(f"apply {packages['server'][1]}: 3 processes: 3 already applied"), summary
    for talk in servers:
        assert f"{talk.pid} baseline {server.binary('baseline', 'ready')}: already applied" in text.stdout

    # status without --pid: every patched process, with its package, level and sites.
    status = hpkg("status", "--json")
    listed = {p["pid"]: p for p in status.json()["processes"]}
    refused_elsewhere = any(p["refused_records"] for p in listed.values())  # other sessions' records
    assert status.returncode == (4 if refused_elsewhere else 0), status.stderr
    for sample, talks in (("server", servers), ("library", hosts)):
        function = "handle_request" if sample == "server" else "pct_decode"
        for talk in talks:
            [image] = listed[talk.pid]["images"]
            [package] = image["packages"]
            assert (package["package_id"], package["patch_level"], package["state"]) == (
                packages[sample][1], 1, "applied")
            assert [(f["name"], f["state"]) for f in package["functions"]] == [(function, "patched")]
    assert not {b.pid for b in bystanders} & listed.keys()
    lines = hpkg("status").stdout.splitlines()
    assert any(line.startswith(f"{servers[0].pid} baseline ") and "handle_request patched" in line
               for line in lines)  # fmt: skip

    _ask_all(servers, server, 3)
    _ask_all(hosts, library, 3)
    for sample, talks in (("server", servers), ("library", hosts)):
        run = hpkg("revert", "--all", "--package", packages[sample][1], "--json")
        assert _outcomes(run) == {talk.pid: "reverted" for talk in talks}
        assert run.json()["changed"] is True
    for talk in everyone:
        assert_running_untraced(talk.pid)
        assert hpkg_mappings(talk.pid) == []
    for step in range(4, len(server.steps) + 1):
        _ask_all(servers, server, step)  # the baseline's answers again, the counter still counting
    _ask_all(hosts, library, 4)

    again = hpkg("revert", "--all", "--package", packages["server"][1])
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"revert {packages['server'][1]}: no process carries it")


def test_apply_and_revert_of_one_pid_are_idempotent(
    own_samples: dict[str, Sample],
    packages: dict[str, tuple[Path, str]],
    public_key: Path,
    start: Callable[..., Conversation],
) -> None:
    talk = start(own_samples["server"])
    path, package_id = packages["server"]
    first = hpkg("apply", path, "--pid", talk.pid, "--key", public_key, "--json")
    assert first.returncode == 0 and first.json()["changed"] is True, first.stderr
    memory = hpkg_mappings(talk.pid)
    second = hpkg("apply", path, "--pid", talk.pid, "--key", public_key, "--json")
    assert second.returncode == 0, second.stderr
    document = second.json()
    assert (document["changed"], document["images"]) == (False, [])
    assert [a["package_id"] for a in document["already_applied"]] == [package_id]
    assert hpkg_mappings(talk.pid) == memory  # nothing placed, nothing freed
    text = hpkg("apply", path, "--pid", talk.pid, "--key", public_key)
    assert text.stdout.startswith(f"already applied: {package_id} in process {talk.pid}"), text.stdout
    verify = hpkg("verify", path, "--pid", talk.pid, "--key", public_key)  # "would apply accept it here?"
    assert verify.returncode == 0, verify.stderr
    assert "already applied (apply changes nothing)" in verify.stdout

    reverted = hpkg("revert", "--pid", talk.pid, "--json")
    assert reverted.returncode == 0 and reverted.json()["changed"] is True, reverted.stderr
    for extra in ((), ("--package", package_id)):
        again = hpkg("revert", "--pid", talk.pid, *extra, "--json")
        assert again.returncode == 0, again.stderr
        assert (again.json()["changed"], again.json()["images"]) == (False, [])
    assert hpkg_mappings(talk.pid) == []
    assert_running_untraced(talk.pid)


def test_apply_all_with_no_process_running_the_baseline_succeeds_and_says_so(
    packages: dict[str, tuple[Path, str]], public_key: Path
) -> None:
    path, package_id = packages["server"]
    run = hpkg("apply", path, "--all", "--key", public_key)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1].startswith(f"apply {package_id}: no process maps its baseline")
    document = hpkg("apply", path, "--all", "--key", public_key, "--json").json()
    assert (document["processes"], document["changed"]) == ([], False)
