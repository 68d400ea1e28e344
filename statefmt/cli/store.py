"""`statefmt store …`: the fleet store from the shell. Click options only; the work is in `statefmt.store`.

Importing this module imports click alone: Lance, pyarrow and tqdm load when a store command runs,
so `statefmt validate` stays as light as before. Exit codes and `--json` as the rest of the CLI
(the table in _common): `--json` prints exactly one JSON object on stdout, whatever happens.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from ._common import read_signature, reporting

FILE = click.Path()  # checked by the reader: a missing file is unreadable input (exit 3), not a usage error
IMPORT_CHUNK = 100_000


def _storage_options(pairs: tuple[str, ...]) -> dict[str, str] | None:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, found {pair!r}", param_hint="--storage-option")
        options[key] = value
    return options or None


def _url_command(function: Callable[..., Any]) -> Callable[..., Any]:
    """The URL argument and the object-store options every store command takes."""
    function = click.option("-s", "--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
                            help="An object-store option for Lance (e.g. aws_endpoint=http://…, allow_http=true); "
                                 "repeatable.")(function)
    return click.argument("url")(function)


def _not_nan(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and math.isnan(value):
        raise click.BadParameter("must be a number of days, not NaN")
    return value


def _json_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")(function)


def _emit(as_json: bool, result: dict[str, Any], text: str) -> None:
    click.echo(json.dumps({**result, "code": None}, default=str, ensure_ascii=False) if as_json else text)


@contextmanager
def _progress(total: int, what: str) -> Iterator[Callable[[int], Any]]:
    """A tqdm bar on stderr when it is a terminal; a no-op otherwise (or without tqdm)."""
    try:
        from tqdm import tqdm
    except ImportError:  # statefmt[store] brings it; a bare install just shows no bar
        yield lambda rows: None
        return

    with tqdm(total=total, unit=" streams", desc=what, disable=not sys.stderr.isatty(), leave=False) as bar:
        yield bar.update


@click.group()
def store() -> None:
    """A store of per-stream state on Lance (a directory or s3://…): get and put streams by id, versions."""


@store.command()
@_url_command
@click.option("--signature", "signature_file", type=FILE, required=True,
              help="A signature JSON file: the layers the store holds (and their dtype, float32 if unset).")
@_json_option
@click.pass_context
def create(ctx: click.Context, url: str, storage_option: tuple[str, ...], signature_file: str, as_json: bool) -> None:
    """Create an empty store at URL for states of the signature."""
    with reporting(ctx, as_json, {"url": url}):
        from .. import store as store_api

        created = store_api.create(url, read_signature(signature_file),
                                   storage_options=_storage_options(storage_option))
        _emit(as_json, {"url": url, "version": created.version, "layers": len(created.signature.layers)},
              f"{url}: created, {len(created.signature.layers)} layer(s), version {created.version}")


@store.command()
@_url_command
@click.option("--version", "version", type=click.IntRange(min=1), help="Describe this older version.")
@_json_option
@click.pass_context
def info(ctx: click.Context, url: str, storage_option: tuple[str, ...], version: int | None, as_json: bool) -> None:
    """Show the store's layers, version and stream count."""
    with reporting(ctx, as_json, {"url": url}):
        opened = _open(url, storage_option, version)
        signature = opened.signature
        layers = [{"name": layer.name, "kind": layer.kind, "dims": layer.dims} if layer.dims is not None else
                  {"name": layer.name, "kind": layer.kind, "units": layer.units, "directions": layer.directions,
                   "proj_units": layer.proj_units} for layer in signature.layers]
        summary = {"url": url, "version": opened.version, "streams": len(opened), "dtype": signature.dtype,
                   "layers": layers}
        if as_json:
            _emit(True, summary, "")
            return
        click.echo(f"{url}: store, version {summary['version']}, {summary['streams']} stream(s), {signature.dtype}")
        for index, layer in enumerate(layers):
            if "dims" in layer:
                sizes = " ".join(f"{key}={value}" for key, value in layer["dims"].items())
                click.echo(f"  [{index}] {layer['name']!r} {layer['kind']} {sizes}")
                continue
            proj = f" proj_units={layer['proj_units']}" if layer["proj_units"] else ""
            click.echo(f"  [{index}] {layer['name']!r} {layer['kind']} units={layer['units']}{proj} "
                       f"directions={layer['directions']}")


@store.command()
@_url_command
@_json_option
@click.pass_context
def versions(ctx: click.Context, url: str, storage_option: tuple[str, ...], as_json: bool) -> None:
    """List the versions kept: number, commit time (UTC), stream count, and what made each.

    A new store shows two: its rows, then its id index (Lance commits an index as a version of its own).
    """
    with reporting(ctx, as_json, {"url": url}):
        kept = _open(url, storage_option).versions()
        if as_json:
            _emit(True, {"url": url, "versions": [{"version": v.version, "timestamp": v.timestamp.isoformat(),
                                                    "streams": v.streams, "what": v.what} for v in kept]}, "")
            return
        for v in kept:
            click.echo(f"{v.version:>8}  {v.timestamp.isoformat(sep=' ', timespec='seconds')}  "
                       f"{v.streams:>10} stream(s)  {v.what}")


@store.command()
@_url_command
@click.argument("ids", nargs=-1)
@click.option("--ids-from", "ids_from", type=click.File("r", encoding="utf-8"), metavar="FILE|-",
              help="Read the stream ids from FILE (or stdin for -), one a line, after any given as arguments.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The statefmt file to write.")
@click.option("--missing", type=click.Choice(["error", "zeros"]), default="error", show_default=True,
              help="What an unknown stream id gets.")
@click.option("--version", "version", type=click.IntRange(min=1), help="Read this older version.")
@_json_option
@click.pass_context
def get(ctx: click.Context, url: str, storage_option: tuple[str, ...], ids: tuple[str, ...], ids_from: Any,
        output: str, missing: str, version: int | None, as_json: bool) -> None:
    """Write the states of stream IDS (in that order) to a statefmt file."""
    wanted = list(ids) + ([line.rstrip("\r\n") for line in ids_from if line.strip()] if ids_from else [])
    if not wanted:
        raise click.UsageError("no stream ids: give them as arguments or with --ids-from FILE|-")
    with reporting(ctx, as_json, {"url": url}):
        import statefmt

        opened = _open(url, storage_option, version)
        states = opened.get(wanted, missing="zeros" if missing == "zeros" else "error")
        statefmt.save(states, output, metadata={"source": {"model": f"{url} (store version {opened.version})"}})
        _emit(as_json, {"url": url, "version": opened.version, "output": output, "streams": len(wanted)},
              f"{output}: {len(wanted)} stream(s) from {url} version {opened.version}")


@store.command()
@_url_command
@click.argument("file", type=FILE)
@_json_option
@click.pass_context
def put(ctx: click.Context, url: str, storage_option: tuple[str, ...], file: str, as_json: bool) -> None:
    """Upsert the streams of FILE (it names them in stream_ids) in one atomic commit."""
    with reporting(ctx, as_json, {"url": url}):
        import statefmt

        states = statefmt.load(file)
        if states.stream_ids is None:
            raise statefmt.StateMismatchError("has no stream_ids: a store keeps streams by id "
                                              "(StateSet.with_stream_ids names them)", source=file)
        version = _open(url, storage_option).put(states)
        _emit(as_json, {"url": url, "version": version, "streams": states.batch_size},
              f"{url}: {states.batch_size} stream(s) put, version {version}")


@store.command(name="import")
@_url_command
@click.argument("file", type=FILE)
@click.option("--chunk", type=click.IntRange(min=1), default=IMPORT_CHUNK, show_default=True,
              help="Streams read and put at a time (each a commit): the import's memory follows this, not the "
                   "file's size.")
@_json_option
@click.pass_context
def import_(ctx: click.Context, url: str, storage_option: tuple[str, ...], file: str, chunk: int,
            as_json: bool) -> None:
    """Load FILE's streams into the store at URL, creating it from FILE's layers (and their dtypes) if there is none.

    FILE is read twice, --chunk streams at a time, so that memory stays bounded whatever its size: first
    to check every stream (checksums, values, ids, and against the store), then to put them, each chunk
    a commit, with a progress bar. A reader may see the first chunks before the last; a rerun after a
    failure upserts the same rows again.
    """
    with reporting(ctx, as_json, {"url": url}):
        import statefmt

        from .. import _reader
        from .. import store as store_api

        with _reader.opened(file, None) as (_, _, document):
            count = document.batch_size or 0
        chunks = [range(start, min(start + chunk, count)) for start in range(0, count, chunk)] or [range(0)]
        options = _storage_options(storage_option)
        try:
            target: Any = store_api.open(url, storage_options=options)
        except statefmt.StoreNotFoundError:
            target = None
        first: Any = None  # the first chunk: it makes a new store
        with _progress(count, "check") as advance:
            for rows in chunks:
                part = statefmt.load(file, streams=rows)
                if part.stream_ids is None:
                    raise statefmt.StateMismatchError("has no stream_ids: a store keeps streams by id "
                                                      "(StateSet.with_stream_ids names them)", source=file)
                if target is not None:
                    target.check(part)
                else:
                    store_api.check_ids(part.stream_ids)
                first = part if first is None else first
                advance(part.batch_size)
        created = target is None
        if target is None:
            signature = statefmt.StateSignature.of(first, batch_size=None)
            target = store_api.create(url, signature, storage_options=options, states=first)
        with _progress(count, "import") as advance:
            for rows in chunks[1:] if created else chunks:
                part = statefmt.load(file, streams=rows)
                target.put(part)
                advance(part.batch_size)
        _emit(as_json, {"url": url, "version": target.version, "streams": count, "created": created},
              f"{url}: {count} stream(s) imported{' into a new store' if created else ''}, "
              f"version {target.version}")


@store.command()
@_url_command
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--version", "version", type=click.IntRange(min=1), help="Export this older version.")
@_json_option
@click.pass_context
def export(ctx: click.Context, url: str, storage_option: tuple[str, ...], output: str, version: int | None,
           as_json: bool) -> None:
    """Write every stream of the store (sorted by id) to one statefmt file."""
    with reporting(ctx, as_json, {"url": url}):
        import statefmt

        opened = _open(url, storage_option, version)
        with _progress(len(opened), "export") as advance:
            states = opened.snapshot(progress=advance)
        statefmt.save(states, output, metadata={"source": {"model": f"{url} (store version {opened.version})"}})
        _emit(as_json, {"url": url, "version": opened.version, "output": output, "streams": states.batch_size},
              f"{output}: {states.batch_size} stream(s) from {url} version {opened.version}")


@store.command()
@_url_command
@click.option("--cleanup-older-than", type=click.FloatRange(min=0, max=1e6), metavar="DAYS", callback=_not_nan,
              help="Also delete the files of versions older than DAYS.")
@_json_option
@click.pass_context
def compact(ctx: click.Context, url: str, storage_option: tuple[str, ...], cleanup_older_than: float | None,
            as_json: bool) -> None:
    """Rewrite small fragments into large ones and bring the id index up to date."""
    with reporting(ctx, as_json, {"url": url}):
        from datetime import timedelta

        opened = _open(url, storage_option)
        version = opened.compact()
        result: dict[str, Any] = {"url": url, "version": version}
        text = f"{url}: compacted, version {version}"
        if cleanup_older_than is not None:
            result["cleanup"] = opened.cleanup(older_than=timedelta(days=cleanup_older_than))
            text += f"; {result['cleanup']['old_versions']} old version(s) removed"
        _emit(as_json, result, text)


def _open(url: str, pairs: tuple[str, ...], version: int | None = None) -> Any:
    from .. import store as store_api

    return store_api.open(url, version=version, storage_options=_storage_options(pairs))
