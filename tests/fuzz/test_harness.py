"""`python -m fuzz` really runs: forked inputs against the built samples, counted, saved and resumed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from fuzz.corpus import REPO_ROOT

TIMEOUT = 600  # seconds: a safety net, not a timing assertion


def _fuzz(*argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "fuzz", *argv]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=TIMEOUT)


def test_a_campaign_counts_every_input_and_resumes_where_it_stopped(tmp_path: Path) -> None:
    state, cases = tmp_path / "state.json", tmp_path / "cases.json"
    common = ("--seed", "7", "--state", str(state), "--cases", str(cases))
    first = _fuzz(*common, "--inputs", "30")
    assert first.returncode == 0, first.stderr
    assert json.loads(state.read_text())["next_input"] == 30
    second = _fuzz(*common, "--inputs", "10")
    assert second.returncode == 0, second.stderr
    saved = json.loads(state.read_text())
    assert saved["next_input"] == 40 and saved["sessions"] == 2
    assert sum(saved["by_ending"].values()) == 40 == sum(saved["by_target"].values())
    assert saved["peak_rss_kib"] > 0 and len(saved["slowest"]) == 5
    report = _fuzz(*common, "--report")
    assert report.returncode == 0 and "40 inputs" in report.stdout, report.stderr


def test_a_campaign_whose_state_was_lost_continues_from_the_first_input_given(tmp_path: Path) -> None:
    state, cases = tmp_path / "state.json", tmp_path / "cases.json"
    common = ("--seed", "7", "--state", str(state), "--cases", str(cases), "--first-input", "500")
    run = _fuzz(*common, "--inputs", "6")
    assert run.returncode == 0, run.stderr
    saved = json.loads(state.read_text())
    assert saved["first_input"] == 500 and saved["next_input"] == 506
    assert sum(saved["by_target"].values()) == 6
    assert {s["input"] for s in saved["slowest"]} <= set(range(500, 506))
    report = _fuzz(*common, "--report")
    assert report.returncode == 0 and "6 inputs (inputs 500 to 505)" in report.stdout, report.stderr


def test_stopping_a_campaign_with_pkill_does_not_count_the_child_it_also_killed(tmp_path: Path) -> None:
    state, cases = tmp_path / "state.json", tmp_path / "cases.json"
    command = [sys.executable, "-m", "fuzz", "--seed", "7", "--state", str(state), "--cases", str(cases)]
    campaign = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        # A forked child has its parent's command line: `pkill -f` signals the input being run too.
        subprocess.run(["pkill", "-TERM", "-f", str(state)], check=False)
        _, stderr = campaign.communicate(timeout=TIMEOUT)
    finally:
        campaign.kill()
    assert campaign.returncode == 0, stderr
    saved = json.loads(state.read_text())
    assert "signal SIGTERM" not in saved["by_ending"] and saved["classes"] == {}
    assert not cases.exists()
