"""What hpkg has applied to a running process (`hpkg status --pid`), read from the in-target records.

Nothing is stopped or written: the records are read through /proc/PID/maps and memory reads, and
every patch site is compared with the record, so a site someone else changed shows up as such.
A retired record (a package reverted while a word pointed into its memory, which stays mapped) is listed
as retired, never as applied. Records are authenticated first (loader/record.py): one written by an
older hpkg is shown marked "unauthenticated"; one that fails its seal or validation is listed as
refused, with why, and not interpreted (`hpkg status` then exits 4).
Every name is escaped before it is printed.

`machine_status` does the same for every process whose maps show hpkg package memory (`hpkg status`
without `--pid`): one pass over /proc/*/maps, then the records of those processes alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hpkg.errors import TargetError
from hpkg.loader.affected import scan_for_packages
from hpkg.loader.live import open_process
from hpkg.loader.process import Process
from hpkg.loader.record import FoundRecord, PatchRecord, RecordState, RecordTrust, SiteRecord, find_records
from hpkg.loader.terminal import printable


@dataclass(frozen=True)
class SiteState:
    """One patch site as found now: "patched" (our jump), "original" (pre-image), or "changed"."""

    function: str
    address: int
    state: str
    found: bytes


@dataclass(frozen=True)
class PackageState:
    """One package applied to one image, with the state of each of its sites."""

    record: PatchRecord
    state: str  # "applied", "prepared (interrupted apply)", "superseded by <id>", "retired (…)"
    sites: tuple[SiteState, ...]
    trust: RecordTrust = RecordTrust.AUTHENTICATED

    @property
    def intact(self) -> bool:
        """Every site holds our jump (an applied package nobody tampered with)."""
        return all(s.state == "patched" for s in self.sites)


@dataclass(frozen=True)
class ImageState:
    """An image carrying hpkg packages."""

    path: str
    build_id: str
    load_bias: int
    packages: tuple[PackageState, ...]


@dataclass(frozen=True)
class ProcessStatus:
    """Every patched image of a process, and any hpkg allocation without a readable record."""

    pid: int
    images: tuple[ImageState, ...]
    unreadable: tuple[FoundRecord, ...]
    writable_code: tuple[str, ...] = ()  # maps lines of patched images left rwx by an interrupted switch
    refused: tuple[FoundRecord, ...] = ()  # records that fail their seal or validation: not interpreted

    def lines(self) -> list[str]:
        if not self.images and not self.unreadable and not self.refused:
            return [f"process {self.pid}: no hpkg packages"]
        out = []
        for image in self.images:
            path = printable(image.path)
            out.append(f"{path} (build-id {image.build_id}, load bias {image.load_bias:#x})")
            for package in image.packages:
                r = package.record
                trust = ""
                if package.trust is RecordTrust.UNAUTHENTICATED:
                    trust = " [unauthenticated record: written by an older hpkg, without a seal]"
                package_id = printable(r.package_id)
                out.append(f"  package {package_id} level {r.patch_level}: {package.state}{trust}")
                for site in package.sites:
                    out.append(f"    {printable(site.function)} at {site.address:#x}: {site.state}")
        for f in self.unreadable:
            where = f"/memfd:{printable(f.allocation.name)} at {f.allocation.start:#x}"
            out.append(f"{where}: {printable(f.problem)}")
        for f in self.refused:
            where = f"/memfd:{printable(f.allocation.name)} at {f.allocation.start:#x}"
            out.append(f"{where}: refused: {printable(f.problem)}")
        for line in self.writable_code:
            line = printable(line)
            out.append(f"warning: code left writable and executable by an interrupted switch: {line}")
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "images": [
                {
                    "path": i.path,
                    "build_id": i.build_id,
                    "load_bias": i.load_bias,
                    "packages": [
                        {
                            "package_id": p.record.package_id,
                            "patch_level": p.record.patch_level,
                            "supersedes": p.record.supersedes,
                            "state": p.state,
                            "record": p.trust.value,
                            "intact": p.intact,
                            "allocation": _allocation_json(p.record),
                            "functions": [
                                {"name": s.function, "address": s.address, "state": s.state} for s in p.sites
                            ],
                        }
                        for p in i.packages
                    ],
                }
                for i in self.images
            ],
            "unreadable_allocations": [
                {"name": f.allocation.name, "start": f.allocation.start, "problem": f.problem}
                for f in self.unreadable
            ],
            "refused_records": [
                {"name": f.allocation.name, "start": f.allocation.start, "problem": f.problem}
                for f in self.refused
            ],
            "writable_code": list(self.writable_code),
        }


def _allocation_json(record: PatchRecord) -> dict[str, object]:
    return {"name": record.allocation.name, "start": record.allocation.start, "size": record.allocation.size}


def _site_state(process: Process, site: SiteRecord) -> SiteState:
    found = process.read(site.address, len(site.pre_image))
    if found[: len(site.jump)] == site.jump:
        state = "patched"
    elif found == site.pre_image:
        state = "original"
    else:
        state = "changed (neither our jump nor the pre-image)"
    return SiteState(site.function, site.address, state, found)


def process_status(pid: int) -> ProcessStatus:
    """Read every hpkg record of process `pid` and the current bytes of each of its patch sites."""
    process = open_process(pid)
    with process:
        found = find_records(process)
        records = [f for f in found if f.record is not None]
        superseded_by = {f.record.supersedes: f.record.package_id for f in records if f.record.supersedes}
        images: dict[tuple[str, int], list[PackageState]] = {}
        paths: dict[tuple[str, int], str] = {}
        for f in sorted(records, key=lambda f: f.record.patch_level):
            r = f.record
            if f.retired:
                size = f"{r.allocation.size // 1024} KiB"
                state = f"retired: reverted, {size} kept mapped (a word pointed into them)"
            elif r.package_id in superseded_by:
                state = f"superseded by {printable(superseded_by[r.package_id])} (memory not yet freed)"
            elif f.state is RecordState.APPLIED:
                state = "applied"
            else:
                state = "prepared: an interrupted apply (hpkg revert undoes it)"
            sites = tuple(_site_state(process, s) for s in r.sites)
            key = (r.build_id, r.load_bias)
            images.setdefault(key, []).append(PackageState(r, state, sites, f.trust))
            paths[key] = r.image_path
        patched_paths = set(paths.values())
        writable_code = tuple(
            f"{m.start:#x}-{m.end:#x} {m.perms} {m.path}"
            for m in process.maps()
            if m.path in patched_paths and m.writable and m.executable
        )
        return ProcessStatus(
            pid,
            tuple(ImageState(paths[k], k[0], k[1], tuple(v)) for k, v in images.items()),
            tuple(f for f in found if f.trust is RecordTrust.ABSENT),
            writable_code,
            tuple(f for f in found if f.trust is RecordTrust.REFUSED),
        )


@dataclass(frozen=True)
class CarrierStatus:
    """One process of a machine-wide status: its command name and what its records say."""

    command: str
    status: ProcessStatus

    def lines(self) -> list[str]:
        """One line per package per image: pid, command, image, package id, level, state and sites."""
        head = f"{self.status.pid} {printable(self.command) or '?'}"
        out = []
        for image in self.status.images:
            for package in image.packages:
                r = package.record
                trust = " [unauthenticated record]" if package.trust is RecordTrust.UNAUTHENTICATED else ""
                sites = ", ".join(f"{printable(s.function)} {s.state}" for s in package.sites)
                out.append(
                    f"{head} {printable(image.path)}: package {printable(r.package_id)} level {r.patch_level}"
                    f" {package.state}{trust}; sites: {sites}"
                )
        for f in self.status.unreadable:
            out.append(f"{head} /memfd:{printable(f.allocation.name)}: {printable(f.problem)}")
        for f in self.status.refused:
            out.append(f"{head} /memfd:{printable(f.allocation.name)}: refused: {printable(f.problem)}")
        return out

    def to_json(self) -> dict[str, object]:
        return {"command": self.command, **self.status.to_json()}


@dataclass(frozen=True)
class MachineStatus:
    """Every process of the machine carrying hpkg packages, and the pids whose maps could not be read."""

    processes: tuple[CarrierStatus, ...]
    unreadable: tuple[int, ...] = ()

    @property
    def refused(self) -> tuple[FoundRecord, ...]:
        """Records, anywhere, that fail their seal or validation (listed, not interpreted)."""
        return tuple(f for p in self.processes for f in p.status.refused)

    def lines(self) -> list[str]:
        out = [line for p in self.processes for line in p.lines()]
        if not self.processes:
            out.append("no process carries an hpkg package")
        if self.unreadable:
            count = len(self.unreadable)
            what = f"{count} process{'es' * (count != 1)} not examined"
            out.append(f"{what} (permission denied reading their maps)")
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "processes": [p.to_json() for p in self.processes],
            "unreadable_pids": list(self.unreadable),
        }


def machine_status(pids: Iterable[int] | None = None) -> MachineStatus:
    """The status of every process (of `pids`, default all) with hpkg package memory; stops nothing.

    Processes are found by their maps alone (loader/affected.py), then each one's records are read as
    `status --pid` reads them. A process that exits in between is left out.
    """
    scan = scan_for_packages(pids)
    processes = []
    for carrying in scan.carrying:
        try:
            status = process_status(carrying.pid)
        except TargetError:
            continue  # exited since the scan (or became a zombie): it carries nothing any more
        processes.append(CarrierStatus(carrying.command, status))
    return MachineStatus(tuple(processes), scan.unreadable)
