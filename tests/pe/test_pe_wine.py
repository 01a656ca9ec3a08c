"""The PE samples run under Wine (one prefix per test run): each build answers its steps as its
sample.toml says, and a running image is found among the process's mappings by its identity.

Wine maps a PE image's headers from the file at the image base (`r--p`, file offset 0, with the
path in /proc/PID/maps) and its sections after them; reading the headers and the CodeView record
through /proc/PID/mem gives the identity the builder computed from the file. That is the lookup a
live loader makes before it touches anything (issue 12, item 4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from json_contract import check_document  # noqa: E402
from pe_corpus import PeSample, WineConversation, load_pe_samples  # noqa: E402

from hpkg.builder.image import load_image  # noqa: E402
from hpkg.pe.headers import memory_reader  # noqa: E402
from hpkg.pe.identity import read_identity  # noqa: E402

SAMPLES = load_pe_samples()


@pytest.mark.parametrize("build", ["baseline", "fixed"])
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_each_build_answers_its_steps_under_wine(pe_corpus, sample: PeSample, build: str) -> None:
    with WineConversation(sample, build, "ready") as conversation:
        answers = [conversation.ask(step.request) for step in sample.steps]
    assert answers == sample.answers(build)


def _header_mappings(pid: int, path: Path) -> list[int]:
    """Start addresses of the mappings of `path` at file offset 0 (a PE image's headers under Wine)."""
    starts = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[2] == "00000000" and fields[5].strip() == str(path.resolve()):
                starts.append(int(fields[0].split("-")[0], 16))
    return starts


def test_a_running_image_is_found_by_its_identity(pe_corpus) -> None:
    sample = next(s for s in SAMPLES if s.name == "14-threaded-server")
    path = sample.binary("baseline", "ready")
    identity = load_image(path).build_id
    with WineConversation(sample, "baseline", "ready") as conversation:
        assert conversation.ask(sample.steps[0].request) == sample.steps[0].baseline
        pid = conversation.pid
        starts = _header_mappings(pid, path)
        assert len(starts) == 1
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:

            def read_memory(address: int, size: int) -> bytes:
                memory.seek(address)
                return memory.read(size)

            found = read_identity(memory_reader(read_memory, starts[0]), f"pid {pid}")
        # Eight workers and the main thread (Wine adds its own): a live loader must stop them all.
        threads = len(os.listdir(f"/proc/{pid}/task"))
    assert found.hex() == identity
    assert threads > 8


def test_verify_pid_proves_a_wine_process_runs_the_baseline(pe_packages) -> None:
    """The first steps of a live apply under Wine, read-only: the image found by its identity among the
    process's mappings, every site a function entry of its file, pre-images and digests read from memory."""
    sample = next(s for s in SAMPLES if s.name == "14-threaded-server")
    package = str(pe_packages[sample.name])
    for build, exit_code in (("baseline", 0), ("fixed", 4)):
        with WineConversation(sample, build, "ready") as conversation:
            assert conversation.ask(sample.steps[0].request) == getattr(sample.steps[0], build)
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "hpkg",
                    "verify",
                    package,
                    "--allow-unsigned",
                    "--pid",
                    str(conversation.pid),
                    "--json",
                ],
                capture_output=True,
                text=True,
            )
        assert run.returncode == exit_code, run.stderr
        if build == "baseline":
            document = json.loads(run.stdout)
            check_document(document, "verify")
            (image,) = document["process"]["images"]
            assert image["path"] == str(sample.binary("baseline", "ready").resolve())
            assert [s["state"] for s in image["compatibility"]["sites"]] == ["pre-image"]
        else:
            assert "maps no PE image with identity" in run.stderr
