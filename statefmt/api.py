"""Saving, reading, validating and upgrading statefmt files, local or behind a URL."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import xxhash

from . import _container, _streams
from ._document import (
    BLOCK_BYTES,
    CHECKSUM_PREFIX,
    CHECKSUMS_TENSOR,
    DESCRIPTIVE_FIELDS,
    FORMAT_VERSION,
    STREAM_TENSORS,
    Document,
    LayerEntry,
    cap,
    dtype_code,
    fail,
    metadata_entries,
)
from ._source import display, is_url, open_source
from .errors import StateError, StateFormatError, StateMismatchError
from .signature import StateSignature
from .states import LayerState, StateSet, resolve_rows, stream_keys
from .weights import LayerWeights, WeightSet

Target = str | os.PathLike[str] | bytes
StreamKeys = str | int | Iterable[str | int]

__all__ = ["FORMAT_VERSION", "load", "load_weights", "read", "save", "upgrade", "validate"]


def save(data: StateSet | WeightSet, target: Target, *, metadata: Mapping[str, Any] | None = None,
         durable: bool = True, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write a StateSet (or a WeightSet) to a path or URL, atomically, as format 2.0.

    >>> save(states, "today.statefmt", metadata={"user": {"series": "sensor-7"}})  # doctest: +SKIP

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
    unknown = sorted(set(fields) - set(DESCRIPTIVE_FIELDS))
    if unknown:
        raise StateFormatError(f"unknown metadata fields {unknown}; free-form data belongs under 'user'", source=source)
    is_state = isinstance(data, StateSet)
    layers: Sequence[LayerState | LayerWeights] = data.layers
    entries = tuple(_entry(layer) for layer in layers)
    tensors: list[tuple[str, np.ndarray]] = []
    for index, layer in enumerate(layers):
        tensors += [(f"layers.{index}.{name}", layer[name]) for name in _tensor_names(layer)]
    ids = data.stream_ids if isinstance(data, StateSet) else None
    stream_ids = ids is not None
    if ids is not None:
        try:
            index_tensors = _streams.build(ids)
        except StateError as error:
            raise StateFormatError(error.problems, source=source) from None
        tensors += [(name, index_tensors[name]) for name in STREAM_TENSORS]
    base = Document(FORMAT_VERSION, "state" if is_state else "weights", entries,
                    batch_size=data.batch_size if isinstance(data, StateSet) else None, stream_ids=stream_ids,
                    block_bytes=BLOCK_BYTES, **fields)
    _check_written_document(base, source)  # refuse before writing a byte what a reader would refuse
    wheres = [f"layer {i} {layer.name!r}: {name}" for i, layer in enumerate(layers)
              for name in _tensor_names(layer)]

    def finish(checksum_blocks: list[str], nonfinite: list[int]) -> dict[str, str]:
        _refuse_nonfinite(is_state, [(where, count) for where, count in zip(wheres, nonfinite) if count], source)
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

    >>> data = read("s3://bucket/today.statefmt", streams=["pump-2"])  # doctest: +SKIP

    `streams` picks batch rows by stream id or index and reads only their bytes (and, in a 2.x
    file, a few index entries): a constant number of range reads however large the file. Every
    byte handed out is verified against its block checksum (`verify=False` skips that).
    `finite=False` hands out NaN and Inf instead of refusing them, to look at a poisoned state
    (`statefmt inspect` does); never feed such a state to a model.
    """
    return _read(target, streams=streams, verify=verify, finite=finite, storage_options=storage_options)


def load(target: Target, *, streams: StreamKeys | None = None, verify: bool = True,
         storage_options: Mapping[str, Any] | None = None) -> StateSet:
    """Read a state file (a path or a URL), checking it; see `read`.

    >>> states = load("today.statefmt", streams=["sensor-7"])  # doctest: +SKIP
    """
    data = _read(target, streams=streams, verify=verify, storage_options=storage_options)
    if not isinstance(data, StateSet):
        raise StateFormatError("holds weights, not a state; read it with statefmt.load_weights",
                               source=display(target))
    return data


def load_weights(target: Target, *, verify: bool = True, storage_options: Mapping[str, Any] | None = None) -> WeightSet:
    """Read a weights file written by `save(weight_set, path)`; `read` reads either kind.

    >>> torch_adapter.import_weights(load_weights("weights.statefmt"), lstm)  # doctest: +SKIP
    """
    data = _read(target, streams=None, verify=verify, storage_options=storage_options)
    if not isinstance(data, WeightSet):
        raise StateFormatError("holds a state, not weights; read it with statefmt.load", source=display(target))
    return data


def validate(target: Target | StateSet | WeightSet, *, against: StateSignature | None = None,
             storage_options: Mapping[str, Any] | None = None) -> None:
    """Check a file (or an in-memory set) completely and, with `against`, that it fits a model.

    >>> validate("today.statefmt", against=StateSignature.from_json(text))  # doctest: +SKIP

    Raises `StateFormatError` for a malformed file or NaN/Inf values, `StateMismatchError`
    listing every layer and field that does not fit `against`. It streams through the data
    and keeps none of it (returns None): about half the time of `load`. A file's whole stream
    index is checked too, which `load(streams=...)` cannot do.
    """
    if isinstance(target, (StateSet, WeightSet)):
        layers: Sequence[LayerState | LayerWeights] = target.layers
        counts = [(f"layer {i} {layer.name!r}: {name}", count)
                  for i, layer in enumerate(layers) for name in _tensor_names(layer)
                  if (count := _container.count_nonfinite(np.asarray(layer[name])))]
        _refuse_nonfinite(isinstance(target, StateSet), counts, None)
        if isinstance(target, StateSet) and target.stream_ids is not None:
            _streams.encode(target.stream_ids)  # what save refuses: an id that is no Unicode text
        shape: StateSet | WeightSet | _Shape = target
        source = None
    else:
        source = display(target)
        with _opened(target, storage_options) as (container, blocks, document):
            _check_all(container, blocks, document)
            shape = _Shape(document)
    if against is not None:
        if not isinstance(shape, (StateSet, _Shape)) or (isinstance(shape, _Shape) and not shape.is_state):
            raise StateMismatchError("a signature describes a state, but this holds weights", source=source)
        problems = against.check(shape)  # type: ignore[arg-type]
        if problems:
            raise StateMismatchError(cap(problems), source=source)


class _Shape:
    """What a signature checks of a state (layers, batch size), from a document, without the data."""

    def __init__(self, document: Document):
        self.is_state = document.is_state
        self.batch_size = document.batch_size
        self.layers = [_ShapeLayer(entry) for entry in document.layers]


class _ShapeLayer:
    def __init__(self, entry: LayerEntry):
        self.name, self.kind, self.units, self.directions = entry.name, entry.kind, entry.units, entry.directions
        self.proj_units, self.dtype = entry.proj_units, entry.dtype


def upgrade(source: Target, out: Target | None = None, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Rewrite a file (1.x) as the current format, in place unless `out` is given; atomically.

    >>> upgrade("old.statefmt")  # doctest: +SKIP
    """
    with _opened(source, _options_for(source, storage_options)) as (_, _, document):
        if document.major != "1":
            raise StateFormatError(f"is format {document.format_version} already; upgrade rewrites 1.x files",
                                   source=display(source))
    data = _read(source, streams=None, verify=True, storage_options=_options_for(source, storage_options))
    target = source if out is None else out
    save(data, target, storage_options=_options_for(target, storage_options))


def _options_for(target: Target, storage_options: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """`storage_options` where `target` is a URL; none for a local path (upgrade reads and writes both)."""
    return storage_options if is_url(target) else None


# --- reading --------------------------------------------------------------------------------------------------------

@contextmanager
def _opened(target: Target, storage_options: Mapping[str, Any] | None
            ) -> Iterator[tuple[_container.Container, _container.BlockReader | None, Document]]:
    """The container and its checked document (spec steps 1 to 7), through one source."""
    source = open_source(target, storage_options)
    try:
        container = _container.Container(source)
        document = Document.parse(container.metadata, source.name)
        problems = _tensor_problems(document, container.tensors)
        if problems:
            raise fail(7, problems, source.name)
        blocks = None
        if document.major == "2":
            order = [name for name, _, _ in document.tensors()]
            order += list(STREAM_TENSORS) if document.stream_ids else []
            blocks = _container.BlockReader(container, order, document.block_bytes, document.checksum_blocks)
        yield container, blocks, document
    finally:
        source.close()


def _tensor_problems(document: Document, tensors: Mapping[str, _container.TensorInfo]) -> list[str]:
    """Every disagreement between the document and the tensors the header holds (step 7)."""
    problems = []
    expected: dict[str, tuple[str, tuple[int, ...] | None, str]] = {}
    for index, layer in enumerate(document.layers):
        for name, shape in layer.shapes(document.batch_size if document.is_state else None).items():
            expected[f"layers.{index}.{name}"] = (dtype_code(layer.dtype), shape, f"layer {index} {layer.name!r}: "
                                                                                  f"{name}")
    if document.major == "2":
        expected[CHECKSUMS_TENSOR] = ("U64", None, "checksums")
        if document.stream_ids:
            n = document.batch_size or 0
            expected.update({"stream_ids.bytes": ("U8", None, "stream_ids.bytes"),
                             "stream_ids.offsets": ("U64", (n + 1,), "stream_ids.offsets"),
                             "stream_ids.index": ("U64", (n, 2), "stream_ids.index"),
                             "stream_ids.buckets": ("U64", (2 ** _streams.bucket_bits(n) + 1,), "stream_ids.buckets")})
    for key, (code, wanted, where) in expected.items():
        if key not in tensors:
            problems.append(f"{where}: tensor `{key}` is missing")
            continue
        info = tensors[key]
        ndim_ok = wanted is not None or len(info.shape) == 1
        if info.code != code or (wanted is not None and info.shape != wanted) or not ndim_ok:
            want = f"{list(wanted) if wanted is not None else '[n]'} {_container._CODES.get(code, code)}"
            problems.append(f"{where}: expected {want}, tensor `{key}` is {list(info.shape)} "
                            f"{_container._CODES.get(info.code, info.code)}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        problems.append(f"tensors not described by the metadata: {', '.join(extra[:20])}"
                        + (f" and {len(extra) - 20} more" if len(extra) > 20 else ""))
    if document.major == "2" and not problems and CHECKSUMS_TENSOR in tensors:
        blocks = sum(_container.block_count(tensors[key].nbytes, document.block_bytes)
                     for key in expected if key != CHECKSUMS_TENSOR)
        if tensors[CHECKSUMS_TENSOR].shape != (blocks,):
            problems.append(f"checksums: expected [{blocks}] (one per block), found {list(tensors['checksums'].shape)}")
    return problems


def _read(target: Target, *, streams: StreamKeys | None, verify: bool, finite: bool = True,
          storage_options: Mapping[str, Any] | None = None) -> StateSet | WeightSet:
    """Read and check a file; `finite=False` lets `statefmt inspect` show a poisoned state."""
    with _opened(target, storage_options) as (container, blocks, document):
        name = container.source.name
        if streams is not None and not document.is_state:
            raise StateMismatchError("streams= applies to state files; this one holds weights", source=name)
        if blocks is None:
            arrays, ids = _read_v1(container, document, verify)
        elif streams is None:
            arrays, ids = _read_v2(blocks, document, verify)
        else:
            arrays, ids = _read_rows_v2(blocks, document, streams)
        if streams is not None and document.major == "1":
            try:
                rows = resolve_rows(streams, document.batch_size or 0, ids)
            except StateError as error:
                raise StateMismatchError(error.problems, source=name) from None
            arrays = {key: array[:, rows] for key, array in arrays.items()}
            ids = None if ids is None else [ids[row] for row in rows]
        if finite:
            _refuse_nonfinite(document, list(_nonfinite(document, arrays)), name)
        try:
            return _build(document, arrays, ids, name)
        except StateError as error:  # what only the layers can say: a 1.x activation outside 2.x's list
            raise fail(6, error.problems, name) from None


def _nonfinite(document: Document, arrays: Mapping[str, np.ndarray]) -> Iterator[tuple[str, int]]:
    for index, layer in enumerate(document.layers):
        for name in layer.shapes(document.batch_size if document.is_state else None):
            count = _container.count_nonfinite(arrays[f"layers.{index}.{name}"])
            if count:
                yield f"layer {index} {layer.name!r}: {name}", count


def _read_v1(container: _container.Container, document: Document,
             verify: bool) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """A 1.x file: whole tensors, each checked against its whole-tensor checksum."""
    arrays, problems = {}, []
    for index, layer in enumerate(document.layers):
        for name, expected in (layer.checksums or {}).items():
            key = f"layers.{index}.{name}"
            info = container.tensors[key]
            array = np.empty(info.shape, info.dtype)
            digest = xxhash.xxh3_64()
            raw = array.reshape(-1).view(np.uint8)
            step = _container.CHUNK_BLOCKS * BLOCK_BYTES
            for offset in range(0, raw.size, step):
                part = raw[offset:offset + step]
                container.source.read_into(info.start + offset, part)
                digest.update(part.data)
            if verify and CHECKSUM_PREFIX + digest.hexdigest() != expected:
                problems.append(f"layer {index} {layer.name!r}: {name}: checksum mismatch, the tensor data is corrupt")
            arrays[key] = array
    if problems:
        raise fail(8, problems, container.source.name)
    return arrays, None if document.ids_v1 is None else list(document.ids_v1)


def _read_v2(reader: _container.BlockReader, document: Document,
             verify: bool) -> tuple[dict[str, np.ndarray], list[str] | None]:
    checksums = reader.checksums_all() if verify else None
    arrays: dict[str, np.ndarray] = {}
    keys = [key for key, _, _ in document.tensors()] + (list(STREAM_TENSORS) if document.stream_ids else [])
    for key in keys:
        info = reader.container.tensors[key]
        if checksums is None:
            arrays[key] = np.empty(info.shape, info.dtype)
            reader.container.source.read_into(info.start, arrays[key])
        else:
            arrays[key] = _whole(reader, key, checksums)
    ids = None
    if document.stream_ids:
        try:
            ids = _streams.checked_ids(arrays, document.batch_size or 0)
        except StateError as error:
            raise fail(10, error.problems, reader.container.source.name) from None
    return arrays, ids


def _whole(reader: _container.BlockReader, key: str, checksums: np.ndarray) -> np.ndarray:
    array, _ = reader.read_tensor(key, checksums)
    assert array is not None  # kept: read_tensor returns None only with keep=False
    return array


def _check_all(container: _container.Container, reader: _container.BlockReader | None, document: Document) -> None:
    """Everything `validate` checks of a file: every block, every value, the whole stream index."""
    name = container.source.name
    if reader is None:
        arrays, _ = _read_v1(container, document, verify=True)
        counts = list(_nonfinite(document, arrays))
    else:
        checksums = reader.checksums_all()
        counts = []
        for index, layer in enumerate(document.layers):
            for tensor in layer.shapes(document.batch_size if document.is_state else None):
                _, count = reader.read_tensor(f"layers.{index}.{tensor}", checksums, keep=False)
                if count:
                    counts.append((f"layer {index} {layer.name!r}: {tensor}", count))
        if document.stream_ids:
            index_tensors = {key: _whole(reader, key, checksums) for key in STREAM_TENSORS}
            try:
                _streams.checked_ids(index_tensors, document.batch_size or 0)
            except StateError as error:
                raise fail(10, error.problems, name) from None
    _refuse_nonfinite(document, counts, name)


def _refuse_nonfinite(document: Document | bool, counts: Sequence[tuple[str, int]], name: str | None) -> None:
    """Step 9: NaN or Inf poison every later prediction (a state) or output (weights)."""
    is_state = document if isinstance(document, bool) else document.is_state
    what = "such a state would poison every later prediction" if is_state else "in the weights"
    if counts:
        raise fail(9, [f"{where}: {count} non-finite values (NaN or Inf); {what}" for where, count in counts], name)


def _read_rows_v2(reader: _container.BlockReader, document: Document,
                  streams: StreamKeys) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """Some rows of a 2.x state: a few verified range reads per step, however many rows the file has."""
    name = reader.container.source.name
    batch = document.batch_size or 0
    try:
        keys = stream_keys(streams)
        wanted_ids = [key for key in keys if isinstance(key, str)]
        found = _lookup(reader, wanted_ids, batch) if wanted_ids and document.stream_ids else {}
        rows = resolve_rows(keys, batch, found if document.stream_ids else None)
    except StateMismatchError as error:
        raise StateMismatchError(error.problems, source=name) from None
    ids = None
    if document.stream_ids:
        by_row = {row: key for key, row in found.items()}
        missing = [row for row in rows if row not in by_row]
        by_row.update(zip(missing, _ids_of_rows(reader, missing)))
        ids = [by_row[row] for row in rows]
    requests, places = [], []
    for key, _, shape in document.tensors():
        directions, _, units = shape
        itemsize = reader.container.tensors[key].dtype.itemsize
        for d in range(directions):
            for row in rows:
                start = ((d * batch) + row) * units * itemsize
                requests.append((key, start, start + units * itemsize))
        places.append((key, shape))
    data = iter(reader.read(requests))
    arrays = {}
    for key, (directions, _, units) in places:
        dtype = reader.container.tensors[key].dtype
        array = np.empty((directions, len(rows), units), dtype)
        for d in range(directions):
            for i in range(len(rows)):
                array[d, i] = np.frombuffer(next(data), dtype)
        arrays[key] = array
    return arrays, ids


def _lookup(reader: _container.BlockReader, ids: Sequence[str], batch: int) -> dict[str, int]:
    """Rows of stream ids through the hash index: bucket bounds, bucket entries, then the ids themselves."""
    bits = _streams.bucket_bits(batch)
    encoded = _streams.encode(ids)
    hashes = [xxhash.xxh3_64_intdigest(item) for item in encoded]
    buckets = [int(_streams.bucket_of(h, bits)) for h in hashes]
    bounds = reader.read([("stream_ids.buckets", b * 8, b * 8 + 16) for b in buckets])
    spans = [tuple(int(x) for x in np.frombuffer(raw, "<u8")) for raw in bounds]
    if any(not 0 <= start <= stop <= batch for start, stop in spans):
        raise fail(10, "stream_ids.buckets: a bucket bound lies outside the index", reader.container.source.name)
    entries = reader.read([("stream_ids.index", start * 16, stop * 16) for start, stop in spans])
    candidates: list[tuple[int, int]] = []  # (position in ids, row)
    for position, (raw, wanted) in enumerate(zip(entries, hashes)):
        table = np.frombuffer(raw, "<u8").reshape(-1, 2)
        for row in table[table[:, 0] == np.uint64(wanted), 1].tolist():
            if not 0 <= row < batch:
                raise fail(10, "stream_ids.index: a row lies outside the batch", reader.container.source.name)
            candidates.append((position, int(row)))
    texts = _ids_of_rows(reader, [row for _, row in candidates])
    found: dict[str, int] = {}
    for (position, row), text in zip(candidates, texts):
        if text == ids[position]:
            if ids[position] in found and found[ids[position]] != row:
                raise fail(10, f"stream id {ids[position]!r} appears twice", reader.container.source.name)
            found[ids[position]] = row
    return found


def _ids_of_rows(reader: _container.BlockReader, rows: Sequence[int]) -> list[str]:
    if not rows:
        return []
    bounds = reader.read([("stream_ids.offsets", row * 8, row * 8 + 16) for row in rows])
    spans = [tuple(int(x) for x in np.frombuffer(raw, "<u8")) for raw in bounds]
    size = reader.container.tensors["stream_ids.bytes"].nbytes
    if any(not 0 <= start <= stop <= size for start, stop in spans):
        raise fail(10, "stream_ids.offsets: an offset lies outside stream_ids.bytes", reader.container.source.name)
    texts = reader.read([("stream_ids.bytes", start, stop) for start, stop in spans])
    try:
        return [raw.decode() for raw in texts]
    except UnicodeDecodeError:
        raise fail(10, "stream_ids.bytes: a stream id is not valid UTF-8", reader.container.source.name) from None


def _build(document: Document, arrays: Mapping[str, np.ndarray], ids: Sequence[str] | None,
           file: str) -> StateSet | WeightSet:
    layers: list[Any] = []
    for index, entry in enumerate(document.layers):
        names = entry.shapes(document.batch_size if document.is_state else None)
        tensors = {name: arrays[f"layers.{index}.{name}"] for name in names}
        if document.is_state:
            layers.append(LayerState(entry.name, entry.kind, **tensors))
        else:
            layers.append(LayerWeights(entry.name, entry.kind, **tensors, activation=entry.activation or "tanh",
                                       recurrent_activation=entry.recurrent_activation or "sigmoid",
                                       linear_before_reset=entry.linear_before_reset is not False))
    if not document.is_state:
        return WeightSet(layers, metadata=document.fields, file=file)
    return StateSet(layers, stream_ids=ids, metadata=document.fields, file=file)


def _tensor_names(layer: LayerState | LayerWeights) -> tuple[str, ...]:
    return layer.state_names if isinstance(layer, LayerState) else layer.weight_names


def _entry(layer: LayerState | LayerWeights) -> LayerEntry:
    if isinstance(layer, LayerState):
        return LayerEntry(layer.name, layer.kind, layer.units, layer.directions, layer.proj_units, layer.dtype)
    return LayerEntry(layer.name, layer.kind, layer.units, layer.directions, layer.proj_units, layer.dtype,
                      input_size=layer.input_size, activation=layer.activation,
                      recurrent_activation=layer.recurrent_activation,
                      linear_before_reset=layer.linear_before_reset)
