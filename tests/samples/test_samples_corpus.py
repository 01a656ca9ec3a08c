"""The samples corpus: every pair builds in every flavour, and baseline and fix really differ as specified."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from objdump_diff import compare
from sample_corpus import (
    BUILDS,
    FLAVOURS,
    KINDS,
    SAMPLES_DIR,
    VERDICTS,
    Conversation,
    Sample,
    build_corpus,
    load_samples,
)

SAMPLES = load_samples()
BY_NAME = {sample.name: sample for sample in SAMPLES}
SAMPLE_FLAVOURS = [(s, f) for s in SAMPLES for f in s.flavours]
SAMPLE_FLAVOUR_BUILDS = [(s, f, b) for s, f in SAMPLE_FLAVOURS for b in BUILDS]


def _id(value: object) -> str:
    return value.name if isinstance(value, Sample) else str(value)


@pytest.fixture(scope="session")
def corpus() -> list[Sample]:
    build_corpus()
    return SAMPLES


def _readelf(*args: str) -> str:
    return subprocess.run(["readelf", *args], capture_output=True, text=True, check=True).stdout


def _section_names(path: Path) -> set[str]:
    return set(re.findall(r"^\s*\[\s*\d+\]\s+(\S+)", _readelf("-SW", str(path)), re.MULTILINE))


def _build_id(path: Path) -> str:
    match = re.search(r"Build ID: ([0-9a-f]+)", _readelf("-n", str(path)))
    assert match, f"{path} has no GNU build-id"
    return match.group(1)


def _strip_version(names: frozenset[str]) -> frozenset[str]:
    return frozenset(name.split("@")[0] for name in names)


# --- the spec itself ------------------------------------------------------------------------------


def test_corpus_covers_every_kind_and_both_verdicts():
    assert len(SAMPLES) >= 16
    assert {s.kind for s in SAMPLES} == set(KINDS)
    assert {s.expectations["ready"].verdict for s in SAMPLES} == set(VERDICTS)
    assert {s.language for s in SAMPLES} == {"c", "c++"}
    assert any("plain" in s.flavours for s in SAMPLES)


@pytest.mark.parametrize("sample", SAMPLES, ids=_id)
def test_spec_is_consistent(sample: Sample):
    assert sample.name == sample.directory.name
    assert sample.kind in KINDS and sample.language in ("c", "c++")
    assert sample.flavours[:2] == ("ready", "stripped") and set(sample.flavours) <= set(FLAVOURS)
    assert (sample.directory / "README.md").is_file()
    assert any(step.baseline != step.fixed for step in sample.steps), "the fix must be observable"
    for flavour, expectation in sample.expectations.items():
        assert expectation.verdict in VERDICTS, flavour
        if expectation.verdict == "patchable":
            assert not expectation.refusal_reason, flavour
            assert expectation.changed | expectation.added, f"{flavour}: nothing to patch"
    if any(e.verdict == "patchable" for e in sample.expectations.values()):
        assert sample.patch_after is not None and sample.revert_after is not None
        assert 1 <= sample.patch_after < sample.revert_after < len(sample.steps)
        live = list(zip(sample.live_answers(), sample.steps, strict=True))
        patched, reverted = live[sample.patch_after : sample.revert_after], live[sample.revert_after :]
        assert any(answer == step.fixed != step.baseline for answer, step in patched), "the fix must show"
        assert any(answer != step.fixed for answer, step in reverted), "the revert must show"
    else:
        assert sample.patch_after is None


# --- the build ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sample", "flavour", "build"), SAMPLE_FLAVOUR_BUILDS, ids=_id)
def test_each_build_is_an_x86_64_elf_with_the_flavours_sections(
    corpus, sample: Sample, flavour: str, build: str
):
    binary = sample.binary(build, flavour)
    header = binary.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[4] == 2, "ELF64"
    assert int.from_bytes(header[18:20], "little") == 62, "EM_X86_64"
    sections = _section_names(binary)
    assert ".note.gnu.build-id" in sections
    if flavour == "stripped":
        assert ".symtab" not in sections and ".rela.text" not in sections
        assert not any(name.startswith(".debug") for name in sections)
    else:
        assert {".symtab", ".rela.text", ".debug_info"} <= sections


@pytest.mark.parametrize(("sample", "flavour"), SAMPLE_FLAVOURS, ids=_id)
def test_baseline_and_fix_have_different_build_ids(corpus, sample: Sample, flavour: str):
    baseline, fix = (_build_id(sample.binary(b, flavour)) for b in BUILDS)
    assert baseline != fix
    # strip keeps the identity, so the symbols twin names the code of the stripped file
    assert _build_id(sample.symbols_twin("baseline", flavour)) == baseline


def test_library_sample_has_one_host_and_two_libraries_with_the_same_soname(corpus):
    for sample in (s for s in corpus if s.kind == "library-host"):
        for flavour in sample.flavours:
            needed = _readelf("-d", str(sample.host_binary(flavour)))
            assert f"Shared library: [{sample.library_file}]" in needed
            for build in BUILDS:
                dynamic = _readelf("-d", str(sample.binary(build, flavour)))
                assert f"Library soname: [{sample.library_file}]" in dynamic


def test_make_knows_each_sample_by_name_and_is_up_to_date_after_the_build(corpus):
    for sample in corpus[:3]:
        result = subprocess.run(["make", "-q", "-C", str(SAMPLES_DIR), sample.name], capture_output=True)
        assert result.returncode == 0, sample.name


def test_the_build_is_the_same_wherever_the_tree_is(corpus, tmp_path: Path):
    sample = BY_NAME["01-bounds-check"]
    shutil.copytree(SAMPLES_DIR / "common", tmp_path / "common")
    shutil.copy(SAMPLES_DIR / "Makefile", tmp_path / "Makefile")
    shutil.copy(SAMPLES_DIR / "dh-strip.sh", tmp_path / "dh-strip.sh")
    shutil.copytree(sample.directory, tmp_path / sample.name, ignore=shutil.ignore_patterns("out"))
    subprocess.run(["make", "-s", "-C", str(tmp_path), sample.name], check=True, capture_output=True)
    for flavour in sample.flavours:
        for build in BUILDS:
            copy = tmp_path / sample.binary(build, flavour).relative_to(SAMPLES_DIR)
            assert copy.read_bytes() == sample.binary(build, flavour).read_bytes(), copy


# --- what changed between baseline and fix ---------------------------------------------------------


@pytest.mark.parametrize(("sample", "flavour"), SAMPLE_FLAVOURS, ids=_id)
def test_expected_sets_match_an_objdump_comparison(corpus, sample: Sample, flavour: str):
    expected = sample.expectations[flavour]
    found = compare(sample.symbols_twin("baseline", flavour), sample.symbols_twin("fixed", flavour))
    assert found.changed == expected.changed
    assert found.added == expected.added
    assert found.removed == expected.removed
    assert _strip_version(found.data_changed) == expected.data_changed
    assert _strip_version(found.data_added) == expected.data_added
    assert _strip_version(found.data_removed) == expected.data_removed


def _main_body(binary: Path) -> list[str]:
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(binary)], capture_output=True, text=True)
    body = re.search(r"^[0-9a-f]+ <main>:\n(.*?)\n\n", out.stdout, re.DOTALL | re.MULTILINE)
    assert body is not None
    # Instruction text with every address, displacement and label dropped: those move when the fix
    # adds a string or score() grows; which registers main() uses across the call does not.
    text = [line.split("\t", 1)[-1].split("#")[0] for line in body.group(1).splitlines()]
    return [re.sub(r"-?0x[0-9a-f]+\(%rip\)|\b[0-9a-f]+ <[^>]*>", "ADDRESS", line).strip() for line in text]


def test_ipa_ra_ties_the_main_loop_to_its_callee_only_without_live_patching_flag(corpus):
    sample = BY_NAME["15-ipa-ra-main-loop"]
    assert _main_body(sample.binary("baseline", "ready")) == _main_body(sample.binary("fixed", "ready"))
    assert _main_body(sample.binary("baseline", "plain")) != _main_body(sample.binary("fixed", "plain"))


# --- behaviour ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sample", "flavour", "build"), SAMPLE_FLAVOUR_BUILDS, ids=_id)
def test_a_running_build_answers_each_request_as_specified(corpus, sample: Sample, flavour: str, build: str):
    with Conversation(sample, build, flavour) as conversation:
        answers = [conversation.ask(step.request) for step in sample.steps]
    assert answers == sample.answers(build)
    if sample.kind != "server":
        assert conversation.process.returncode == 0


def test_server_runs_its_workers_and_counts_concurrent_requests_once_each(corpus):
    sample = BY_NAME["14-threaded-server"]
    clients, per_client = 12, 25
    with Conversation(sample, "baseline", "ready") as server:
        threads = len(list(Path(f"/proc/{server.pid}/task").iterdir()))
        assert threads == sample.workers + 1
        counts: list[int] = []
        lock = threading.Lock()

        def client() -> None:
            with socket.create_connection(("127.0.0.1", server.port)) as s, s.makefile("rw") as stream:
                for _ in range(per_client):
                    stream.write("GET /x\n")
                    stream.flush()
                    number = int(re.search(r"\(#(\d+)\)", stream.readline()).group(1))
                    with lock:
                        counts.append(number)

        workers = [threading.Thread(target=client) for _ in range(clients)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert sorted(counts) == list(range(1, clients * per_client + 1))
        assert server.ask("GET /after") == f"200 /after (#{clients * per_client + 1})"
