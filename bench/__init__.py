"""hpkg's benchmark: diff speed against objdump, byte compare against hpkg diff, deltas against hpkg build.

Run from the repository root with `python -m bench` (or `make bench`); `--help` lists the options.
The pairs are described in bench/pairs.toml; measured figures are kept in bench/RESULTS.md.
"""
