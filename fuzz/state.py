"""The resumable state of a campaign: seed, inputs done, counts, the slowest inputs, crash classes.

Input N is generated from (seed, N) alone, so a run that stops anywhere continues at `next_input`
with the same inputs it would have made. The file is rewritten atomically every few seconds.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SLOWEST_KEPT = 5


@dataclass
class CrashClass:
    """One crash class: how often, the first input that showed it, and its minimised reproducer."""

    count: int
    first_input: int
    target: str
    seed: str
    detail: str
    reproducer: dict[str, Any] | None = None  # filled by minimisation


@dataclass
class State:
    """Everything a campaign needs to continue and to be reported."""

    seed: int
    next_input: int = 0
    first_input: int = 0  # a campaign continued from a lost state starts here (`--first-input`)
    seconds: float = 0.0  # wall-clock time spent running inputs, over every session
    sessions: int = 0
    by_target: dict[str, int] = field(default_factory=dict)
    by_ending: dict[str, int] = field(default_factory=dict)  # "exit 3", "signal SIGSEGV", "timeout"
    by_target_ending: dict[str, dict[str, int]] = field(default_factory=dict)
    slowest: list[dict[str, Any]] = field(default_factory=list)  # seconds, input, target, ending
    peak_rss_kib: int = 0
    peak_rss_input: int = -1
    classes: dict[str, CrashClass] = field(default_factory=dict)

    @staticmethod
    def load(path: Path, seed: int, first_input: int = 0) -> State:
        """The state at `path`, or a fresh one for `seed` starting at `first_input`; a different seed
        starts afresh."""
        if path.exists():
            raw = json.loads(path.read_text())
            if raw.get("seed") == seed:
                raw["classes"] = {k: CrashClass(**v) for k, v in raw.get("classes", {}).items()}
                return State(**raw)
        return State(seed=seed, next_input=first_input, first_input=first_input)

    @property
    def inputs_run(self) -> int:
        """Inputs this state has counted (fewer than `next_input` when it began at `first_input`)."""
        return self.next_input - self.first_input

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")
        os.replace(temporary, path)

    def count(self, index: int, target: str, ending: str, seconds: float, max_rss_kib: int) -> None:
        """Add one input's outcome to the counts."""
        self.by_target[target] = self.by_target.get(target, 0) + 1
        self.by_ending[ending] = self.by_ending.get(ending, 0) + 1
        per = self.by_target_ending.setdefault(target, {})
        per[ending] = per.get(ending, 0) + 1
        if len(self.slowest) < SLOWEST_KEPT or seconds > self.slowest[-1]["seconds"]:
            entry = {"seconds": round(seconds, 3), "input": index, "target": target, "ending": ending}
            self.slowest = sorted([*self.slowest, entry], key=lambda e: -e["seconds"])[:SLOWEST_KEPT]
        if max_rss_kib > self.peak_rss_kib:
            self.peak_rss_kib, self.peak_rss_input = max_rss_kib, index
