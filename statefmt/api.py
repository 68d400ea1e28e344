"""Saving, reading, validating and upgrading statefmt files, local or behind a URL."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import _container, _reader, _streams
from ._document import (
    BLOCK_BYTES,
    CHECKSUM_PREFIX,
    FIELDS,
    FORMAT_VERSION,
    SESSION_FIELDS,
    STREAM_TENSORS,
    Document,
    cap,
    metadata_entries,
    version_for,
)
from ._reader import StreamKeys, Target
from ._source import display, is_url
from .errors import StateError, StateFormatError, StateMismatchError
from .signature import StateSignature
from .states import LayerState, StateSet
from .weights import LayerWeights, WeightSet

__all__ = ["FORMAT_VERSION", "load", "load_weights", "read", "save", "upgrade", "validate"]


def save(data: StateSet | WeightSet, target: Target, *, metadata: Mapping[str, Any] | None = None,
         durable: bool = True, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write a StateSet (or a WeightSet) to a path or URL, atomically, as format 2.0.

    >>> save(states, "today.statefmt", metadata={"user": {"series": "sensor-7"}})

    `metadata` sets descriptive fields (`source`, `created_by`, `user`) over `data.metadata`.
    A local save goes to a temporary file beside the target, is fsynced (unless `durable=False`)
    and renamed over it: a crash leaves the previous file or the new one, never a mix. A URL
    (`s3://…`, any fsspec URL) is uploaded whole once written, so it too is all or nothing.
    A state holding NaN or Inf is refused, and so is anything a reader would refuse, before
    a byte is written.
    """
    from . import __version__

    source = display(target)
    if not isinstance(data, (StateSet, WeightSet)):
        raise StateFormatError(f"save() takes a StateSet or a WeightSet, not {type(data).__name__}", source=source)
    if storage_options and not is_url(target):
        raise StateFormatError("storage_options apply to URLs only", source=source)
    fields = {**data.metadata, "created_by": f"statefmt {__version__}", **(metadata or {})}
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise StateFormatError(f"unknown metadata fields {unknown}; free-form data belongs under 'user'", source=source)
    is_state = isinstance(data, StateSet)
    if not is_state and set(fields) & set(SESSION_FIELDS):
        raise StateFormatError(f"{', '.join(sorted(set(fields) & set(SESSION_FIELDS)))}: describe a state, not "
                               "weights", source=source)
    layers: Sequence[LayerState | LayerWeights] = data.layers
    entries = tuple(_reader.layer_entry(layer) for layer in layers)
    tensors: list[tuple[str, np.ndarray]] = []
    for index, layer in enumerate(layers):
        tensors += [(f"layers.{index}.{name}", layer[name]) for name in _reader.tensor_names(layer)]
    ids = data.stream_ids if isinstance(data, StateSet) else None
    stream_ids = ids is not None
    if ids is not None:
        try:
            index_tensors = _streams.build(ids)
        except StateError as error:
            raise StateFormatError(error.problems, source=source) from None
        tensors += [(name, index_tensors[name]) for name in STREAM_TENSORS]
    base = Document(version_for(entries, fields), "state" if is_state else "weights", entries,
                    batch_size=data.batch_size if isinstance(data, StateSet) else None, stream_ids=stream_ids,
                    block_bytes=BLOCK_BYTES, **fields)
    _check_written_document(base, source)  # refuse before writing a byte what a reader would refuse
    wheres = [f"layer {i} {layer.name!r}: {name}" for i, layer in enumerate(layers)
              for name in _reader.tensor_names(layer)]

    def finish(checksum_blocks: list[str], nonfinite: list[int]) -> dict[str, str]:
        _reader.refuse_nonfinite(is_state, [(where, count) for where, count in zip(wheres, nonfinite) if count], source)
        return metadata_entries(dataclasses.replace(base, checksum_blocks=tuple(checksum_blocks)).text())

    _container.write(target, tensors, BLOCK_BYTES, finish, durable=durable, storage_options=storage_options)


def _check_written_document(document: Document, source: str) -> None:
    """The reader's checks 2 to 6, on the document about to be written (its checksums still unknown)."""
    try:
        text = dataclasses.replace(document, checksum_blocks=(CHECKSUM_PREFIX + "0" * 16,)).text()
    except (TypeError, ValueError) as error:  # json.dumps: NaN, or a value JSON cannot hold
        if isinstance(error, StateError):
            raise StateFormatError(error.problems, source=source) from None
        raise StateFormatError(f"the metadata cannot be stored as JSON: {error}", source=source) from None
    try:
        Document.parse(metadata_entries(text))
    except StateError as error:
        raise StateFormatError(error.problems, source=source) from None


def read(target: Target, *, streams: StreamKeys | None = None, verify: bool = True, finite: bool = True,
         storage_options: Mapping[str, Any] | None = None) -> StateSet | WeightSet:
    """Whatever a file holds: a StateSet or a WeightSet, checked; `StateFormatError` names what is wrong.

    >>> read("today.statefmt", streams=["pump-2"]).batch_size  # a path, or a URL: s3://bucket/today.statefmt
    1

    `streams` picks batch rows by stream id or index and reads only their bytes (and, in a 2.x
    file, a few index entries): a constant number of range reads however large the file. Every
    byte handed out is verified against its block checksum (`verify=False` skips that).
    `finite=False` hands out NaN and Inf instead of refusing them, to look at a poisoned state
    (`statefmt inspect` does); never feed such a state to a model.
    """
    return _reader.read_file(target, streams=streams, verify=verify, finite=finite, storage_options=storage_options)


def load(target: Target, *, streams: StreamKeys | None = None, verify: bool = True,
         storage_options: Mapping[str, Any] | None = None) -> StateSet:
    """Read a state file (a path or a URL), checking it; see `read`.

    >>> load("today.statefmt", streams=["sensor-7"]).stream_ids
    ('sensor-7',)
    """
    data = _reader.read_file(target, streams=streams, verify=verify, storage_options=storage_options)
    if not isinstance(data, StateSet):
        raise StateFormatError("holds weights, not a state; read it with statefmt.load_weights",
                               source=display(target))
    return data


def load_weights(target: Target, *, verify: bool = True, storage_options: Mapping[str, Any] | None = None) -> WeightSet:
    """Read a weights file written by `save(weight_set, path)`; `read` reads either kind.

    >>> load_weights("weights.statefmt")[0]
    LayerWeights('l0', gru, units=4, input_size=5, directions=1, dtype=float32)

    An adapter's `import_weights(weights, model)` puts them into a model.
    """
    data = _reader.read_file(target, streams=None, verify=verify, storage_options=storage_options)
    if not isinstance(data, WeightSet):
        raise StateFormatError("holds a state, not weights; read it with statefmt.load", source=display(target))
    return data


def validate(target: Target | StateSet | WeightSet, *, against: StateSignature | None = None,
             storage_options: Mapping[str, Any] | None = None) -> None:
    """Check a file (or an in-memory set) completely and, with `against`, that it fits a model.

    >>> validate("today.statefmt", against=StateSignature.from_json(open("model.sig.json").read()))

    Raises `StateFormatError` for a malformed file or NaN/Inf values, `StateMismatchError`
    listing every layer and field that does not fit `against`. It streams through the data
    and keeps none of it (returns None): about half the time of `load`. A file's whole stream
    index is checked too, which `load(streams=...)` cannot do.
    """
    if isinstance(target, (StateSet, WeightSet)):
        layers: Sequence[LayerState | LayerWeights] = target.layers
        counts = [(f"layer {i} {layer.name!r}: {name}", count)
                  for i, layer in enumerate(layers) for name in _reader.tensor_names(layer)
                  if (count := _container.count_nonfinite(np.asarray(layer[name])))]
        _reader.refuse_nonfinite(isinstance(target, StateSet), counts, None)
        if isinstance(target, StateSet) and target.stream_ids is not None:
            _streams.encode(target.stream_ids)  # what save refuses: an id that is no Unicode text
        shape: StateSet | WeightSet | _reader.Shape = target
        source = None
    else:
        source = display(target)
        with _reader.opened(target, storage_options) as (container, blocks, document):
            _reader.check_all(container, blocks, document)
            shape = _reader.Shape(document)
    if against is not None:
        if isinstance(shape, WeightSet) or (isinstance(shape, _reader.Shape) and not shape.is_state):
            raise StateMismatchError("a signature describes a state, but this holds weights", source=source)
        problems = against.check(shape)  # type: ignore[arg-type]
        if problems:
            raise StateMismatchError(cap(problems), source=source)


def upgrade(source: Target, out: Target | None = None, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Rewrite a file (1.x) as the current format, in place unless `out` is given; atomically.

    >>> upgrade("old.statefmt")
    """
    with _reader.opened(source, _options_for(source, storage_options)) as (_, _, document):
        if document.major != "1":
            raise StateFormatError(f"is format {document.format_version} already; upgrade rewrites 1.x files",
                                   source=display(source))
    data = _reader.read_file(source, streams=None, verify=True, storage_options=_options_for(source, storage_options))
    target = source if out is None else out
    save(data, target, storage_options=_options_for(target, storage_options))


def _options_for(target: Target, storage_options: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """`storage_options` where `target` is a URL; none for a local path (upgrade reads and writes both)."""
    return storage_options if is_url(target) else None


