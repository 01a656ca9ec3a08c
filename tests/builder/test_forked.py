"""Forked children of the diff (`builder/forked.run_forked`): one at a time, in the order given."""

from __future__ import annotations

import os
from pathlib import Path

from hpkg.builder.forked import run_forked


def _logging_job(log: Path, number: int):
    """A job that notes its start and end in `log` (appended whole: O_APPEND) and returns its number."""

    def note(text: str) -> None:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{text}\n".encode())
        finally:
            os.close(fd)

    def job(report) -> int:
        note(f"start {number}")
        report(1)
        note(f"end {number}")
        return number * 10

    return job


def test_children_one_at_a_time_run_in_the_order_given_each_after_the_one_before(tmp_path):
    log = tmp_path / "log"
    counted = []
    results = run_forked([_logging_job(log, n) for n in range(4)], concurrent=False, progress=counted.append)
    assert results == [0, 10, 20, 30]
    assert log.read_text().split("\n")[:-1] == [f"{what} {n}" for n in range(4) for what in ("start", "end")]
    assert sum(counted) == 4


def test_concurrent_children_all_run_and_results_keep_the_order_given(tmp_path):
    log = tmp_path / "log"
    results = run_forked([_logging_job(log, n) for n in range(3)], concurrent=True)
    assert results == [0, 10, 20]
    assert sorted(log.read_text().split("\n")[:-1]) == sorted(
        f"{what} {n}" for n in range(3) for what in ("start", "end")
    )
