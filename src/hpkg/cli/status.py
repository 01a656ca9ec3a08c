"""`hpkg status [--pid PID] [--json]`: the packages hpkg has applied to a process, or to every process."""

from __future__ import annotations

import click

from hpkg.cli.app import Application
from hpkg.cli.paths import PID


@click.command("status")
@click.option("--pid", type=PID, help="The running process to inspect (default: every process).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def command(app: Application, pid: int | None, as_json: bool) -> None:
    """Show each image of a process that carries hpkg packages: package id, level, and every patched
    function, with whether its patch site still holds hpkg's jump. Without --pid, every process of
    the machine that carries one: a line per package (pid, command, image, package id, level, state,
    sites). Stops nothing, changes nothing.

    A record written by an older hpkg is shown marked unauthenticated; a record that fails
    authentication or validation (changed inside the process) is listed as refused and not interpreted.

    Exit codes: 0 shown (also when nothing is applied), 4 shown, but a record was refused,
    6 no such process or permission denied (--pid).
    """
    from hpkg.errors import RefusedError
    from hpkg.loader.status import machine_status, process_status

    status = process_status(pid) if pid is not None else machine_status()
    if as_json:
        app.display_json(status.to_json())
    else:
        for line in status.lines():
            app.display(line)
    if status.refused:
        count = len(status.refused)
        records = f"{count} hpkg record{'s' * (count > 1)}"
        where = f"process {pid} carries" if pid is not None else "processes carry"
        raise RefusedError(f"{where} {records} that hpkg cannot trust (listed above)")
