"""Refusals of `hpkg apply --pid`, each with its reason and exit code, the process unchanged and running;
`verify --pid` changing nothing; tampering after apply seen by `status` and refused by `revert`; and a
loader killed mid-apply leaving a running process that `revert` cleans up."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_helpers import assert_running_untraced, hpkg, hpkg_mappings

from hpkg.loader.inject import PROT_EXEC, PROT_READ, PROT_WRITE, Injector
from hpkg.loader.live import lock_path
from hpkg.loader.process import Process
from hpkg.loader.status import process_status

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_corpus import Conversation  # noqa: E402

WAIT = 30.0  # how long a condition that must come true may take; a safety net, not a timing assertion


def _symbol(binary: Path, name: str) -> int:
    """The link address of a function symbol, from nm."""
    out = subprocess.run(["nm", "--defined-only", str(binary)], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise AssertionError(f"no symbol {name} in {binary}")


def _runtime(pid: int, binary: Path, link_address: int) -> int:
    """Runtime address of a link address of a PIE executable (its first mapping maps link address 0)."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(binary) and int(fields[2], 16) == 0:
            return int(fields[0].split("-")[0], 16) + link_address
    raise AssertionError(f"{binary} is not mapped in {pid}")


def _read(pid: int, address: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(address)
        return mem.read(size)


def _write(pid: int, address: int, data: bytes) -> None:
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
        mem.seek(address)
        mem.write(data)


def _start(binary: Path) -> subprocess.Popen:
    """Start a stdio test program."""
    return subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _unchanged(pid: int) -> None:
    assert_running_untraced(pid)
    assert hpkg_mappings(pid) == []


def test_another_build_is_refused(samples, keys, build_package) -> None:
    one, two = samples["01-bounds-check"], samples["02-changed-constant"]
    package = build_package(one.binary("baseline", "ready"), one.binary("fixed", "ready"))
    with Conversation(two, "baseline", "ready") as talk:
        assert talk.ask(two.steps[0].request) == two.steps[0].baseline
        run = hpkg("apply", package, "--pid", talk.pid, "--key", keys.public)
        assert run.returncode == 4
        assert "build-id" in run.stderr and "not the baseline" in run.stderr
        _unchanged(talk.pid)
        assert talk.ask(two.steps[1].request) == two.steps[1].baseline


def test_tampered_package_is_refused(samples, keys, build_package, tmp_path) -> None:
    sample = samples["01-bounds-check"]
    package = build_package(sample.binary("baseline", "ready"), sample.binary("fixed", "ready"))
    tampered = tmp_path / "tampered.hpkg"
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside the compressed payload
    tampered.write_bytes(bytes(data))
    with Conversation(sample, "baseline", "ready") as talk:
        run = hpkg("apply", tampered, "--pid", talk.pid, "--key", keys.public)
        assert run.returncode == 3, run.stderr
        assert run.stderr.startswith("error: ")
        _unchanged(talk.pid)
        assert talk.ask(sample.steps[0].request) == sample.steps[0].baseline


def test_unsigned_package_needs_allow_unsigned(samples, keys, build_package) -> None:
    sample = samples["02-changed-constant"]
    package = build_package(sample.binary("baseline", "ready"), sample.binary("fixed", "ready"), signed=False)
    with Conversation(sample, "baseline", "ready") as talk:
        run = hpkg("apply", package, "--pid", talk.pid)
        assert run.returncode == 3
        assert "unsigned" in run.stderr and "--allow-unsigned" in run.stderr
        run = hpkg("apply", package, "--pid", talk.pid, "--key", keys.public)
        assert run.returncode == 3  # a key was given, but the package carries no signature
        _unchanged(talk.pid)
        run = hpkg("apply", package, "--pid", talk.pid, "--allow-unsigned")
        assert run.returncode == 0, run.stderr
        assert "pause" in run.stdout
        assert hpkg("revert", "--pid", talk.pid).returncode == 0
        _unchanged(talk.pid)


def test_changed_patch_site_is_refused(samples, keys, build_package) -> None:
    sample = samples["01-bounds-check"]
    baseline = sample.binary("baseline", "ready")
    package = build_package(baseline, sample.binary("fixed", "ready"))
    with Conversation(sample, "baseline", "ready") as talk:
        site = _runtime(talk.pid, baseline, _symbol(baseline, "read_slot"))
        original = _read(talk.pid, site, 5)
        _write(talk.pid, site, b"\xcc" * 5)  # what another tool's breakpoint would leave
        run = hpkg("apply", package, "--pid", talk.pid, "--key", keys.public)
        assert run.returncode == 4
        assert "read_slot" in run.stderr and "differ from the pre-image" in run.stderr
        assert _read(talk.pid, site, 5) == b"\xcc" * 5  # hpkg wrote nothing
        _unchanged(talk.pid)
        _write(talk.pid, site, original)
        assert talk.ask(sample.steps[0].request) == sample.steps[0].baseline


def test_function_a_thread_sleeps_in_is_refused(programs, keys, build_package) -> None:
    program = programs["lingering"]
    package = build_package(program.baseline, program.fixed)
    with _start(program.baseline) as target:
        try:
            assert target.stdout.readline() == "ready\n"
            sleeper = next(int(t) for t in os.listdir(f"/proc/{target.pid}/task") if int(t) != target.pid)
            run = hpkg("apply", package, "--pid", target.pid, "--key", keys.public, "--timeout", "0.5")
            assert run.returncode == 4
            assert re.search(rf"thread {sleeper}\b.*\blinger\b", run.stderr), run.stderr
            _unchanged(target.pid)
            target.stdin.write("ping\n")
            target.stdin.flush()
            assert target.stdout.readline().startswith("pong ")
        finally:
            target.kill()


def test_never_returning_main_is_refused_waiting_cannot_help(samples, keys, build_package) -> None:
    sample = samples["15-ipa-ra-main-loop"]
    package = build_package(sample.binary("baseline", "plain"), sample.binary("fixed", "plain"))
    with Conversation(sample, "baseline", "plain") as talk:
        assert talk.ask(sample.steps[0].request) == sample.steps[0].baseline
        run = hpkg("apply", package, "--pid", talk.pid, "--key", keys.public, "--timeout", "0.5")
        assert run.returncode == 4
        assert "main" in run.stderr and "waiting cannot help" in run.stderr
        assert f"thread {talk.pid}" in run.stderr
        _unchanged(talk.pid)
        assert talk.ask(sample.steps[1].request) == sample.steps[1].baseline


def test_verify_pid_checks_and_changes_nothing(samples, keys, build_package) -> None:
    one, two = samples["01-bounds-check"], samples["02-changed-constant"]
    package = build_package(one.binary("baseline", "ready"), one.binary("fixed", "ready"))
    with Conversation(one, "baseline", "ready") as talk, Conversation(two, "baseline", "ready") as other:
        run = hpkg("verify", package, "--key", keys.public, "--pid", talk.pid)
        assert run.returncode == 0, run.stderr
        assert "read_slot" in run.stdout and "pre-image" in run.stdout
        _unchanged(talk.pid)
        run = hpkg("verify", package, "--key", keys.public, "--pid", other.pid)
        assert run.returncode == 4
        _unchanged(other.pid)


def test_status_sees_a_changed_site_and_revert_refuses_it(samples, keys, build_package) -> None:
    sample = samples["01-bounds-check"]
    baseline = sample.binary("baseline", "ready")
    package = build_package(baseline, sample.binary("fixed", "ready"))
    with Conversation(sample, "baseline", "ready") as talk:
        assert hpkg("apply", package, "--pid", talk.pid, "--key", keys.public).returncode == 0
        site = _runtime(talk.pid, baseline, _symbol(baseline, "read_slot"))
        jump = _read(talk.pid, site, 5)
        assert jump[0] == 0xE9
        _write(talk.pid, site, b"\xcc" * 5)
        status = hpkg("status", "--pid", talk.pid, "--json").json()
        [carried] = status["images"][0]["packages"]
        assert not carried["intact"]
        assert carried["functions"][0]["state"].startswith("changed")
        run = hpkg("revert", "--pid", talk.pid)
        assert run.returncode == 4 and "read_slot" in run.stderr
        assert _read(talk.pid, site, 5) == b"\xcc" * 5
        _write(talk.pid, site, jump)
        assert hpkg("revert", "--pid", talk.pid).returncode == 0
        _unchanged(talk.pid)
        assert talk.ask(sample.steps[2].request) == sample.steps[2].baseline


def test_a_loader_killed_while_waiting_leaves_the_process_running(programs, keys, build_package) -> None:
    program = programs["lingering"]
    package = build_package(program.baseline, program.fixed)
    with _start(program.baseline) as target:
        try:
            assert target.stdout.readline() == "ready\n"
            argv = [sys.executable, "-m", "hpkg", "apply", str(package), "--pid", str(target.pid),
                    "--key", str(keys.public), "--timeout", "60"]
            loader = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + WAIT
            while not process_status(target.pid).images:  # a prepared record: the loader retries the check
                assert time.monotonic() < deadline and loader.poll() is None
                time.sleep(0.01)
            loader.send_signal(signal.SIGKILL)
            loader.wait()
            assert_running_untraced(target.pid)
            status = hpkg("status", "--pid", target.pid, "--json").json()
            [carried] = status["images"][0]["packages"]
            assert carried["state"].startswith("prepared")
            assert {f["state"] for f in carried["functions"]} == {"original"}
            assert hpkg("revert", "--pid", target.pid).returncode == 0
            _unchanged(target.pid)
            target.stdin.write("ping\n")
            target.stdin.flush()
            assert target.stdout.readline().startswith("pong ")
        finally:
            target.kill()


def test_a_second_loader_waits_for_the_lock_then_refuses(samples, keys, build_package) -> None:
    sample = samples["01-bounds-check"]
    package = build_package(sample.binary("baseline", "ready"), sample.binary("fixed", "ready"))
    with Conversation(sample, "baseline", "ready") as talk:
        with open(lock_path(talk.pid), "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # as another hpkg working on the process would
            run = hpkg("apply", package, "--pid", talk.pid, "--key", keys.public, "--timeout", "0.3")
            assert run.returncode == 4 and "another hpkg is working on process" in run.stderr
            _unchanged(talk.pid)
        run = hpkg("apply", package, "--pid", talk.pid, "--key", keys.public)
        assert run.returncode == 0, run.stderr
        status = hpkg("status", "--pid", talk.pid)
        assert status.returncode == 0 and "read_slot" in status.stdout and ": patched" in status.stdout
        assert hpkg("revert", "--pid", talk.pid).returncode == 0
        _unchanged(talk.pid)


def test_a_loader_killed_at_any_moment_never_breaks_the_target(samples, keys, build_package) -> None:
    """SIGKILL the loader at a spread of moments through an apply (start-up, prepare, wait, switch,
    record): the server keeps running untraced, and a revert always brings back the baseline."""
    sample = samples["14-threaded-server"]
    package = build_package(sample.binary("baseline", "ready"), sample.binary("fixed", "ready"))
    request, baseline = sample.steps[1].request, re.sub(r" \(#\d+\)$", "", sample.steps[1].baseline)
    with Conversation(sample, "baseline", "ready") as talk:
        for delay in [0.2 + 0.04 * i for i in range(10)]:
            argv = [sys.executable, "-m", "hpkg", "apply", str(package), "--pid", str(talk.pid),
                    "--key", str(keys.public)]
            loader = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            loader.send_signal(signal.SIGKILL)
            loader.wait()
            assert_running_untraced(talk.pid)
            run = hpkg("revert", "--pid", talk.pid)
            assert run.returncode == 0 or "carries no hpkg package" in run.stderr, run.stderr
            _unchanged(talk.pid)
            assert re.sub(r" \(#\d+\)$", "", talk.ask(request)) == baseline


def test_a_process_that_is_gone_is_a_target_error(samples, keys, build_package) -> None:
    sample = samples["01-bounds-check"]
    package = build_package(sample.binary("baseline", "ready"), sample.binary("fixed", "ready"))
    talk = Conversation(sample, "baseline", "ready")
    gone = talk.pid
    talk.close()
    for args in (("apply", package, "--pid", gone, "--key", keys.public), ("status", "--pid", gone),
                 ("revert", "--pid", gone), ("verify", package, "--key", keys.public, "--pid", gone)):
        run = hpkg(*args)
        assert run.returncode == 6, (args, run.stderr)
        assert run.stderr.startswith(f"error: no such process: {gone}")


def test_code_left_writable_by_an_interrupted_switch_is_repaired(samples, keys, build_package) -> None:
    """A loader killed between its two mprotect calls leaves the site's code page rwx: status warns, and
    the next switch (here a revert) puts the page back to the program header's r-x."""
    sample = samples["01-bounds-check"]
    baseline = sample.binary("baseline", "ready")
    package = build_package(baseline, sample.binary("fixed", "ready"))
    with Conversation(sample, "baseline", "ready") as talk:
        assert hpkg("apply", package, "--pid", talk.pid, "--key", keys.public).returncode == 0
        page = _runtime(talk.pid, baseline, _symbol(baseline, "read_slot")) & ~0xFFF
        with Process(talk.pid) as process, process.stop_thread() as held, Injector(held) as injector:
            injector.mprotect(page, 0x1000, PROT_READ | PROT_WRITE | PROT_EXEC)  # as the dead loader left it
        status = hpkg("status", "--pid", talk.pid, "--json").json()
        assert len(status["writable_code"]) == 1 and str(baseline) in status["writable_code"][0]
        assert hpkg("revert", "--pid", talk.pid).returncode == 0
        perms = [line.split()[1] for line in Path(f"/proc/{talk.pid}/maps").read_text().splitlines()]
        assert not any("w" in p and "x" in p for p in perms)
        _unchanged(talk.pid)


@pytest.mark.parametrize("switch_path", ["helper", "python"])
def test_a_site_changed_after_preparation_is_refused_in_the_window(samples, keys, build_package,
                                                                   monkeypatch, switch_path) -> None:
    """Another tool writes the site after hpkg read it but before the stop: the compare inside the window
    refuses (exit 4), nothing is written, the package memory is freed, every thread runs untraced — with
    the window's helper (compare, write and record in one call) and without it."""
    from hpkg.errors import IncompatibleTarget
    from hpkg.loader import apply as apply_module
    from hpkg.loader import thread_scan
    from hpkg.loader.apply import apply_to_process
    from hpkg.loader.trust import open_package

    if switch_path == "python":
        monkeypatch.setattr(thread_scan, "HELPER", None)
    else:
        assert thread_scan.HELPER is not None, "make builds the window helper before the tests"

    sample = samples["01-bounds-check"]
    baseline = sample.binary("baseline", "ready")
    path = build_package(baseline, sample.binary("fixed", "ready"))
    package = open_package(path, keys.public, False).package
    real_wait = apply_module.wait_until_safe
    with Conversation(sample, "baseline", "ready") as talk:
        site = _runtime(talk.pid, baseline, _symbol(baseline, "read_slot"))
        original = _read(talk.pid, site, 5)

        def breakpoint_then_wait(*args, **kwargs):
            _write(talk.pid, site, b"\xcc" * 5)  # after the switch was prepared, before the stop
            return real_wait(*args, **kwargs)

        monkeypatch.setattr(apply_module, "wait_until_safe", breakpoint_then_wait)
        try:
            apply_to_process(package, talk.pid)
            raise AssertionError("the apply must refuse a site changed before the stop")
        except IncompatibleTarget as refused:
            assert "changed while hpkg prepared" in str(refused) and refused.exit_code == 4
            assert any(f"{site:#x}" in reason and "cccccccccc" in reason for reason in refused.reasons)
        assert _read(talk.pid, site, 5) == b"\xcc" * 5  # hpkg wrote nothing there
        _unchanged(talk.pid)
        _write(talk.pid, site, original)
        assert talk.ask(sample.steps[0].request) == sample.steps[0].baseline
