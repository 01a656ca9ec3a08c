"""`hpkg diff|build OLD.deb NEW.deb`: a Debian update pair in, every ELF paired by path, one package per
changed ELF or its refusal, and a summary. Debian packages the tests build from the samples with
`dpkg-deb --build`, hostile ones they assemble byte by byte, and a real libexpat1 security update."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from json_contract import check_document, check_error_document  # noqa: E402
from sample_corpus import SAMPLES_DIR, build_corpus  # noqa: E402

TIMEOUT = 600  # a safety net against a hang, not a timing assertion
BOUNDS, CONFIG, OTHER = (SAMPLES_DIR / name / "out" for name in
                         ("01-bounds-check", "12-global-initializer", "02-changed-constant"))


def hpkg(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpkg", *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)  # fmt: skip


def make_deb(out: Path, package: str, version: str, files: dict[str, Path | bytes],
             links: dict[str, str] | None = None) -> Path:
    """A real .deb from `dpkg-deb --build`: `files` by path in the package, `links` as symlinks."""
    tree = out / f"{package}_{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: amd64\n"
        "Maintainer: hpkg tests <t@example.org>\nDescription: hpkg test package\n"
    )
    for path, content in files.items():
        target = tree / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copy2(content, target)
    for path, pointee in (links or {}).items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(pointee, tree / path)
    deb = out / f"{package}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", tree, deb], check=True, capture_output=True)
    return deb


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def _tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def raw_deb(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A .deb assembled byte by byte (ar, control and data tarballs), with member names dpkg-deb --build
    would never write: what a hostile package can hold."""
    control = _tar_gz([("./control", b"Package: hostile\nVersion: 1\nArchitecture: amd64\nMaintainer: x\n"
                                     b"Description: x\n")])
    archive = [("debian-binary", b"2.0\n"), ("control.tar.gz", control), ("data.tar.gz", _tar_gz(members))]
    path.write_bytes(b"!<arch>\n" + b"".join(_ar_member(name, data) for name, data in archive))
    return path


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two versions of a package: a fixed bug (builds), a changed initializer (refused), an identical
    program, an ELF dropped and one added, a text file and a symlink."""
    build_corpus()
    out = tmp_path_factory.mktemp("debs")
    same, readme = BOUNDS / "baseline", b"documentation\n"
    common = {"usr/bin/same": same, "usr/share/doc/demo/README": readme}
    links = {"usr/bin/bounds-link": "bounds", "usr/lib/abs-link": "/usr/bin/bounds"}
    old_files = {"usr/bin/bounds": BOUNDS / "baseline", "usr/bin/config": CONFIG / "baseline",
                 "usr/bin/gone": OTHER / "baseline"}
    new_files = {"usr/bin/bounds": BOUNDS / "fixed", "usr/bin/config": CONFIG / "fixed",
                 "usr/bin/added": OTHER / "fixed"}
    old = make_deb(out, "demo", "1.0", {**common, **old_files}, links)
    new = make_deb(out, "demo", "1.1", {**common, **new_files}, links)
    return {"old": old, "new": new, "dir": out}


def _statuses(document: dict) -> dict[str, str]:
    return {entry["path"]: entry["status"] for entry in document["files"]}


def test_build_of_a_deb_pair_writes_a_package_per_changed_elf_and_names_what_needs_a_restart(
    debs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "packages"
    run = hpkg("build", debs["old"], debs["new"], "-o", out, "--json", "--no-debuginfod")
    document = check_error_document(run.stdout, "build", 4, "not-hot-patchable")
    assert _statuses(document) == {
        "usr/bin/bounds": "built", "usr/bin/config": "refused", "usr/bin/same": "unchanged",
        "usr/bin/gone": "removed", "usr/bin/added": "added",
    }
    assert document["old"] == {"path": str(debs["old"]), "package": "demo", "version": "1.0",
                               "architecture": "amd64"}
    files = {entry["path"]: entry for entry in document["files"]}
    assert any(r.startswith("data-value-changed:") for r in files["usr/bin/config"]["reasons"])
    built = files["usr/bin/bounds"]
    assert sorted(p.name for p in out.iterdir()) == ["usr_bin_bounds.hpkg"] == [Path(built["output"]).name]
    inspected = json.loads(hpkg("inspect", built["output"], "--json").stdout)
    direct = json.loads(hpkg("diff", BOUNDS / "baseline", BOUNDS / "fixed", "--json").stdout)
    assert inspected["package_id"] == built["package_id"]
    assert inspected["target"]["build_id"] == direct["old"]["build_id"] == built["build"]["old"]["build_id"]
    assert document["counts"] == {"built": 1, "refused": 1, "no-change": 0, "unchanged": 1, "added": 1,
                                  "removed": 1, "unreadable": 0}
    text = hpkg("build", debs["old"], debs["new"], "-o", tmp_path / "again", "--no-debuginfod")
    assert text.returncode == 4 and text.stderr.startswith("error: 1 ELF file")
    assert "usr/bin/config" in text.stderr and "usr/bin/config: needs a restart" in text.stdout


def test_diff_of_a_deb_pair_diffs_every_elf_with_its_namesake(debs: dict[str, Path]) -> None:
    run = hpkg("diff", debs["old"], debs["new"], "--json", "--no-debuginfod")
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    check_document(document, "diff")
    assert _statuses(document) == {
        "usr/bin/bounds": "changed", "usr/bin/config": "changed", "usr/bin/same": "unchanged",
        "usr/bin/gone": "removed", "usr/bin/added": "added",
    }
    (bounds,) = [e for e in document["files"] if e["path"] == "usr/bin/bounds"]
    direct = json.loads(hpkg("diff", BOUNDS / "baseline", BOUNDS / "fixed", "--json").stdout)
    assert [c["name"] for c in bounds["diff"]["changed"]] == [c["name"] for c in direct["changed"]]


def test_dbgsym_packages_give_stripped_binaries_their_symbols(tmp_path: Path) -> None:
    build_corpus()
    debs = {}
    for build, version in (("baseline", "1.0"), ("fixed", "1.1")):
        build_id = _build_id(BOUNDS / f"{build}.stripped")
        debug_file = f"usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug"
        debs[build] = make_deb(tmp_path, "demo", version, {"usr/bin/bounds": BOUNDS / f"{build}.stripped"})
        installed = BOUNDS / "debug" / debug_file.removeprefix("usr/lib/debug/")
        debs[f"{build}-dbgsym"] = make_deb(tmp_path, "demo-dbgsym", version, {debug_file: installed})
    run = hpkg("build", debs["baseline"], debs["fixed"], "-o", tmp_path / "out", "--json", "--no-debuginfod",
               "--old-dbgsym", debs["baseline-dbgsym"], "--new-dbgsym", debs["fixed-dbgsym"])
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    check_document(document, "build")
    (entry,) = document["files"]
    assert entry["status"] == "built"
    debug_file = entry["build"]["old"]["debug_file"]
    assert debug_file.startswith(f"{debs['baseline-dbgsym']}:usr/lib/debug/.build-id/")
    assert entry["build"]["mode"] == "relocations" or entry["build"]["functions"]
    bare = json.loads(hpkg("diff", debs["baseline"], debs["fixed"], "--json", "--no-debuginfod").stdout)
    assert bare["files"][0]["diff"]["old"]["debug_file"] is None


def _build_id(path: Path) -> str:
    out = subprocess.run(["readelf", "-n", path], capture_output=True, text=True, check=True).stdout
    return out.split("Build ID: ")[1].split()[0]


@pytest.mark.parametrize(
    ("members", "said"),
    [
        ([("./usr/", b""), ("../escape", b"\x7fELF")], "path traversal"),
        ([("/etc/absolute", b"\x7fELF")], "path traversal"),
    ],
    ids=["dot-dot", "absolute"],
)
def test_a_deb_member_outside_the_package_is_refused_and_nothing_is_left_behind(
    tmp_path: Path, members: list[tuple[str, bytes]], said: str
) -> None:
    hostile = raw_deb(tmp_path / "hostile.deb", members)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    run = hpkg("diff", hostile, hostile, "--json", env={**os.environ, "TMPDIR": str(private_tmp)})
    document = check_error_document(run.stdout, "diff", 3, "invalid-deb")
    assert said in document["error"]["message"] and run.stderr.count("\n") == 1
    assert list(private_tmp.iterdir()) == []
    assert not (tmp_path / "escape").exists()


def test_a_symlink_escaping_the_package_is_refused(tmp_path: Path) -> None:
    build_corpus()
    deb = make_deb(tmp_path, "links", "1", {"usr/bin/bounds": BOUNDS / "baseline"},
                   {"usr/lib/escape": "../../../../etc/shadow"})
    run = hpkg("build", deb, deb, "-o", tmp_path / "out", "--no-debuginfod")
    assert run.returncode == 3
    said = "symlink usr/lib/escape -> ../../../../etc/shadow points outside the package"
    assert run.stderr == f"error: {deb}: {said}\n"


@pytest.fixture(scope="module")
def libexpat() -> tuple[Path, Path]:
    """Two versions of Debian's libexpat1 (bench/pairs.toml): from the bench cache, else apt-get download
    (make test fetches them first); skipped only when neither gives them."""
    from bench.corpus import CorpusError, default_cache_dir, fetch_deb, load_specs

    (spec,) = [s for s in load_specs() if s.package == "libexpat1"]
    try:
        return tuple(fetch_deb("libexpat1", v, default_cache_dir() / "debs")  # type: ignore[return-value]
                     for v in (spec.old_version, spec.new_version))
    except CorpusError as exc:
        pytest.skip(f"libexpat1 is neither cached nor downloadable: {exc}")


def test_a_real_libexpat_security_update_is_paired_and_built_per_library(
    libexpat: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = libexpat
    first = hpkg("build", old, new, "-o", tmp_path / "first", "--json", "--no-debuginfod")
    assert first.returncode in (0, 4), first.stderr
    document = json.loads(first.stdout)
    check_document(document, "build")
    libraries = {"lib/x86_64-linux-gnu/libexpat.so.1.8.10", "usr/lib/x86_64-linux-gnu/libexpatw.so.1.8.10"}
    assert set(_statuses(document)) == libraries
    # A refusal that an --allow can accept says which; accepting every such code builds one package per
    # library (the engine's verdict on this update today: data-offset-inferred, the stripped build's data).
    allowed = set()
    for entry in document["files"]:
        assert entry["status"] in ("built", "refused"), entry
        for reason in entry.get("reasons", ()):
            code = reason.split(":")[0]
            assert reason.endswith(f"(accept with --allow {code})"), reason
            allowed.add(code)
    run = hpkg("build", old, new, "-o", tmp_path / "built", "--json", "--no-debuginfod",
               *[arg for code in sorted(allowed) for arg in ("--allow", code)])
    assert run.returncode == 0, run.stderr
    built = json.loads(run.stdout)
    check_document(built, "build")
    assert _statuses(built) == dict.fromkeys(libraries, "built")
    for entry in built["files"]:
        inspected = json.loads(hpkg("inspect", entry["output"], "--json").stdout)
        assert inspected["target"]["build_id"] == entry["build"]["old"]["build_id"]
        assert inspected["target"]["soname_hint"] in ("libexpat.so.1", "libexpatw.so.1")
