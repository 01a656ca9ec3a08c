"""The target cannot steer the loader through the record hpkg keeps in its memory.

A real process is patched by `hpkg apply`, then the test plays the target: it rewrites the record through
/proc/PID/mem (flipped bytes, a forged site, '[' * 3000, `supersedes` as a list, escape sequences in
names, a record in the older unsealed format). Every command then gives a clear refusal with exit 4,
never an internal error; revert writes nothing; names reach the terminal escaped.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_helpers import Run, assert_running_untraced, hpkg, hpkg_mappings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_corpus import Conversation  # noqa: E402
from site_crafting import section_address  # noqa: E402

# The record's header (loader/record.py): magic, version, state, body size, 4 reserved bytes, seal/digest.
HEADER = struct.Struct("<8sIII4x32s")
UNSEALED = 1  # the format an older hpkg wrote: an unkeyed SHA-256 of the body


def _read(pid: int, address: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(address)
        return mem.read(size)


def _write(pid: int, address: int, data: bytes) -> None:
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
        mem.seek(address)
        mem.write(data)


def _record_address(pid: int) -> int:
    """The start of the package allocation, where its record is."""
    return min(int(line.split("-")[0], 16) for line in hpkg_mappings(pid))


def _record(pid: int) -> tuple[int, int, bytes]:
    """(address, state, body) of the record, as the target sees it."""
    address = _record_address(pid)
    _, _, state, size, _ = HEADER.unpack(_read(pid, address, HEADER.size))
    return address, state, _read(pid, address + HEADER.size, size)


def _rewrite_unsealed(pid: int, body: bytes, new_state: int | None = None) -> None:
    """What a target (or an older hpkg) can write: the unsealed format, whose digest anyone can compute."""
    address, state, _ = _record(pid)
    state = state if new_state is None else new_state
    header = HEADER.pack(b"HPKGREC\x01", UNSEALED, state, len(body), hashlib.sha256(body).digest())
    _write(pid, address, header + body)


def _no_internal_error(*runs: Run) -> None:
    for run in runs:
        assert run.returncode != 1 and "internal error" not in run.stderr, run.stderr


class _Applied:
    """A sample process with a package applied, and the bytes of its patch sites as applied."""

    def __init__(self, talk: Conversation, package: Path, keys) -> None:
        self.talk, self.package, self.keys = talk, package, keys
        run = hpkg("apply", package, "--pid", talk.pid, "--key", keys.public, "--json")
        assert run.returncode == 0, run.stderr
        self.sites = [(s["address"], s["function"]) for s in run.json()["images"][0]["patch_sites"]]
        self.jumps = {address: _read(talk.pid, address, 5) for address, _ in self.sites}

    def sites_unchanged(self) -> bool:
        return all(_read(self.talk.pid, a, 5) == jump for a, jump in self.jumps.items())

    def refused_everywhere(self, reason: str) -> None:
        """status, revert, apply and verify --pid all refuse with `reason`, and revert wrote nothing."""
        pid, key = self.talk.pid, ("--key", self.keys.public)
        status = hpkg("status", "--pid", pid)
        revert = hpkg("revert", "--pid", pid)
        apply = hpkg("apply", self.package, "--pid", pid, *key)
        verify = hpkg("verify", self.package, *key, "--pid", pid)
        _no_internal_error(status, revert, apply, verify)
        assert status.returncode == 4 and reason in status.stdout, (status.stdout, status.stderr)
        for run in (revert, apply, verify):
            assert run.returncode == 4 and "cannot trust" in run.stderr and reason in run.stderr, run.stderr
            assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1
        assert self.sites_unchanged() and len(hpkg_mappings(pid)) > 0
        assert_running_untraced(pid)


@pytest.fixture
def applied(samples, keys, build_package):
    sample = samples["01-bounds-check"]
    package = build_package(sample.binary("baseline", "ready"), sample.binary("fixed", "ready"))
    with Conversation(sample, "baseline", "ready") as talk:
        yield _Applied(talk, package, keys), sample


def test_an_intact_record_is_authenticated(applied) -> None:
    state, sample = applied
    status = hpkg("status", "--pid", state.talk.pid, "--json")
    assert status.returncode == 0, status.stderr
    (package,) = status.json()["images"][0]["packages"]
    assert package["record"] == "authenticated" and package["intact"]
    assert hpkg("revert", "--pid", state.talk.pid).returncode == 0
    assert state.talk.ask(sample.steps[0].request) == sample.steps[0].baseline


def test_a_flipped_byte_in_the_body_is_refused(applied) -> None:
    state, sample = applied
    address, _, body = _record(state.talk.pid)
    _write(state.talk.pid, address + HEADER.size + 10, bytes([body[10] ^ 0x01]))
    state.refused_everywhere("fails authentication")
    assert state.talk.ask(sample.steps[0].request) == sample.steps[0].fixed


def test_a_flipped_state_is_refused(applied) -> None:
    state, _ = applied
    address, record_state, _ = _record(state.talk.pid)
    _write(state.talk.pid, address + 12, struct.pack("<I", 3 - record_state))
    state.refused_everywhere("fails authentication")


@pytest.mark.parametrize(
    "body",
    [b"[" * 3000, b"{" * 3000, b'"' + b"\\" * 5000, b"\xff\xfe", b"[]", b"null"],
    ids=["brackets", "braces", "backslashes", "not-utf8", "a-list", "null"],
)
def test_a_hostile_unsealed_body_is_refused(applied, body: bytes) -> None:
    state, _ = applied
    _rewrite_unsealed(state.talk.pid, body)
    state.refused_everywhere("record malformed")


def test_an_unknown_record_state_is_refused(applied) -> None:
    """States are 1 prepared, 2 applied, 3 retired (loader/record.py): another number is not interpreted."""
    state, _ = applied
    _, _, body = _record(state.talk.pid)
    _rewrite_unsealed(state.talk.pid, body, 4)
    state.refused_everywhere("record state 4 is unknown")


def test_a_retired_record_is_read_as_reverted_not_applied(applied) -> None:
    """State 3, retired (a reverted package whose memory stays mapped): status lists it as retired, revert
    finds nothing applied to take out, and writes nothing."""
    state, _ = applied
    pid = state.talk.pid
    _, _, body = _record(pid)
    _rewrite_unsealed(pid, body, 3)
    status = hpkg("status", "--pid", pid, "--json")
    assert status.returncode == 0, status.stderr
    [package] = status.json()["images"][0]["packages"]
    assert package["state"].startswith("retired") and package["record"] == "unauthenticated"
    reverted = hpkg("revert", "--pid", pid, "--allow-unauthenticated", "--json")
    assert reverted.returncode == 0 and reverted.json()["changed"] is False, reverted.stdout
    assert state.sites_unchanged() and hpkg_mappings(pid)
    assert_running_untraced(pid)


def test_supersedes_as_a_list_is_refused(applied) -> None:
    state, _ = applied
    _, _, body = _record(state.talk.pid)
    document = json.loads(body)
    document["supersedes"] = ["a", "b"]
    _rewrite_unsealed(state.talk.pid, json.dumps(document).encode())
    state.refused_everywhere("supersedes")


def test_a_forged_site_in_rodata_is_never_written(applied, samples) -> None:
    """The issue's attack: revert writing attacker-chosen bytes at an attacker-chosen address of .rodata.
    Sealed, it fails authentication; unsealed (as an older hpkg wrote), revert refuses it even when
    --allow-unauthenticated is given, since .rodata holds no function entry."""
    state, sample = applied
    pid = state.talk.pid
    _, _, body = _record(pid)
    document = json.loads(body)
    bias = int(document["load_bias"], 16)
    rodata = bias + section_address(sample.binary("baseline", "ready"), ".rodata")
    original = _read(pid, rodata, 16)
    site = document["sites"][0]
    forged = {**site, "address": f"{rodata:#018x}", "pre_image": "41" * 5, "jump": original[:5].hex()}
    document["sites"] = [forged]
    _rewrite_unsealed(pid, json.dumps(document, sort_keys=True, separators=(",", ":")).encode())

    plain = hpkg("revert", "--pid", pid)
    allowed = hpkg("revert", "--pid", pid, "--allow-unauthenticated")

    _no_internal_error(plain, allowed)
    assert plain.returncode == 4 and "unauthenticated" in plain.stderr
    assert allowed.returncode == 4 and "not a function entry" in allowed.stderr
    assert _read(pid, rodata, 16) == original
    assert state.sites_unchanged()
    assert_running_untraced(pid)


def test_escape_sequences_in_names_are_printed_escaped(applied) -> None:
    state, _ = applied
    pid = state.talk.pid
    _, _, body = _record(pid)
    document = json.loads(body)
    document["package_id"] = "evil\x1b]0;owned\x07\x1b[2J"
    document["sites"][0]["function"] = "f\x1b[31mred"
    _rewrite_unsealed(pid, json.dumps(document, sort_keys=True, separators=(",", ":")).encode())

    status = hpkg("status", "--pid", pid)

    assert status.returncode == 0, status.stderr
    assert "\x1b" not in status.stdout and "\x07" not in status.stdout
    assert "evil\\x1b]0;owned\\x07\\x1b[2J" in status.stdout and "f\\x1b[31mred" in status.stdout
    assert "unauthenticated record" in status.stdout


def test_an_older_unsealed_record_needs_allow_unauthenticated_to_revert(applied) -> None:
    """A record as an hpkg before the seal wrote it: shown unauthenticated, reverted only on request."""
    state, sample = applied
    pid = state.talk.pid
    _, _, body = _record(pid)
    _rewrite_unsealed(pid, body)

    status = hpkg("status", "--pid", pid, "--json")
    refused = hpkg("revert", "--pid", pid)
    applied_again = hpkg("apply", state.package, "--pid", pid, "--key", state.keys.public)

    assert status.returncode == 0 and status.json()["images"][0]["packages"][0]["record"] == "unauthenticated"
    assert refused.returncode == 4 and "--allow-unauthenticated" in refused.stderr
    assert applied_again.returncode == 4 and "unauthenticated" in applied_again.stderr
    assert state.sites_unchanged()
    reverted = hpkg("revert", "--pid", pid, "--allow-unauthenticated")
    assert reverted.returncode == 0, reverted.stderr
    assert hpkg_mappings(pid) == []
    assert state.talk.ask(sample.steps[0].request) == sample.steps[0].baseline


# --- a fork carries the patch and its record -------------------------------------------------------

# Preloaded into the sample: on SIGUSR1 the process forks, and the child waits (a pre-fork worker).
FORK_ON_SIGNAL = r"""
#include <signal.h>
#include <unistd.h>
static void on_usr1(int sig) { (void)sig; if (fork() == 0) for (;;) pause(); }
__attribute__((constructor)) static void install(void) { signal(SIGUSR1, on_usr1); }
"""


def _child_of(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for _ in range(500):
        found = children.read_text().split()
        if found:
            return int(found[0])
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not fork")


def test_a_fork_of_a_patched_process_is_authenticated_and_reverted_on_its_own(
    samples, keys, build_package, tmp_path: Path, monkeypatch
) -> None:
    """The child maps the same memfd at the same address: its record holds, as the patch does."""
    source = tmp_path / "fork_on_signal.c"
    source.write_text(FORK_ON_SIGNAL)
    preload = tmp_path / "fork_on_signal.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(preload), str(source)], check=True)
    sample = samples["01-bounds-check"]
    package = build_package(sample.binary("baseline", "ready"), sample.binary("fixed", "ready"))
    monkeypatch.setenv("LD_PRELOAD", str(preload))
    with Conversation(sample, "baseline", "ready") as talk:
        monkeypatch.delenv("LD_PRELOAD")
        applied = _Applied(talk, package, keys)
        os.kill(talk.pid, signal.SIGUSR1)
        child = _child_of(talk.pid)
        try:
            assert all(_read(child, a, 5) == jump for a, jump in applied.jumps.items())
            status = hpkg("status", "--pid", child, "--json")
            assert status.returncode == 0, status.stderr
            [package_status] = [p for i in status.json()["images"] for p in i["packages"]]
            assert package_status["record"] == "authenticated" and package_status["intact"], status.stdout
            again = hpkg("apply", package, "--pid", child, "--key", keys.public, "--json")
            assert again.returncode == 0 and again.json()["changed"] is False, again.stderr
            revert = hpkg("revert", "--pid", child)
            assert revert.returncode == 0, revert.stderr
            assert not hpkg_mappings(child)
            assert all(_read(child, a, 5) != jump for a, jump in applied.jumps.items())
            assert_running_untraced(child)
            # The parent keeps its patch and its record.
            assert applied.sites_unchanged() and hpkg_mappings(talk.pid)
            assert hpkg("status", "--pid", talk.pid).returncode == 0
        finally:
            os.kill(child, signal.SIGKILL)
