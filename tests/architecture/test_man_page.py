"""`make man`: hpkg(1) is generated from the click commands, lists every command and option, and is
well-formed roff (groff -ww warns about nothing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click

from hpkg.cli import COMMAND_MODULES, cli

ROOT = Path(__file__).resolve().parents[2]


def test_man_page_lists_every_command_and_option_and_groff_reads_it_without_warnings(tmp_path: Path) -> None:
    page = tmp_path / "hpkg.1"
    subprocess.run([sys.executable, ROOT / "scripts" / "make-man.py", page], check=True, timeout=120)
    text = page.read_text()
    plain = text.replace("\\-", "-")
    group = click.Context(cli, info_name="hpkg")
    for name in COMMAND_MODULES:
        assert re.search(rf"^\.SS hpkg {name} ", plain, re.M), name
        command = cli.get_command(group, name)
        for param in command.params:
            for option in getattr(param, "opts", ()):
                if option.startswith("-"):
                    assert option in plain, f"{name} {option}"
    rendered = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", page], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    assert (rendered.returncode, rendered.stderr) == (0, "")
