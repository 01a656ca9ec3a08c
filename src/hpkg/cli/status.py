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

    A record written by an older hpkg is shown marked unauthenticated; a record that fails
    authentication or validation (changed inside the process) is listed as refused and not interpreted.

    Exit codes: 0 shown (also when nothing is applied), 4 shown, but a record was refused,
    6 no such process or permission denied.
    """
    from hpkg.errors import RefusedError
    from hpkg.loader.status import process_status

    status = process_status(pid)
    if as_json:
        app.display_json(status.to_json())
    else:
        for line in status.lines():
            app.display(line)
    if status.refused:
        count = len(status.refused)
        records = f"{count} hpkg record{'s' * (count > 1)}"
        raise RefusedError(f"process {pid} carries {records} that hpkg cannot trust (listed above)")
