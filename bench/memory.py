"""Peak memory of one command, measured from a fresh wrapper process so that no other run counts.

Two figures per run:
- *max RSS*: `getrusage(RUSAGE_CHILDREN).ru_maxrss` of the wrapper once the command was waited for,
  the number `/usr/bin/time -v` prints as "Maximum resident set size". It covers the command's
  descendants too (hpkg forks a child to decode the baseline), but it is the peak of the largest
  single process, not of the process tree: two processes at 1 GB each read 1 GB.
- *tree peak*: the highest sum of PSS (proportional set size, `/proc/PID/smaps_rollup`) over the
  command and all its descendants, sampled every `interval` seconds. PSS splits pages shared after
  a fork between the processes that map them, so the sum is what the tree costs the machine. A
  sample can miss a spike shorter than the time between samples. Reading smaps_rollup walks the
  page tables (0.4 s for a 3 GB process on a loaded machine), so the sampler waits at least four
  times as long as its last sample took: it never takes more than a fifth of one core.

Run as a script (`python bench/memory.py [--interval S] -- ARGV…`) it prints one JSON object; the
bench calls `measure` below, which starts that script, so the bench's own interpreter and
earlier children never enter the figure.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve()
DEFAULT_INTERVAL = 0.05


@dataclass(frozen=True)
class MemoryUse:
    """One run of one command: its peak memory in bytes, exit status and wall seconds."""

    max_rss: int  # the largest single process's peak resident set (ru_maxrss of RUSAGE_CHILDREN)
    tree_peak: int | None  # the highest sampled sum of PSS over the process tree; None: no sample
    samples: int  # how many times the tree was sampled
    returncode: int
    seconds: float


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc/PID/task/TID/children of each of its threads."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(word) for word in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _tree(pid: int) -> list[int]:
    """`pid` and every descendant alive now."""
    pending, seen = [pid], []
    while pending:
        current = pending.pop()
        seen.append(current)
        pending += _children(current)
    return seen


def _pss_kib(pid: int) -> int:
    """The process's proportional set size in KiB; 0 when it is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def run_and_measure(argv: list[str], interval: float = DEFAULT_INTERVAL) -> MemoryUse:
    """Run `argv` (output discarded) to its end and measure it; call only in a fresh process,
    since RUSAGE_CHILDREN covers every child this process has ever waited for."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_kib, samples = 0, 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_kib, samples
        pause = interval
        while not done.wait(pause):
            began = time.perf_counter()
            total = sum(_pss_kib(pid) for pid in _tree(child.pid))
            pause = max(interval, 4 * (time.perf_counter() - began))
            if total:
                peak_kib, samples = max(peak_kib, total), samples + 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    returncode = child.wait()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    # Linux reports ru_maxrss in KiB.
    max_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return MemoryUse(max_rss, peak_kib * 1024 if samples else None, samples, returncode, seconds)


def measure(argv: list[str], interval: float = DEFAULT_INTERVAL) -> MemoryUse:
    """Measure `argv` from a fresh wrapper interpreter (this file run as a script)."""
    wrapper = [sys.executable, "-I", str(SCRIPT), "--interval", str(interval), "--", *argv]
    done = subprocess.run(wrapper, capture_output=True, text=True, check=True)
    return MemoryUse(**json.loads(done.stdout))


def main(argv: list[str]) -> int:
    """`memory.py [--interval S] -- ARGV…`: print the measurement of ARGV as one JSON object."""
    interval = DEFAULT_INTERVAL
    if argv[:1] == ["--interval"]:
        interval, argv = float(argv[1]), argv[2:]
    if argv[:1] != ["--"] or len(argv) < 2:
        print("usage: memory.py [--interval SECONDS] -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    use = run_and_measure(argv[1:], interval)
    print(json.dumps(dataclasses.asdict(use)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
