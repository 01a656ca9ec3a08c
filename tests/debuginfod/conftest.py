"""Fixtures for the debuginfod tests: the built corpus and a real elfutils `debuginfod` on a local port,
indexing the corpus's -dbgsym trees (samples/*/out/debug, made by dh-strip.sh); always stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from debuginfod_helpers import Server, unused_port  # noqa: E402
from sample_corpus import SAMPLES_DIR, Sample, build_corpus, load_samples  # noqa: E402

# A safety net against a server that never finishes its first scan, not a timing assertion.
INDEX_DEADLINE_SECONDS = 120.0


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except OSError:
        return 0


def _serving(process: subprocess.Popen, url: str, build_ids: frozenset[str]) -> bool:
    """Poll until every debug file is served (the first scan is done); False if the server died."""
    deadline = time.monotonic() + INDEX_DEADLINE_SECONDS
    waiting = set(build_ids)
    while waiting and time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        waiting = {b for b in waiting if _status(f"{url}/buildid/{b}/debuginfo") != 200}
        if waiting:
            time.sleep(0.2)
    return not waiting


@pytest.fixture(scope="session")
def samples() -> dict[str, Sample]:
    """Every sample, built once per session (make is a no-op when it is up to date)."""
    build_corpus()
    return {sample.name: sample for sample in load_samples()}


@pytest.fixture(scope="session")
def debuginfod_server(
    samples: dict[str, Sample], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`debuginfod -F` over every sample's debug tree, on a free loopback port."""
    if shutil.which("debuginfod") is None:
        pytest.fail("debuginfod is not installed: `make test-deps` installs the Debian package")
    roots = sorted(SAMPLES_DIR.glob("[0-9][0-9]-*/out/debug"))
    build_ids = frozenset(
        f"{p.parent.name}{p.stem}" for root in roots for p in root.glob(".build-id/*/*.debug")
    )
    assert build_ids, "the corpus has no debug files"
    work = tmp_path_factory.mktemp("debuginfod")
    # Its fd cache and temporary files go to TMPDIR; the index is a file of this session.
    env = {**os.environ, "TMPDIR": str(work)}
    for attempt in range(3):  # another process may take the port between the probe and the bind
        port = unused_port()
        log = open(work / f"server-{attempt}.log", "wb")  # noqa: SIM115 (closed when the server stops)
        command = [
            "debuginfod",
            "-F",
            "-p",
            str(port),
            "-d",
            str(work / f"index-{attempt}.sqlite"),
            "-t",
            "0",
        ]
        process = subprocess.Popen(
            [*command, *map(str, roots)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        url = f"http://127.0.0.1:{port}"
        try:
            if _serving(process, url, build_ids):
                yield Server(url, build_ids)
                return
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
    pytest.fail(f"debuginfod did not serve the corpus's debug files: see {work}")
