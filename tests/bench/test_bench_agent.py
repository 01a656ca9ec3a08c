"""`python -m bench.agent`, a short run: every process started under the agent is reported patched with a
measured exec-to-patched time and then answers the fixed way; the peer rounds, the idle window, the
exec burst and the full pass are measured. No timed assertions: figures are checked to exist."""

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_short_agent_bench_measures_every_figure(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.agent", "--starts", "4", "--peer-starts", "1", "--idle", "1",
            "--json", "--workdir", str(tmp_path / "work")]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(done.stdout)
    assert figures["wrong_answers"] == 0
    latency = figures["exec_to_patched_ms"]
    assert len(latency["server"]["samples"]) == 2 and len(latency["library"]["samples"]) == 2
    assert len(latency["all"]["samples"]) == 4 and all(s > 0 for s in latency["all"]["samples"])
    assert latency["all"]["maximum"] == max(latency["all"]["samples"])
    assert len(figures["fork_to_log_ms"]["all"]["samples"]) == 4
    assert len(figures["peer_fork_to_patched_ms"]["all"]["samples"]) == 1
    assert figures["idle_seconds"] == 1 and figures["idle_cpu_percent"] >= 0
    assert figures["machine_execs_per_second"] >= 0 and figures["cpu_us_per_event"] >= 0
    assert figures["processes"] > 0
    assert figures["full_pass_ms"]["median"] > 0
