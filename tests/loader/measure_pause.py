"""Measure the pause of a live switch on the 8-thread test program (not a test: timings vary).

`python tests/loader/measure_pause.py [ROUNDS]` compiles programs/threads.c, starts it, and times
rounds of stop-all-threads + write a 5-byte jump at `answer` (or its pre-image) + resume, without
and with the safety check, and of one injection (mmap + munmap) at the main thread, printing
min / median / p95 / max of the time the threads were stopped.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hpkg.loader import inject, jumps, safety
from hpkg.loader.process import Process

PROGRAMS = Path(__file__).parent / "programs"


def nm_symbol(binary: Path, name: str) -> tuple[int, int]:
    out = subprocess.run(["nm", "-S", str(binary)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3] == name:
            return int(parts[0], 16), int(parts[1], 16)
    raise SystemExit(f"no symbol {name}")


def summary(label: str, pauses: list[float]) -> str:
    ms = sorted(p * 1000 for p in pauses)
    p95 = ms[int(len(ms) * 0.95) - 1]
    return (
        f"{label}: n={len(ms)} min={ms[0]:.3f} ms median={statistics.median(ms):.3f} ms "
        f"p95={p95:.3f} ms max={ms[-1]:.3f} ms"
    )


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "threads"
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(PROGRAMS / "threads.c")], check=True)
        target = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            process = Process(target.pid)
            image = next(i for i in process.images() if i.path == str(binary))
            answer = image.runtime_address(nm_symbol(binary, "answer")[0])
            fixed = image.runtime_address(nm_symbol(binary, "answer_fixed")[0])
            jump = jumps.encode_jmp_rel32(answer, fixed)
            pre_image = process.read(answer, 5)
            print(f"threads: {len(process.threads())}")
            plain, checked = [], []
            for n in range(rounds):
                with process.stop_all_threads() as stopped:
                    stopped.write(answer, jump if n % 2 == 0 else pre_image)
                plain.append(stopped.pause)
            replaced = [safety.CodeRange("answer", answer, answer + 6)]
            windows = [safety.CodeRange("answer", answer, answer + 5)]
            for n in range(rounds):
                with safety.stop_when_safe(process, replaced, windows) as stopped:
                    stopped.write(answer, jump if n % 2 == 0 else pre_image)
                checked.append(stopped.pause)
            injected = []
            for _ in range(rounds):
                with process.stop_thread() as stopped, inject.Injector(stopped) as injector:
                    flags = inject.MAP_PRIVATE | inject.MAP_ANONYMOUS
                    address = injector.mmap(0, 4096, inject.PROT_READ, flags)
                    injector.munmap(address, 4096)
                injected.append(stopped.pause)
            print(summary("all threads: stop + write + resume", plain))
            print(summary("all threads: stop + safety check + write + resume", checked))
            print(summary("one thread: stop + inject mmap + munmap + resume", injected))
        finally:
            target.kill()
            target.wait()


if __name__ == "__main__":
    main()
