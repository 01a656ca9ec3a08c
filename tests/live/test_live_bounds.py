"""A trusted package whose patch site is not a function entry of the running image is refused by
`apply --pid` (exit 4, one line naming the site) before anything is written: the process keeps answering,
its memory at that place is unchanged and no package memory is left in /proc/PID/maps.

The packages are `hpkg build` output from a real sample pair, with the first site moved to a place of the
running process whose bytes it then carries as pre-image (read from the process, so that only the bounds
check stands between the package and a write: the issue's heap case), re-signed by the trusted key.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from live_helpers import assert_running_untraced, hpkg, hpkg_mappings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from sample_corpus import Conversation  # noqa: E402
from site_crafting import first_site, retarget, section_address  # noqa: E402

PLACES = (".rodata", ".data", ".got", "mid-function", "heap")
REASONS = {
    ".rodata": "not in an executable segment",
    ".data": "not in an executable segment",
    ".got": "not in an executable segment",
    "mid-function": "is not a function entry",
    "heap": "beyond the image",
}


def _maps(pid: int) -> list[list[str]]:
    return [line.split() for line in Path(f"/proc/{pid}/maps").read_text().splitlines()]


def _load_bias(pid: int, binary: Path) -> int:
    """The runtime address of link address 0 of a PIE (its first mapping maps file offset 0)."""
    for fields in _maps(pid):
        if len(fields) >= 6 and fields[5] == str(binary) and int(fields[2], 16) == 0:
            return int(fields[0].split("-")[0], 16)
    raise AssertionError(f"{binary} is not mapped in {pid}")


def _heap(pid: int) -> int:
    for fields in _maps(pid):
        if len(fields) >= 6 and fields[5] == "[heap]":
            return int(fields[0].split("-")[0], 16)
    raise AssertionError(f"process {pid} has no [heap]")


def _read(pid: int, address: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(address)
        return mem.read(size)


@pytest.mark.parametrize("where", PLACES)
def test_a_site_outside_the_function_entries_is_refused_and_the_process_untouched(
    samples, keys, build_package, tmp_path, where
) -> None:
    sample = samples["01-bounds-check"]
    baseline = sample.binary("baseline", "ready")
    package = build_package(baseline, sample.binary("fixed", "ready"))
    with Conversation(sample, "baseline", "ready") as talk:
        assert talk.ask(sample.steps[0].request) == sample.steps[0].baseline
        bias = _load_bias(talk.pid, baseline)
        _, site, size = first_site(package)
        link = {
            "mid-function": site + 8,
            "heap": _heap(talk.pid) - bias,
        }.get(where) or section_address(baseline, where)
        crafted = retarget(
            package, keys.private, tmp_path / "crafted.hpkg", link,
            lambda address, n: _read(talk.pid, bias + address, n),
        )
        before = hashlib.sha256(_read(talk.pid, bias + link, size)).digest()

        run = hpkg("apply", crafted, "--pid", talk.pid, "--key", keys.public)
        verified = hpkg("verify", crafted, "--key", keys.public, "--pid", talk.pid)

        assert run.returncode == 4, run.stderr
        assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: patch site of ")
        assert f"at {link:#x}" in run.stderr and REASONS[where] in run.stderr
        assert verified.returncode == 4 and REASONS[where] in verified.stderr
        assert hashlib.sha256(_read(talk.pid, bias + link, size)).digest() == before
        assert hpkg_mappings(talk.pid) == []
        assert_running_untraced(talk.pid)
        assert talk.ask(sample.steps[1].request) == sample.steps[1].baseline
