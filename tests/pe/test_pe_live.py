"""`hpkg apply --pid`, `status` and `revert` of Windows programs running under Wine (the session's one
prefix): each patchable sample answers like the fix while it runs and like the baseline again after a
revert, on the same connection; a process that is not the baseline is refused and left as it was; the
Windows unwinder walks through live package code; a new import resolves in a DLL the process has
loaded, and one from a DLL it has not loaded is refused; a thread waiting in a system call inside a
replaced function (or inside package code, on revert) is found by its Windows frames and the switch
refused, while threads waiting elsewhere do not hold it up. After every command no thread is stopped
or traced.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "live"))

from json_contract import check_document, check_error_document  # noqa: E402
from live_helpers import assert_running_untraced, hpkg, hpkg_mappings  # noqa: E402
from pe_corpus import PeSample, WineConversation, load_pe_samples, wine_environment  # noqa: E402

from hpkg.errors import EXIT_NOT_YET_SUPPORTED, EXIT_REFUSED  # noqa: E402

SAMPLES = {s.name: s for s in load_pe_samples()}
LIVE = [
    s for s in SAMPLES.values()
    if s.expectations["ready"].verdict == "patchable" and None not in (s.patch_after, s.revert_after)
]  # fmt: skip
PROGRAMS = Path(__file__).resolve().parent / "programs"


def _no_writable_code(pid: int) -> None:
    perms = [line.split()[1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()]
    assert not any("w" in p and "x" in p for p in perms)


@pytest.mark.parametrize("sample", LIVE, ids=lambda s: s.name)
def test_a_running_windows_program_answers_like_the_fix_and_again_like_the_baseline(
    pe_packages, sample: PeSample
) -> None:
    package = pe_packages[sample.name]
    want = sample.live_answers()
    with WineConversation(sample, "baseline", "ready") as talk:
        for number, step in enumerate(sample.steps, start=1):
            assert talk.ask(step.request) == want[number - 1], f"step {number}: {step.request!r}"
            if number == sample.patch_after:
                applied = hpkg("apply", package, "--allow-unsigned", "--pid", talk.pid, "--json")
                assert applied.returncode == 0, applied.stderr
                document = applied.json()
                check_document(document, "apply")
                assert document["changed"] and document["pause_ms"] > 0
                assert_running_untraced(talk.pid)
                _no_writable_code(talk.pid)
                status = hpkg("status", "--pid", talk.pid, "--json")
                assert status.returncode == 0, status.stderr
                [image] = status.json()["images"]
                assert image["path"] == str(sample.binary("baseline", "ready").resolve())
                [carried] = image["packages"]
                assert carried["package_id"] == document["package_id"]
                assert carried["state"] == "applied" and carried["intact"]
                assert {f["state"] for f in carried["functions"]} == {"patched"}
                assert_running_untraced(talk.pid)
            if number == sample.revert_after:
                reverted = hpkg("revert", "--pid", talk.pid, "--json")
                assert reverted.returncode == 0, reverted.stderr
                [image] = reverted.json()["images"]
                assert image["restored"]
                assert_running_untraced(talk.pid)
                # Only memory a word still points into stays (04-new-helper: test_pe_live_retained.py),
                # its record page inaccessible; the rest is unmapped.
                kept = [(r["start"], r["start"] + r["size"]) for r in image["retained"]]
                mapped = [[int(v, 16) for v in line.split()[0].split("-")] + [line.split()[1]]
                          for line in hpkg_mappings(talk.pid)]  # fmt: skip
                assert {start for start, _end, perms in mapped if perms == "---p"} == {s for s, _ in kept}
                assert all(any(s <= start < end <= e for s, e in kept) for start, end, _perms in mapped)
                packages = [p for i in hpkg("status", "--pid", talk.pid, "--json").json()["images"]
                            for p in i["packages"]]  # fmt: skip
                assert all(p["state"].startswith("retired") for p in packages) and len(packages) == len(kept)


def test_a_process_that_is_not_the_baseline_is_refused_and_left_untouched(pe_packages) -> None:
    sample = SAMPLES["14-threaded-server"]
    with WineConversation(sample, "fixed", "ready") as talk:
        assert talk.ask(sample.steps[0].request) == sample.steps[0].fixed
        run = hpkg("apply", pe_packages[sample.name], "--allow-unsigned", "--pid", talk.pid)
        assert run.returncode == EXIT_REFUSED, run.stderr
        assert "maps no PE image with identity" in run.stderr and "Traceback" not in run.stderr
        assert_running_untraced(talk.pid)
        assert hpkg_mappings(talk.pid) == []  # no package memory (Wine's own mappings change as it runs)
        assert talk.ask(sample.steps[1].request) == sample.steps[1].fixed


class _Stdio:
    """A console program under Wine, one line in and one line out."""

    def __init__(self, binary: Path) -> None:
        env = {**os.environ, **wine_environment()}
        self.process = subprocess.Popen(
            ["wine", str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.pid = self.process.pid  # wine execs Wine's preloader in place: the program's process

    def tell(self, line: str) -> None:
        """A line in, no answer awaited (the program goes on reading)."""
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def ask(self, line: str) -> str:
        assert self.process.stdout is not None
        self.tell(line)
        return self.process.stdout.readline().replace("\r", "").strip()

    def __enter__(self) -> _Stdio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()


def _builds(tmp_path: Path, source: str, variants: dict[str, tuple[str, ...]], *extra: str) -> dict:
    """One mingw build of `source` per variant (its -D flags), named after the variant."""
    binaries = {}
    for name, flags in variants.items():
        binaries[name] = tmp_path / f"{name}.exe"
        command = ["x86_64-w64-mingw32-gcc", "-O2", "-Wl,--build-id", *flags, str(PROGRAMS / source),
                   "-o", str(binaries[name]), *extra]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
    return binaries


def _package(tmp_path: Path, baseline: Path, fixed: Path) -> Path:
    package = tmp_path / f"{fixed.stem}.hpkg"
    built = hpkg("build", baseline, fixed, "-o", package)
    assert built.returncode == 0, built.stderr
    return package


def test_the_windows_unwinder_walks_through_live_package_code(pe_corpus, tmp_path) -> None:
    """work()'s 512-byte frame is only walked past with its RUNTIME_FUNCTION: in the package, that is the
    entry linked into Wine's list of dynamic function tables. `apply --all` finds the process (its build
    is this run's own: a tag makes its identity unique on the machine)."""
    tag = ("-DTAG=\"" + uuid.uuid4().hex + "\"",)
    binaries = _builds(tmp_path, "stack_walk.c", {"baseline": tag, "fixed": (*tag, "-DFIX")})
    package = _package(tmp_path, binaries["baseline"], binaries["fixed"])
    with _Stdio(binaries["baseline"]) as program:
        assert program.ask("7") == "2007"  # frames_to_main() → work() → main: two frames up
        applied = hpkg("apply", package, "--allow-unsigned", "--all", "--json")
        assert applied.returncode == 0, applied.stderr
        assert [p["pid"] for p in applied.json()["processes"]] == [program.pid]
        assert_running_untraced(program.pid)
        assert program.ask("7") == "2005"  # the fix's limit, and still two frames through package code
        reverted = hpkg("revert", "--pid", program.pid)
        assert reverted.returncode == 0, reverted.stderr
        assert_running_untraced(program.pid)
        assert program.ask("7") == "2007"


def test_a_new_import_resolves_in_a_loaded_dll_and_an_unloaded_dll_is_refused(pe_corpus, tmp_path) -> None:
    variants = {"baseline": (), "fixed": ("-DFIX",), "unloaded": ("-DFIX_UNLOADED",)}
    binaries = _builds(tmp_path, "live_imports.c", variants, "-lshlwapi")
    with _Stdio(binaries["baseline"]) as program:
        assert program.ask("hello") == "7"
        refused = hpkg("apply", _package(tmp_path, binaries["baseline"], binaries["unloaded"]),
                       "--allow-unsigned", "--pid", program.pid, "--json")  # fmt: skip
        check_error_document(refused.stdout, "apply", EXIT_REFUSED, "refused")
        assert "shlwapi.dll is not loaded" in refused.stdout
        assert_running_untraced(program.pid)
        assert hpkg_mappings(program.pid) == []
        assert program.ask("hello") == "7"
        applied = hpkg("apply", _package(tmp_path, binaries["baseline"], binaries["fixed"]),
                       "--allow-unsigned", "--pid", program.pid)  # fmt: skip
        assert applied.returncode == 0, applied.stderr
        assert_running_untraced(program.pid)
        assert program.ask("hello") == "6"  # lstrlenA("hello\n"), found through kernel32's exports


def test_installing_a_windows_package_is_not_supported(pe_packages, tmp_path) -> None:
    store = tmp_path / "store"
    package = str(pe_packages["01-bounds-check"])
    run = hpkg("install", package, "--allow-unsigned", "--store", store, "--json")
    check_error_document(run.stdout, "install", EXIT_NOT_YET_SUPPORTED, "not-yet-supported")
    assert "apply --all" in run.stdout
    assert not (store / "packages").exists() or not any((store / "packages").iterdir())


def test_a_thread_waiting_in_a_system_call_inside_a_replaced_function_refuses_the_switch(
    pe_corpus, tmp_path
) -> None:
    """read_number() waits in fgets: its frames are on the Windows stack while the thread's rsp is on Wine's
    Unix stack. The switch is refused naming it (exit 4), the process untouched and answering; once the
    line came and main waits outside it, the same apply succeeds (beside a thread that is always running
    Windows code, walked from its own registers), and a revert while the thread waits in the package's
    read_number is refused the same way."""
    binaries = _builds(tmp_path, "blocked.c", {"baseline": (), "fixed": ("-DFIX",)})
    package = _package(tmp_path, binaries["baseline"], binaries["fixed"])
    with _Stdio(binaries["baseline"]) as program:
        assert program.ask("x") == "-2"  # main waits in its own fgets: outside read_number
        assert program.ask("s") == "-3"  # a second thread spins in Windows code from now on
        program.tell("r")  # now waiting inside read_number
        refused = hpkg("apply", package, "--allow-unsigned", "--pid", program.pid, "--timeout", "1")
        assert refused.returncode == EXIT_REFUSED, refused.stderr
        head = refused.stderr.splitlines()[0]
        assert head.startswith("error: unsafe to switch") and "inside read_number" in head, refused.stderr
        assert f"thread {program.pid}: return address" in refused.stderr and "Traceback" not in refused.stderr
        assert_running_untraced(program.pid)
        assert hpkg_mappings(program.pid) == []
        assert program.ask("41") == "41"  # the old read_number answered; main waits outside it again
        applied = hpkg("apply", package, "--allow-unsigned", "--pid", program.pid, "--timeout", "5")
        assert applied.returncode == 0, applied.stderr
        assert_running_untraced(program.pid)
        program.tell("r")  # waiting inside the package's read_number
        refused = hpkg("revert", "--pid", program.pid, "--timeout", "1")
        assert refused.returncode == EXIT_REFUSED, refused.stderr
        assert "read_number (package" in refused.stderr.splitlines()[0], refused.stderr
        assert_running_untraced(program.pid)
        assert program.ask("41") == "42"  # the fix answered, through package code still in place
        reverted = hpkg("revert", "--pid", program.pid, "--timeout", "5")
        assert reverted.returncode == 0, reverted.stderr
        assert_running_untraced(program.pid)
        program.tell("r")
        assert program.ask("41") == "41"  # the baseline's read_number again


def test_threads_waiting_outside_the_replaced_function_do_not_hold_up_the_switch(pe_packages) -> None:
    """The Wine server's nine threads wait in system calls (eight workers in accept or recv, main in
    WaitForMultipleObjects), none inside handle_request: apply and revert succeed, three times over (a
    stale word in a live frame's buffer, which a scan of the Windows stack would take for a return
    address, does not count: the frames are walked)."""
    sample = SAMPLES["14-threaded-server"]
    package = pe_packages[sample.name]
    with WineConversation(sample, "baseline", "ready") as talk:
        assert talk.ask(sample.steps[0].request) == sample.steps[0].baseline  # a worker now waits in recv
        for _round in range(3):
            applied = hpkg("apply", package, "--allow-unsigned", "--pid", talk.pid)
            assert applied.returncode == 0, applied.stderr
            fixed, baseline = (f"#{2 + 2 * _round}", f"#{3 + 2 * _round}")
            assert talk.ask(sample.steps[1].request) == sample.steps[1].fixed.replace("#2", fixed)
            reverted = hpkg("revert", "--pid", talk.pid)
            assert reverted.returncode == 0, reverted.stderr
            assert_running_untraced(talk.pid)
            assert talk.ask(sample.steps[1].request) == sample.steps[1].baseline.replace("#2", baseline)
