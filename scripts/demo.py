"""`make demo`: patch a running multithreaded server live, show the fix with its state kept, revert.

Every step runs the real `hpkg` command line on the bundled threaded-server sample
(samples/14-threaded-server) and prints what it did, as an operator would read it.
"""

from __future__ import annotations

import re
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


def step(number: int, title: str) -> None:
    print(f"\n== {number}. {title}", flush=True)


def run(args: list[str], *, show: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one command, echo it and its output, and stop the demo if it fails."""
    printable = " ".join(["hpkg", *args[len(HPKG) :]] if args[: len(HPKG)] == HPKG else args)
    print(f"$ {printable}", flush=True)
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if show:
        for line in (done.stdout + done.stderr).rstrip().splitlines():
            print(f"  {line}")
    if done.returncode != 0:
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
        print(f"  stopped; the demo took {time.monotonic() - began:.1f} s")
    finally:
        if server is not None and server.poll() is None:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
