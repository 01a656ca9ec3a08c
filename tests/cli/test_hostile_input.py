"""Hostile input to every `hpkg` command: one `error:` line, the documented exit code, no traceback,
no hang, and a target process left running and untraced.

Each case runs the real command line in a subprocess (a FIFO or a huge file must not hang it) against
real files: the 14-threaded-server sample, a shared library, a relocatable object, a static binary, an
aarch64 binary, a core file, a FIFO, a sparse 20 GiB file, a symlink loop; and real processes: the
baseline server, a process of another build, a zombie, a kernel thread, pid 1 (read-only commands only).
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_corpus import SAMPLES_DIR, build_corpus  # noqa: E402
from terminal_signals import sigint_as_at_a_terminal  # noqa: E402

SAMPLE = SAMPLES_DIR / "14-threaded-server" / "out"
HPKG = (sys.executable, "-m", "hpkg")
TIMEOUT = 30  # seconds; a hostile input must fail long before this, never hang
PF_KTHREAD = 0x00200000

EXIT_USAGE, EXIT_INVALID, EXIT_REFUSED, EXIT_NO_CHANGE, EXIT_TARGET = 2, 3, 4, 5, 6


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


def hpkg(*args: object, stdin: int | None = subprocess.DEVNULL, cwd: Path | None = None) -> Run:
    """Run the real `hpkg` command line; a hang fails the test through TimeoutExpired."""
    done = subprocess.run(
        [*HPKG, *map(str, args)], capture_output=True, text=True, errors="replace", timeout=TIMEOUT,
        stdin=stdin, cwd=cwd,
    )  # fmt: skip
    return Run(done.returncode, done.stdout, done.stderr)


def assert_one_error(run: Run, code: int, fragment: str = "") -> None:
    """Exactly one `error:` line, the exit code, no traceback and no internal error."""
    assert "Traceback" not in run.stderr, run.stderr
    assert "internal error" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr
    assert run.code == code, run.stderr
    assert fragment.lower() in errors[0].lower(), run.stderr


def _compile(source: str, output: Path, *flags: str, compiler: str = "gcc") -> Path:
    c_file = output.with_suffix(".c")
    c_file.write_text(source)
    subprocess.run([compiler, *flags, str(c_file), "-o", str(output)], check=True, capture_output=True)
    return output


def _thread_states(pid: int) -> list[tuple[str, str]]:
    """(State, TracerPid) of every thread of a process."""
    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = dict(
            line.split(":\t", 1) for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines()
            if ":\t" in line
        )  # fmt: skip
        states.append((fields["State"][:1], fields["TracerPid"].strip()))
    return states


def assert_running_untraced(pid: int) -> None:
    """The target is alive, no thread is stopped (T, t) and none is traced."""
    states = _thread_states(pid)
    assert states, f"process {pid} is gone"
    for state, tracer in states:
        assert state not in ("T", "t", "Z", "X"), states
        assert tracer == "0", states


def _kernel_thread() -> int:
    """The pid of some kernel thread (kthreadd is 2 on most systems)."""
    for name in sorted(os.listdir("/proc"), key=lambda n: (len(n), n)):
        if name.isdigit():
            try:
                text = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(text[text.rindex(")") + 2 :].split()[6]) & PF_KTHREAD:
                return int(name)
    raise AssertionError("no kernel thread visible in /proc")


@dataclass(frozen=True)
class World:
    """The files and processes the cases name, by placeholder."""

    dir: Path
    names: dict[str, str]
    server: int


def _start_server(binary: Path) -> subprocess.Popen[str]:
    server = subprocess.Popen([str(binary), "0"], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line.startswith("listening on"), line
    return server


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """Build everything once: the sample pair, keys, packages, hostile files, and the processes."""
    build_corpus()
    # Not under tmp_path_factory: its 0700 parent would hide the files from the `nobody` case.
    root = Path(tempfile.mkdtemp(prefix="hpkg-hostile-"))
    root.chmod(0o755)
    old, new = root / "baseline", root / "fixed"
    shutil.copy2(SAMPLE / "baseline", old)
    shutil.copy2(SAMPLE / "fixed", new)
    key = root / "release.key"
    assert hpkg("keygen", key).code == 0
    pkg, unsigned = root / "signed.hpkg", root / "unsigned.hpkg"
    assert hpkg("build", old, new, "-o", pkg, "--key", key).code == 0
    assert hpkg("build", old, new, "-o", unsigned).code == 0
    for path in (pkg, unsigned, Path(f"{key}.pub")):
        path.chmod(0o644)
    blob = pkg.read_bytes()
    (root / "truncated.hpkg").write_bytes(blob[: len(blob) // 2])
    (root / "appended.hpkg").write_bytes(blob + b"trailing")
    (root / "empty").write_bytes(b"")
    (root / "text").write_text("not a binary\n")
    (root / "garbage.key").write_bytes(bytes(range(7, 71)))
    (root / "garbage.key").chmod(0o600)  # private-key permissions, so that its content is what fails
    (root / "dir").mkdir()
    os.mkfifo(root / "fifo")
    # A private /dev/null: an output case that regressed would replace or chmod this node, not the system's.
    os.mknod(root / "nulldev", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with open(root / "sparse", "wb") as sparse:
        sparse.truncate(20 << 30)
    os.symlink(root / "loop2", root / "loop1")
    os.symlink(root / "loop1", root / "loop2")
    library = _compile("int twice(int a) { return 2 * a; }\n", root / "lib.so", "-shared", "-fPIC", "-O2")
    _compile("int twice(int a) { return 2 * a; }\n", root / "object.o", "-c", "-O2")
    main = "int main(void) { return %d; }\n"
    _compile(main % 0, root / "static1", "-static", "-O2")
    _compile(main % 0, root / "static2", "-static", "-O0")
    _compile(main % 0, root / "arm64", "-O2", compiler="aarch64-linux-gnu-gcc")
    unicode_dir = root / "ünï😀"
    unicode_dir.mkdir()
    shutil.copy2(old, unicode_dir / "baseline€")
    server = _start_server(old)
    other = subprocess.Popen(["sleep", "600"])
    zombie = subprocess.Popen(["true"])  # never waited for until teardown: it stays a zombie
    while _thread_states(zombie.pid)[0][0] != "Z":
        time.sleep(0.01)
    subprocess.run(["gcore", "-o", str(root / "core"), str(other.pid)], check=True, capture_output=True)
    (root / f"core.{other.pid}").rename(root / "core")
    names = {
        "old": str(old), "new": str(new), "pkg": str(pkg), "unsigned": str(unsigned), "key": str(key),
        "pub": f"{key}.pub", "lib": str(library), "dir": str(root / "dir"), "root": str(root),
        "server": str(server.pid), "other": str(other.pid), "zombie": str(zombie.pid),
        "kthread": str(_kernel_thread()), "thread": str(sorted(os.listdir(f"/proc/{server.pid}/task"))[-1]),
        "long": str(root / ("x" * 5000)), "longname": str(root / ("y" * 300)),
        "unicode": str(unicode_dir / "baseline€"), "nulldev": str(root / "nulldev"),
    }  # fmt: skip
    try:
        yield World(root, names, server.pid)
    finally:
        for process in (server, other):
            process.kill()
            process.wait()
        zombie.wait()
        shutil.rmtree(root, ignore_errors=True)


def _argv(world: World, template: str) -> list[str]:
    """Split a case template as a shell would ('' is an empty argument) and fill its {placeholders}."""
    return [word.format(**world.names) for word in shlex.split(template)]


def P(template: str, code: int, fragment: str = "", id: str | None = None):  # noqa: N802 - a table row
    return pytest.param(template, code, fragment, id=id or template)


FILE_CASES = [
    # diff: files that are not a pair of linked x86-64 builds
    P("diff {root}/missing {new}", EXIT_INVALID, "no such file"),
    P("diff {old} {root}/missing", EXIT_INVALID, "no such file"),
    P("diff {dir} {new}", EXIT_USAGE, "directory"),
    P("diff {root}/empty {new}", EXIT_INVALID, "not an ELF"),
    P("diff {root}/fifo {new}", EXIT_INVALID, "FIFO"),
    P("diff /dev/null {new}", EXIT_INVALID, "character device"),
    P("diff /dev/zero {new}", EXIT_INVALID, "character device"),
    P("diff /proc/self/mem {new}", EXIT_INVALID, "cannot read"),
    P("diff {root}/sparse {new}", EXIT_INVALID, "larger than any binary"),
    P("diff {root}/loop1 {new}", EXIT_INVALID, "symbolic links"),
    P("diff {root}/text {new}", EXIT_INVALID, "not an ELF"),
    P("diff {root}/object.o {new}", EXIT_INVALID, "ELF type 1"),
    P("diff {root}/core {new}", EXIT_INVALID, "ELF type 4"),
    P("diff {root}/arm64 {new}", EXIT_INVALID, "aarch64"),
    P("diff {lib} {new}", EXIT_INVALID, "not two builds of one program"),
    P("diff {old} {lib}", EXIT_INVALID, "not two builds of one program"),
    P("diff {pkg} {new}", EXIT_INVALID, "not an ELF"),
    P("diff {old} {new} --old-debug {lib}", EXIT_INVALID, "build-id"),
    P("diff {old} {new} --old-debug {root}/fifo", EXIT_INVALID, "FIFO"),
    P("diff {old} {new} --function no_such_function", EXIT_USAGE, "no function named"),
    P("diff {long} {new}", EXIT_INVALID, "name too long"),
    P("diff '' {new}", EXIT_USAGE, "empty path"),
    # build: inputs, outputs, keys and options
    P("build {old} {old} -o {root}/out.hpkg", EXIT_NO_CHANGE, "nothing to patch"),
    P("build {old} {old} -o {root}/out.hpkg --json", EXIT_NO_CHANGE, "nothing to patch"),
    P("build {old} {lib} -o {root}/out.hpkg", EXIT_INVALID, "not two builds of one program"),
    P("build {root}/static1 {root}/static2 -o {root}/out.hpkg", EXIT_REFUSED, "not hot-patchable"),
    P("build {old} {pkg} -o {root}/out.hpkg", EXIT_INVALID, "not an ELF"),
    P("build {old} {new} -o {root}/no/such/dir/out.hpkg", EXIT_TARGET, "cannot write"),
    P("build {old} {new} -o {dir}", EXIT_USAGE, "directory"),
    P("build {old} {new} -o {old}", EXIT_USAGE, "refusing to overwrite an input"),
    P("build {old} {new} -o {new}", EXIT_USAGE, "refusing to overwrite an input"),
    P("build {old} {new} -o {key} --key {key}", EXIT_USAGE, "refusing to overwrite an input"),
    P("build {old} {new} -o {nulldev}", EXIT_USAGE, "character device"),
    P("build {old} {new} -o {root}/fifo", EXIT_USAGE, "FIFO"),
    P("build {old} {new} -o {longname}", EXIT_TARGET, "name too long"),
    P("build {old} {new} -o {root}/out.hpkg --key {pub}", EXIT_INVALID, "private key"),
    P("build {old} {new} -o {root}/out.hpkg --key {root}/garbage.key", EXIT_INVALID, "private key"),
    P("build {old} {new} -o {root}/out.hpkg --key {root}/fifo", EXIT_INVALID, "FIFO"),
    P("build {old} {new} -o {root}/out.hpkg --key {root}/sparse", EXIT_INVALID, "too large"),
    P("build {old} {new} -o {root}/out.hpkg --level 0", EXIT_USAGE, "--level"),
    P("build {old} {new} -o {root}/out.hpkg --level 2 --supersedes garbage", EXIT_USAGE, "package id"),
    P("build {old} {new} -o {root}/out.hpkg --allow unknown-reason", EXIT_USAGE, "unknown reason"),
    # inspect and verify: packages that are not packages, keys that are not keys
    P("inspect {root}/missing", EXIT_INVALID, "cannot read package"),
    P("inspect {root}/empty", EXIT_INVALID, "not an .hpkg"),
    P("inspect {root}/fifo", EXIT_INVALID, "FIFO"),
    P("inspect {root}/sparse", EXIT_INVALID, "larger than any valid package"),
    P("inspect {root}/truncated.hpkg", EXIT_INVALID, "truncated"),
    P("inspect {root}/appended.hpkg", EXIT_INVALID, "trailing"),
    P("inspect {old}", EXIT_INVALID, "not an .hpkg"),
    P("inspect ''", EXIT_USAGE, "empty path"),
    P("build {old} {new} -o ''", EXIT_USAGE, "empty path"),
    P("verify {pkg} --key {key}", EXIT_INVALID, "public key"),
    P("verify {pkg} --key {root}/garbage.key", EXIT_INVALID, "public key"),
    P("verify {pkg} --key {root}/fifo", EXIT_INVALID, "FIFO"),
    P("verify {unsigned} --key {pub}", EXIT_INVALID, "not signed"),
    P("verify {pkg} --against {new} --key {pub}", EXIT_REFUSED, "another build"),
    P("verify {pkg} --against {pkg} --key {pub}", EXIT_INVALID, "not an ELF"),
    P("verify {pkg} --against {root}/fifo --key {pub}", EXIT_INVALID, "FIFO"),
    P("verify {pkg} --against {root}/sparse --key {pub}", EXIT_INVALID, "larger than any binary"),
    P("verify {pkg} --against {root}/arm64 --key {pub}", EXIT_INVALID, "x86-64"),
    # apply --file
    P("apply {pkg} --file {old} -o {old} --key {pub}", EXIT_USAGE, "refusing to overwrite an input"),
    P("apply {pkg} --file {old} -o {pkg} --key {pub}", EXIT_USAGE, "refusing to overwrite an input"),
    P("apply {pkg} --file {old} -o {nulldev} --key {pub}", EXIT_USAGE, "character device"),
    P("apply {pkg} --file {old} --key {pub}", EXIT_USAGE, "needs -o"),
    P("apply {pkg} --file {root}/fifo -o {root}/out --key {pub}", EXIT_INVALID, "FIFO"),
    P("apply {pkg} --file {root}/sparse -o {root}/out --key {pub}", EXIT_INVALID, "larger than any binary"),
    P("apply {pkg} --file {new} -o {root}/out --key {pub}", EXIT_REFUSED, "another build"),
    P("apply {pkg} --file {root}/core -o {root}/out --key {pub}", EXIT_INVALID, "ELF type 4"),
    P("apply {old} --file {old} -o {root}/out --allow-unsigned", EXIT_INVALID, "not an .hpkg"),
    P("apply {pkg} --file {old} -o {root}/out", EXIT_INVALID, "unsigned"),
    # keygen
    P("keygen {key}", EXIT_USAGE, "already exists"),
    P("keygen {nulldev} --force", EXIT_USAGE, "character device"),
    P("keygen {root}/fifo --force", EXIT_USAGE, "FIFO"),
    P("keygen {root}/no/such/dir/k", EXIT_USAGE, "cannot write"),
]


@pytest.mark.parametrize(("template", "code", "fragment"), FILE_CASES)
def test_bad_file_input_fails_in_one_line(world: World, template: str, code: int, fragment: str) -> None:
    assert_one_error(hpkg(*_argv(world, template)), code, fragment)


def test_refused_output_leaves_the_input_intact(world: World) -> None:
    before = Path(world.names["old"]).read_bytes()
    hpkg("build", world.names["old"], world.names["new"], "-o", world.names["old"])
    hpkg("apply", world.names["pkg"], "--file", world.names["old"], "-o", world.names["old"])
    assert Path(world.names["old"]).read_bytes() == before
    assert stat.S_ISCHR(os.stat(world.names["nulldev"]).st_mode)


def test_unicode_path_is_read(world: World) -> None:
    run = hpkg("diff", world.names["unicode"], world.names["new"])
    assert run.code == 0, run.stderr
    assert "handle_request" in run.stdout


PID_CASES = [
    P("apply {pkg} --pid 999999999 --key {pub}", EXIT_TARGET, "no such process"),
    P("apply {pkg} --pid 0 --key {pub}", EXIT_USAGE, "--pid"),
    P("apply {pkg} --pid -1 --key {pub}", EXIT_USAGE, "--pid"),
    P("apply {pkg} --pid 99999999999999999999 --key {pub}", EXIT_TARGET, "no such process"),
    P("apply {pkg} --pid {kthread} --key {pub}", EXIT_TARGET, "kernel thread", id="apply-kernel-thread"),
    P("apply {pkg} --pid {zombie} --key {pub}", EXIT_TARGET, "zombie", id="apply-zombie"),
    P("apply {pkg} --pid {other} --key {pub}", EXIT_REFUSED, "not the baseline", id="apply-other-build"),
    P("apply {pkg} --pid {thread} --key {pub}", EXIT_TARGET, "is a thread of", id="apply-thread-id"),
    P("apply {pkg} --pid {server} --key {key}", EXIT_INVALID, "public key", id="apply-private-key"),
    P("apply {pkg} --pid {server} --key {root}/garbage.key", EXIT_INVALID, "public key", id="apply-garbage"),
    P("apply {pkg} --pid {server} --key {root}/fifo", EXIT_INVALID, "FIFO", id="apply-fifo-key"),
    P("apply {unsigned} --pid {server} --key {pub}", EXIT_INVALID, "not signed", id="apply-unsigned"),
    P("apply {pkg} --pid {server}", EXIT_INVALID, "unsigned", id="apply-no-key"),
    P("apply {pkg} --pid {server} --key {pub} --allow-unsigned", EXIT_USAGE, "exclude", id="apply-both"),
    P("apply {pkg} --pid {server} --key {pub} --timeout -1", EXIT_USAGE, "--timeout", id="timeout-neg"),
    P("apply {pkg} --pid {server} --key {pub} --timeout 1e9", EXIT_USAGE, "--timeout", id="timeout-huge"),
    P("apply {pkg} --pid {server} --key {pub} --timeout nan", EXIT_USAGE, "--timeout", id="timeout-nan"),
    P("apply {pkg} --pid {server} --key {pub} --timeout inf", EXIT_USAGE, "--timeout", id="timeout-inf"),
    P("apply {pkg} --pid {server} --key {pub} -o {root}/x", EXIT_USAGE, "-o is for --file", id="apply-pid-o"),
    P("apply {pkg} --pid {server} --file {old} --key {pub}", EXIT_USAGE, "one target", id="apply-two"),
    P("apply {root}/truncated.hpkg --pid {server} --allow-unsigned", EXIT_INVALID, "truncated", id="trunc"),
    P("apply {old} --pid {server} --allow-unsigned", EXIT_INVALID, "not an .hpkg", id="apply-binary-as-pkg"),
    P("verify {pkg} --pid {kthread} --key {pub}", EXIT_TARGET, "kernel thread", id="verify-kernel-thread"),
    P("verify {pkg} --pid {zombie} --key {pub}", EXIT_TARGET, "zombie", id="verify-zombie"),
    P("verify {pkg} --pid 999999999 --key {pub}", EXIT_TARGET, "no such process"),
    P("verify {pkg} --pid abc", EXIT_USAGE, "--pid"),
    P("status --pid 0", EXIT_USAGE, "--pid"),
    P("status --pid 999999999", EXIT_TARGET, "no such process"),
    P("status --pid {kthread}", EXIT_TARGET, "kernel thread", id="status-kernel-thread"),
    P("status --pid {zombie}", EXIT_TARGET, "zombie", id="status-zombie"),
    P("status --pid {thread}", EXIT_TARGET, "is a thread of", id="status-thread-id"),
    P("revert --pid {server} --timeout -3", EXIT_USAGE, "--timeout", id="revert-timeout-neg"),
    P("revert --pid {zombie}", EXIT_TARGET, "zombie", id="revert-zombie"),
    P("revert", EXIT_USAGE, "--pid PID, or --all", id="revert-no-target"),
    P("revert --pid {server} --all", EXIT_USAGE, "--pid PID, or --all", id="revert-pid-and-all"),
    P("revert --pid {server} --jobs 2", EXIT_USAGE, "--jobs is for --all", id="revert-jobs-pid"),
    P("revert --all --allow-unauthenticated", EXIT_USAGE, "for --pid", id="revert-all-unauthenticated"),
    P("apply {pkg} --all --pid {server} --key {pub}", EXIT_USAGE, "one target", id="apply-all-and-pid"),
    P("apply {pkg} --all --file {old} --key {pub}", EXIT_USAGE, "one target", id="apply-all-and-file"),
    P("apply {pkg} --pid {server} --jobs 2 --key {pub}", EXIT_USAGE, "--jobs is for --all", id="jobs-pid"),
    P("apply {pkg} --all --jobs 0 --key {pub}", EXIT_USAGE, "--jobs", id="jobs-zero"),
    P("apply {pkg} --all --jobs x --key {pub}", EXIT_USAGE, "--jobs", id="jobs-text"),
    P("apply {pkg} --all -o {root}/x --key {pub}", EXIT_USAGE, "-o is for --file", id="apply-all-o"),
    P("apply {unsigned} --all --key {pub}", EXIT_INVALID, "not signed", id="apply-all-unsigned"),
    P("revert --pid {kthread}", EXIT_TARGET, "kernel thread", id="revert-kernel-thread"),
    P("revert --pid -5", EXIT_USAGE, "--pid"),
]


@pytest.mark.parametrize(("template", "code", "fragment"), PID_CASES)
def test_bad_pid_input_fails_in_one_line(world: World, template: str, code: int, fragment: str) -> None:
    assert_one_error(hpkg(*_argv(world, template)), code, fragment)
    assert_running_untraced(world.server)


@pytest.mark.parametrize(
    ("template", "said"),
    [
        ("revert --pid {server}", "process {server} carries no hpkg package"),
        ("revert --pid {server} --package garbage", "package garbage is not applied in process {server}"),
        ("revert --pid {other}", "process {other} carries no hpkg package"),
    ],
    ids=["revert-nothing", "revert-garbage-id", "revert-other-build"],
)
def test_revert_of_nothing_applied_succeeds_unchanged(world: World, template: str, said: str) -> None:
    """Reverting what is not there is success with nothing changed (a repeated run must not fail)."""
    run = hpkg(*_argv(world, template))
    assert (run.code, run.stderr) == (0, "")
    assert run.stdout == f"nothing to revert: {said.format(**world.names)}\n"
    document = json.loads(hpkg(*_argv(world, template), "--json").stdout)
    assert document["changed"] is False and document["images"] == []
    assert_running_untraced(world.server)


def test_pid_1_is_only_read(world: World) -> None:
    """status and verify on init change nothing; either they read it or they say why not."""
    status = hpkg("status", "--pid", 1)
    if status.code != 0:
        assert_one_error(status, EXIT_TARGET)
    verify = hpkg("verify", world.names["pkg"], "--key", world.names["pub"], "--pid", 1)
    assert verify.code in (EXIT_REFUSED, EXIT_TARGET), verify.stderr
    assert_one_error(verify, verify.code)
    assert all(tracer == "0" for _, tracer in _thread_states(1))


def test_own_pid(world: World) -> None:
    """`exec` makes the shell's pid hpkg's own: status reads itself, apply refuses another build."""
    status = subprocess.run(
        ["sh", "-c", f'exec {" ".join(HPKG)} status --pid $$'], capture_output=True, text=True,
        timeout=TIMEOUT,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    apply = subprocess.run(
        ["sh", "-c", f'exec {" ".join(HPKG)} apply {world.names["pkg"]} --key {world.names["pub"]} --pid $$'],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert_one_error(Run(apply.returncode, apply.stdout, apply.stderr), EXIT_REFUSED, "not the baseline")


# What `nobody` needs to run `status` and `apply --pid`: the CLI, the loader, the package format.
_NOBODY_MODULES = ("hpkg.cli.status", "hpkg.cli.apply", "hpkg.loader.apply", "hpkg.loader.trust",
                   "hpkg.loader.status", "hpkg.formats.package", "hpkg.formats.signing")


@pytest.fixture(scope="module")
def nobody_hpkg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], dict[str, str]]]:
    """`hpkg` as `nobody` can run it wherever the checkout lives (a clone under /root or `mktemp -d` is
    closed to other users): the system interpreter, and a world-readable copy of hpkg's packages and of
    the installed modules they import, on PYTHONPATH."""
    import importlib
    import sysconfig

    root = Path(tempfile.mkdtemp(prefix="hpkg-nobody-"))
    root.chmod(0o755)
    ignore = shutil.ignore_patterns("__pycache__")
    for module in _NOBODY_MODULES:
        importlib.import_module(module)
    site = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    copied = set()
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] != "hpkg" and not any(
            str(Path(getattr(module, "__file__", None) or "/").resolve()).startswith(f"{s}/") for s in site
        ):
            continue
        for path in getattr(module, "__path__", ()) or ():
            # A package: copied where its dotted name puts it (hpkg's sub-packages live in several folders).
            target = root.joinpath(*name.split("."))
            if target not in copied and Path(path).is_dir():
                copied.add(target)
                shutil.copytree(path, target, ignore=ignore, dirs_exist_ok=True)
        file = getattr(module, "__file__", None)
        if file and "." not in name:  # a top-level module file (an extension such as _cffi_backend)
            shutil.copy2(file, root / Path(file).name)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    interpreter = os.path.realpath(sys.executable)  # not the venv's link: the checkout may be closed
    env = {**os.environ, "PYTHONPATH": str(root)}
    yield [interpreter, "-s", "-m", "hpkg"], env
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("command", ["status --pid {server}", "apply {pkg} --key {pub} --pid {server}"])
def test_not_root_is_told_permission_denied(
    world: World, command: str, nobody_hpkg: tuple[list[str], dict[str, str]]
) -> None:
    hpkg_argv, env = nobody_hpkg
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    argv = [*nobody, *hpkg_argv, *_argv(world, command)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd="/", env=env)
    assert_one_error(Run(done.returncode, done.stdout, done.stderr), EXIT_TARGET, "permission denied")
    assert "run as the target's user or as root" in done.stderr
    assert_running_untraced(world.server)


def test_root_without_cap_sys_ptrace_is_told_what_refuses_it(world: World) -> None:
    """Root whose CAP_SYS_PTRACE was dropped (a container's root) is not told to "run as root": the
    refusal names what can refuse root, and the process is left running and untraced."""
    no_ptrace = ["setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"]
    command = _argv(world, "apply {pkg} --key {pub} --pid {server}")
    done = subprocess.run([*no_ptrace, *HPKG, *command], capture_output=True, text=True, timeout=TIMEOUT)
    assert_one_error(Run(done.returncode, done.stdout, done.stderr), EXIT_TARGET, "permission denied")
    assert "refused even to root" in done.stderr and "CAP_SYS_PTRACE" in done.stderr
    assert_running_untraced(world.server)


_SEIZE_AND_WAIT = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.ptrace(0x4206, int(sys.argv[1]), 0, 0) == 0  # PTRACE_SEIZE: traced, not stopped
print("seized", flush=True)
time.sleep(600)
"""


def test_target_traced_by_a_debugger_is_refused_and_left_alone(world: World) -> None:
    """Another tracer holds the baseline: exit 6 naming it, and the process keeps running."""
    target = _start_server(Path(world.names["old"]))
    seize = [sys.executable, "-c", _SEIZE_AND_WAIT, str(target.pid)]
    tracer = subprocess.Popen(seize, stdout=subprocess.PIPE)
    try:
        assert tracer.stdout is not None and tracer.stdout.readline() == b"seized\n"
        run = hpkg("apply", world.names["pkg"], "--key", world.names["pub"], "--pid", target.pid)
        assert_one_error(run, EXIT_TARGET, "already traced")
        states = _thread_states(target.pid)
        assert all(state not in ("T", "t") for state, _ in states), states
        # The debugger seized the main thread only; hpkg must have let go of every thread it took.
        assert sorted(tracer_pid for _, tracer_pid in states) == ["0"] * (len(states) - 1) + [str(tracer.pid)]
    finally:
        tracer.kill()
        tracer.wait()
        target.kill()
        target.wait()


def test_target_that_exits_during_apply(world: World) -> None:
    """A baseline killed at a random moment around the apply: applied, or gone (6), never anything else."""
    rng = random.Random(14)
    for _ in range(4):
        target = _start_server(Path(world.names["old"]))
        killer = subprocess.Popen(["sh", "-c", f"sleep {rng.uniform(0.05, 0.4):.3f}; kill -9 {target.pid}"])
        run = hpkg("apply", world.names["pkg"], "--key", world.names["pub"], "--pid", target.pid)
        killer.wait()
        target.wait()
        if run.code != 0:
            assert_one_error(run, EXIT_TARGET)


def _wait_for_mapping(pid: int, fragment: str, limit: float = 30.0) -> None:
    """Wait until process `pid` has a file mapped whose path contains `fragment` (or has exited)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if fragment in Path(f"/proc/{pid}/maps").read_text():
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.005)


def test_ctrl_c_during_apply_leaves_the_target_running(world: World) -> None:
    """SIGINT at a random moment (check, switch, output): no traceback, target untraced."""
    rng = random.Random(2)
    target = _start_server(Path(world.names["old"]))
    try:
        for _ in range(5):
            apply = subprocess.Popen(
                [*HPKG, "apply", world.names["pkg"], "--key", world.names["pub"], "--pid", str(target.pid)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_at_a_terminal,
            )  # fmt: skip
            # Past the interpreter's own start-up (runpy), which no program can guard: hpkg's code is
            # running once it has imported zstandard (formats). From there on, any moment is fair.
            _wait_for_mapping(apply.pid, "zstandard")
            time.sleep(rng.uniform(0.0, 0.3))
            apply.send_signal(signal.SIGINT)
            out, err = apply.communicate(timeout=TIMEOUT)
            assert "Traceback" not in err, err
            # 0 applied; 130 "error: interrupted"; -SIGINT: the interpreter re-raised it after its last line.
            assert apply.returncode in (0, 130, -signal.SIGINT), err
            assert_running_untraced(target.pid)
            # Whether or not the output got out, the process holds the package or not: never half.
            revert = hpkg("revert", "--pid", target.pid)
            assert revert.code == 0, revert.stderr
            if "applied" in out:
                assert "pre-image restored" in revert.stdout
            again = hpkg("revert", "--pid", target.pid)
            assert again.code == 0 and "nothing to revert" in again.stdout, again.stderr
    finally:
        target.kill()
        target.wait()


def test_broken_pipe_on_stdout_is_quiet(world: World) -> None:
    """`hpkg … | head`: the reader went away before the first line; no traceback, no error, exit 0."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(
            [*HPKG, "diff", world.names["old"], world.names["new"], "--json"],
            stdout=writer, stderr=subprocess.PIPE, text=True, timeout=TIMEOUT,
        )  # fmt: skip
    finally:
        os.close(writer)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_full_stdout_is_one_error(world: World) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [*HPKG, "inspect", world.names["pkg"], "--json"], stdout=full, stderr=subprocess.PIPE, text=True,
            timeout=TIMEOUT,
        )  # fmt: skip
    assert_one_error(Run(done.returncode, "", done.stderr), EXIT_TARGET, "standard output")


def test_closed_stdin_changes_nothing(world: World) -> None:
    done = subprocess.run(
        ["sh", "-c", f'exec {" ".join(HPKG)} inspect {world.names["pkg"]} <&-'],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "handle_request" in done.stdout


def test_sigpipe_default_does_not_kill_midway(world: World) -> None:
    """With SIGPIPE at its default (as a shell may leave it), a closed reader still gives exit 0."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(
            [*HPKG, "inspect", world.names["pkg"]], stdout=writer, stderr=subprocess.PIPE, text=True,
            timeout=TIMEOUT, preexec_fn=lambda: signal.signal(signal.SIGPIPE, signal.SIG_DFL),
        )  # fmt: skip
    finally:
        os.close(writer)
    assert done.returncode == 0, done.stderr
