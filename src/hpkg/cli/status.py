"""`hpkg status --pid PID [--json]`: the packages hpkg has applied to a running process."""

from __future__ import annotations

import click

from hpkg.cli.app import Application
from hpkg.cli.paths import PID


@click.command("status")
@click.option("--pid", type=PID, required=True, help="The running process to inspect.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def command(app: Application, pid: int, as_json: bool) -> None:
    """Show each image of a process that carries hpkg packages: package id, level, and every patched
    function, with whether its patch site still holds hpkg's jump. Stops nothing, changes nothing.

    Exit codes: 0 shown (also when nothing is applied), 6 no such process or permission denied.
    """
    from hpkg.loader.status import process_status

    status = process_status(pid)
    if as_json:
        app.display_json(status.to_json())
        return
    for line in status.lines():
        app.display(line)
