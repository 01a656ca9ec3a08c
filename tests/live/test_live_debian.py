"""A real distribution security update, live: libxml2 2.9.14 deb12u4 -> deb12u6 (Debian bookworm,
stripped, no static relocations; the bench's pair, fetched with `apt-get download` and cached) is
built into a package and applied to a running host process that loads SGML catalogs with the deb12u4
library, and the host then behaves the way the update's catalog fixes say.

The fixes observed (debian/patches of deb12u6, both in xmlParseSGMLCatalog / xmlExpandCatalog):
- CVE-2025-8732.patch: a CATALOG entry is followed into the next catalog only down to MAX_CATAL_DEPTH
  (50) levels; deb12u4 follows a chain of catalogs to any depth.
- 0039-catalog-fix-stack-overflow-from-self-referencing-SGM.patch: a catalog already expanded is not
  expanded again; deb12u4 recurses on a self-referencing catalog until the stack overflows (SIGSEGV).
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from live_helpers import assert_running_untraced, hpkg, hpkg_mappings

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = Path(__file__).parent / "programs"
PAIR = "libxml2 deb12u4 -> deb12u6"
STACK_LIMIT = 8 << 20  # bytes: the usual Linux default, so the deb12u4 stack overflow is bounded
MAX_CATAL_DEPTH = 50  # catalog.c: the deepest CATALOG nesting the fixed library still follows


@dataclass(frozen=True)
class Catalogs:
    """SGML catalogs on disk: a chain one level deeper than the fix follows, and a self-reference."""

    chain: Path  # level k maps "urn:level:k" and names level k+1 in a CATALOG entry
    self_referencing: Path  # maps "urn:self" and names itself in a CATALOG entry


@pytest.fixture(scope="module")
def libxml2_pair():
    """The two Debian libxml2 shared objects (downloaded once into the bench's cache)."""
    sys.path.insert(0, str(REPO))
    from bench.corpus import default_cache_dir, fetch_debian_pair, load_specs

    spec = next(s for s in load_specs() if s.name == PAIR)
    return fetch_debian_pair(spec, default_cache_dir())


@pytest.fixture(scope="module")
def catalog_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/live/programs/catalog_host.c, compiled once against the system's libxml2 headers."""
    host = tmp_path_factory.mktemp("catalog-host") / "catalog_host"
    subprocess.run(["gcc", "-O2", "-Wall", "-I/usr/include/libxml2", "-o", str(host),
                    str(PROGRAMS / "catalog_host.c"), "-lxml2"], check=True, capture_output=True)
    return host


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory: pytest.TempPathFactory) -> Catalogs:
    """The chain level0.sgml .. level51.sgml and self.sgml."""
    directory = tmp_path_factory.mktemp("catalogs")
    for level in range(MAX_CATAL_DEPTH + 2):
        entries = f'SYSTEM "urn:level:{level}" "level-{level}.dtd"\n'
        if level <= MAX_CATAL_DEPTH:
            entries += f'CATALOG "level{level + 1}.sgml"\n'
        (directory / f"level{level}.sgml").write_text(entries)
    self_referencing = directory / "self.sgml"
    self_referencing.write_text('SYSTEM "urn:self" "self.dtd"\nCATALOG "self.sgml"\n')
    return Catalogs(directory / "level0.sgml", self_referencing)


@dataclass(frozen=True)
class Host:
    """A running catalog_host: one request line in, one "N RESULT" line out."""

    process: subprocess.Popen

    def ask(self, catalog: Path, system_id: str) -> str:
        """Load CATALOG in the host, resolve SYSTEM_ID there, and return the host's answer."""
        self.process.stdin.write(f"{catalog} {system_id}\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().rstrip("\n")

    def crashed_by(self, catalog: Path, system_id: str) -> int:
        """Send a request the host does not survive and return its wait status (-signal)."""
        assert self.ask(catalog, system_id) == ""  # end of file: the host died without answering
        return self.process.wait(timeout=60)


@contextmanager
def running_host(program: Path, library_dir: Path) -> Iterator[Host]:
    """catalog_host started with LIBRARY_DIR's libxml2, killed and reaped on the way out."""
    argv, env = [program], {"LD_LIBRARY_PATH": str(library_dir)}
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    with subprocess.Popen(argv, env=env, preexec_fn=crash_quietly, **pipes) as process:
        try:
            yield Host(process)
        finally:
            process.kill()


def crash_quietly() -> None:
    """In the child before exec: no core file, and the usual 8 MiB stack whatever the runner's limit,
    so a stack overflow comes after a bounded recursion (about 47,000 catalog levels in deb12u4)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    stack = STACK_LIMIT if hard == resource.RLIM_INFINITY else min(STACK_LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_STACK, (stack, hard))


def test_baseline_library_crashes_on_self_referencing_catalog(libxml2_pair, catalog_host, catalogs) -> None:
    """The vulnerability the update fixes, in a sacrificial process: deb12u4 overflows its stack."""
    with running_host(catalog_host, libxml2_pair.old.parent) as host:
        assert host.ask(catalogs.chain, "urn:level:0") == f"1 {catalogs.chain.parent}/level-0.dtd"
        assert host.crashed_by(catalogs.self_referencing, "urn:self") == -signal.SIGSEGV


def test_fixed_library_answers_the_same_requests(libxml2_pair, catalog_host, catalogs) -> None:
    """The deb12u6 library, loaded at start: the behaviour the live patch must produce."""
    directory = catalogs.chain.parent
    with running_host(catalog_host, libxml2_pair.new.parent) as host:
        assert host.ask(catalogs.chain, f"urn:level:{MAX_CATAL_DEPTH}") == f"1 {directory}/level-50.dtd"
        assert host.ask(catalogs.chain, f"urn:level:{MAX_CATAL_DEPTH + 1}") == "2 none"
        assert host.ask(catalogs.self_referencing, "urn:self") == f"3 {directory}/self.dtd"


def test_debian_libxml2_security_update_applied_live(libxml2_pair, catalog_host, catalogs, keys,
                                                     build_package) -> None:
    """deb12u4 host: follows the deep chain; patched live: stops at the limit and survives the
    self-reference, with its request counter kept; reverted: deb12u4 behaviour and crash again."""
    package = build_package(libxml2_pair.old, libxml2_pair.new)
    directory = catalogs.chain.parent
    deepest, beyond = f"urn:level:{MAX_CATAL_DEPTH}", f"urn:level:{MAX_CATAL_DEPTH + 1}"
    with running_host(catalog_host, libxml2_pair.old.parent) as host:
        pid = host.process.pid
        assert host.ask(catalogs.chain, deepest) == f"1 {directory}/level-50.dtd"
        assert host.ask(catalogs.chain, beyond) == f"2 {directory}/level-51.dtd"  # deb12u4: no limit
        assert str(libxml2_pair.old.resolve()) in Path(f"/proc/{pid}/maps").read_text()

        run = hpkg("apply", package, "--pid", pid, "--key", keys.public, "--json")
        assert run.returncode == 0, run.stderr
        sites = run.json()["images"][0]["patch_sites"]
        assert len(sites) > 10
        catalog_entry_points = {"xmlLoadACatalog", "xmlLoadCatalog", "xmlLoadSGMLSuperCatalog"}
        assert catalog_entry_points <= {site["function"] for site in sites}
        assert_running_untraced(pid)
        [image] = hpkg("status", "--pid", pid, "--json").json()["images"]
        assert image["packages"][0]["intact"] and len(image["packages"][0]["functions"]) == len(sites)

        # The same process, its counter kept, now answers the way deb12u6 does.
        assert host.ask(catalogs.chain, deepest) == f"3 {directory}/level-50.dtd"
        assert host.ask(catalogs.chain, beyond) == "4 none"
        assert host.ask(catalogs.self_referencing, "urn:self") == f"5 {directory}/self.dtd"
        assert_running_untraced(pid)

        assert hpkg("revert", "--pid", pid).returncode == 0
        assert hpkg_mappings(pid) == []
        assert hpkg("status", "--pid", pid, "--json").json()["images"] == []
        assert host.ask(catalogs.chain, beyond) == f"6 {directory}/level-51.dtd"
        assert_running_untraced(pid)
        # Last, since the host does not survive it: the reverted host is vulnerable again.
        assert host.crashed_by(catalogs.self_referencing, "urn:self") == -signal.SIGSEGV
