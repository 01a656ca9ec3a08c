"""`hpkg install`, `hpkg uninstall` and `hpkg status --store`: the store keeps what was verified, under the
signature policy, in private files named by the package id; both verbs are idempotent; a file that was
not installed (corrupt, unsigned, another name) is refused and the rest stays served."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from conftest import install
from live_helpers import hpkg
from sample_corpus import Conversation, Sample


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_install_keeps_the_verified_package_and_its_key_privately_and_changes_nothing_the_second_time(
    packages: dict[str, tuple[Path, str]], public_key: Path, store: Path
) -> None:
    path, package_id = packages["server"]
    first = install(path, "--key", public_key)
    assert first["changed"] is True and first["key_added"] is True
    assert first["package_id"] == package_id and first["signature"] == "ed25519"
    stored = store / "packages" / f"{package_id}.hpkg"
    assert Path(first["path"]) == stored and stored.read_bytes() == path.read_bytes()
    [key] = (store / "keys").iterdir()
    assert key.name == f"{first['key_id']}.pub"
    assert {_mode(store), _mode(store / "packages"), _mode(store / "keys")} == {0o700}
    assert {_mode(stored), _mode(key), _mode(stored.with_suffix(".json"))} == {0o600}

    again = install(path, "--key", public_key)
    assert again["changed"] is False and again["key_added"] is False
    text = hpkg("install", path, "--key", public_key)
    assert text.returncode == 0 and text.stdout.startswith(f"already installed: {package_id}")


def test_an_unsigned_package_is_refused_unless_the_waiver_is_given_and_then_it_is_recorded(
    own_samples: dict[str, Sample], store: Path, tmp_path: Path
) -> None:
    sample = own_samples["server"]
    unsigned = tmp_path / "unsigned.hpkg"
    built = hpkg("build", sample.binary("baseline", "ready"), sample.binary("fixed", "ready"), "-o", unsigned)
    assert built.returncode == 0, built.stderr
    refused = hpkg("install", unsigned)
    assert refused.returncode == 3 and "unsigned" in refused.stderr and "--allow-unsigned" in refused.stderr
    assert list((store / "packages").iterdir()) == []

    waived = install(unsigned, "--allow-unsigned")
    assert waived["changed"] is True and waived["signature"] == "waived" and waived["key_id"] is None
    listed = hpkg("status", "--store", "--json").json()["store"]
    stored = [(p["package_id"], p["signature"]) for p in listed["packages"]]
    assert stored == [(waived["package_id"], "waived")]


def test_a_key_the_store_trusts_stands_in_for_key_and_any_other_signer_is_refused(
    packages: dict[str, tuple[Path, str]], public_key: Path, store: Path, tmp_path: Path
) -> None:
    server, library = packages["server"][0], packages["library"][0]
    untrusted = hpkg("install", library)
    assert untrusted.returncode == 3 and "does not trust" in untrusted.stderr, untrusted.stderr
    install(server, "--key", public_key)
    assert install(library)["changed"] is True  # signed by the key the store now trusts

    other = tmp_path / "other"
    assert hpkg("keygen", other).returncode == 0
    wrong = hpkg("install", server, "--key", f"{other}.pub")
    assert wrong.returncode == 3 and "not by the given key" in wrong.stderr, wrong.stderr
    tampered = tmp_path / "tampered.hpkg"
    blob = bytearray(server.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    tampered.write_bytes(bytes(blob))
    assert hpkg("install", tampered, "--key", public_key).returncode == 3


def test_a_store_another_user_could_write_or_a_symlink_in_its_place_is_refused(
    packages: dict[str, tuple[Path, str]], public_key: Path, store: Path, tmp_path: Path
) -> None:
    path = packages["server"][0]
    store.mkdir(mode=0o777)
    os.chmod(store, 0o777)
    open_store = hpkg("install", path, "--key", public_key)
    assert open_store.returncode == 6 and f"chmod 700 {store}" in open_store.stderr, open_store.stderr
    os.rmdir(store)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    store.symlink_to(elsewhere)
    linked = hpkg("install", path, "--key", public_key)
    assert linked.returncode == 6 and "symlink" in linked.stderr, linked.stderr
    assert list(elsewhere.iterdir()) == []


def test_uninstall_takes_the_package_out_of_the_store_and_a_second_uninstall_changes_nothing(
    packages: dict[str, tuple[Path, str]], public_key: Path, store: Path
) -> None:
    path, package_id = packages["server"]
    install(path, "--key", public_key)
    first = hpkg("uninstall", package_id, "--json")
    assert first.returncode == 0, first.stderr
    document = first.json()
    assert document["changed"] is True and document["removed_from_store"] is True
    assert document["revert"]["processes"] == []
    assert list((store / "packages").iterdir()) == []
    second = hpkg("uninstall", package_id, "--json")
    assert second.returncode == 0 and second.json()["changed"] is False
    bad = hpkg("uninstall", "../../etc/passwd")
    assert bad.returncode == 2 and "cannot name a file" in bad.stderr, bad.stderr


def test_status_store_lists_the_processes_still_running_an_installed_baseline_until_it_is_applied(
    own_samples: dict[str, Sample],
    packages: dict[str, tuple[Path, str]],
    public_key: Path,
    store: Path,
    start: Callable[..., Conversation],
) -> None:
    server, library = own_samples["server"], own_samples["library"]
    exposed = [start(server), start(server)]
    start(server, "fixed")  # runs the fix: not exposed
    start(library)  # runs a baseline nothing is installed for
    path, package_id = packages["server"]
    install(path, "--key", public_key)

    # Machine-wide: other sessions' processes may carry records sealed under their own key (status then
    # exits 4 for those); the exposed list holds this test's baselines alone (build-ids of their own).
    before = hpkg("status", "--store", "--json")
    assert before.returncode in (0, 4), before.stderr
    listed = before.json()["exposed"]
    assert sorted(e["pid"] for e in listed) == sorted(t.pid for t in exposed)
    assert all(e["installed"] == [package_id] and e["applied_level"] is None for e in listed)
    one = hpkg("status", "--pid", exposed[0].pid, "--store")
    assert one.returncode == 0, one.stderr
    assert f"{exposed[0].pid} baseline " in one.stdout and ": exposed: baseline" in one.stdout

    applied = hpkg("apply", path, "--all", "--key", public_key)
    assert applied.returncode == 0, applied.stderr
    for talk in exposed:
        after = hpkg("status", "--pid", talk.pid, "--store", "--json")
        assert after.returncode == 0, after.stderr
        document = after.json()
        assert document["exposed"] == []
        assert [p["package_id"] for i in document["images"] for p in i["packages"]] == [package_id]


def test_a_corrupt_or_unsigned_file_dropped_into_the_store_is_refused_and_the_installed_one_served(
    own_samples: dict[str, Sample], packages: dict[str, tuple[Path, str]], public_key: Path, store: Path,
    tmp_path: Path,
) -> None:
    install(packages["server"][0], "--key", public_key)
    library, library_id = packages["library"]
    corrupt = bytearray(library.read_bytes())
    corrupt[-70] ^= 0x01  # inside the signature or the payload: either way it no longer verifies
    (store / "packages" / f"{library_id}.hpkg").write_bytes(bytes(corrupt))
    sample = own_samples["library"]
    unsigned = tmp_path / "unsigned.hpkg"
    built = hpkg("build", sample.binary("baseline", "ready"), sample.binary("fixed", "ready"), "-o", unsigned,
                 "--level", "2", "--json")
    assert built.returncode == 0, built.stderr
    unsigned_id = built.json()["package_id"]
    os.link(unsigned, store / "packages" / f"{unsigned_id}.hpkg")
    (store / "packages" / "notes.txt").write_text("not a package\n")

    document = hpkg("status", "--store", "--json").json()["store"]
    assert [p["package_id"] for p in document["packages"]] == [packages["server"][1]]
    reasons = {Path(r["path"]).name: r["reason"] for r in document["refused"]}
    assert set(reasons) == {f"{library_id}.hpkg", f"{unsigned_id}.hpkg", "notes.txt"}
    assert "unsigned, and not installed with --allow-unsigned" in reasons[f"{unsigned_id}.hpkg"]
    assert "not a package of the store" in reasons["notes.txt"]
