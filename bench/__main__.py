"""`python -m bench`: run the benchmark and print tables, or one JSON document with --json."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench import corpus
from bench.report import to_json, to_table
from bench.run import Settings, run_bench, select_specs

# Timing rounds per pair role; "sample" is the delta encodes of a samples-corpus pair, "pause" the
# interleaved live-apply and restart rounds per server, "memory" the peak-memory runs of each hpkg
# command (fresh processes; the figure barely moves between runs), "scale" the >= 100 MB pair,
# "machine" the rounds of `apply --all` beside its loops (bench/machine.py).
DEFAULT_RUNS = {"small": 5, "large": 3, "security": 3, "sample": 3, "pause": 10, "memory": 1, "scale": 1,
                "machine": 3}  # fmt: skip
QUICK_RUNS = {"small": 3, "large": 1, "security": 1, "sample": 1, "pause": 2, "memory": 1, "scale": 1,
              "machine": 1}  # fmt: skip


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line: what to measure, how often, and where to keep files."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--markdown", action="store_true", help="print the tables as GitHub markdown")
    parser.add_argument(
        "--save-json", type=Path, metavar="FILE", help="also write the JSON document of this run to FILE"
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer timing rounds (small 3, pause 2, others 1)"
    )
    parser.add_argument(
        "--pair",
        action="append",
        default=[],
        metavar="SELECTOR",
        help="a role (small, large, security, sample, scale), the start of a pair or sample name, "
        "`pause` (live apply pause vs restart), `load` (apply/revert cycles under requests) or `machine`"
        " (apply --all over 20 servers beside a loop of apply --pid); repeatable; default: all but the"
        " scale pair, the load and machine",
    )
    parser.add_argument(
        "--cycles", type=int, default=1000, metavar="N", help="apply/revert cycles of `--pair load` (1000)"
    )
    parser.add_argument("--runs", type=int, metavar="N", help="timing rounds for every pair (beats --quick)")
    parser.add_argument("--workdir", type=Path, help="keep binaries and deltas here (default: a temp dir)")
    parser.add_argument(
        "--cache", type=Path, help="downloaded packages (default: $HPKG_BENCH_CACHE or ~/.cache/hpkg-bench)"
    )
    parser.add_argument("--no-download", action="store_true", help="skip pairs that need an apt download")
    parser.add_argument("--list", action="store_true", help="list the pairs of bench/pairs.toml and exit")
    parser.add_argument(
        "--fetch-only", action="store_true", help="download and unpack the Debian pairs, print their paths"
    )
    arguments = parser.parse_args(argv)
    if arguments.cycles < 1:
        parser.error("--cycles must be at least 1")
    if arguments.runs is not None and arguments.runs < 1:
        parser.error("--runs must be at least 1")
    return arguments


def fetch_only(specs: list[corpus.PairSpec], cache: Path) -> int:
    """Make every selected Debian pair available in the cache and print the two shared objects."""
    failed = False
    for spec in specs:
        if spec.role in ("small", "sample"):
            continue
        try:
            pair = corpus.fetch_debian_pair(spec, cache)
        except corpus.CorpusError as exc:
            print(f"{spec.name}: {exc}", file=sys.stderr)
            failed = True
            continue
        print(f"{spec.name}\n  old {pair.old}\n  new {pair.new}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Run the bench; exit 1 when a selected pair could not be measured at all."""
    arguments = parse_arguments(argv)
    every = corpus.load_specs() + corpus.sample_specs()
    specs = select_specs(every, arguments.pair)
    pause = not arguments.pair or "pause" in arguments.pair
    load = "load" in arguments.pair
    machine_wide = "machine" in arguments.pair
    if arguments.list or not (specs or pause or load or machine_wide):
        for spec in every:
            print(f"{spec.role:9} {spec.name}")
        print(f"{'pause':9} live apply pause vs restart (14-threaded-server, stream_server)")
        print(f"{'load':9} apply/revert cycles under a request stream (14-threaded-server)")
        print(f"{'machine':9} apply --all over 20 servers beside apply --pid and verify --pid loops")
        return 0 if arguments.list else 2
    if arguments.fetch_only:
        return fetch_only(specs, arguments.cache or corpus.default_cache_dir())
    runs = dict(QUICK_RUNS if arguments.quick else DEFAULT_RUNS)
    if arguments.runs is not None:
        runs = dict.fromkeys(runs, arguments.runs)
    with tempfile.TemporaryDirectory(prefix="hpkg-bench-") as scratch:
        settings = Settings(
            runs=runs,
            workdir=arguments.workdir or Path(scratch),
            cache=arguments.cache or corpus.default_cache_dir(),
            download=not arguments.no_download,
        )
        result = run_bench(specs, settings, pause, arguments.cycles if load else 0, machine_wide)
    if arguments.save_json is not None:
        arguments.save_json.write_text(to_json(result) + "\n")
    print(to_json(result) if arguments.json else to_table(result, markdown=arguments.markdown))
    measured = (*result.pairs, *result.pause, *result.load, *result.machine_wide)
    return 1 if any(p.error for p in measured) else 0


if __name__ == "__main__":
    sys.exit(main())
