"""`hpkg uninstall ID [--store DIR]`: take a package out of the store and out of every process."""

from __future__ import annotations

import click

from hpkg.cli.app import Application
from hpkg.cli.paths import JOBS, STORE, TIMEOUT


@click.command("uninstall")
@click.argument("package_id", metavar="ID")
@click.option("--store", type=STORE, help="The package store  [default: $HPKG_STORE, else /var/lib/hpkg].")
@click.option("--jobs", type=JOBS, help="Processes reverted at once  [default: 4].")
@click.option(
    "--timeout", type=TIMEOUT, default=5.0, show_default=True,
    help="Seconds to wait (per process) for a moment no thread is inside the package's code.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def command(
    app: Application, package_id: str, store: str | None, jobs: int | None, timeout: float, as_json: bool
) -> None:
    """Remove package ID from the store, then revert it in every process that carries it (as
    `hpkg revert --all --package ID` does: one line per process, then a summary). A running agent stops
    serving it first: it never applies a package while uninstall holds the store.

    Uninstalling is idempotent: a package neither stored nor applied anywhere changes nothing
    (changed: false in --json).

    Exit codes: 0 removed and reverted everywhere (or nothing to do), 2 usage (an ID that cannot be a
    package id), 4 some process refused the revert (the package is out of the store; the others are
    reverted; `hpkg revert --all --package ID` tries again), 6 the store cannot be written.
    """
    from hpkg.errors import PackageError
    from hpkg.loader.machine import DEFAULT_JOBS, revert_everywhere
    from hpkg.loader.store import Store, check_package_id

    try:
        check_package_id(package_id)
    except PackageError as exc:
        raise click.BadParameter(str(exc), param_hint="'ID'") from None
    removed = Store.open(store).remove(package_id)
    report = None if as_json else lambda outcome: app.display(outcome.line())
    result = revert_everywhere(package_id, timeout, jobs or DEFAULT_JOBS, report=report)
    if as_json:
        app.display_json({
            "package_id": package_id,
            "changed": removed or result.changed,
            "removed_from_store": removed,
            "revert": result.to_json(),
        })
    else:
        app.display(f"{'removed' if removed else 'not installed'}: {package_id}")
        app.display(result.summary())
    if result.refused:
        from hpkg.errors import RefusedError

        total = len(result.outcomes)
        raise RefusedError(
            f"{len(result.refused)} of {total} process{'es' * (total != 1)} refused the revert (listed"
            f" above); the package is out of the store: hpkg revert --all --package {package_id} tries again"
        )
