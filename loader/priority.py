"""The loader's own scheduling while it holds a target's threads: first in line, so the floor stays low.

Every thread the loader interrupts or detaches is woken, and under the fair scheduler each woken thread
may preempt the loader, which then waits its turn among all of them: with 256 threads, the stop and
resume of every thread took twice as long (measured: 11.9 ms against 5.0 ms); with 1,024 threads that
each run every millisecond, seizing them took 10 s, the loader getting a 1/1,025 share of the CPU.
So while it holds threads (seize to release) the loader thread runs SCHED_FIFO at the lowest real-time
priority, and back at its own policy afterwards — except while it waits for interrupted threads to
reach their stops: then it yields to them (`sharing`), so that its own CPU brings them there too
(with 17 threads on 2 CPUs: 0.27 ms for the whole stop and resume, against 0.37 ms staying first).
Without the privilege (no CAP_SYS_NICE, a container that forbids it) nothing changes. The kernel's
real-time throttling (sched_rt_runtime_us) still leaves the other tasks their share should the loader
ever spin, and a real-time loader waiting on its own (an injected call) sleeps instead of yielding (a
real-time task's sched_yield gives way to no fair-scheduled task).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

# How long the loader shares the CPU while threads reach their stops, before it is first in line again.
SHARING_BUDGET = 0.002
_state = threading.local()  # per loader thread: the agent applies in several at once


@contextlib.contextmanager
def first_in_line() -> Iterator[bool]:
    """Run the calling thread SCHED_FIFO (priority 1) for the duration, when allowed; yields whether so."""
    try:
        previous = (os.sched_getscheduler(0), os.sched_getparam(0))
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:  # no privilege: the fair scheduler it is
        yield False
        return
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield True
    finally:
        _state.depth -= 1
        try:
            os.sched_setscheduler(0, previous[0], previous[1])
        except OSError:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def real_time() -> bool:
    """Whether a hold has put the loader first in line (then a wait sleeps instead of yielding)."""
    return getattr(_state, "depth", 0) > 0


@contextlib.contextmanager
def sharing(budget: float = SHARING_BUDGET) -> Iterator[None]:
    """Back to the fair scheduler while waiting for woken threads to reach their stops (a yield then
    lets them use this CPU too), first in line again afterwards — or as soon as `budget` seconds have
    passed (`share_expired`): on a CPU saturated by the target's own threads, a yielding loader would
    wait its turn behind all of them at every poll (1,024 busy threads: minutes)."""
    if not real_time():
        yield
        return
    depth = _state.depth
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    _state.depth = 0
    _state.share_until = time.monotonic() + budget
    try:
        yield
    finally:
        _state.share_until = 0.0
        if _state.depth == 0:  # not already first in line again (share_expired)
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        _state.depth = depth


def share_expired() -> None:
    """Inside `sharing`: first in line again once its budget is spent (a wait then sleeps, not yields)."""
    until = getattr(_state, "share_until", 0.0)
    if until and time.monotonic() > until:
        _state.share_until = 0.0
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        _state.depth = 1
