"""Write hpkg's man page, hpkg(1), from the click commands themselves (`make man`).

Every command's usage line, help text and options come from click's introspection, so the page says
what `hpkg COMMAND --help` says; the exit codes come from hpkg.errors. Usage: make-man.py OUT.1
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import click

from hpkg import __version__
from hpkg.cli import COMMAND_MODULES, cli


def roff(text: str) -> str:
    """Escape text for roff: backslashes, and a leading dot or quote that would start a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)  # groff reads ASCII
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line for line in text.splitlines())


def paragraphs(text: str) -> list[str]:
    """click's help text as paragraphs (blank-line separated, lines re-joined)."""
    return [" ".join(block.split()) for block in text.strip().split("\n\n") if block.strip()]


def command_section(group_ctx: click.Context, name: str) -> list[str]:
    command = cli.get_command(group_ctx, name)
    assert command is not None
    ctx = click.Context(command, info_name=name, parent=group_ctx)
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines = [f".SS {roff(f'hpkg {name} {usage}')}"]
    for block in paragraphs(command.help or ""):
        lines += [".PP", roff(block)]
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        lines += [".TP", f"\\fB{roff(names)}\\fR", roff(" ".join(help_text.split()))]
    return lines


def man_page() -> str:
    group_ctx = click.Context(cli, info_name="hpkg")
    today = datetime.date.today().isoformat()
    lines = [
        f'.TH HPKG 1 "{today}" "hpkg {__version__}" "User Commands"',
        ".SH NAME",
        "hpkg \\- build hotpatch packages from shipped ELF binaries and apply them to running processes",
        ".SH SYNOPSIS",
        "\\fBhpkg\\fR [\\fB\\-q\\fR] [\\fB\\-v\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGS\\fR]",
        ".SH DESCRIPTION",
    ]
    for block in paragraphs(cli.help or ""):
        lines += [".PP", roff(block)]
    conventions = ("Every option may follow the command name (hpkg build OLD NEW -o OUT -q); an option that"
                   " takes one value may be given once.")
    lines += [".PP", roff(conventions)]
    lines.append(".SH COMMANDS")
    for name in sorted(COMMAND_MODULES):
        lines += command_section(group_ctx, name)
    lines += [
        ".SH JSON",
        roff("With --json every command prints one JSON document on standard output whose \"schema\" is "
             "hpkg.COMMAND/1 (agent: one document per line). A failure is a document too, "
             "{\"schema\": ..., \"error\": {\"code\", \"exit\", \"message\"}}, beside the one error: line on "
             "standard error. Addresses are JSON integers. The schemas are in the source tree, schemas/."),
        ".SH EXIT STATUS",
    ]
    for code, meaning in _exit_codes():
        lines += [".TP", f"\\fB{code}\\fR", roff(meaning)]
    lines += [
        ".SH ENVIRONMENT",
        ".TP", "\\fBHPKG_STORE\\fR",
        roff("The package store of install, uninstall, agent (default /var/lib/hpkg)."),
        ".TP", "\\fBDEBUGINFOD_URLS\\fR", roff("Servers diff and build fetch missing debug files from."),
        ".TP", "\\fBHPKG_DEBUG\\fR", roff("Set to 1: a traceback instead of an internal error line."),
        ".TP", "\\fB_HPKG_COMPLETE\\fR", roff("Shell completion: eval \"$(_HPKG_COMPLETE=bash_source hpkg)\" "
                                              "(zsh_source, fish_source for those shells)."),
        ".SH SEE ALSO",
        roff("README.md and docs/json.md of the hpkg source tree; formats/SPEC.md for the .hpkg format."),
    ]
    return "\n".join(lines) + "\n"


def _exit_codes() -> list[tuple[int, str]]:
    from hpkg import errors

    return [
        (errors.EXIT_OK, "success"),
        (errors.EXIT_INTERNAL, "internal error (a bug in hpkg)"),
        (errors.EXIT_USAGE, "usage error (bad option or argument, an option given twice)"),
        (errors.EXIT_INVALID, "invalid input: a malformed, tampered or wrongly signed package, an unreadable "
                              "binary, a .deb that cannot be unpacked safely"),
        (errors.EXIT_REFUSED, "refused: not hot-patchable, incompatible baseline, or unsafe to apply now"),
        (errors.EXIT_NO_CHANGE, "no change: nothing to patch"),
        (errors.EXIT_TARGET, "target unavailable: no such process, permission denied, output not writable"),
        (errors.EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
    ]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: make-man.py OUT.1", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(man_page())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
