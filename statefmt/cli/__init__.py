"""The `statefmt` command: click options only; the checks live in the library.

Exit codes: 0 valid (or equal), 1 invalid input (or different), 2 usage error
(`diff` follows diff(1): 2 also when a file cannot be read). Problems go to
stderr, one line each, never as a traceback unless `--debug` is given. FILE may be
a path or an fsspec URL (s3://, gs://, memory://, http(s)://); an object store's
endpoint and keys come from its usual environment variables.

Importing this package imports click alone: Lance, pyarrow and tqdm load when a store command runs.
"""

from __future__ import annotations

import click

from . import files, store


@click.group()
@click.option("--debug", is_flag=True, help="Show a traceback for errors.")
@click.version_option(package_name="statefmt")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Check, inspect, compare and upgrade statefmt files (recurrent network state and weights)."""
    ctx.obj = {"debug": debug}


for command in (files.validate, files.inspect, files.diff, files.upgrade, store.store):
    main.add_command(command)
