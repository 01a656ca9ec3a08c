"""`hpkg revert --pid PID | --all [--package ID]`: take hpkg packages out of running processes again."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from hpkg.cli.app import Application
from hpkg.cli.paths import JOBS, PID, TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Callable

    from hpkg.loader.machine import MachineResult, ProcessOutcome


@click.command("revert")
@click.option("--pid", type=PID, help="The running process to revert.")
@click.option("--all", "everywhere", is_flag=True, help="Revert in every process carrying an hpkg package.")
@click.option("--package", "package_id", metavar="ID", help="Revert only the image carrying this package.")
@click.option("--jobs", type=JOBS, help="With --all: processes reverted at once  [default: 4].")
@click.option(
    "--timeout", type=TIMEOUT, default=5.0, show_default=True,
    help="Seconds to wait (per process) for a moment no thread is inside the package's code.",
)
@click.option(
    "--allow-unauthenticated", is_flag=True,
    help="Also revert records an older hpkg wrote without a seal (sites still checked against the image).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def command(
    app: Application,
    pid: int | None,
    everywhere: bool,
    package_id: str | None,
    jobs: int | None,
    timeout: float,
    allow_unauthenticated: bool,
    as_json: bool,
) -> None:
    """Restore the original bytes at every patch site and free the package memory, after the same
    safety check as apply (no thread inside, or returning into, the package's code). Revert goes back
    to the baseline: every level applied to that image is taken out, a lower one is not re-instated.
    With --all, every process carrying an hpkg package (with --package, that package), each on its own:
    one line per process (pid, command, image, outcome, reason, pause), then a summary.

    Reverting is idempotent: a process with nothing (or not that package) applied is reported "not
    applied" / "nothing to revert" (changed: false in --json) and counts as success.

    Revert writes only what a record sealed by this host's hpkg says, at function entries of the image:
    a record changed inside the process is refused, and one written by an older hpkg (no seal) needs
    --allow-unauthenticated (not with --all: name each such process with --pid).

    Exit codes: 0 reverted or nothing to revert (--all: in every process; one that exited meanwhile is
    reported gone), 4 refused (sites changed by someone else, unsafe now, a record that fails
    authentication or is unauthenticated; --all: some process refused, the others are done), 6 no such
    process or permission denied.
    """
    if (pid is None) == (not everywhere):
        raise click.UsageError("name the processes: --pid PID, or --all")
    if jobs is not None and not everywhere:
        raise click.UsageError("--jobs is for --all")
    if pid is None:
        if allow_unauthenticated:
            raise click.UsageError("--allow-unauthenticated is for --pid: name each such process")
        _revert_everywhere(app, package_id, jobs, timeout, as_json)
        return
    from hpkg.loader.revert import revert_process

    result = revert_process(pid, package_id, timeout, allow_unauthenticated)
    if as_json:
        app.display_json(result.to_json())
        return
    for line in result.lines():
        app.display(line)


def _revert_everywhere(
    app: Application, package_id: str | None, jobs: int | None, timeout: float, as_json: bool
) -> None:
    """The --all branch: every process with hpkg package memory, each on its own (loader/machine.py)."""
    from hpkg.cli.everywhere import report_everywhere
    from hpkg.loader.machine import DEFAULT_JOBS, revert_everywhere

    def run(report: Callable[[ProcessOutcome], None] | None) -> MachineResult:
        return revert_everywhere(package_id, timeout, jobs or DEFAULT_JOBS, report=report)

    report_everywhere(app, run, as_json, "the revert")
