"""The live and machine-wide verbs under `--json` (docs/json.md): apply, status, revert with --pid and
--all, install and uninstall print one document that passes its command's schema, on real processes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from live_helpers import Run, assert_running_untraced, hpkg
from sample_corpus import Conversation, Sample

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from json_contract import check_document  # noqa: E402


def _checked(run: Run, command: str, exit_codes: tuple[int, ...] = (0,)) -> dict:
    assert run.returncode in exit_codes, run.stderr
    document = json.loads(run.stdout)
    check_document(document, command)
    return document


def test_live_and_machine_wide_documents_pass_their_schemas(
    own_samples: dict[str, Sample],
    packages: dict[str, tuple[Path, str]],
    public_key: Path,
    start: Callable[..., Conversation],
    tmp_path: Path,
) -> None:
    server = own_samples["server"]
    path, package_id = packages["server"]
    one, two = start(server), start(server)
    applied = _checked(hpkg("apply", path, "--key", public_key, "--pid", one.pid, "--json"), "apply")
    assert applied["changed"] and applied["package_id"] == package_id
    (image,) = applied["images"]
    assert all(isinstance(s["address"], int) for s in image["patch_sites"])
    status = _checked(hpkg("status", "--pid", one.pid, "--json"), "status")
    ((package,),) = [i["packages"] for i in status["images"]]
    assert package["package_id"] == package_id
    assert [f["address"] for f in package["functions"]] == [s["address"] for s in image["patch_sites"]]
    # Machine-wide: other sessions' records may be refused here (exit 4): the one document still passes.
    everyone = _checked(hpkg("status", "--json"), "status", (0, 4))
    assert one.pid in [p["pid"] for p in everyone["processes"]]
    machine = _checked(hpkg("apply", path, "--key", public_key, "--all", "--json"), "apply")
    assert {p["pid"]: p["outcome"] for p in machine["processes"]} == {one.pid: "already applied",
                                                                      two.pid: "applied"}
    reverted = _checked(hpkg("revert", "--pid", one.pid, "--json"), "revert")
    assert reverted["changed"] and reverted["images"][0]["restored"]
    store = tmp_path / "store"
    installed = _checked(hpkg("install", path, "--key", public_key, "--store", store, "--json"), "install")
    assert installed["package_id"] == package_id
    removed = _checked(hpkg("uninstall", package_id, "--store", store, "--json"), "uninstall")
    assert removed["removed_from_store"] and removed["revert"]["summary"]["reverted"] == 1
    nothing = _checked(hpkg("revert", "--all", "--package", package_id, "--json"), "revert")
    assert nothing["changed"] is False
    for talk in (one, two):
        assert_running_untraced(talk.pid)
