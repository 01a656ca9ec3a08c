"""bench/memory.py on real processes: a command that touches a known amount of memory, and one whose
forked child does, so that both figures (largest process, whole tree) are checked against what the
processes really held. No timed assertions: the commands hold their memory long enough to be sampled
many times over, and the bounds are memory sizes, never durations."""

import subprocess
import sys

from bench.memory import SCRIPT, measure

MIB = 1 << 20

# Touches every page of N MiB (bytearray of ones: the pages are really written) and holds it.
HOLD = """
import sys, time
held = bytearray(b"\\x01") * ({mib} << 20)
time.sleep(1.5)
sys.exit({code})
"""

# The parent holds 40 MiB, forks, and its child touches 120 MiB of its own while both live.
FORKED = """
import os, time
parent = bytearray(b"\\x01") * (40 << 20)
pid = os.fork()
if pid == 0:
    child = bytearray(b"\\x02") * (120 << 20)
    time.sleep(1.5)
    os._exit(0)
os.waitpid(pid, 0)
"""


def python(source: str) -> list[str]:
    return [sys.executable, "-c", source]


def test_max_rss_and_tree_peak_cover_the_memory_a_command_touched():
    used = measure(python(HOLD.format(mib=100, code=0)), interval=0.02)
    assert used.returncode == 0 and used.seconds > 0
    assert 100 * MIB <= used.max_rss < 200 * MIB
    assert used.samples > 0 and used.tree_peak is not None
    assert 90 * MIB <= used.tree_peak <= used.max_rss + 8 * MIB


def test_a_forked_child_counts_alone_in_max_rss_and_with_its_parent_in_the_tree():
    used = measure(python(FORKED), interval=0.02)
    assert used.returncode == 0
    # The child's resident set holds its own 120 MiB plus the 40 MiB it shares with its parent.
    assert 160 * MIB <= used.max_rss < 260 * MIB
    # PSS counts the shared 40 MiB once across both processes: the tree held about 160 MiB.
    assert used.tree_peak is not None and 155 * MIB <= used.tree_peak < 260 * MIB


def test_the_exit_status_of_the_command_is_reported():
    used = measure(python(HOLD.format(mib=1, code=3)), interval=0.02)
    assert used.returncode == 3


def test_the_wrapper_refuses_a_command_line_without_a_separator():
    done = subprocess.run([sys.executable, "-I", str(SCRIPT), "true"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage:" in done.stderr
