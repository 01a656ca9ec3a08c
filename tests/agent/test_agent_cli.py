"""The new commands' usage errors and refusals: one `error:` line and the documented exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from live_helpers import hpkg


@pytest.mark.parametrize(
    "args",
    [
        ("agent", "--rescan", "0"),
        ("uninstall", ".hidden"),
        ("install", "x.hpkg", "--key", "k.pub", "--allow-unsigned"),
        ("install", "x.hpkg", "--store", ""),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(args: tuple[str, ...], store: Path) -> None:
    run = hpkg(*args)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1 and run.stdout == ""


def test_an_agent_that_cannot_subscribe_to_process_events_says_why_and_exits_6(store: Path) -> None:
    """Without CAP_NET_ADMIN (here: dropped from the bounding set) the kernel refuses the subscription."""
    argv = ["setpriv", "--bounding-set", "-net_admin", sys.executable, "-m", "hpkg", "agent"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert run.returncode == 6
    assert run.stderr == "error: cannot subscribe to process events: Operation not permitted (needs root:" \
        " CAP_NET_ADMIN)\n"
    assert run.stdout == ""  # it never started: nothing to report stopped


def test_a_store_that_is_a_file_is_a_usage_error_as_an_option_and_refused_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "file"
    plain.write_text("")
    option = hpkg("status", "--store", plain)
    assert option.returncode == 2 and "is a file" in option.stderr, option.stderr
    monkeypatch.setenv("HPKG_STORE", str(plain))
    for args in (("status", "--store"), ("uninstall", "0123"), ("agent",)):
        run = hpkg(*args)
        assert run.returncode == 6 and "is not a directory" in run.stderr, run.stderr
