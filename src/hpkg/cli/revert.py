"""`hpkg revert --pid PID [--package ID]`: take hpkg packages out of a running process again."""

from __future__ import annotations

import click

from hpkg.cli.app import Application
from hpkg.cli.paths import PID, TIMEOUT


@click.command("revert")
@click.option("--pid", type=PID, required=True, help="The running process to revert.")
@click.option("--package", "package_id", metavar="ID", help="Revert only the image carrying this package.")
@click.option(
    "--timeout", type=TIMEOUT, default=5.0, show_default=True,
    help="Seconds to wait for a moment no thread is inside the package's code.",
)
@click.option(
    "--allow-unauthenticated", is_flag=True,
    help="Also revert records an older hpkg wrote without a seal (sites still checked against the image).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def command(
    app: Application,
    pid: int,
    package_id: str | None,
    timeout: float,
    allow_unauthenticated: bool,
    as_json: bool,
) -> None:
    """Restore the original bytes at every patch site and free the package memory, after the same
    safety check as apply (no thread inside, or returning into, the package's code). Revert goes back
    to the baseline: every level applied to that image is taken out, a lower one is not re-instated.

    Revert writes only what a record sealed by this host's hpkg says, at function entries of the image:
    a record changed inside the process is refused, and one written by an older hpkg (no seal) needs
    --allow-unauthenticated.

    Exit codes: 0 reverted, 4 refused (nothing applied, sites changed by someone else, unsafe now, a
    record that fails authentication or is unauthenticated), 6 no such process or permission denied.
    """
    from hpkg.loader.revert import revert_process

    result = revert_process(pid, package_id, timeout, allow_unauthenticated)
    if as_json:
        app.display_json(result.to_json())
        return
    for line in result.lines():
        app.display(line)
