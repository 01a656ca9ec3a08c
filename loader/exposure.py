"""Which processes still run a baseline for which the store holds a package (`hpkg status --store`).

A process is *exposed* when it maps a baseline image (by build-id, loader/affected.py) for which a
package is installed, and that image does not carry, applied and intact, the highest installed
level or a higher one (levels are cumulative). What an image carries is read from its in-target
records as `hpkg status` reads them (loader/status.py): nothing is stopped or written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hpkg.errors import TargetError
from hpkg.loader.affected import scan_for_baselines
from hpkg.loader.status import ProcessStatus, process_status
from hpkg.loader.store import StoreContents
from hpkg.loader.terminal import printable


@dataclass(frozen=True)
class ExposedImage:
    """A baseline image, in a running process, that lacks the installed fix."""

    pid: int
    command: str
    image: str
    build_id: str
    installed: tuple[str, ...]  # the installed packages for this baseline, highest level first
    installed_level: int
    applied_level: int | None  # a lower level in place, or None

    def line(self) -> str:
        level = self.applied_level
        applied = f"level {level} applied" if level is not None else "nothing applied"
        return (f"{self.pid} {printable(self.command) or '?'} {printable(self.image)}: exposed: baseline"
                f" {self.build_id}; installed {', '.join(self.installed)} (level {self.installed_level}),"
                f" {applied}")

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "command": self.command,
            "image": self.image,
            "build_id": self.build_id,
            "installed": list(self.installed),
            "installed_level": self.installed_level,
            "applied_level": self.applied_level,
        }


@dataclass(frozen=True)
class Exposure:
    """Every exposed image of the machine, and the pids whose maps could not be read."""

    exposed: tuple[ExposedImage, ...]
    unreadable: tuple[int, ...]


def _applied_level(status: ProcessStatus, build_id: str, load_bias: int) -> int | None:
    levels = [
        p.record.patch_level
        for image in status.images
        if image.build_id == build_id and image.load_bias == load_bias
        for p in image.packages
        if p.state == "applied" and p.intact
    ]
    return max(levels, default=None)


def find_exposed(contents: StoreContents, pids: Iterable[int] | None = None) -> Exposure:
    """The images of the machine (of `pids`) that run a baseline of the store without its highest level."""
    packages = contents.by_build_id()
    if not packages:
        return Exposure((), ())
    scan = scan_for_baselines(packages, pids)
    statuses: dict[int, ProcessStatus | None] = {}
    exposed = []
    for found in scan.affected:
        if found.pid not in statuses:
            try:
                statuses[found.pid] = process_status(found.pid)
            except TargetError:
                statuses[found.pid] = None  # exited since the scan
        status = statuses[found.pid]
        if status is None:
            continue
        installed = packages[found.image.build_id]
        level = _applied_level(status, found.image.build_id, found.image.load_bias)
        if level is not None and level >= installed[0].patch_level:
            continue
        exposed.append(ExposedImage(
            found.pid, found.command, found.image.path, found.image.build_id,
            tuple(s.package_id for s in installed), installed[0].patch_level, level,
        ))
    return Exposure(tuple(exposed), scan.unreadable)
