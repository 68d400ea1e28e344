"""Arrow conversion and the checks of a put: rows to fixed-size-list columns and back, stream ids, fit, finiteness."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._dtypes import numpy_dtype
from ..errors import StateFormatError, StateMismatchError
from ..limits import MAX_STREAM_ID_BYTES
from ..signature import StateSignature
from ..states import StateSet
from ._schema import ID_COLUMN, Layer, arrow_schema, signature_of

_SHOWN_IDS = 10


def column(values: np.ndarray, layer: Layer, state: str) -> Any:
    """Arrow fixed-size lists from an array [directions, batch, units]: one list per stream."""
    import pyarrow as pa

    rows = np.ascontiguousarray(layer.rows(values)).reshape(-1)  # [batch, directions, units]
    if layer.dtype == "bfloat16":
        from lance.arrow import BFloat16Type

        raw = pa.py_buffer(rows.view(np.uint8))
        storage = pa.FixedSizeBinaryArray.from_buffers(pa.binary(2), rows.size, [None, raw])
        flat = pa.ExtensionArray.from_storage(BFloat16Type(), storage)  # type: ignore[no-untyped-call]
    else:
        flat = pa.array(rows)
    return pa.FixedSizeListArray.from_arrays(flat, layer.width(state))


def array(column: Any, layer: Layer, state: str) -> np.ndarray:
    """[rows, directions, units] from an Arrow fixed-size-list column, read-only, without a copy of the values."""
    import pyarrow as pa

    dtype = numpy_dtype(layer.dtype)
    width = layer.width(state)
    parts = []
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        values = chunk.values  # the whole child array: the chunk's own rows start at chunk.offset
        if isinstance(values, pa.ExtensionArray):  # bfloat16: two bytes each, in fixed_size_binary(2)
            values = values.storage
        if chunk.null_count or values.null_count:
            raise StateFormatError(f"{state}: {chunk.null_count or values.null_count} null values")
        first = values.offset + chunk.offset * width
        parts.append(np.frombuffer(values.buffers()[1], dtype, count=len(chunk) * width,
                                   offset=first * dtype.itemsize))
    flat = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.empty(0, dtype)
    return flat.reshape(-1, layer.directions, width // layer.directions)


def id_filter(ids: Sequence[str]) -> Any:
    import pyarrow.compute as pc

    return pc.field(ID_COLUMN) == ids[0] if len(ids) == 1 else pc.field(ID_COLUMN).isin(list(ids))


def shown(ids: Sequence[str]) -> str:
    listed = ", ".join(map(repr, ids[:_SHOWN_IDS]))
    return listed + (f" … ({len(ids)} in all)" if len(ids) > _SHOWN_IDS else "")


def check_ids(given: Any, what: str = "stream ids") -> list[str]:
    """Stream ids as a list; `StateMismatchError` for a non-string, an empty or an over-long id, or a repeat."""
    ids: list[str] = [given] if isinstance(given, str) else list(given)
    if not ids or (set(map(type, ids)) == {str} and min(map(len, ids)) > 0
                   and max(map(len, ids)) * 4 <= MAX_STREAM_ID_BYTES and len(set(ids)) == len(ids) and unicode(ids)):
        return ids  # the common case, at C speed: a million ids in ~0.1 s
    text = [i for i in ids if isinstance(i, str) and not unicode([i])]
    if text:
        raise StateMismatchError(f"{what}: a stream id must be Unicode text; found {shown([ascii(t) for t in text])}"
                                 " (a lone surrogate?)")
    bad = [i for i in ids
           if not isinstance(i, str) or not i or len(i.encode("utf-8", "surrogatepass")) > MAX_STREAM_ID_BYTES]
    if bad:
        raise StateMismatchError(f"{what}: every stream id must be a non-empty string of at most "
                                 f"{MAX_STREAM_ID_BYTES} "
                                 f"bytes; found {shown([repr(b)[:40] for b in bad])}")
    if len(set(ids)) != len(ids):
        repeats = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise StateMismatchError(f"{what}: stream ids given more than once: {shown(repeats)}")
    return ids


def unicode(ids: Sequence[str]) -> bool:
    """Whether every id encodes as UTF-8 (no lone surrogates), in one pass at C speed."""
    try:
        "".join(ids).encode()
    except UnicodeEncodeError:
        return False
    return True


def fit_problems(layers: Sequence[Layer], states: StateSet) -> list[str]:
    """Every way `states` does not fit the store's layers: kind, units, directions, proj_units, dtype, and
    order. Layers match by position, as everywhere in statefmt; but a state whose layers carry the store's
    names in another order would be stored under the wrong names, so that is refused."""
    shapes = signature_of(layers)  # kinds, units, directions, proj_units; the dtype per layer, below
    problems = StateSignature(shapes.layers, None, None).check(states)
    names, given = [layer.name for layer in layers], [layer.name for layer in states.layers]
    if given != names and sorted(given) == sorted(names):
        problems.append(f"layers: the store holds {names} in this order, the state gives {given}; "
                        "reorder them with StateSet.select(names)")
    for index, (layer, found) in enumerate(zip(layers, states.layers)):
        if found.dtype != layer.dtype:
            problems.append(f"layer {index} {found.name!r}: dtype: expected {layer.dtype}, found {found.dtype}")
    return problems


def put_table(layers: Sequence[Layer], states: StateSet, url: str) -> Any:
    """The Arrow table of a checked put (None when it holds no stream); every problem in one error first."""
    if not isinstance(states, StateSet):
        raise TypeError(f"expected a StateSet, not {type(states).__name__}")
    if states.stream_ids is None:
        raise StateMismatchError("a put needs states.stream_ids: StateSet.with_stream_ids names the rows",
                                 source=url)
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = states.stream_ids  # StateSet checks that they are unique strings; but the attribute can be set
    if not unicode(ids):
        check_ids(ids, "put")  # names the ids that are no Unicode text
    id_array = pa.array(ids, pa.string())
    if ids and (pc.min(pc.binary_length(id_array)).as_py() == 0
                or pc.max(pc.binary_length(id_array)).as_py() > MAX_STREAM_ID_BYTES):
        check_ids(ids, "put")  # names the offending ids
    if len(ids) > 1 and pc.count_distinct(id_array).as_py() != len(ids):
        check_ids(ids, "put")  # names the repeated ids
    mismatches = fit_problems(layers, states)
    poisoned = []
    for index, layer in enumerate(states.layers):
        for state in layer.state_names:
            bad = nonfinite_rows(np.moveaxis(layer[state], layer.batch_axis, 0))
            if bad.size:
                poisoned.append(f"layer {index} {layer.name!r}: {state}: NaN or Inf in streams "
                                f"{shown([ids[r] for r in bad])}")
    if mismatches or poisoned:
        error = StateMismatchError if mismatches else StateFormatError
        raise error(mismatches + poisoned + [f"nothing was written for streams {shown(ids)}"], source=url)
    if not ids:
        return None
    values = [layer.rows(found[state]) for layer, found in zip(layers, states.layers) for state in layer.states]
    arrays = [id_array]
    arrays += [column(found[state], layer, state) for layer, found in zip(layers, states.layers)
               for state in layer.states]
    arrays.append(pa.array(row_checksums(values), pa.uint64()))
    return pa.Table.from_arrays(arrays, schema=arrow_schema(layers))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def row_checksums(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Each row's checksum (spec/store.md): its state columns' bytes, in column order, each column's zero-padded
    to a multiple of 8 bytes, read as little-endian uint64 words w_0, w_1, ...; the checksum is the sum of
    w_i * (2i + 1) * 0x9E3779B97F4A7C15, modulo 2^64. Every weight is odd, so a change within any one word
    (a flipped byte) always changes it. Vectorised: one integer product per column, no per-row Python.
    `columns`: arrays [rows, ...], one per state column."""
    rows = len(columns[0])
    total, first = np.zeros(rows, np.uint64), 0
    for values in columns:
        raw = np.ascontiguousarray(values).reshape(rows, int(np.prod(values.shape[1:]))).view(np.uint8)
        if raw.shape[1] % 8:
            raw = np.pad(raw, ((0, 0), (0, 8 - raw.shape[1] % 8)))
        words = raw.view("<u8")
        weights = (np.arange(first, first + words.shape[1], dtype=np.uint64) * np.uint64(2) + np.uint64(1)) * _GOLDEN
        total += np.einsum("ij,j->i", words, weights)  # uint64: wraps modulo 2^64, as the spec says
        first += words.shape[1]
    return total


def nonfinite_rows(rows: np.ndarray) -> np.ndarray:
    """Indices of the rows (axis 0) holding NaN or Inf."""
    if rows.size == 0:
        return np.empty(0, np.int64)
    if rows.dtype.itemsize >= 4 and np.isfinite(rows.sum()):  # NaN and Inf propagate: one cheap pass
        return np.empty(0, np.int64)
    rows = rows.astype(np.float32, copy=False) if rows.dtype.itemsize < 4 else rows  # float16, bfloat16
    if np.isfinite(rows).all():  # the sum overflowed, or 16-bit values
        return np.empty(0, np.int64)
    return np.flatnonzero(~np.isfinite(rows).reshape(rows.shape[0], -1).all(axis=1))
