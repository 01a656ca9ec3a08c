"""`make demo`: patch a running multithreaded server live, show the fix with its state kept, revert;
then patch every process of the machine that runs a baseline at once, and take it out everywhere.

Every step runs the real `hpkg` command line on the bundled threaded-server sample
(samples/14-threaded-server) and prints what it did, as an operator would read it.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "14-threaded-server"
HPKG = [sys.executable, "-m", "hpkg"]
LONG_PATH = "GET /" + "x" * 40
# samples/Makefile's hotpatch-ready flags, for the machine-wide step's own build of the server.
READY_FLAGS = ["-O2", "-g", "-fno-omit-frame-pointer", "-flive-patching=inline-clone", "-fcf-protection=none",
               "-Wl,--emit-relocs", "-pthread"]  # fmt: skip


def step(number: int, title: str) -> None:
    print(f"\n== {number}. {title}", flush=True)


def run(
    args: list[str], *, show: bool = True, accept: tuple[int, ...] = (0,)
) -> subprocess.CompletedProcess[str]:
    """Run one command, echo it and its output, and stop the demo if it fails (exits outside `accept`)."""
    printable = " ".join(["hpkg", *args[len(HPKG) :]] if args[: len(HPKG)] == HPKG else args)
    print(f"$ {printable}", flush=True)
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if show:
        for line in (done.stdout + done.stderr).rstrip().splitlines():
            print(f"  {line}")
    if done.returncode not in accept:
        if not show:
            print((done.stdout + done.stderr).rstrip())
        raise SystemExit(f"demo: the command above failed with exit code {done.returncode}")
    return done


def ask(port: int, request: str) -> str:
    """Send one request line to the server and return its one-line answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request.encode() + b"\n")
        answer = conn.makefile().readline().strip()
    print(f"  request  {request}\n  answer   {answer}", flush=True)
    return answer


def start_server(binary: Path) -> tuple[subprocess.Popen[str], int]:
    """Start the baseline server on a free loopback port and wait until its workers exist."""
    server = subprocess.Popen([str(binary), "0"], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()
    match = re.match(r"listening on (\d+)", line)
    if match is None:
        server.kill()
        raise SystemExit(f"demo: the server did not start (it said {line!r})")
    return server, int(match.group(1))


def main() -> None:
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="hpkg-demo-"))
    out = (SAMPLE / "out").relative_to(ROOT)  # commands run in the repository root
    server: subprocess.Popen[str] | None = None
    servers: list[subprocess.Popen[str]] = []
    try:
        step(1, "Build the sample: a baseline server and its fix (hotpatch-ready flags)")
        run(["make", "-s", "-C", "samples", SAMPLE.name], show=False)
        print(f"  {out / 'baseline'}\n  {out / 'fixed'}")
        print("  the fix: handle_request() answers 414 for paths over 32 characters (CWE-770)")

        step(2, "Compare baseline and fix function by function")
        run([*HPKG, "diff", str(out / "baseline"), str(out / "fixed")])

        step(3, "Generate a signing key and build a signed package")
        key = work / "release-key"
        run([*HPKG, "keygen", str(key)])
        package = work / "threaded-server-fix.hpkg"
        baseline, fixed = str(out / "baseline"), str(out / "fixed")
        run([*HPKG, "build", baseline, fixed, "-o", str(package), "--key", str(key)])

        step(4, "Start the baseline server (8 worker threads) and send requests")
        server, port = start_server(out / "baseline")
        print(f"  server pid {server.pid}, listening on 127.0.0.1:{port}")
        ask(port, "GET /index.html")
        before = ask(port, LONG_PATH)

        step(5, "Apply the package to the running server")
        run([*HPKG, "apply", str(package), "--pid", str(server.pid), "--key", f"{key}.pub"])

        step(6, "The same request, answered the fixed way; the request counter kept counting")
        after = ask(port, LONG_PATH)
        print(f"  before the patch: {before!r}\n  after the patch:  {after!r}")

        step(7, "What is applied in the process")
        run([*HPKG, "status", "--pid", str(server.pid)])

        step(8, "Revert the package")
        run([*HPKG, "revert", "--pid", str(server.pid)])
        ask(port, LONG_PATH)

        step(9, "Stop the server")
        server.terminate()
        server.wait(timeout=5)
        print("  stopped")

        machine_wide(work, key, servers)
        print(f"\n  the demo took {time.monotonic() - began:.1f} s")
    finally:
        for process in [server, *servers]:
            if process is not None and process.poll() is None:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


def machine_wide(work: Path, key: Path, servers: list[subprocess.Popen[str]]) -> None:
    """Steps 10-13: three servers patched by one `apply --all`, listed by `status`, `revert --all`.

    `--all` patches every process of the machine that runs the baseline. So that the demo touches no
    server it did not start, this part builds the server once more with a build-id of its own.
    """
    step(10, "Three more servers of one baseline (built for this demo run: a build-id no one else runs)")
    source = SAMPLE / "sample.c"
    binaries = {}
    for build, define in (("baseline", []), ("fixed", ["-DFIX"])):
        binaries[build] = work / f"server.{build}"
        build_id = f"-Wl,--build-id=0x{secrets.token_hex(20)}"
        run(["gcc", *READY_FLAGS, *define, build_id, "-o", str(binaries[build]), str(source)], show=False)
    package = work / "server-fix.hpkg"
    built = run([*HPKG, "build", str(binaries["baseline"]), str(binaries["fixed"]), "-o", str(package),
                 "--key", str(key), "--json"], show=False)  # fmt: skip
    package_id = json.loads(built.stdout)["package_id"]
    ports = []
    for _ in range(3):
        server, port = start_server(binaries["baseline"])
        servers.append(server)
        ports.append(port)
    print(f"  server pids {', '.join(str(s.pid) for s in servers)}")

    step(11, "Apply to every process running the baseline, each on its own (one line per process)")
    run([*HPKG, "apply", str(package), "--all", "--key", f"{key}.pub"])
    for port in ports:
        ask(port, LONG_PATH)
    print("  again: nothing to do, and that is success (a configuration-management run can repeat it)")
    run([*HPKG, "apply", str(package), "--all", "--key", f"{key}.pub"])

    step(12, "Every process with an hpkg package applied (exit 4 if a record anywhere fails its seal)")
    run([*HPKG, "status"], accept=(0, 4))

    step(13, "Revert it everywhere")
    run([*HPKG, "revert", "--all", "--package", package_id])
    ask(ports[0], LONG_PATH)
    for server in servers:
        server.terminate()
        server.wait(timeout=5)
    print("  stopped")


if __name__ == "__main__":
    main()
