"""Fetch the real Debian update pair the .deb tests use (libexpat1, bench/pairs.toml) into the bench cache.

Run by `make test` before pytest; without network the tests use what is cached, and a test skips only
when neither the cache nor a download gives it the package (tests/cli/test_deb_pairs.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus import CorpusError, default_cache_dir, fetch_deb, load_specs  # noqa: E402

PACKAGE = "libexpat1"


def main() -> int:
    (spec,) = [s for s in load_specs() if s.package == PACKAGE]
    debs = default_cache_dir() / "debs"
    for version in (spec.old_version, spec.new_version):
        try:
            print(fetch_deb(PACKAGE, version, debs))
        except CorpusError as exc:
            print(f"warning: {exc} (the .deb tests will try again, then skip)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
