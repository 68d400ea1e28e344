"""The file commands: `validate`, `inspect`, `diff`, `upgrade`. Click options only; the checks live in the library."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import click

from .. import api, report
from ..errors import StateError
from ._common import echo, read_signature, reporting


@click.command()
@click.argument("file")
@click.option("--against", metavar="SIGNATURE", help="A signature JSON file: what the model expects.")
@click.option("--strict", is_flag=True, help="With --against: the dtype must match too (by default a state of "
                                             "another float dtype fits, as adapters cast it).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON on stdout.")
@click.pass_context
def validate(ctx: click.Context, file: str, against: str | None, strict: bool, as_json: bool) -> None:
    """Check FILE: structure, version, metadata against tensors, every checksum, finite values."""
    with reporting(ctx):
        signature = read_signature(against) if against else None
        if signature is not None and not strict:
            signature = dataclasses.replace(signature, dtype=None)
        if not as_json:
            api.validate(file, against=signature)
            echo(f"{file}: valid")
            return
        verdict: dict[str, Any] = {"file": file, "valid": True, "problems": []}
        try:
            api.validate(file, against=signature)
        except StateError as error:
            verdict.update(valid=False, problems=error.problems, step=error.step, code=error.code,
                           error=type(error).__name__)
        click.echo(json.dumps(verdict))
        ctx.exit(0 if verdict["valid"] else 1)


@click.command()
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--plot", metavar="OUT.png", help="Also draw heatmaps and histograms of h and c (needs matplotlib).")
@click.pass_context
def inspect(ctx: click.Context, file: str, as_json: bool, plot: str | None) -> None:
    """Show FILE's layers, shapes, dtypes, statistics, batch size, streams and source.

    A state holding NaN or Inf is shown, with exit code 1.
    """
    with reporting(ctx):
        data = api.read(file, finite=False)
        summary = report.describe(data)
        if plot:
            from ..plot import plot_state  # matplotlib only when asked

            for note in plot_state(data, plot, title=file):
                echo(f"plot: {note}", err=True)
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
    echo(head)
    if summary.get("stream_ids"):
        ids = summary["stream_ids"]
        echo(f"streams: {', '.join(ids[:8])}{f' … ({len(ids)} in all)' if len(ids) > 8 else ''}")
    for key, value in summary["metadata"].items():
        echo(f"{key}: {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}")
    for index, layer in enumerate(summary["layers"]):
        if "dims" in layer:  # a modern kind (format 2.1): its sizes by name
            sizes = " ".join(f"{key}={value}" for key, value in layer["dims"].items())
            echo(f"  [{index}] {layer['name']!r} {layer['kind']} {sizes} {layer['dtype']}")
        else:
            proj = f" proj_units={layer['proj_units']}" if layer["proj_units"] else ""
            inputs = f" input_size={layer['input_size']}" if "input_size" in layer else ""
            echo(f"  [{index}] {layer['name']!r} {layer['kind']} units={layer['units']}{proj}{inputs} "
                 f"directions={layer['directions']} {layer['dtype']}")
        for name, stats in layer["tensors"].items():
            values = "  ".join(f"{key} {stats[key]:.4g}" if stats[key] is not None else f"{key} -"
                               for key in ("min", "max", "mean", "std"))
            echo(f"      {name:<2} {stats['shape']!s:<16} {values}  non-finite {stats['nonfinite']}")


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--atol", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Largest absolute difference that counts as equal.")
@click.pass_context
def diff(ctx: click.Context, a: str, b: str, atol: float) -> None:
    """Compare A and B: structure, then values. Exit 0 equal, 1 different, 2 unreadable."""
    if math.isnan(atol):
        raise click.BadParameter("must be a number, not NaN", param_hint="--atol")
    with reporting(ctx, code=2):
        left, right = api.read(a), api.read(b)
    differences = report.compare(left, right, atol=atol)
    for line in differences:
        echo(line)
    if differences:
        ctx.exit(1)
    click.echo(f"equal (atol {atol:g})")


@click.command()
@click.argument("file")
@click.option("-o", "--output", metavar="OUT", help="Write the upgraded file here instead of replacing FILE.")
@click.pass_context
def upgrade(ctx: click.Context, file: str, output: str | None) -> None:
    """Rewrite FILE (format 1.x) as the current format, checked first; atomically."""
    with reporting(ctx):
        api.upgrade(file, output)
        echo(f"{output or file}: written as format 2.0")

