"""Ctrl-C while threads of a target are held: take it at the next safe point, never in the middle.

Python raises KeyboardInterrupt between any two bytecodes. Raised while an injected system call is
in flight, the clean-up that follows would inject again at a thread that is still running the
first one and corrupt it (seen: the target died of SIGSEGV). While threads are held, SIGINT is
therefore only recorded; it is raised at the next safe point (`raise_if_interrupted`) or when the
outermost hold ends, once every thread is consistent and detached. A hold is bounded (attach,
injection and stop timeouts), so Ctrl-C is never lost. `apply` and `revert` hold for their whole
run: after the switch (the commit) nothing may be undone, so a late Ctrl-C ends the command only
once the target is fully switched (exit 130, as the README says).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_depth = 0
_pending = False


def _record(signum: int, frame: FrameType | None) -> None:
    global _pending
    _pending = True


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT back for the duration; raise KeyboardInterrupt afterwards if it arrived meanwhile.

    Nested holds defer to the outermost one. Outside the main thread (where Python cannot install
    handlers) nothing changes.
    """
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = None
    if _depth == 0:
        previous = signal.getsignal(signal.SIGINT)
        if previous is not signal.SIG_IGN:  # an ignored SIGINT (a background job) stays ignored
            signal.signal(signal.SIGINT, _record)
        _pending = False
    _depth += 1
    try:
        yield
    except BaseException:
        _leave(previous)
        raise  # an exception already ends the command; a pending Ctrl-C adds nothing to it
    _leave(previous)
    if _depth == 0 and _pending:
        _pending = False
        raise KeyboardInterrupt


def _leave(previous: object) -> None:
    global _depth
    _depth -= 1
    if _depth == 0 and previous is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, previous)  # type: ignore[arg-type]


def raise_if_interrupted() -> None:
    """A safe point inside a hold: raise the Ctrl-C that arrived meanwhile, if any.

    Call it only where the target is consistent and an exception undoes everything done so far
    (no thread held, nothing half-written).
    """
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt


def pending() -> bool:
    """Whether a Ctrl-C arrived during the current hold and was not raised yet (read from any thread:
    a worker of a machine-wide run starts no new target once it is set)."""
    return _pending
