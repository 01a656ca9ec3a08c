"""Classify what one input did, and name the crash class of every outcome that breaks the contract.

The contract (README "Exit codes"): any input ends in a documented exit code, and a failure is one
`error: …` line (a refusal may add `  - reason` lines), never "internal error" (exit 1), a traceback,
a signal, a hang, a memory blow-up or a Python warning on stderr.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

from fuzz.worker import RawOutcome

# Exit codes an input may legitimately end with: ok, invalid input, refused, no change, target (file)
# unavailable. 1 (internal) never; 2 (usage) means the harness itself built a wrong command line.
EXPECTED_EXITS = frozenset({0, 3, 4, 5, 6})
_WARNING = re.compile(r"\b(\w*Warning): ")
_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>\S+)$', re.MULTILINE)
_LAST_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::|$)", re.MULTILINE)


@dataclass(frozen=True)
class Outcome:
    """One input's result: how it ended (for the counts) and its crash class, or None when fine."""

    ended: str  # "exit 3", "signal SIGSEGV", "timeout"
    crash: str | None
    detail: str  # the line that shows the problem


def _crash_site(trace: str) -> tuple[str, str]:
    """(exception type, innermost frame inside hpkg) of a traceback; the frame outside hpkg if none."""
    frames = list(_FRAME.finditer(trace))
    ours = [f for f in frames if "/site-packages/" not in f["file"] and "/lib/python" not in f["file"]]
    frame = (ours or frames or [None])[-1]
    where = "?" if frame is None else f"{_short(frame['file'])}:{frame['function']}"
    types = [m["type"] for m in _LAST_LINE.finditer(trace) if m["type"] != "Traceback"]
    return (types[-1] if types else "?"), where


def _short(path: str) -> str:
    """A repository-relative path (builder/image.py), so classes match across checkouts."""
    for root in ("/builder/", "/loader/", "/formats/", "/elf/", "/arch/", "/src/hpkg/"):
        if root in path:
            return root.strip("/") + "/" + path.split(root, 1)[1]
    return path.rsplit("/", 1)[-1]


def classify(raw: RawOutcome) -> Outcome:
    """The outcome's counts bucket and crash class."""
    stderr = raw.stderr
    if raw.timed_out:
        return Outcome("timeout", "timeout", f"killed after {raw.seconds:.1f} s")
    if raw.signal is not None:
        name = signal.Signals(raw.signal).name
        if raw.signal == signal.SIGXCPU:
            return Outcome(f"signal {name}", "cpu-limit", "CPU-time limit reached")
        if "bad_alloc" in stderr:
            return Outcome(f"signal {name}", "memory-limit: std::bad_alloc", stderr.strip()[-200:])
        return Outcome(f"signal {name}", f"signal: {name}", stderr.strip()[-200:])
    ended = f"exit {raw.exit_code}"
    if raw.trace:
        kind, where = _crash_site(raw.trace)
        crash = "memory-limit: MemoryError" if kind == "MemoryError" else f"internal error: {kind} at {where}"
        return Outcome(ended, crash, raw.trace.strip().splitlines()[-1][:300])
    if raw.exit_code not in EXPECTED_EXITS:
        return Outcome(ended, f"exit {raw.exit_code}", stderr.strip()[:300])
    if warning := _WARNING.search(stderr):
        line = next(x for x in stderr.splitlines() if warning[1] in x)
        return Outcome(ended, f"python warning: {warning[1]}", line[:300])
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if raw.exit_code != 0 and len(errors) != 1:
        return Outcome(ended, f"{len(errors)} error lines at exit {raw.exit_code}", stderr.strip()[:300])
    if "Traceback" in stderr or "internal error" in stderr:
        return Outcome(ended, "traceback on stderr", stderr.strip()[:300])
    return Outcome(ended, None, errors[0][:300] if errors else "")
