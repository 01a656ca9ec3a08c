"""The compatibility check: proof that a target image is the baseline a package was built for.

Written against a small image-reader interface (build-id, bytes at a link address, load bias) so that
the File target and the live loader run the same check. Every failure is gathered and reported at
once, naming each function, before anything is written:

  1. the build-id equals the package's baseline build-id;
  1b. every patch site is a function entry in an executable segment of the image, and the package's
     image_size and baseline addresses fit it (`hpkg.loader.bounds`, read from the baseline file);
  2. each patch site holds the recorded pre-image, or the jump of an applied lower patch level that this
     package supersedes (its target inside that level's area);
  3. each replaced function's bytes hash to the recorded SHA-256 (at a site that carries a superseded
     jump, the pre-image is put back in place of the jump before hashing, so the rest is still proven).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hpkg.arch.x86_64 import JMP_REL32_SIZE, decode_jmp_rel32
from hpkg.errors import IncompatibleTarget
from hpkg.formats.model import Package, ReplacedFunction
from hpkg.loader.bounds import ImageCode, check_sites


class ImageReader(Protocol):
    """What the check needs from a target image: a process mapping or an ELF file."""

    @property
    def build_id(self) -> bytes:
        """The GNU build-id of the image (empty if it has none)."""
        ...

    @property
    def load_bias(self) -> int:
        """Runtime address of link address 0 (0 for a file)."""
        ...

    def read(self, link_address: int, size: int) -> bytes:
        """`size` bytes at a link address; fewer (or none) if the range is not in the image."""
        ...


@dataclass(frozen=True)
class AppliedLevel:
    """A package already applied to the target image, as the live loader's record says."""

    package_id: str
    patch_level: int
    areas: tuple[tuple[int, int], ...]  # runtime [start, end) ranges of its allocation


@dataclass(frozen=True)
class SiteCheck:
    """How one patch site was found."""

    name: str
    link_address: int
    state: str  # "pre-image" or "superseded jump of <package id>"
    hash_checked: str  # how the function's SHA-256 was checked
    superseded: str | None = None  # package id of the applied level whose jump the site carries


@dataclass(frozen=True)
class CompatReport:
    """A target image proven to be the package's baseline, site by site."""

    build_id: bytes
    sites: tuple[SiteCheck, ...]
    superseded: str | None  # package_id of the applied level this package replaces

    def lines(self) -> list[str]:
        """One human line per check, for `hpkg verify --against` and `hpkg apply`."""
        result = [f"build-id: ok ({self.build_id.hex()})"]
        for site in self.sites:
            where = f"patch site {site.name} at {site.link_address:#x}"
            result.append(f"{where}: {site.state}, {site.hash_checked}")
        if self.superseded:
            result.append(f"supersedes applied package {self.superseded}")
        return result

    def to_json(self) -> dict[str, object]:
        return {
            "build_id": self.build_id.hex(),
            "superseded": self.superseded,
            "sites": [
                {
                    "function": s.name,
                    "link_address": s.link_address,
                    "state": "pre-image" if s.superseded is None else "superseded-jump",
                    "superseded": s.superseded,
                    # a word, not the sentence of lines(): "ok", or "ok-with-pre-image" where the site
                    # carries a superseded level's jump and the SHA-256 was taken over the pre-image instead
                    "sha256": "ok" if s.superseded is None else "ok-with-pre-image",
                }
                for s in self.sites
            ],
        }


def contains(package: Package, package_id: str, patch_level: int) -> bool:
    """Whether an applied package makes applying `package` a no-op: the package itself, or a higher level
    for the same baseline (levels are cumulative, so it contains this one)."""
    return package_id == package.identity.package_id or patch_level > package.identity.patch_level


def carried_detail(package: Package, package_id: str, patch_level: int) -> str:
    """"" when the applied package is `package` itself, else which higher level (containing it) it is."""
    if package_id == package.identity.package_id:
        return ""
    return f"level {patch_level} (package {package_id}) is applied and contains it"


def _superseding_level(target: int, applied: Sequence[AppliedLevel]) -> AppliedLevel | None:
    for level in applied:
        if any(start <= target < end for start, end in level.areas):
            return level
    return None


def _check_site(
    package: Package,
    f: ReplacedFunction,
    reader: ImageReader,
    applied: Sequence[AppliedLevel],
    reasons: list[str],
) -> SiteCheck | None:
    """Check one patch site and its function's hash; append a reason and return None if it fails."""
    where = f"function {f.name} at {f.baseline_address:#x}"
    body = reader.read(f.baseline_address, f.baseline_size)
    if len(body) != f.baseline_size:
        readable = f"{len(body)} of {f.baseline_size} bytes readable"
        reasons.append(f"{where}: not inside the target image ({readable})")
        return None
    site_bytes = body[: len(f.pre_image)]
    level: AppliedLevel | None = None
    if site_bytes == f.pre_image:
        state = "pre-image"
    else:
        target = decode_jmp_rel32(f.baseline_address + reader.load_bias, site_bytes)
        level = _superseding_level(target, applied) if target is not None else None
        if target is None:
            reasons.append(
                f"{where}: patch-site bytes {site_bytes[:8].hex()} differ from the pre-image "
                f"{f.pre_image[:8].hex()} (another build, or modified)"
            )
            return None
        if level is None:
            reasons.append(
                f"{where}: already patched (a jump to {target:#x}, not into an applied hpkg package); "
                "apply packages to the unpatched baseline"
            )
            return None
        if level.package_id != package.identity.supersedes:
            reasons.append(
                f"{where}: patched by package {level.package_id} (level {level.patch_level}), which this "
                f"package does not supersede"
            )
            return None
        state = f"superseded jump of {level.package_id}"
        # The old level's jump covers the first bytes only; put the pre-image back to hash the whole function.
        body = f.pre_image + body[len(f.pre_image) :]
        if site_bytes[JMP_REL32_SIZE:] != f.pre_image[JMP_REL32_SIZE:]:
            reasons.append(f"{where}: bytes after the jump of {level.package_id} differ from the pre-image")
            return None
    digest = hashlib.sha256(body).digest()
    if digest != f.baseline_sha256:
        reasons.append(f"{where}: SHA-256 of its {f.baseline_size} bytes differs from the baseline's")
        return None
    if level is None:
        return SiteCheck(f.name, f.baseline_address, state, "SHA-256 ok")
    how = "SHA-256 ok with the pre-image in place of the jump"
    return SiteCheck(f.name, f.baseline_address, state, how, level.package_id)


def check_compatibility(
    package: Package, reader: ImageReader, applied: Sequence[AppliedLevel] = (), code: ImageCode | None = None
) -> CompatReport:
    """Prove `reader`'s image is the package's baseline; raise IncompatibleTarget listing every failure.

    `applied` lists the packages already applied to this image (empty for an unpatched file); a patch
    site may then carry the jump of the level this package supersedes. A package whose level is not
    above every applied level is refused (no silent downgrade). `code` is what the baseline file says
    about its functions: every site must be one of their entries (the loaders always pass it).
    """
    reasons: list[str] = []
    expected = package.target.build_id
    found = reader.build_id
    if found != expected:
        shown = found.hex() if found else "none"
        wanted = expected.hex()
        raise IncompatibleTarget(f"target is another build: build-id {shown}, the package is for {wanted}")
    if code is not None:
        check_sites(package, code)
    level = package.identity.patch_level
    for old in applied:
        if old.patch_level >= level:
            reasons.append(
                f"package {old.package_id} at level {old.patch_level} is applied; this package is "
                f"level {level} (no downgrade or re-apply)"
            )
    sites = [_check_site(package, f, reader, applied, reasons) for f in package.functions]
    if reasons:
        names = sorted({f.name for f, s in zip(package.functions, sites, strict=True) if s is None})
        subject = f"function{'s' if len(names) != 1 else ''} {', '.join(names)}" if names else "patch level"
        raise IncompatibleTarget(
            f"target does not match the package's baseline at {subject}", tuple(reasons)
        )
    superseded = next((s.superseded for s in sites if s is not None and s.superseded), None)
    return CompatReport(build_id=found, sites=tuple(s for s in sites if s is not None), superseded=superseded)
