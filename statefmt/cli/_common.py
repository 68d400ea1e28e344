"""What every command shares: the exit codes, one stderr line per problem, one JSON object with `--json`.

The contract a pipeline branches on (docs/reference/cli.md shows the same table):

    exit  meaning                                        JSON "code"
    0     success (valid, equal, written)                null
    1     the data is invalid or does not fit            a reader check's code (spec steps), "invalid",
          (diff: the files differ)                       "mismatch", "too-large", "different"
    2     usage error (options, arguments, a package     "usage", "dependency"
          the command needs is not installed)
    3     the input cannot be read (missing, a           "unreadable"; "conflict": other writers
          directory, permissions, network), or a         kept winning a store's commit, retry
          store's commit lost to other writers
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import click

from .. import _files
from ..errors import StateError, StateUnreadableError, StoreConflictError, printable
from ..limits import MAX_SIGNATURE_BYTES
from ..signature import StateSignature

OK, INVALID, USAGE, UNREADABLE = 0, 1, 2, 3


def echo(line: str, *, err: bool = False) -> None:
    click.echo(printable(line), err=err)


def emit_json(result: Mapping[str, Any]) -> None:
    """The one JSON object a `--json` run prints on stdout."""
    click.echo(json.dumps(result, default=str, ensure_ascii=False, allow_nan=False))


def lines(error: BaseException) -> list[str]:
    if isinstance(error, StateError):
        source = f"{error.source}: " if error.source else ""
        return [source + problem for problem in error.problems]
    if isinstance(error, OSError):
        return [f"{error.filename}: {error.strerror}" if error.filename else str(error)]
    return [f"{type(error).__name__}: {error}"]


def outcome(error: BaseException) -> tuple[int, str]:
    """The exit code and JSON code of an error, by its type (never by its text)."""
    if isinstance(error, (StateUnreadableError, OSError)):
        return UNREADABLE, "unreadable"
    if isinstance(error, StoreConflictError):
        return UNREADABLE, error.code
    if isinstance(error, ImportError):
        return USAGE, "dependency"
    if isinstance(error, MemoryError):
        return INVALID, "too-large"
    if isinstance(error, StateError):
        return INVALID, error.code or "invalid"
    raise TypeError(f"no exit code for {type(error).__name__}")


@contextmanager
def reporting(ctx: click.Context, as_json: bool = False, subject: Mapping[str, Any] | None = None
              ) -> Iterator[None]:
    """Turn a library error into one stderr line per problem, the JSON object with `--json`, and its exit code."""
    try:
        yield
    except (StateError, OSError, MemoryError, ImportError) as error:
        if ctx.obj["debug"]:
            raise
        for line in lines(error):
            echo(line, err=True)
        code, name = outcome(error)
        if as_json:
            problems = error.problems if isinstance(error, StateError) else [printable(line) for line in lines(error)]
            emit_json({**(subject or {}), "code": name, "step": getattr(error, "step", None),
                       "error": type(error).__name__, "problems": problems})
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
