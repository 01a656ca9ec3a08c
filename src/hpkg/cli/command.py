"""What every `hpkg` command shares: `-q`/`-v` after the command name, `--json`, and strict options.

A click option given twice normally keeps the last value without a word (`status --pid 1 --pid 2` would
check pid 2 only); here a repeated single-valued option is a usage error, while options declared
`multiple=True` (`--allow`) are documented lists and flags may repeat harmlessly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from hpkg.cli.app import Application

F = TypeVar("F", bound=Callable[..., object])


def _app(ctx: click.Context) -> Application:
    app = ctx.find_object(Application)
    if app is None:  # a command invoked on its own (a test, an embedding program): default options
        app = ctx.ensure_object(Application)
    return app


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        _app(ctx).quiet = True


def _set_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        _app(ctx).verbose = True


def _options_before_separator(args: list[str]) -> list[str]:
    return args[: args.index("--")] if "--" in args else args


class HpkgCommand(click.Command):
    """A command with `-q`/`-v` of its own (so they work after the command name) that refuses a repeated
    single-valued option and tells the Application its name and output mode before parsing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(
            ["-q", "--quiet"], is_flag=True, expose_value=False, callback=_set_quiet,
            help="Only print results and errors.",
        ))
        self.params.append(click.Option(
            ["-v", "--verbose"], is_flag=True, expose_value=False, callback=_set_verbose,
            help="Also print details on stderr (inputs, build-ids, stage timings).",
        ))

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        app = _app(ctx)
        app.command = self.name
        # Known before parsing, so that a usage error of a `--json` run is a JSON document too.
        if any(p.name == "as_json" for p in self.params):
            app.as_json = app.as_json or "--json" in _options_before_separator(args)
        return super().parse_args(ctx, args)

    def make_parser(self, ctx: click.Context) -> Any:
        parser = super().make_parser(ctx)
        parse = parser.parse_args

        def parse_once(args: list[str]) -> Any:
            opts, rest, order = parse(args=args)
            _refuse_repeats(ctx, order)
            return opts, rest, order

        parser.parse_args = parse_once
        return parser


def _refuse_repeats(ctx: click.Context, order: list[click.Parameter]) -> None:
    """Usage error for a single-valued option given more than once (the parser keeps only the last)."""
    seen: set[str | None] = set()
    for param in order:
        if not isinstance(param, click.Option) or param.multiple or param.is_flag or param.count:
            continue
        if param.name in seen:
            names = "/".join(param.opts)
            raise click.UsageError(
                f"{names} given more than once; it takes one value (run the command once per value)",
                ctx,
            )
        seen.add(param.name)


def json_option(command: F) -> F:
    """`--json`: print one JSON document (docs/json.md), passed to the command as `as_json`."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document (docs/json.md; errors too)."
    )(command)
