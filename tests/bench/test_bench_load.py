"""`python -m bench --pair load --cycles N`: apply/revert cycles under a request stream, every answer
the baseline's or the fix's, no cycle failed. (`bench/RESULTS.md` has the 1,000-cycle run.)

No timed assertions: only counts are checked.
"""

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CYCLES = 20


def test_load_cycles_give_no_wrong_answer_and_no_failed_cycle(tmp_path: Path) -> None:
    selected = ("--pair", "load", "--cycles", str(CYCLES), "--json", "--no-download")
    argv = [sys.executable, "-m", "bench", *selected, "--workdir", str(tmp_path)]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    document = json.loads(done.stdout)
    assert document["pairs"] == [] and document["pause"] == []  # only the load was selected
    (load,) = document["load"]
    assert load["error"] is None and load["cycles"] == CYCLES and load["threads"] == 9
    assert load["failed_cycles"] == 0, load["failures"]
    assert load["wrong_answers"] == 0 and load["failed_requests"] == 0
    assert load["requests"] > 0 and load["fixed_answers"] > 0  # the fix really served requests
