"""`python -m fuzz`: run (or continue) a fuzz campaign; `--report` prints the figures for FUZZING.md."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from fuzz.corpus import REPO_ROOT
from fuzz.worker import Limits

DEFAULT_STATE = REPO_ROOT / ".fuzz" / "state.json"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("--seed", type=int, default=1, help="campaign seed: input N is made from (seed, N)")
    parser.add_argument("--inputs", type=int, default=10**6, help="inputs to run in this session")
    parser.add_argument("--seconds", type=float, default=float("inf"), help="stop after this wall time")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="resumable state file")
    parser.add_argument(
        "--first-input", type=int, default=0,
        help="where a new state starts (to continue a campaign whose state file was lost); "
        "ignored when the state file exists",
    )  # fmt: skip
    parser.add_argument("--cases", type=Path, help="regression cases file (default: tests/fuzz/cases.json)")
    parser.add_argument(
        "--memory-mib", type=int, default=2048, help="address space per input beyond the parent's"
    )
    parser.add_argument("--cpu-seconds", type=int, default=30, help="CPU-time limit per input")
    parser.add_argument("--wall-seconds", type=float, default=60.0, help="wall-clock limit per input")
    parser.add_argument("--report", action="store_true", help="print the state's figures (markdown), exit")
    return parser.parse_args(argv)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.report:
        from fuzz.report import markdown
        from fuzz.state import State

        print(markdown(State.load(arguments.state, arguments.seed, arguments.first_input)))
        return 0
    from fuzz.campaign import CASES_FILE, Campaign

    limits = Limits(arguments.memory_mib << 20, arguments.cpu_seconds, arguments.wall_seconds)
    campaign = Campaign(
        arguments.seed, arguments.state, limits, _log, arguments.cases or CASES_FILE, arguments.first_input
    )

    def stop(number: int, frame: object) -> None:
        # A flag, not an exception: an exception raised inside fork()'s own handlers would be lost.
        campaign.stop_requested = True

    # Ctrl-C and `kill PID` end the campaign after the current input: state saved, scratch removed.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        campaign.fuzz(arguments.inputs, arguments.seconds)
    finally:
        campaign.close()
    if campaign.stop_requested:
        print("stopped; the state is saved, run again to continue", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
