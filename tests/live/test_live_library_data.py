"""A fix that starts using libc's data objects — fprintf(stderr, ...), environ, optind, opterr — which
the fixed executable copy-relocates and the baseline has no copy of: the package reaches libc's own
objects (resolved by name and version in the process, or bound by the dynamic linker in a patched
file), live and with --file; the patched program writes to its real stderr, keeps working, and a
revert restores it. `stdout`, which the baseline already copies, stays the baseline's copy."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from live_helpers import assert_running_untraced, hpkg, hpkg_mappings

PROGRAM = Path(__file__).parent / "programs" / "library_data.c"
READY_FLAGS = (
    "-O2", "-g", "-fno-omit-frame-pointer", "-flive-patching=inline-clone", "-fcf-protection=none",
    "-Wall", "-Wl,--emit-relocs", "-Wl,--build-id=sha1",
)  # fmt: skip
NO_PIE = ("-no-pie", "-fno-pie")
# The target's whole environment: `environ` then has exactly these entries.
ENVIRONMENT = {"HPKG_FIRST": "1", "HPKG_SECOND": "2"}
LOGGED = "hpkg-fix: rejected a;b\n"


@dataclass(frozen=True)
class Pair:
    baseline: Path
    fixed: Path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    """library_data.c as baseline and fix: PIE (the fix also takes optind's address), non-PIE, and a
    non-PIE fix that takes the address (a 32-bit absolute operand)."""
    out = tmp_path_factory.mktemp("library-data")
    variants = {
        "pie": ((), ("-DFIX", "-DFIX_TAKES_ADDRESS")),
        "nopie": (NO_PIE, ("-DFIX",)),
        "nopie-address": (NO_PIE, ("-DFIX", "-DFIX_TAKES_ADDRESS")),
        # libm needed before libc: the dynamic linker loads it first, and maps it above libc.
        "libm": (("-Wl,--no-as-needed", "-lm"), ("-DFIX",)),
    }
    built = {}
    for variant, (flags, fix_defines) in variants.items():
        paths = []
        for build, defines in (("baseline", ()), ("fixed", fix_defines)):
            path = out / f"{variant}.{build}"
            cmd = ["gcc", *READY_FLAGS, *defines, "-o", str(path), str(PROGRAM), *flags]
            subprocess.run(cmd, check=True, capture_output=True)
            paths.append(path)
        built[variant] = Pair(*paths)
    return built


def _libc_object(pid: int, name: str) -> int:
    """The 4-byte int `name` of the libc mapped in `pid`, read from /proc (nm gives its offset)."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    libc = next(line.split() for line in maps if "/libc.so" in line and line.split()[2] == "00000000")
    start, path = int(libc[0].split("-")[0], 16), libc[5]
    symbols = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True, check=True)
    rows = [line.split() for line in symbols.stdout.splitlines()]
    value = next(int(row[0], 16) for row in rows if row[2].startswith(f"{name}@@"))
    with open(f"/proc/{pid}/mem", "rb") as memory:
        memory.seek(start + value)
        return int.from_bytes(memory.read(4), "little", signed=True)


def _imports(package: Path) -> list[str]:
    run = hpkg("inspect", package, "--json")
    assert run.returncode == 0, run.stderr
    return [i["name"] for i in run.json()["imports"]]


@pytest.mark.parametrize("variant", ["pie", "nopie"])
def test_fix_using_libc_data_runs_live(variant, pairs, keys, build_package) -> None:
    pair = pairs[variant]
    package = build_package(pair.baseline, pair.fixed)
    imports = _imports(package)
    assert {"stderr", "optind", "opterr"} <= set(imports)
    assert {"environ", "__environ"} & set(imports)
    assert "stdout" not in imports  # the baseline's own copy is the live stdout
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    with subprocess.Popen([pair.baseline], env=ENVIRONMENT, **pipes) as target:
        try:
            def ask(line: str) -> str:
                target.stdin.write(line + "\n")
                target.stdin.flush()
                return target.stdout.readline().rstrip("\n")

            assert ask("a;b") == "ok a;b (#1)"
            assert ask("?env") == "env"
            run = hpkg("apply", package, "--pid", target.pid, "--key", keys.public)
            assert run.returncode == 0, run.stderr
            assert ask("a;b") == "rejected a;b (#2)"
            assert ask("abc") == "ok abc (#3)"
            assert ask("?err") == "errors on"  # libc's opterr starts at 1 (a package copy: 0)
            # libc's optind starts at 1 (a copy in the package would start at 0).
            assert ask("?env") == f"env {len(ENVIRONMENT)} optind 2"
            assert ask("?err") == "errors off"
            assert ask("?env") == f"env {len(ENVIRONMENT)} optind 3"
            assert _libc_object(target.pid, "optind") == 3
            assert _libc_object(target.pid, "opterr") == 0  # libc's is 1 until the fix clears it
            if variant == "pie":
                assert ask("?set 41") == "set"  # sscanf(..., &optind): the address through the slot
                assert ask("?env") == f"env {len(ENVIRONMENT)} optind 42"
            assert hpkg("revert", "--pid", target.pid).returncode == 0
            assert ask("a;b") == "ok a;b (#4)"
            assert ask("?env") == "env"
            assert ask("?err") == "errors"
            assert_running_untraced(target.pid)
            assert hpkg_mappings(target.pid) == []
            target.stdin.close()
            assert target.wait() == 0
            assert target.stderr.read() == LOGGED  # the real stderr, once: before the revert
        finally:
            target.kill()


def test_fix_using_libc_data_patches_a_file(pairs, keys, build_package, tmp_path) -> None:
    pair = pairs["pie"]
    package = build_package(pair.baseline, pair.fixed)
    patched = tmp_path / "patched"
    run = hpkg("apply", package, "--file", pair.baseline, "-o", patched, "--key", keys.public)
    assert run.returncode == 0, run.stderr
    lines = "a;b\nabc\n?err\n?env\n?err\n?set 9\n?env\n"
    ran = subprocess.run([patched], input=lines, env=ENVIRONMENT, capture_output=True, text=True, check=True)
    expected = ["rejected a;b (#1)", "ok abc (#2)", "errors on", "env 2 optind 2", "errors off", "set"]
    expected.append("env 2 optind 10")
    assert ran.stdout.splitlines() == expected
    assert ran.stderr == LOGGED
    original = subprocess.run([pair.baseline], input=lines, env=ENVIRONMENT, capture_output=True, text=True)
    answers = ["ok a;b (#1)", "ok abc (#2)", "errors", "env", "errors", "set", "env"]
    assert original.stdout.splitlines() == answers
    assert original.stderr == ""


def test_an_address_no_32_bit_field_can_hold_is_refused(pairs, tmp_path) -> None:
    """A non-PIE fix passing &optind as a 32-bit immediate: the library may be mapped anywhere."""
    pair = pairs["nopie-address"]
    run = hpkg("build", pair.baseline, pair.fixed, "-o", tmp_path / "refused.hpkg")
    assert run.returncode == 4, run.stderr
    assert "library-data-unreachable: function 'set'" in run.stderr
    assert "'optind' is a shared library's" in run.stderr


def test_imports_are_looked_up_in_the_link_map_order(pairs) -> None:
    """The live loader searches the objects in the order the dynamic linker loaded them (read from its
    r_debug link map), which `ldd` prints too; libraries are mapped top-down, so address order differs."""
    from hpkg.loader.live_imports import ProcessImports
    from hpkg.loader.process import Process

    baseline = pairs["libm"].baseline
    traced = subprocess.run(["ldd", baseline], capture_output=True, text=True, check=True).stdout
    loaded = [Path(line.split("=>")[-1].split("(")[0].strip()).name for line in traced.splitlines()]
    loaded = [name for name in loaded if not name.startswith("linux-vdso")]
    with subprocess.Popen([baseline], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as target:
        try:
            target.stdin.write("abc\n")
            target.stdin.flush()
            assert target.stdout.readline() == "ok abc (#1)\n"  # started: its libraries are loaded
            with Process(target.pid) as process:
                images = process.images()
                executable = next(i for i in images if Path(i.path) == baseline)
                order = ProcessImports(process, executable).lookup_order
        finally:
            target.kill()
    assert Path(order[0].path) == baseline
    assert [Path(i.path).name for i in order[1:]] == loaded
    by_address = sorted(order[1:], key=lambda i: i.start)
    assert by_address != order[1:]
