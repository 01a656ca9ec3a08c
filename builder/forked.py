"""Run jobs in forked children and collect their results: the diff's way to keep a stage's scratch
memory out of the process that holds the results.

A job is a function of a progress callback; the child inherits everything the parent has (nothing
is pickled to it), runs the job, and streams its pickled result back through a pipe, then exits and
frees all it allocated: a large library's canonicalization leaves ~100 MiB of freed-but-fragmented
heap behind, which would otherwise stay in the parent for the rest of the diff. Children run all at
once, forked together, or one at a time in the order given (`concurrent=False`): each forked once
the result of the one before has been read. A child shares the parent's pages until either side
writes one; forked together, the later children kept copies of every page the parent wrote while
receiving the earlier ones' results (libwebkit2gtk: 34 MiB), and with a lock taken in turn the
second child could run first while the first's result waited in its pipe with its whole heap (a
tree peak of 518 MiB instead of 376). A child forked late inherits the earlier results, as shared
pages it never touches. Progress counts arrive on one shared pipe (small messages, written whole);
an exception in a child is raised again in the parent, and a child that dies without a result is
an error naming its signal or exit status.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

Progress = Callable[[int], None]
Job = Callable[[Progress], Any]


class ChildFailed(RuntimeError):
    """A child process ended without sending its result (killed, or out of memory)."""


def _child(job: Job, results: Connection, counts: Connection) -> None:
    """The child's side: run the job, send ("ok", result) or ("error", exception)."""

    def report(count: int) -> None:
        counts.send(count)

    try:
        outcome: tuple[str, Any] = ("ok", job(report))
    except BaseException as exc:  # noqa: BLE001  (sent to the parent, which raises it)
        outcome = ("error", exc)
    try:
        with os.fdopen(os.dup(results.fileno()), "wb") as stream:
            pickle.dump(outcome, stream, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an exception that does not pickle: its text does
        with os.fdopen(os.dup(results.fileno()), "wb") as stream:
            pickle.dump(("error", ChildFailed(f"{type(exc).__name__}: {exc}")), stream)


def run_forked(jobs: Sequence[Job], concurrent: bool, progress: Progress | None = None) -> list[Any]:
    """Each job's result, in order, each job run in a forked child of its own."""
    context = multiprocessing.get_context("fork")
    counts_reader, counts_writer = context.Pipe(duplex=False)
    children: list[tuple[Any, Connection]] = []

    def start(job: Job) -> None:
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(target=_child, args=(job, writer, counts_writer), daemon=True)
        process.start()
        writer.close()
        children.append((process, reader))

    try:
        results: list[Any] = []
        if concurrent:
            for job in jobs:
                start(job)
        for i, job in enumerate(jobs):
            if not concurrent:
                start(job)
            if i == len(jobs) - 1:
                counts_writer.close()  # every child forked: the pipe ends when the last one exits
            process, reader = children[i]
            results.append(_receive(process, reader, counts_reader, progress))
        while counts_reader.poll() and _count(counts_reader, progress):
            pass  # the last counts, up to the end of the pipe
        return results
    finally:
        counts_writer.close()
        for process, reader in children:
            reader.close()
            if process.is_alive():
                process.kill()
            process.join()
        counts_reader.close()


def _count(counts: Connection, progress: Progress | None) -> bool:
    """Pass one progress message on; False once every child closed the pipe."""
    try:
        count = counts.recv()
    except EOFError:
        return False
    if progress is not None:
        progress(count)
    return True


def _receive(process, reader: Connection, counts: Connection, progress: Progress | None) -> Any:  # noqa: ANN001
    """One child's result, passing progress messages on while it works."""
    counting = True
    while True:
        ready = wait([reader, counts] if counting else [reader])
        if counts in ready:
            counting = _count(counts, progress)
        if reader in ready:
            break
    try:
        with os.fdopen(os.dup(reader.fileno()), "rb") as stream:
            status, value = pickle.load(stream)
    except (EOFError, pickle.UnpicklingError):
        process.join()
        code = process.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        raise ChildFailed(f"a child process of the diff ended without its result ({how})") from None
    if status == "error":
        raise value
    return value
