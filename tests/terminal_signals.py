"""Children of a test that takes Ctrl-C as at a terminal, whatever the test run was started from."""

from __future__ import annotations

import signal


def sigint_as_at_a_terminal() -> None:
    """`preexec_fn` of a child a test sends SIGINT to: SIGINT back to its default action.

    A job started in the background of a non-interactive shell (`make test > log &`, some CI runners)
    inherits SIGINT ignored (POSIX), and so does every process it starts: the interpreter then keeps it
    ignored, and so does hpkg (an ignored SIGINT stays ignored, as a background job's must), so a
    Ctrl-C test would send a signal nobody takes. A terminal's foreground job has it at its default.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sigint_ignored() -> None:
    """`preexec_fn` of a child started as a background job of a non-interactive shell is: SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
