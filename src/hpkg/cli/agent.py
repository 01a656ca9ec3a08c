"""`hpkg agent [--store DIR]`: keep every process patched with the store's packages (foreground)."""

from __future__ import annotations

import click

from hpkg.cli.app import Application
from hpkg.cli.paths import JOBS, STORE, TIMEOUT, Seconds

RESCAN = Seconds(0.1, 3600.0)


@click.command("agent")
@click.option("--store", type=STORE, help="The package store  [default: $HPKG_STORE, else /var/lib/hpkg].")
@click.option("--jobs", type=JOBS, default=2, show_default=True, help="Processes patched at once.")
@click.option(
    "--timeout", type=TIMEOUT, default=5.0, show_default=True,
    help="Seconds to wait (per process) for a moment no thread is inside a replaced function.",
)
@click.option(
    "--rescan", "rescan", type=RESCAN, default=5.0, show_default=True,
    help="Seconds between passes over every process, for libraries dlopen'ed late in a process's life.",
)
@click.pass_obj
def command(app: Application, store: str | None, jobs: int, timeout: float, rescan: float) -> None:
    """Apply every package of the store to every process that maps its baseline, at start-up and then
    to each new process as it starts (the kernel's exec events; needs root), including libraries
    mapped later by dlopen (checked again while a process is young, and every --rescan seconds).
    Runs in the foreground until SIGTERM or SIGINT; SIGHUP reads the store again (it is also watched).

    One line per event on standard output, prefixed with its syslog priority for journald
    (`<6>applied pid=… package=… exec_to_patched_ms=…`); contrib/hpkg-agent.service runs it under systemd.

    Exit codes: 0 stopped by SIGTERM or SIGINT, 2 usage, 6 the store or the kernel's process events
    cannot be used (not root).
    """
    from hpkg.loader.agent import Agent, AgentSettings
    from hpkg.loader.agent_log import EventLog
    from hpkg.loader.store import Store

    settings = AgentSettings(timeout=timeout, jobs=jobs, rescan_interval=rescan)
    Agent(Store.open(store), settings, EventLog()).run()
