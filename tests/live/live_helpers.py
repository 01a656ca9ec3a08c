"""Helpers for the live loader tests: the real `hpkg` command line, and /proc checks on a target."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

COMMAND_DEADLINE = 120.0  # a safety net against a hang, not a timing assertion


@dataclass(frozen=True)
class Run:
    """One finished `hpkg` invocation."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def hpkg(*args: str | Path) -> Run:
    """Run the real `hpkg` command line in a subprocess."""
    argv = [sys.executable, "-m", "hpkg", *map(str, args)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_DEADLINE)
    return Run(result.returncode, result.stdout, result.stderr)


def thread_fields(pid: int) -> list[dict[str, str]]:
    """The /proc status fields of every thread of a process."""
    fields = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "status").read_text()
        fields.append(dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line))
    return fields


def assert_running_untraced(pid: int) -> None:
    """The process exists, no thread is stopped (T/t) or a zombie, and no thread is traced."""
    for fields in thread_fields(pid):
        assert fields["State"][0] in "RSD", f"thread {fields['Pid']} of {pid} is {fields['State']}"
        assert fields["TracerPid"].strip() == "0", f"thread {fields['Pid']} of {pid} is still traced"


def hpkg_mappings(pid: int) -> list[str]:
    """The lines of /proc/PID/maps that belong to hpkg package memory."""
    return [line for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/memfd:hpkg-" in line]
