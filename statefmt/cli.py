"""The `statefmt` command: click options only; the checks live in the library.

Exit codes: 0 valid (or equal), 1 invalid input (or different), 2 usage error
(`diff` follows diff(1): 2 also when a file cannot be read). Problems go to
stderr, one line each, never as a traceback unless `--debug` is given. FILE may be
a path or an fsspec URL (s3://, gs://, memory://, http(s)://); an object store's
endpoint and keys come from its usual environment variables.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from . import _files, api, report, store_cli
from .errors import StateError, printable
from .signature import StateSignature

MAX_SIGNATURE_BYTES = 16 * 1024 * 1024


@click.group()
@click.option("--debug", is_flag=True, help="Show a traceback for errors.")
@click.version_option(package_name="statefmt")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Check, inspect, compare and upgrade statefmt files (recurrent network state and weights)."""
    ctx.obj = {"debug": debug}


def _echo(line: str, *, err: bool = False) -> None:
    click.echo(printable(line), err=err)


def _lines(error: BaseException) -> list[str]:
    if isinstance(error, StateError):
        source = f"{error.source}: " if error.source else ""
        return [source + problem for problem in error.problems]
    if isinstance(error, OSError):
        return [f"{error.filename}: {error.strerror}" if error.filename else str(error)]
    return [f"{type(error).__name__}: {error}"]


@contextmanager
def _reporting(ctx: click.Context, code: int = 1) -> Iterator[None]:
    """Turn a library error into one stderr line per problem and exit `code`."""
    try:
        yield
    except (StateError, OSError, MemoryError, ImportError) as error:
        if ctx.obj["debug"]:
            raise
        for line in _lines(error):
            _echo(line, err=True)
        ctx.exit(code)


def _read_signature(path: str) -> StateSignature:
    """A signature file: a regular file of at most 16 MiB, UTF-8 JSON."""
    data = _files.read_small(path, MAX_SIGNATURE_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise StateError(f"not UTF-8 text (byte {error.start}); a signature is JSON", source=path) from None
    try:
        return StateSignature.from_json(text)
    except StateError as error:
        raise type(error)(error.problems, source=path) from None
    except RecursionError:
        raise StateError("not a statefmt signature: JSON nested too deep", source=path) from None


@main.command()
@click.argument("file")
@click.option("--against", metavar="SIGNATURE", help="A signature JSON file: what the model expects.")
@click.option("--strict", is_flag=True, help="With --against: the dtype must match too (by default a state of "
                                             "another float dtype fits, as adapters cast it).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON on stdout.")
@click.pass_context
def validate(ctx: click.Context, file: str, against: str | None, strict: bool, as_json: bool) -> None:
    """Check FILE: structure, version, metadata against tensors, every checksum, finite values."""
    with _reporting(ctx):
        signature = _read_signature(against) if against else None
        if signature is not None and not strict:
            signature = dataclasses.replace(signature, dtype=None)
        if not as_json:
            api.validate(file, against=signature)
            _echo(f"{file}: valid")
            return
        verdict: dict[str, Any] = {"file": file, "valid": True, "problems": []}
        try:
            api.validate(file, against=signature)
        except StateError as error:
            verdict.update(valid=False, problems=error.problems, step=error.step, code=error.code,
                           error=type(error).__name__)
        click.echo(json.dumps(verdict))
        ctx.exit(0 if verdict["valid"] else 1)


@main.command()
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--plot", metavar="OUT.png", help="Also draw heatmaps and histograms of h and c (needs matplotlib).")
@click.pass_context
def inspect(ctx: click.Context, file: str, as_json: bool, plot: str | None) -> None:
    """Show FILE's layers, shapes, dtypes, statistics, batch size, streams and source.

    A state holding NaN or Inf is shown, with exit code 1.
    """
    with _reporting(ctx):
        data = api.read(file, finite=False)
        summary = report.describe(data)
        if plot:
            from .plot import plot_state  # matplotlib only when asked

            for note in plot_state(data, plot, title=file):
                _echo(f"plot: {note}", err=True)
        if as_json:
            click.echo(json.dumps({"file": file, **summary}, indent=2, allow_nan=False))
        else:
            _print_summary(file, summary)
        poisoned = [f"layer {i} {layer['name']!r}: {name}: {stats['nonfinite']} non-finite values (NaN or Inf)"
                    for i, layer in enumerate(summary["layers"])
                    for name, stats in layer["tensors"].items() if stats["nonfinite"]]
        if poisoned:
            raise StateError(poisoned, source=file)


def _print_summary(file: str, summary: dict[str, Any]) -> None:
    head = f"{file}: {summary['content']}, {len(summary['layers'])} layer(s)"
    if summary["content"] == "state":
        head += f", batch {summary['batch_size']}"
    _echo(head)
    if summary.get("stream_ids"):
        ids = summary["stream_ids"]
        _echo(f"streams: {', '.join(ids[:8])}{f' … ({len(ids)} in all)' if len(ids) > 8 else ''}")
    for key, value in summary["metadata"].items():
        _echo(f"{key}: {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}")
    for index, layer in enumerate(summary["layers"]):
        proj = f" proj_units={layer['proj_units']}" if layer["proj_units"] else ""
        inputs = f" input_size={layer['input_size']}" if "input_size" in layer else ""
        _echo(f"  [{index}] {layer['name']!r} {layer['kind']} units={layer['units']}{proj}{inputs} "
              f"directions={layer['directions']} {layer['dtype']}")
        for name, stats in layer["tensors"].items():
            values = "  ".join(f"{key} {stats[key]:.4g}" if stats[key] is not None else f"{key} -"
                               for key in ("min", "max", "mean", "std"))
            _echo(f"      {name:<2} {stats['shape']!s:<16} {values}  non-finite {stats['nonfinite']}")


@main.command()
@click.argument("a")
@click.argument("b")
@click.option("--atol", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Largest absolute difference that counts as equal.")
@click.pass_context
def diff(ctx: click.Context, a: str, b: str, atol: float) -> None:
    """Compare A and B: structure, then values. Exit 0 equal, 1 different, 2 unreadable."""
    if math.isnan(atol):
        raise click.BadParameter("must be a number, not NaN", param_hint="--atol")
    with _reporting(ctx, code=2):
        left, right = api.read(a), api.read(b)
    differences = report.compare(left, right, atol=atol)
    for line in differences:
        _echo(line)
    if differences:
        ctx.exit(1)
    click.echo(f"equal (atol {atol:g})")


@main.command()
@click.argument("file")
@click.option("-o", "--output", metavar="OUT", help="Write the upgraded file here instead of replacing FILE.")
@click.pass_context
def upgrade(ctx: click.Context, file: str, output: str | None) -> None:
    """Rewrite FILE (format 1.x) as the current format, checked first; atomically."""
    with _reporting(ctx):
        api.upgrade(file, output)
        _echo(f"{output or file}: written as format {api.FORMAT_VERSION}")


main.add_command(store_cli.store)  # imports click only; the store loads Lance when a store command runs
