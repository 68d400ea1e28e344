"""The `statefmt` command: click options only; the checks live in the library.

Exit codes: 0 valid (or equal), 1 invalid input (or different), 2 usage error
(`diff` follows diff(1): 2 also when a file cannot be read). Problems go to
stderr, one line each, never as a traceback unless `--debug` is given.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import click

from . import io, report
from .errors import StateError
from .signature import StateSignature

FILE = click.Path(exists=True, dir_okay=False)


@click.group()
@click.option("--debug", is_flag=True, help="Show a traceback for errors.")
@click.version_option(package_name="statefmt")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Check, inspect and compare statefmt files (recurrent network state and weights)."""
    ctx.obj = {"debug": debug}


@contextmanager
def _reporting(ctx: click.Context, code: int = 1) -> Iterator[None]:
    """Turn a library error into one stderr line per problem and exit `code`."""
    try:
        yield
    except (StateError, OSError) as error:
        if ctx.obj["debug"]:
            raise
        if isinstance(error, StateError):
            source = f"{error.source}: " if error.source else ""
            lines = [source + problem for problem in error.problems]
        else:
            lines = [f"{error.filename}: {error.strerror}" if error.filename else str(error)]
        for line in lines:
            click.echo(line, err=True)
        ctx.exit(code)


def _read_signature(path: str) -> StateSignature:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        return StateSignature.from_json(text)
    except StateError as error:
        raise type(error)(error.problems, source=path) from None


@main.command()
@click.argument("file", type=FILE)
@click.option("--against", type=FILE, help="A signature JSON file: what the model expects.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON on stdout.")
@click.pass_context
def validate(ctx: click.Context, file: str, against: str | None, as_json: bool) -> None:
    """Check FILE: structure, version, metadata against tensors, checksums, finite values."""
    with _reporting(ctx):
        signature = _read_signature(against) if against else None
        if not as_json:
            io.validate(file, against=signature)
            click.echo(f"{file}: valid")
            return
        try:
            io.validate(file, against=signature)
            problems = []
        except StateError as error:
            problems = error.problems
        click.echo(json.dumps({"file": file, "valid": not problems, "problems": problems}))
        ctx.exit(1 if problems else 0)


@main.command()
@click.argument("file", type=FILE)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def inspect(ctx: click.Context, file: str, as_json: bool) -> None:
    """Show FILE's layers, shapes, dtypes, statistics, batch size, streams and source.

    A state holding NaN or Inf is shown, with exit code 1.
    """
    with _reporting(ctx):
        summary = report.describe(io._read(file, streams=None, verify=True, finite=False))
        if as_json:
            click.echo(json.dumps({"file": file, **summary}, indent=2, ensure_ascii=False))
        else:
            _print_summary(file, summary)
        poisoned = [f"layer {i} {layer['name']!r}: {name}: {stats['nonfinite']} non-finite values (NaN or Inf)"
                    for i, layer in enumerate(summary["layers"])
                    for name, stats in layer["tensors"].items() if stats["nonfinite"]]
        if poisoned:
            raise StateError(poisoned, source=file)


def _print_summary(file: str, summary: dict) -> None:
    head = f"{file}: {summary['content']}, {len(summary['layers'])} layer(s)"
    if summary["content"] == "state":
        head += f", batch {summary['batch_size']}"
    click.echo(head)
    if summary.get("stream_ids"):
        ids = summary["stream_ids"]
        click.echo(f"streams: {', '.join(ids[:8])}{f' … ({len(ids)} in all)' if len(ids) > 8 else ''}")
    for key, value in summary["metadata"].items():
        click.echo(f"{key}: {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}")
    for index, layer in enumerate(summary["layers"]):
        proj = f" proj_units={layer['proj_units']}" if layer["proj_units"] else ""
        inputs = f" input_size={layer['input_size']}" if "input_size" in layer else ""
        click.echo(f"  [{index}] {layer['name']!r} {layer['kind']} units={layer['units']}{proj}{inputs} "
                   f"directions={layer['directions']} {layer['dtype']}")
        for name, stats in layer["tensors"].items():
            values = "  ".join(f"{key} {stats[key]:.4g}" if stats[key] is not None else f"{key} -"
                               for key in ("min", "max", "mean", "std"))
            click.echo(f"      {name:<2} {stats['shape']!s:<16} {values}  non-finite {stats['nonfinite']}")


@main.command()
@click.argument("a", type=FILE)
@click.argument("b", type=FILE)
@click.option("--atol", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Largest absolute difference that counts as equal.")
@click.pass_context
def diff(ctx: click.Context, a: str, b: str, atol: float) -> None:
    """Compare A and B: structure, then values. Exit 0 equal, 1 different, 2 unreadable."""
    with _reporting(ctx, code=2):
        left, right = io._read(a, streams=None, verify=True), io._read(b, streams=None, verify=True)
    differences = report.compare(left, right, atol=atol)
    for line in differences:
        click.echo(line)
    if differences:
        ctx.exit(1)
    click.echo(f"equal (atol {atol:g})")


from .store_cli import store as _store  # noqa: E402  (imports click only; the store loads Lance when run)
main.add_command(_store)
