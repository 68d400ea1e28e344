"""The reader: a file's header parsed once and checked (spec steps 1 to 9), its tensors or rows read through one source.

`statefmt.api` keeps the public verbs thin; everything they read goes through here.
"""

from __future__ import annotations

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
    STREAM_TENSORS,
    Document,
    LayerEntry,
    fail,
)
from ._dtypes import CODES, NAMES
from ._source import open_source
from .errors import StateError, StateMismatchError
from .states import LayerState, StateSet, resolve_rows, stream_keys
from .weights import LayerWeights, WeightSet

Target = str | os.PathLike[str] | bytes
StreamKeys = str | int | Iterable[str | int]


class Shape:
    """What a signature checks of a state (layers, batch size, model), from a document, without the data."""

    def __init__(self, document: Document):
        self.is_state = document.is_state
        self.batch_size = document.batch_size
        self.layers = [ShapeLayer(entry) for entry in document.layers]
        self.metadata = document.fields


class ShapeLayer:
    def __init__(self, entry: LayerEntry):
        self.name, self.kind, self.units, self.directions = entry.name, entry.kind, entry.units, entry.directions
        self.proj_units, self.dtype = entry.proj_units, entry.dtype
        self.modern = entry.dims is not None
        self.dims = dict(entry.dims) if entry.dims is not None else {
            "units": entry.units, "directions": entry.directions, "proj_units": entry.proj_units}



@contextmanager
def opened(target: Target, storage_options: Mapping[str, Any] | None
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
            expected[f"layers.{index}.{name}"] = (CODES[layer.dtype], shape, f"layer {index} {layer.name!r}: "
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
            want = f"{list(wanted) if wanted is not None else '[n]'} {NAMES.get(code, code)}"
            problems.append(f"{where}: expected {want}, tensor `{key}` is {list(info.shape)} "
                            f"{NAMES.get(info.code, info.code)}")
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


def read_file(target: Target, *, streams: StreamKeys | None, verify: bool, finite: bool = True,
          storage_options: Mapping[str, Any] | None = None) -> StateSet | WeightSet:
    """Read and check a file; `finite=False` lets `statefmt inspect` show a poisoned state."""
    with opened(target, storage_options) as (container, blocks, document):
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
            refuse_nonfinite(document, list(_nonfinite(document, arrays)), name)
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
            arrays[key] = reader.read_tensor(key, checksums)
    ids = None
    if document.stream_ids:
        try:
            ids = _streams.checked_ids(arrays, document.batch_size or 0)
        except StateError as error:
            raise fail(10, error.problems, reader.container.source.name) from None
    return arrays, ids


def check_all(container: _container.Container, reader: _container.BlockReader | None, document: Document) -> None:
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
                count = reader.verify_tensor(f"layers.{index}.{tensor}", checksums)
                if count:
                    counts.append((f"layer {index} {layer.name!r}: {tensor}", count))
        if document.stream_ids:
            index_tensors = {key: reader.read_tensor(key, checksums) for key in STREAM_TENSORS}
            try:
                _streams.checked_ids(index_tensors, document.batch_size or 0)
            except StateError as error:
                raise fail(10, error.problems, name) from None
    refuse_nonfinite(document, counts, name)


def refuse_nonfinite(document: Document | bool, counts: Sequence[tuple[str, int]], name: str | None) -> None:
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
    for index, layer in enumerate(document.layers):
        axis = 0 if layer.dims is not None else 1  # the stream axis: modern kinds batch first
        for name, shape in layer.shapes(batch).items():
            key = f"layers.{index}.{name}"
            outer, inner = int(np.prod(shape[:axis])), int(np.prod(shape[axis + 1:]))
            size = inner * reader.container.tensors[key].dtype.itemsize
            requests += [(key, (o * batch + row) * size, (o * batch + row + 1) * size) for o in range(outer)
                         for row in rows]
            places.append((key, shape, axis))
    data = iter(reader.read(requests))
    arrays = {}
    for key, shape, axis in places:
        dtype = reader.container.tensors[key].dtype
        picked = (*shape[:axis], len(rows), *shape[axis + 1:])
        flat = np.empty((int(np.prod(shape[:axis])), len(rows), int(np.prod(shape[axis + 1:]))), dtype)
        for o in range(flat.shape[0]):
            for i in range(len(rows)):
                flat[o, i] = np.frombuffer(next(data), dtype)
        arrays[key] = flat.reshape(picked)
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
            window = entry.dims.get("window") if entry.dims is not None else None
            layers.append(LayerState(entry.name, entry.kind, window=window, **tensors))
        else:
            layers.append(LayerWeights(entry.name, entry.kind, **tensors, activation=entry.activation or "tanh",
                                       recurrent_activation=entry.recurrent_activation or "sigmoid",
                                       linear_before_reset=entry.linear_before_reset is not False))
    if not document.is_state:
        return WeightSet(layers, metadata=document.fields, file=file)
    return StateSet(layers, stream_ids=ids, metadata=document.fields, file=file)


def tensor_names(layer: LayerState | LayerWeights) -> tuple[str, ...]:
    return layer.state_names if isinstance(layer, LayerState) else layer.weight_names


def layer_entry(layer: LayerState | LayerWeights) -> LayerEntry:
    if isinstance(layer, LayerState) and layer.modern:
        return LayerEntry(layer.name, layer.kind, 0, 1, None, layer.dtype, dims=layer.dims)
    if isinstance(layer, LayerState):
        return LayerEntry(layer.name, layer.kind, layer.units, layer.directions, layer.proj_units, layer.dtype)
    return LayerEntry(layer.name, layer.kind, layer.units, layer.directions, layer.proj_units, layer.dtype,
                      input_size=layer.input_size, activation=layer.activation,
                      recurrent_activation=layer.recurrent_activation,
                      linear_before_reset=layer.linear_before_reset)
