"""`hpkg diff` and `hpkg build` take the symbols of stripped (Debian-built) samples from a real debuginfod
server by build-id, with no debug-file option; a server without the file, an unreachable or silent one,
a lying one and an oversized file each give one `error:` line naming the build-id and the server."""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from debuginfod_helpers import Server, unused_port
from sample_corpus import Sample, load_samples

from hpkg.builder.image import find_debug_file, lookup_build_id

PATCHABLE_STRIPPED = [
    s.name for s in load_samples() if s.expectations["stripped"].verdict == "patchable"
]  # fmt: skip
# A stripped build that needs its symbols: without them a changed function refers to data it cannot name.
NEEDS_SYMBOLS = "02-changed-constant"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


def hpkg(*args: object, urls: str | None, cache: Path, **settings: str) -> Run:
    """The real command line in a child process, with DEBUGINFOD_URLS (None: unset), the cache and
    other DEBUGINFOD_* settings (DEBUGINFOD_TIMEOUT="1") set; none from the calling environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEBUGINFOD_")}
    env["XDG_CACHE_HOME"] = str(cache)
    if urls is not None:
        env["DEBUGINFOD_URLS"] = urls
    env.update(settings)
    proc = subprocess.run(
        [sys.executable, "-m", "hpkg", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def build_id(path: Path) -> str:
    notes = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, check=True).stdout
    return re.search(r"Build ID: ([0-9a-f]+)", notes).group(1)


def cached_files(cache: Path) -> list[Path]:
    """Every file under the hpkg debuginfod cache, temporary ones included."""
    root = cache / "hpkg" / "debuginfod"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def one_error_line(run: Run) -> str:
    lines = run.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.err
    return lines[0]


def unpatched_stripped_copy(sample: Sample, tmp_path: Path) -> Path:
    """A stripped build no server indexes: the hotpatch-ready link (its own build-id), stripped."""
    copy = tmp_path / "not-indexed"
    subprocess.run(["strip", "-o", str(copy), str(sample.binary("baseline", "ready"))], check=True)
    return copy


# --- symbols from the server ------------------------------------------------------------------------


@pytest.mark.parametrize("name", PATCHABLE_STRIPPED)
def test_build_takes_the_debug_files_from_debuginfod(name, samples, debuginfod_server: Server, tmp_path):
    """The package is byte for byte the one built with the same debug files given by hand."""
    sample = samples[name]
    old, new = sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped")
    cache = tmp_path / "cache"
    fetched = hpkg("build", old, new, "-o", tmp_path / "fetched.hpkg", "--json", urls=debuginfod_server.url,
                   cache=cache)  # fmt: skip
    assert fetched.code == 0, fetched.err
    wanted = {build_id(old), build_id(new)}
    assert wanted <= debuginfod_server.build_ids
    files = cached_files(cache)
    assert {f"{p.parent.name}{p.stem}" for p in files} == wanted  # both fetched, no temporary file left
    debug_root = sample.out / "debug"
    given = hpkg(
        "build", old, new, "-o", tmp_path / "given.hpkg", "--no-debuginfod",
        "--old-debug", find_debug_file(build_id(old), (str(debug_root),)),
        "--new-debug", find_debug_file(build_id(new), (str(debug_root),)),
        urls=None, cache=tmp_path / "unused",
    )  # fmt: skip
    assert given.code == 0, given.err
    assert (tmp_path / "fetched.hpkg").read_bytes() == (tmp_path / "given.hpkg").read_bytes()
    functions = {f["name"] for f in fetched.json()["functions"]}
    assert sample.expectations["stripped"].changed <= functions


def test_diff_names_the_functions_of_a_stripped_build(samples, debuginfod_server: Server, tmp_path):
    sample = samples["06-static-function"]
    old, new = sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped")
    without = hpkg("diff", old, new, "--json", urls=None, cache=tmp_path)
    assert without.code == 0, without.err
    assert all(e["name"].startswith("sub_") for e in without.json()["changed"])
    fetched = hpkg("diff", old, new, "--json", urls=debuginfod_server.url, cache=tmp_path)
    assert fetched.code == 0, fetched.err
    assert {e["name"] for e in fetched.json()["changed"]} == sample.expectations["stripped"].changed
    assert "warning" not in fetched.err


def test_the_first_server_that_has_the_file_answers(samples, debuginfod_server: Server, tmp_path):
    sample = samples[NEEDS_SYMBOLS]
    urls = f"http://127.0.0.1:{unused_port()} {debuginfod_server.url}/"
    run = hpkg("build", sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped"),
               "-o", tmp_path / "p.hpkg", urls=urls, cache=tmp_path)  # fmt: skip
    assert run.code == 0, run.err


def test_the_cache_answers_once_a_file_is_fetched(samples, debuginfod_server: Server, tmp_path):
    sample = samples[NEEDS_SYMBOLS]
    old, new = sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped")
    first = hpkg("build", old, new, "-o", tmp_path / "1.hpkg", urls=debuginfod_server.url, cache=tmp_path)
    assert first.code == 0, first.err
    # No server listens there: only the cache can supply the symbols.
    again = hpkg("build", old, new, "-o", tmp_path / "2.hpkg", urls=f"http://127.0.0.1:{unused_port()}",
                 cache=tmp_path)  # fmt: skip
    assert again.code == 0, again.err
    assert (tmp_path / "1.hpkg").read_bytes() == (tmp_path / "2.hpkg").read_bytes()


def test_a_cached_file_of_another_build_is_fetched_again(samples, debuginfod_server: Server, tmp_path):
    sample = samples[NEEDS_SYMBOLS]
    old, new = sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped")
    wrong = tmp_path / "hpkg" / "debuginfod" / ".build-id" / build_id(old)[:2] / f"{build_id(old)[2:]}.debug"
    wrong.parent.mkdir(parents=True)
    wrong.write_bytes(find_debug_file(build_id(new), (str(sample.out / "debug"),)).read_bytes())
    run = hpkg("build", old, new, "-o", tmp_path / "p.hpkg", urls=debuginfod_server.url, cache=tmp_path)
    assert run.code == 0, run.err
    assert build_id(wrong) == build_id(old)


# --- turning it off ---------------------------------------------------------------------------------


@pytest.mark.parametrize("off", ["--no-debuginfod", "empty DEBUGINFOD_URLS"])
def test_no_debuginfod_or_an_empty_list_asks_no_server(off, samples, debuginfod_server: Server, tmp_path):
    sample = samples[NEEDS_SYMBOLS]
    option = ("--no-debuginfod",) if off == "--no-debuginfod" else ()
    urls = debuginfod_server.url if option else " "
    run = hpkg("build", sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped"),
               "-o", tmp_path / "p.hpkg", *option, urls=urls, cache=tmp_path)  # fmt: skip
    assert run.code == 4  # as without any server: the changed code's data is only inferred, not named
    assert "data-offset-inferred" in run.err
    assert cached_files(tmp_path) == []


# --- failures: one line, the build-id and the server ------------------------------------------------


def test_a_server_without_the_file_is_one_error_line(samples, debuginfod_server: Server, tmp_path):
    sample = samples["01-bounds-check"]
    lonely = unpatched_stripped_copy(sample, tmp_path)
    run = hpkg("diff", lonely, sample.binary("fixed", "stripped"), urls=debuginfod_server.url,
               cache=tmp_path / "cache")  # fmt: skip
    assert run.code == 3
    line = one_error_line(run)
    assert f"no debug file for build-id {build_id(lonely)}" in line
    assert f"{debuginfod_server.url}: not found (HTTP 404)" in line
    assert cached_files(tmp_path / "cache") == []


def test_an_unreachable_server_is_one_error_line(samples, tmp_path):
    sample = samples[NEEDS_SYMBOLS]
    old = sample.binary("baseline", "stripped")
    url = f"http://127.0.0.1:{unused_port()}"
    run = hpkg("build", old, sample.binary("fixed", "stripped"), "-o", tmp_path / "p.hpkg", urls=url,
               cache=tmp_path)  # fmt: skip
    assert run.code == 3
    line = one_error_line(run)
    assert f"build-id {build_id(old)}" in line and f"{url}: cannot be reached" in line
    assert not (tmp_path / "p.hpkg").exists()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback socket that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_silent_server_times_out_with_one_error_line(samples, silent_server, tmp_path):
    sample = samples[NEEDS_SYMBOLS]
    run = hpkg("diff", sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped"),
               urls=silent_server, cache=tmp_path, DEBUGINFOD_TIMEOUT="1")  # fmt: skip
    assert run.code == 3
    assert f"{silent_server}: no answer within 1 s (DEBUGINFOD_TIMEOUT)" in one_error_line(run)


class _Liar(http.server.BaseHTTPRequestHandler):
    """Answers every build-id with the same file: a debug file of some other build."""

    body = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def lying_server(samples) -> Iterator[str]:
    sample = samples["01-bounds-check"]
    debug = find_debug_file(build_id(sample.binary("baseline", "stripped")), (str(sample.out / "debug"),))
    handler = type("Liar", (_Liar,), {"body": debug.read_bytes()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_file_of_another_build_is_never_used(samples, lying_server, tmp_path):
    sample = samples[NEEDS_SYMBOLS]
    old = sample.binary("baseline", "stripped")
    run = hpkg("diff", old, sample.binary("fixed", "stripped"), urls=lying_server, cache=tmp_path)
    assert run.code == 3
    line = one_error_line(run)
    assert (
        f"build-id {build_id(old)}: {lying_server}: sent a file that is not the debug file of that build-id"
        in line
    )
    assert cached_files(tmp_path) == []


def test_a_file_over_the_size_limit_is_not_downloaded(samples, debuginfod_server: Server, tmp_path):
    sample = samples[NEEDS_SYMBOLS]
    run = hpkg("diff", sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped"),
               urls=debuginfod_server.url, cache=tmp_path, DEBUGINFOD_MAXSIZE="1000")  # fmt: skip
    assert run.code == 3
    assert "over the limit of 1000" in one_error_line(run)
    assert cached_files(tmp_path) == []


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("DEBUGINFOD_URLS", "ftp://127.0.0.1/", "is not an http:// or https:// URL"),
        ("DEBUGINFOD_TIMEOUT", "soon", "is not a number of seconds"),
        ("DEBUGINFOD_MAXSIZE", "big", "is not a number of bytes"),
    ],
)
def test_a_malformed_setting_is_a_usage_error(variable, value, says, samples, tmp_path):
    sample = samples[NEEDS_SYMBOLS]
    settings = {"DEBUGINFOD_URLS": f"http://127.0.0.1:{unused_port()}", variable: value}
    run = hpkg("diff", sample.binary("baseline", "stripped"), sample.binary("fixed", "stripped"),
               urls=None, cache=tmp_path, **settings)  # fmt: skip
    assert run.code == 2
    assert says in run.err


# --- build-ids that name no debug file --------------------------------------------------------------


@pytest.fixture
def huge_build_id(tmp_path) -> Path:
    """A stripped program whose GNU build-id note holds 2,000 bytes (ld takes any --build-id=0xHEX)."""
    source = tmp_path / "m.c"
    source.write_text("int main(void) { return 0; }\n")
    linked = tmp_path / "huge.unstripped"
    subprocess.run(
        ["gcc", "-O2", "-o", str(linked), str(source), f"-Wl,--build-id=0x{'ab' * 2000}"], check=True
    )
    stripped = tmp_path / "huge"
    subprocess.run(["strip", "-o", str(stripped), str(linked)], check=True)
    assert len(build_id(stripped)) == 4000
    return stripped


def test_a_huge_build_id_is_never_looked_up(huge_build_id, tmp_path):
    assert lookup_build_id(build_id(huge_build_id)) is None
    assert find_debug_file(build_id(huge_build_id)) is None  # was ENAMETOOLONG under /usr/lib/debug
    # No server listens there: a lookup would be an error.
    url = f"http://127.0.0.1:{unused_port()}"
    diff = hpkg("diff", huge_build_id, huge_build_id, urls=url, cache=tmp_path)
    assert diff.code == 0, diff.err
    build = hpkg("build", huge_build_id, huge_build_id, "-o", tmp_path / "p.hpkg", urls=url, cache=tmp_path)
    assert build.code == 5  # nothing to patch, said in one short line
    assert one_error_line(build) == "error: nothing to patch: baseline and fix do not differ in code"
