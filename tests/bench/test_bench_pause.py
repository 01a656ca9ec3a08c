"""`python -m bench --pair pause --quick`: a live apply under a request stream loses no request and
gives only baseline-or-fixed answers, while a restart of the same server drops every connection.

No timed assertions: pauses and restart times are checked to be measured, never compared with a budget.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVERS = {"14-threaded-server": 9, "stream_server (16 workers)": 17}  # threads: workers + main


@pytest.fixture(scope="module")
def pause(tmp_path_factory) -> dict[str, dict]:
    workdir = tmp_path_factory.mktemp("bench-pause")
    selected = ("--quick", "--pair", "pause", "--json", "--no-download")
    argv = [sys.executable, "-m", "bench", *selected, "--workdir", str(workdir)]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    document = json.loads(done.stdout)
    assert document["pairs"] == []  # only the pause section was selected
    curve = {(p["threads"], p["period_ms"]): p for p in document["pause_curve"]}
    return {**{result["name"]: result for result in document["pause"]}, "curve": curve}


def test_both_servers_were_measured_with_all_their_threads(pause):
    assert set(pause) - {"curve"} == set(SERVERS)
    for name, result in _servers(pause).items():
        assert result["error"] is None, name
        assert result["threads"] == SERVERS[name]
        assert result["rounds"] == 2 and result["clients"] == 4


def _servers(pause: dict) -> dict:
    return {name: result for name, result in pause.items() if name != "curve"}


def test_every_round_has_a_measured_pause_floor_and_restart(pause):
    for result in _servers(pause).values():
        # Two floors a round: before the apply and before the revert.
        assert len(result["floor_ms"]["samples"]) == 4 and all(s > 0 for s in result["floor_ms"]["samples"])
        for key in ("apply_pause_ms", "revert_pause_ms", "apply_wall_ms", "restart_ms"):
            summary = result[key]
            assert len(summary["samples"]) == 2 and all(s > 0 for s in summary["samples"]), key
            assert summary["maximum"] == max(summary["samples"])
        # The pause is the part of the apply with every thread stopped: never longer than the apply.
        pauses, walls = result["apply_pause_ms"]["samples"], result["apply_wall_ms"]["samples"]
        assert all(p <= w for p, w in zip(pauses, walls, strict=True))


def test_the_quick_curve_measures_floor_apply_and_revert_at_17_and_64_threads(pause):
    assert set(pause["curve"]) == {(17, 1), (64, 1)}
    for point in pause["curve"].values():
        assert point["error"] is None
        assert len(point["floor_ms"]["samples"]) == 4 and all(s > 0 for s in point["floor_ms"]["samples"])
        applied = len(point["apply_pause_ms"]["samples"])
        assert applied + point["apply_refused"] == 2 and len(point["apply_attempts"]) == 2
        # Over every attempt, the stopped time is at least the successful stop's pause.
        if point["apply_refused"] == 0:
            stopped, pauses = point["apply_stopped_ms"]["samples"], point["apply_pause_ms"]["samples"]
            assert all(s >= p for s, p in zip(stopped, pauses, strict=True))


def test_a_live_patch_loses_no_request_and_the_fix_answers_while_applied(pause):
    for name, result in _servers(pause).items():
        assert result["live_failed"] == [0, 0], name
        assert result["live_wrong"] == 0, name
        assert all(n > 0 for n in result["fixed_answers_while_patched"]), name  # 414 from the fix
        # The request count lives in the baseline's memory, which the patch keeps: it goes on.
        assert result["counter_kept_live"] == [True, True], name
        assert result["requests_answered"] > 0


def test_a_restart_drops_every_clients_connection_and_the_servers_state(pause):
    for name, result in _servers(pause).items():
        # Each client's open connection dies with the process: its next request fails at least once.
        assert all(failed >= result["clients"] for failed in result["restart_failed"]), name
        # The request counter lives in the process: a restarted server counts from the start again.
        assert all(0 < number < result["requests_answered"] for number in result["counter_after_restart"])


def test_the_curve_says_where_the_pause_goes_step_by_step(pause):
    """The breakdown names the window's steps in order: the floor's stop and release around the apply's
    and revert's own work (maps, stacks, check, switch), each measured."""
    for point in pause["curve"].values():
        floor = [name for name, _ms in point["floor_steps"]]
        assert floor == ["interrupt", "wait", "list threads", "release"]
        applied = [name for name, _ms in point["apply_steps"]]
        assert applied[:3] == floor[:3] and applied[-1] == "release"
        assert {"maps", "stacks", "check", "switch"} <= set(applied)
        assert all(ms >= 0 for _name, ms in point["apply_steps"] + point["revert_steps"])
