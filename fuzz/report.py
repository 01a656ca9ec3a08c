"""A campaign's figures as markdown (FUZZING.md): inputs, rate, endings, slowest, peak memory, classes."""

from __future__ import annotations

from fuzz.state import State


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(state: State) -> str:
    rate = state.inputs_run / state.seconds if state.seconds else 0.0
    endings = sorted(state.by_ending)
    span = f" (inputs {state.first_input:,} to {state.next_input - 1:,})" if state.first_input else ""
    out = [
        f"Seed {state.seed}: {state.inputs_run:,} inputs{span} in {state.seconds / 3600:.2f} h of wall time "
        f"over {state.sessions} session(s), {rate:.1f} inputs/s (1 worker, `nice -n 19`).",
        "",
        "By target and ending (exit code, signal or timeout):",
        "",
        *_table(
            ["target", "inputs", *endings],
            [[target, f"{state.by_target[target]:,}",
              *(f"{state.by_target_ending[target].get(e, 0):,}" for e in endings)]
             for target in sorted(state.by_target)],
        ),  # fmt: skip
        "",
        f"Peak resident set of one input: {state.peak_rss_kib / 1024:.0f} MiB (input {state.peak_rss_input}; "
        "a forked child starts with the parent's resident pages).",
        "",
        "Slowest inputs:",
        "",
        *_table(["seconds", "input", "target", "ending"],
                [[f"{s['seconds']:.3f}", str(s["input"]), s["target"], s["ending"]] for s in state.slowest]),
        "",
        "Crash classes:",
        "",
    ]  # fmt: skip
    if not state.classes:
        out.append("none")
    else:
        out += _table(["class", "inputs", "first input", "target", "seed", "detail"],
                      [[name, str(c.count), str(c.first_input), c.target, c.seed, _cell(c.detail)]
                       for name, c in sorted(state.classes.items())])  # fmt: skip
    return "\n".join(out)
