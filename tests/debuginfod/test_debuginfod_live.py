"""A package built from Debian-built stripped samples with symbols from debuginfod applies live and reverts:
the running baseline gives the fixed answers with its state kept, then the baseline answers again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from debuginfod_helpers import Server
from sample_corpus import Conversation

# A sample whose stripped build is refused without symbols, a server of 8 workers, and a library.
LIVE = ["02-changed-constant", "14-threaded-server", "16-shared-library"]


def _hpkg(*args: object, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hpkg", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.parametrize("name", LIVE)
def test_a_package_with_symbols_from_debuginfod_applies_live(
    name, samples, debuginfod_server: Server, tmp_path
):
    sample = samples[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEBUGINFOD_")}
    env.update(DEBUGINFOD_URLS=debuginfod_server.url, XDG_CACHE_HOME=str(tmp_path))
    package = tmp_path / "fix.hpkg"
    built = _hpkg("build", sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped"),
                  "-o", package, env=env)  # fmt: skip
    assert built.returncode == 0, built.stderr
    want = sample.live_answers()
    with Conversation(sample, "baseline", "stripped") as talk:
        for number, step in enumerate(sample.steps, start=1):
            assert talk.ask(step.request) == want[number - 1], f"step {number}: {step.request!r}"
            if number == sample.patch_after:
                applied = _hpkg("apply", package, "--pid", talk.pid, "--allow-unsigned", env=env)
                assert applied.returncode == 0, applied.stderr
            if number == sample.revert_after:
                reverted = _hpkg("revert", "--pid", talk.pid, env=env)
                assert reverted.returncode == 0, reverted.stderr
