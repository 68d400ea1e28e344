"""What every command shares: one stderr line per problem, exit codes, reading a signature file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from .. import _files
from ..errors import StateError, printable
from ..limits import MAX_SIGNATURE_BYTES
from ..signature import StateSignature


def echo(line: str, *, err: bool = False) -> None:
    click.echo(printable(line), err=err)


def lines(error: BaseException) -> list[str]:
    if isinstance(error, StateError):
        source = f"{error.source}: " if error.source else ""
        return [source + problem for problem in error.problems]
    if isinstance(error, OSError):
        return [f"{error.filename}: {error.strerror}" if error.filename else str(error)]
    return [f"{type(error).__name__}: {error}"]


@contextmanager
def reporting(ctx: click.Context, code: int = 1) -> Iterator[None]:
    """Turn a library error into one stderr line per problem and exit `code`."""
    try:
        yield
    except (StateError, OSError, MemoryError, ImportError) as error:
        if ctx.obj["debug"]:
            raise
        for line in lines(error):
            echo(line, err=True)
        ctx.exit(code)


def read_signature(path: str) -> StateSignature:
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
