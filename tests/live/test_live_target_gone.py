"""A target that dies while hpkg works on it is "target unavailable" (exit 6), not "another build" (exit 4).

Killed mid-apply, a process is a zombie until its parent reaps it: /proc/PID still exists, but its
maps are empty and its memory unreadable, so the build-id lookup finds no baseline image. The process is
killed here at that exact point, with its parent (this test) not reaping it yet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from hpkg.errors import TargetError
from hpkg.formats import read_package
from hpkg.loader.live import baseline_images, open_process
from hpkg.loader.procfs import thread_state

DEADLINE_SECONDS = 30.0  # a safety net for a zombie that never shows, not a timing assertion


def _wait_for_zombie(pid: int) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while thread_state(pid, pid) != "Z":
        assert time.monotonic() < deadline, f"process {pid} did not become a zombie"
        time.sleep(0.01)


def test_a_target_killed_before_the_build_id_lookup_is_target_unavailable(samples, build_package) -> None:
    sample = samples["14-threaded-server"]
    baseline, fixed = sample.binary("baseline", "ready"), sample.binary("fixed", "ready")
    package = read_package(build_package(baseline, fixed, signed=False).read_bytes()).package
    server = subprocess.Popen([str(baseline), "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().startswith("listening on")
        process = open_process(server.pid)
        os.kill(server.pid, signal.SIGKILL)
        _wait_for_zombie(server.pid)
        with pytest.raises(TargetError, match="exited while hpkg was working on it"), process:
            baseline_images(process, package)
    finally:
        server.kill()
        server.wait()
