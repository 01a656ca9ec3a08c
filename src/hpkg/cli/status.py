"""`hpkg status [--pid PID] [--store [DIR]] [--json]`: the packages hpkg has applied to a process, or to
every process; with --store, also every process still running a baseline the store has a fix for."""

from __future__ import annotations

import click

from hpkg.cli.app import Application
from hpkg.cli.paths import PID, STORE_OR_DEFAULT


@click.command("status")
@click.option("--pid", type=PID, help="The running process to inspect (default: every process).")
@click.option(
    "--store", type=STORE_OR_DEFAULT, is_flag=False, flag_value="", default=None,
    help="Also list the processes exposed: running a baseline for which this store (default: $HPKG_STORE,"
    " else /var/lib/hpkg) has a package, without it applied.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def command(app: Application, pid: int | None, store: str | None, as_json: bool) -> None:
    """Show each image of a process that carries hpkg packages: package id, level, and every patched
    function, with whether its patch site still holds hpkg's jump. Without --pid, every process of
    the machine that carries one: a line per package (pid, command, image, package id, level, state,
    sites). Stops nothing, changes nothing.

    With --store, every process (or the --pid one) that maps a baseline for which a package is
    installed in the store, and does not carry its highest installed level: "exposed" (pid, command,
    image, build-id, the installed packages, the level applied if a lower one is).

    A record written by an older hpkg is shown marked unauthenticated; a record that fails
    authentication or validation (changed inside the process) is listed as refused and not interpreted.

    Exit codes: 0 shown (also when nothing is applied, or something is exposed), 4 shown, but a record
    was refused, 6 no such process or permission denied (--pid), or the store cannot be read.
    """
    from hpkg.errors import RefusedError
    from hpkg.loader.status import machine_status, process_status

    status = process_status(pid) if pid is not None else machine_status()
    document = status.to_json()
    lines = status.lines()
    if store is not None:
        from hpkg.loader.exposure import find_exposed
        from hpkg.loader.store import Store

        opened = Store.open(store or None)
        contents = opened.contents()
        exposure = find_exposed(contents, [pid] if pid is not None else None)
        document = {
            **document,
            "store": {
                "path": str(opened.root),
                "packages": [s.to_json() for s in contents.packages],
                "refused": [r.to_json() for r in contents.refused],
            },
            "exposed": [e.to_json() for e in exposure.exposed],
        }
        lines += [e.line() for e in exposure.exposed]
        count = len(exposure.exposed)
        installed = len(contents.packages)
        lines.append(f"store {opened.root}: {installed} package{'s' * (installed != 1)} installed,"
                     f" {count} process image{'s' * (count != 1)} exposed")
        lines += [f"store: refused {r.path}: {r.reason}" for r in contents.refused]
    if as_json:
        app.display_json(document)
    else:
        for line in lines:
            app.display(line)
    if status.refused:
        count = len(status.refused)
        records = f"{count} hpkg record{'s' * (count > 1)}"
        where = f"process {pid} carries" if pid is not None else "processes carry"
        raise RefusedError(f"{where} {records} that hpkg cannot trust (listed above)")
