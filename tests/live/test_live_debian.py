"""A real distribution security update, live: libxml2 2.9.14 deb12u4 -> deb12u6 (Debian bookworm,
stripped, no static relocations; the bench's pair, fetched with `apt-get download` and cached) is
built into a package and applied to a running host process that uses the deb12u4 library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from live_helpers import assert_running_untraced, hpkg, hpkg_mappings

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = Path(__file__).parent / "programs"
PAIR = "libxml2 deb12u4 -> deb12u6"
QUERIES = {"count(//a)": "2", 'string(//a[@n="2"])': "y", "name(/*)": "r", "1 +": "error"}


@pytest.fixture(scope="module")
def libxml2_pair():
    """The two Debian libxml2 shared objects (downloaded once into the bench's cache)."""
    sys.path.insert(0, str(REPO))
    from bench.corpus import default_cache_dir, fetch_debian_pair, load_specs

    spec = next(s for s in load_specs() if s.name == PAIR)
    return fetch_debian_pair(spec, default_cache_dir())


def test_debian_libxml2_security_update_applied_live(libxml2_pair, keys, build_package, tmp_path) -> None:
    host = tmp_path / "xpath_host"
    subprocess.run(["gcc", "-O2", "-I/usr/include/libxml2", "-o", str(host), str(PROGRAMS / "xpath_host.c"),
                    "-lxml2"], check=True, capture_output=True)
    package = build_package(libxml2_pair.old, libxml2_pair.new)
    env = {"LD_LIBRARY_PATH": str(libxml2_pair.old.parent)}
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    with subprocess.Popen([host], env=env, **pipes) as target:
        try:
            def ask(query: str) -> str:
                target.stdin.write(query + "\n")
                target.stdin.flush()
                return target.stdout.readline().rstrip("\n")

            assert {q: ask(q) for q in QUERIES} == QUERIES
            assert str(libxml2_pair.old.resolve()) in Path(f"/proc/{target.pid}/maps").read_text()
            run = hpkg("apply", package, "--pid", target.pid, "--key", keys.public, "--json")
            assert run.returncode == 0, run.stderr
            sites = run.json()["images"][0]["patch_sites"]
            assert len(sites) > 10
            assert_running_untraced(target.pid)
            assert {q: ask(q) for q in QUERIES} == QUERIES  # the service goes on answering
            [image] = hpkg("status", "--pid", target.pid, "--json").json()["images"]
            assert image["packages"][0]["intact"] and len(image["packages"][0]["functions"]) == len(sites)
            assert hpkg("revert", "--pid", target.pid).returncode == 0
            assert hpkg_mappings(target.pid) == []
            assert {q: ask(q) for q in QUERIES} == QUERIES
            assert_running_untraced(target.pid)
        finally:
            target.kill()
