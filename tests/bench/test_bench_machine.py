"""`python -m bench --pair machine`: `apply --all` beside the loops it replaces, on servers of a build of
the bench's own. The harness runs here on 3 servers and one round, its `verify --pid` loop over them
alone; every apply is checked to have reached exactly those servers. No timed assertions: every
figure is only checked to be there."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.machine import run_machine


def test_machine_wide_rounds_reach_exactly_the_servers_and_report_each_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPKG_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HPKG_RUN_DIR", str(tmp_path / "run"))
    (result,) = run_machine(tmp_path, rounds=1, processes=3, verify_every_pid=False)
    assert result.error is None, result.error
    assert (result.processes, result.machine_processes, result.rounds) == (3, 3, 1)
    for summary in (result.apply_all_s, result.apply_all_one_job_s, result.apply_pid_loop_s,
                    result.reapply_all_s, result.status_s, result.scan_s):  # fmt: skip
        assert summary is not None and summary.median > 0
    assert result.verify_loop_s is not None and result.verify_loop_s > 0
    # One pause per server and apply (the timed --all round and the one before the re-runs).
    assert result.pause_ms is not None and len(result.pause_ms.samples) == 6
    assert result.pause_one_job_ms is not None and len(result.pause_one_job_ms.samples) == 3
