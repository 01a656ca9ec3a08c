"""Print the SHA-256 of every package hpkg builds from the samples corpus (and cached Debian pairs).

A restructuring must not change behaviour by accident: run this before and after, and compare.

    python scripts/package-digests.py > before.txt   # … change the code …
    python scripts/package-digests.py | diff before.txt -

Packages are signed with a fixed key (Ed25519 signatures are deterministic), so the same plan gives
the same bytes. A refusal prints its reason codes instead of a digest.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tomllib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hpkg.builder.build import build_package
from hpkg.errors import HpkgError, NoChange, UnsupportedChange

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def _pairs():
    """(label, baseline, fix, baseline debug, fix debug) for every sample flavour that is built."""
    for sample in sorted(p for p in SAMPLES.iterdir() if p.is_dir() and p.name[:2].isdigit()):
        out = sample / "out"
        library = sorted(out.glob("baseline/*.so*"))
        for flavour, suffix in (("ready", ""), ("stripped", ".stripped"), ("plain", ".plain")):
            if library:
                name = library[0].name
                old, new = out / f"baseline{suffix}" / name, out / f"fixed{suffix}" / name
                old_dbg, new_dbg = out / "baseline.unstripped" / name, out / "fixed.unstripped" / name
            else:
                old, new = out / f"baseline{suffix}", out / f"fixed{suffix}"
                old_dbg, new_dbg = out / "baseline.unstripped", out / "fixed.unstripped"
            if not (old.is_file() and new.is_file()):
                continue
            if flavour == "stripped":
                yield f"{sample.name}/stripped+debug", old, new, old_dbg, new_dbg
            yield f"{sample.name}/{flavour}", old, new, None, None
    cache = Path.home() / ".cache" / "hpkg-bench" / "root"
    with open(ROOT / "bench" / "pairs.toml", "rb") as f:
        specs = tomllib.load(f)["pair"]
    for spec in specs:
        # The scale pairs (hundreds of MB, many minutes and gigabytes each) measure the bench, not behaviour.
        if "package" not in spec or spec.get("role") == "scale":
            continue
        root = cache / spec["package"]
        old = Path(f"{root}_{spec['old_version']}_amd64") / spec["object"]
        new = Path(f"{root}_{spec['new_version']}_amd64") / spec["object"]
        if old.is_file() and new.is_file():
            yield f"debian/{spec['name']}", old, new, None, None


def main() -> int:
    subprocess.run(["make", "-s", "-C", str(SAMPLES), "-j2"], check=True, stdout=subprocess.DEVNULL)
    for label, old, new, old_dbg, new_dbg in _pairs():
        try:
            result = build_package(old, new, signing_key=KEY, old_debug=old_dbg, new_debug=new_dbg,
                                   debug_roots=())
            outcome = hashlib.sha256(result.blob).hexdigest()
        except UnsupportedChange as exc:
            outcome = "refused " + " | ".join(sorted(exc.reasons))
        except NoChange:
            outcome = "no-change"
        except HpkgError as exc:
            outcome = f"error {type(exc).__name__}: {exc}"
        print(f"{label} {outcome}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
