"""`python -m bench.pause_ab`: the one-call check and the step-by-step check take turns on one process.

No timed assertions: every pause and step is checked to be measured, never compared with a budget.
"""

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_both_checks_are_measured_on_one_process_with_their_steps():
    argv = [sys.executable, "-m", "bench.pause_ab", "--threads", "9", "--rounds", "2", "--json"]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    comparison = json.loads(done.stdout)
    assert comparison["threads"] == 9 and comparison["floor_ms"] > 0
    sides = {(side["mode"], side["what"]): side for side in comparison["sides"]}
    modes = ("one call", "step by step")
    assert set(sides) == {(mode, what) for mode in modes for what in ("apply", "revert")}
    for (mode, _what), side in sides.items():
        assert side["median_ms"] > 0 and side["maximum_ms"] >= side["median_ms"]
        assert side["ratio"] == side["median_ms"] / comparison["floor_ms"]
        names = [name for name, _ms in side["steps"]]
        assert names[:3] == ["interrupt", "wait", "list threads"] and names[-2:] == ["switch", "release"]
        # The one call marks its own steps from inside the helper; the step-by-step check has no "call".
        assert ("call" in names) == (mode == "one call")
        assert {"registers", "maps", "stacks", "check"} <= set(names)


def test_a_bad_thread_count_is_one_error_line():
    argv = [sys.executable, "-m", "bench.pause_ab", "--threads", "0", "--rounds", "1"]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
