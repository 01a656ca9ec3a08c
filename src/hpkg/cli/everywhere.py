"""The output of the machine-wide verbs (`apply --all`, `revert --all`): a line per process, a summary.

Shared by `apply` and `revert`: in text, each process's line is printed as soon as its outcome is known
(a long run shows progress), then the summary; with `--json`, one document at the end. A process that
refused makes the command exit 4 after everything was printed; one that went away is not a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from hpkg.cli.app import Application
from hpkg.errors import RefusedError

if TYPE_CHECKING:
    from hpkg.loader.machine import MachineResult, ProcessOutcome


def report_everywhere(
    app: Application,
    run: Callable[[Callable[[ProcessOutcome], None] | None], MachineResult],
    as_json: bool,
    what: str,
) -> None:
    """Run a machine-wide verb and print it; RefusedError (exit 4) when some process refused `what`."""
    result = run(None if as_json else lambda outcome: app.display(outcome.line()))
    if as_json:
        app.display_json(result.to_json())
    else:
        app.display(result.summary())
    refused = result.refused
    if refused:
        total = len(result.outcomes)
        processes = f"{total} process{'es' * (total != 1)}"
        raise RefusedError(f"{len(refused)} of {processes} refused {what} (listed above)")
