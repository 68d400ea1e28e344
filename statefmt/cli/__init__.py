"""The `statefmt` command: click options only; the checks live in the library.

Exit codes (the table is in _common and docs/reference/cli.md): 0 success, 1 the data is
invalid or does not fit (or differs), 2 usage error, 3 the input cannot be read. Problems go to
stderr, one line each, never as a traceback unless `--debug` is given; with `--json`, stdout
holds exactly one JSON object, whose `code` is null on success only. FILE may be
a path or an fsspec URL (s3://, gs://, memory://, http(s)://); an object store's
endpoint and keys come from its usual environment variables.

Importing this package imports click alone: Lance, pyarrow and tqdm load when a store command runs.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from . import files, store
from ._common import USAGE, emit_json


class _Main(click.Group):
    """Click's group, except that a usage error under `--json` still prints the one JSON object."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or "--json" not in argv:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as error:
            emit_json({"code": "usage", "step": None, "error": type(error).__name__,
                       "problems": [error.format_message()]})
            error.show()
            sys.exit(USAGE)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=_Main)
@click.option("--debug", is_flag=True, help="Show a traceback for errors.")
@click.version_option(package_name="statefmt")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Check, inspect, compare and upgrade statefmt files (recurrent network state and weights)."""
    ctx.obj = {"debug": debug}


for command in (files.validate, files.inspect, files.diff, files.upgrade, store.store):
    main.add_command(command)
