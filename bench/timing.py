"""Wall-clock medians of several commands measured in turns, so machine noise hits them alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """The median and every sample, in seconds, of one measured task."""

    median: float
    samples: tuple[float, ...]


def interleaved_medians(tasks: Mapping[str, Callable[[], object]], runs: int) -> dict[str, Timing]:
    """Run every task `runs` times, one round at a time, rotating the order each round."""
    names = list(tasks)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(runs):
        shift = round_index % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            tasks[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(s), tuple(s)) for name, s in samples.items()}
