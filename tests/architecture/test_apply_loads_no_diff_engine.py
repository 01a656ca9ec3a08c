"""Applying a package loads the loader only: no diff engine, no disassembler, no LIEF.

Each command runs the real CLI in a fresh interpreter that writes `sorted(sys.modules)` to a file
at exit; `hpkg diff` through the same probe is the control that the probe sees what a command loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_corpus import Conversation, build_corpus, load_samples  # noqa: E402

SAMPLE = "01-bounds-check"
DIFF_ENGINE = ("hpkg.builder", "capstone", "lief", "iced_x86")
PROBE = """\
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from hpkg.cli import main
main(sys.argv[1:])
"""


def _hpkg(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpkg", *map(str, args)], capture_output=True, text=True)


def _probe(tmp_path: Path, *args: str | Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `hpkg ARGS` and return the run and every module it had loaded when it exited."""
    out = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *map(str, args)], capture_output=True, text=True, timeout=120
    )
    return run, set(json.loads(out.read_text()))


def _engine(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(f"{p}.") for p in DIFF_ENGINE))


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """(package, public key, baseline, fix) of the sample, built and signed by the CLI."""
    build_corpus()
    sample = {s.name: s for s in load_samples()}[SAMPLE]
    directory = tmp_path_factory.mktemp("apply-modules")
    key = directory / "release"
    assert _hpkg("keygen", key).returncode == 0
    path = directory / "fix.hpkg"
    old, new = sample.binary("baseline", "ready"), sample.binary("fixed", "ready")
    built = _hpkg("build", old, new, "-o", path, "--key", key)
    assert built.returncode == 0, built.stderr
    return path, Path(f"{key}.pub"), old, new


def test_the_probe_sees_the_diff_engine_when_a_command_uses_it(tmp_path, package):
    _, _, old, new = package
    run, modules = _probe(tmp_path, "diff", old, new)
    assert run.returncode == 0, run.stderr
    assert "hpkg.builder.diff" in modules and "iced_x86" in modules
    assert "lief" not in modules  # the diff reads ELF with hpkg's own layer (hpkg.elf)


def test_file_commands_load_no_diff_engine(tmp_path, package):
    path, public, old, _ = package
    for args in (
        ("verify", path, "--key", public),
        ("verify", path, "--key", public, "--against", old),
        ("apply", path, "--file", old, "-o", tmp_path / "patched", "--key", public),
    ):
        run, modules = _probe(tmp_path, *args)
        assert run.returncode == 0, f"{args}: {run.stderr}"
        assert _engine(modules) == [], args
        assert "hpkg.loader.link" in modules or args[0] == "verify"


def test_process_commands_load_no_diff_engine(tmp_path, package):
    path, public, _, _ = package
    sample = {s.name: s for s in load_samples()}[SAMPLE]
    with Conversation(sample, "baseline", "ready") as talk:
        talk.ask(sample.steps[0].request)  # running and answering before it is touched
        for args in (
            ("verify", path, "--key", public, "--pid", talk.pid),
            ("apply", path, "--pid", talk.pid, "--key", public),
            ("status", "--pid", talk.pid),
            ("revert", "--pid", talk.pid),
        ):
            run, modules = _probe(tmp_path, *args)
            assert run.returncode == 0, f"{args}: {run.stderr}"
            assert _engine(modules) == [], args
        assert talk.ask(sample.steps[0].request) == sample.steps[0].baseline  # reverted, still answering
