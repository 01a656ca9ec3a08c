"""The bench's pairs: read bench/pairs.toml, build the small pair with gcc, fetch Debian pairs with apt.

Debian pairs are downloaded with `apt-get download PACKAGE=VERSION` into a cache directory and
unpacked with `dpkg-deb -x`, so a second run needs no network.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PAIRS_FILE = BENCH_DIR / "pairs.toml"
SAMPLES_DIR = BENCH_DIR.parent / "samples"


class CorpusError(Exception):
    """A pair cannot be made available (no network, version gone from the archive, gcc failed)."""


@dataclass(frozen=True)
class Patch:
    """What one update fixed, and the functions its source change touched."""

    name: str
    cves: tuple[str, ...]
    source: str  # "bench", "patches" or "changelog": where the function list comes from
    functions: tuple[str, ...]
    added: tuple[str, ...]  # functions the patch introduced


@dataclass(frozen=True)
class PairSpec:
    """One baseline/fix pair as bench/pairs.toml describes it."""

    name: str
    role: str  # "small", "large", "security", "scale", or "sample" (a pair of the samples corpus)
    patches: tuple[Patch, ...]
    package: str | None = None
    old_version: str | None = None
    new_version: str | None = None
    object: str | None = None
    source: str | None = None
    fix_define: str | None = None
    cflags: tuple[str, ...] = ()

    @property
    def touched(self) -> tuple[str, ...]:
        """Every function any patch of this pair touched, in first-seen order."""
        return tuple(dict.fromkeys(f for p in self.patches for f in p.functions))


@dataclass(frozen=True)
class Pair:
    """A pair made available on disk: the baseline and the fix."""

    spec: PairSpec
    old: Path
    new: Path
    old_label: str
    new_label: str


def load_specs(path: Path = PAIRS_FILE) -> list[PairSpec]:
    """Every pair described in pairs.toml, in file order."""
    document = tomllib.loads(path.read_text())
    specs = []
    for entry in document["pair"]:
        patches = tuple(
            Patch(
                name=p["name"],
                cves=tuple(p.get("cves", ())),
                source=p["source"],
                functions=tuple(p["functions"]),
                added=tuple(p.get("added", ())),
            )
            for p in entry.get("patch", ())
        )
        specs.append(
            PairSpec(
                name=entry["name"],
                role=entry["role"],
                patches=patches,
                package=entry.get("package"),
                old_version=entry.get("old_version"),
                new_version=entry.get("new_version"),
                object=entry.get("object"),
                source=entry.get("source"),
                fix_define=entry.get("fix_define"),
                cflags=tuple(entry.get("cflags", ())),
            )
        )
    return specs


def sample_specs(samples_dir: Path = SAMPLES_DIR) -> list[PairSpec]:
    """Every sample of samples/ whose sample.toml expects a package (verdict "patchable")."""
    specs = []
    for directory in sorted(samples_dir.glob("[0-9][0-9]-*")):
        toml = directory / "sample.toml"
        if not toml.is_file():
            continue
        document = tomllib.loads(toml.read_text())
        if document.get("verdict") != "patchable":
            continue
        library = document.get("library", {}).get("file")
        changed = tuple(document.get("expected_changed", ()))
        patch = Patch(str(document.get("summary", "")), (), "sample", changed, ())
        # `object`: the ELF file hpkg patches, inside each build's out/ entry (a library sample's .so).
        specs.append(PairSpec(directory.name, "sample", (patch,), object=library, source=str(directory)))
    return specs


def build_sample_pair(spec: PairSpec) -> Pair:
    """Build one sample with its make rule and return its hotpatch-ready baseline and fix."""
    assert spec.source is not None
    directory = Path(spec.source)
    done = subprocess.run(
        ["make", "-s", "-C", str(directory.parent), directory.name], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise CorpusError(f"make -C samples {directory.name} failed: {done.stderr.strip()[-300:]}")
    out = directory / "out"
    old, new = out / "baseline", out / "fixed"
    if spec.object:
        old, new = old / spec.object, new / spec.object
    for path in (old, new):
        if not path.is_file():
            raise CorpusError(f"make -C samples {directory.name} did not produce {path}")
    return Pair(spec, old, new, "baseline (ready)", "fixed (ready)")


def default_cache_dir() -> Path:
    """Where downloaded packages are kept between runs: $HPKG_BENCH_CACHE or ~/.cache/hpkg-bench."""
    configured = os.environ.get("HPKG_BENCH_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hpkg-bench"


def build_small_pair(spec: PairSpec, workdir: Path) -> Pair:
    """Compile the small program twice, without and with its fix define."""
    assert spec.source is not None and spec.fix_define is not None
    source = BENCH_DIR / spec.source
    workdir.mkdir(parents=True, exist_ok=True)
    outputs = {"old": workdir / "small-old", "new": workdir / "small-new"}
    for label, output in outputs.items():
        defines = [f"-D{spec.fix_define}"] if label == "new" else []
        command = ["gcc", *spec.cflags, *defines, "-o", str(output), str(source)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise CorpusError(f"gcc failed for the {label} small build: {done.stderr.strip()}")
    flags = " ".join(spec.cflags)
    return Pair(spec, outputs["old"], outputs["new"], f"gcc {flags}", f"gcc {flags} -D{spec.fix_define}")


def available_versions(package: str) -> list[str]:
    """The versions of `package` that apt can download, as `apt-cache madison` lists them."""
    done = subprocess.run(["apt-cache", "madison", package], capture_output=True, text=True)
    versions = []
    for line in done.stdout.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) >= 3 and fields[0] == package:
            versions.append(fields[1])
    return versions


def fetch_deb(package: str, version: str, debs: Path) -> Path:
    """Download one .deb into `debs` unless it is already there (also the .deb tests' fetch)."""
    # apt-get download names files PACKAGE_VERSION_ARCH.deb with ':' (epoch) escaped as %3a.
    pattern = f"{package}_{version.replace(':', '%3a')}_*.deb"
    cached = sorted(debs.glob(pattern))
    if cached:
        return cached[0]
    debs.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["apt-get", "download", "-q", f"{package}={version}"], cwd=debs, capture_output=True, text=True
    )
    cached = sorted(debs.glob(pattern))
    if done.returncode != 0 or not cached:
        errors = [line for line in done.stderr.splitlines() if line.startswith("E:")]
        reason = errors[-1] if errors else f"apt-get exit {done.returncode}"
        raise CorpusError(f"cannot download {package}={version}: {reason}")
    return cached[0]


def _unpack(deb: Path, root: Path) -> Path:
    """Unpack a .deb once with dpkg-deb -x; the directory name is the .deb's stem."""
    target = root / deb.stem
    marker = target / ".unpacked"
    if not marker.exists():
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            raise CorpusError(f"dpkg-deb -x {deb.name} failed: {done.stderr.strip()}")
        marker.touch()
    return target


def fetch_debian_pair(spec: PairSpec, cache: Path) -> Pair:
    """Download and unpack both versions of a Debian pair; return the two shared objects."""
    assert spec.package and spec.old_version and spec.new_version and spec.object
    paths = []
    for version in (spec.old_version, spec.new_version):
        try:
            deb = fetch_deb(spec.package, version, cache / "debs")
        except CorpusError as exc:
            listed = ", ".join(available_versions(spec.package)) or "none (run apt-get update)"
            raise CorpusError(f"{exc}; apt lists: {listed}") from exc
        shared_object = _unpack(deb, cache / "root") / spec.object
        if not shared_object.is_file():
            raise CorpusError(f"{deb.name} has no {spec.object}")
        paths.append(shared_object)
    old_label, new_label = f"{spec.package} {spec.old_version}", f"{spec.package} {spec.new_version}"
    return Pair(spec, paths[0], paths[1], old_label, new_label)
