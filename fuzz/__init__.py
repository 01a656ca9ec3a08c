"""The fuzz harness (`make fuzz`, `python -m fuzz`): hostile inputs for every command that reads one.

Mutated ELF files made from the built samples go to `hpkg diff` and `hpkg build`; mutated, re-signed
and structurally hostile packages go to `hpkg inspect`, `hpkg verify` and `hpkg apply --file`. One
parent imports hpkg once and forks a child per input that runs the CLI's `main` in-process, with
address-space, CPU-time and wall-clock limits. Every outcome that breaks the contract (exit 1,
"internal error", a traceback, a signal, a timeout, a memory blow-up, more than one `error:` line,
a Python warning on stderr) is a crash class; each class is minimised and written to
tests/fuzz/cases.json, which tests/fuzz replays against freshly built samples. FUZZING.md has the figures.
"""
