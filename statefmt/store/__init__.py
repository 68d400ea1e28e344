"""A store of per-stream recurrent state on Lance: get and put by stream id, versions, object storage.

One row per stream: its id, and one fixed-size-list column per layer and state (spec/store.md).
The statefmt document sits in the dataset's schema metadata under `statefmt`. Lance does the
storage, the BTREE index on the id, upserts (`merge_insert`), versions, compaction and object
stores; this module adds the neutral schema, validation and stream-id semantics, so that a
`StateSet` from `get` goes straight into any adapter.

Lance and pyarrow are imported inside functions: `from statefmt import store` stays cheap.

>>> s = store.create("fleet.lance", StateSignature([LayerSignature("lstm", 64)] * 2))  # doctest: +SKIP
>>> s.put(states)                                    # states.stream_ids name the rows  # doctest: +SKIP
>>> st.initial_state(s.get(["pump-7", "pump-2"], missing="zeros"), lstm)               # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import numpy as np

from .._document import BLOCK_BYTES, FORMAT_VERSION, METADATA_KEY, Document, LayerEntry, strict_json
from .._dtypes import numpy_dtype
from .._source import local_path
from ..cells import MODERN, STATE_NAMES
from ..errors import StateError, StateFormatError, StateMismatchError, StateUnreadableError
from ..limits import MAX_STORE_DOCUMENT_BYTES, MAX_STORE_LAYERS, MAX_STREAM_ID_BYTES, VERSION_PATTERN
from ..signature import LayerSignature, StateSignature
from ..states import LayerState, StateSet

STORE_FORMAT_VERSION = FORMAT_VERSION  # a store shares the file format's version (2.x)
ID_COLUMN = "stream_id"
INDEX_NAME = "stream_id_idx"
PRIMARY_KEY = {"lance-schema:unenforced-primary-key": "true"}  # a second insert of a new id conflicts, then retries
COMMIT_ATTEMPTS = 20
_SHOWN_IDS = 10


class _Layer(LayerEntry):
    """A layer of the store's document: the file model's `LayerEntry`, with the store's columns."""

    @property
    def states(self) -> tuple[str, ...]:
        """The tensors stored as columns: all but empty ones (an xLSTM block without conv)."""
        return tuple(state for state in STATE_NAMES[self.kind] if self.width(state))

    def empty(self, rows: int) -> dict[str, np.ndarray]:
        """The layer's empty tensors, which have no column, for `rows` streams."""
        return {state: np.empty((rows, *self.shapes(1)[state][1:]), numpy_dtype(self.dtype))
                for state in STATE_NAMES[self.kind] if not self.width(state)}

    def width(self, state: str) -> int:
        """Values per row in the column of `state`: [directions, units] flattened (a modern kind: one stream's
        tensor, flattened)."""
        if self.dims is not None:
            return int(np.prod(self.shapes(1)[state][1:]))
        return self.directions * (self.h_units if state == "h" else self.units)

    def rows(self, array: np.ndarray) -> np.ndarray:
        """A layer's tensor as rows, one per stream: [batch, directions, units] ([batch, 1, width] for a modern
        kind, which puts the batch first)."""
        return array.reshape(array.shape[0], 1, -1) if self.dims is not None else np.swapaxes(array, 0, 1)

    def tensor(self, state: str, rows: np.ndarray) -> np.ndarray:
        """The inverse of `rows`: the layer's tensor of `state`, contiguous."""
        if self.dims is not None:
            return np.ascontiguousarray(rows.reshape(rows.shape[0], *self.shapes(1)[state][1:]))
        return np.ascontiguousarray(np.swapaxes(rows, 0, 1))

    def column(self, index: int, state: str) -> str:
        return f"layer{index}_{state}"


# ---- the document: built and parsed here only, through the file's document model ----------------------------------

def _document(layers: Sequence[_Layer]) -> str:
    """The JSON kept under `statefmt` in the dataset's schema metadata: a file's document minus its tensors."""
    from .. import __version__

    model = Document(format_version=FORMAT_VERSION, content="state", layers=tuple(layers), batch_size=0,
                     created_by=f"statefmt {__version__}").to_dict()
    document = {"format_version": model["format_version"], "content": "store", "layers": model["layers"],
                "created_by": model["created_by"]}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _parse_document(text: str | bytes, url: str) -> tuple[_Layer, ...]:
    """The layers of a store's document, checked as a file's are; `StateFormatError` naming the URL otherwise."""
    if len(text) > MAX_STORE_DOCUMENT_BYTES:
        raise StateFormatError(f"statefmt document of {len(text)} bytes exceeds the "
                               f"{MAX_STORE_DOCUMENT_BYTES}-byte cap", source=url)
    try:
        document = strict_json(text)
    except StateFormatError as error:
        raise StateFormatError(f"the statefmt document: {error.problems[0]}", source=url) from None
    if not isinstance(document, dict):
        raise StateFormatError(f"the statefmt document must be a JSON object, found {type(document).__name__}",
                               source=url)
    version = document.get("format_version")
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise StateFormatError(f"format_version: expected a string MAJOR.MINOR, found {str(version)[:40]!r}",
                               source=url)
    if version.split(".")[0] != STORE_FORMAT_VERSION.split(".")[0]:
        raise StateFormatError(f"format_version {version} is not supported: this statefmt reads 2.x stores; "
                               "upgrade statefmt", source=url)
    if document.get("content") != "store":
        raise StateFormatError(f"content: expected 'store', found {str(document.get('content'))[:40]!r}", source=url)
    layers = document.get("layers")
    if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_STORE_LAYERS:
        raise StateFormatError(f"layers: expected a list of 1 to {MAX_STORE_LAYERS} layers", source=url)
    # the layers of a batch-0 state file: the same schema and checks as a file's
    as_file = {"format_version": version, "content": "state", "batch_size": 0, "stream_ids": False,
               "block_bytes": BLOCK_BYTES, "checksum_blocks": [], "layers": layers}
    entries = Document.from_dict(as_file, url).layers
    return tuple(_Layer(e.name, e.kind, e.units, e.directions, e.proj_units, e.dtype, dims=e.dims) for e in entries)


# ---- Lance, with its errors turned into ours ------------------------------------------------------------------------

def _is_conflict(error: BaseException) -> bool:
    text = str(error).lower()
    return "conflict" in text or ("retry" in text and "commit" in text)


@contextmanager
def _lance_errors(url: str, action: str) -> Iterator[None]:
    """A Lance or Arrow error as one `StateFormatError` line naming the URL and what was being done."""
    try:
        yield
    except StateError:
        raise
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, IndexError, AttributeError) as error:
        reason = " ".join(str(error).split())
        reason = re.sub(r",? ?/\S+\.rs:\d+:\d+", "", reason)  # Lance appends its Rust source positions
        if len(reason) > 300:
            reason = reason[:300] + " … (cut)"
        raise StateFormatError(f"{action}: {type(error).__name__}: {reason}", source=url) from None
    except Exception as error:  # pyarrow.ArrowException and Lance's own classes derive from Exception only
        if type(error).__module__.split(".")[0] not in ("lance", "pyarrow"):
            raise
        raise StateFormatError(f"{action}: {type(error).__name__}: {error}", source=url) from None


def _arrow_schema(layers: Sequence[_Layer]) -> Any:
    import pyarrow as pa

    fields = [pa.field(ID_COLUMN, pa.string(), nullable=False, metadata=PRIMARY_KEY)]
    for index, layer in enumerate(layers):
        for state in layer.states:
            fields.append(pa.field(layer.column(index, state), pa.list_(_value_type(layer.dtype), layer.width(state)),
                                   nullable=False))
    return pa.schema(fields, metadata={METADATA_KEY: _document(layers)})


def _value_type(dtype: str) -> Any:
    import pyarrow as pa

    if dtype == "bfloat16":
        from lance.arrow import BFloat16Type

        return BFloat16Type()  # type: ignore[no-untyped-call]
    return {"float16": pa.float16(), "float32": pa.float32(), "float64": pa.float64()}[dtype]


def _column(values: np.ndarray, layer: _Layer, state: str) -> Any:
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


def _array(column: Any, layer: _Layer, state: str) -> np.ndarray:
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


def _id_filter(ids: Sequence[str]) -> Any:
    import pyarrow.compute as pc

    return pc.field(ID_COLUMN) == ids[0] if len(ids) == 1 else pc.field(ID_COLUMN).isin(list(ids))


def _shown(ids: Sequence[str]) -> str:
    listed = ", ".join(map(repr, ids[:_SHOWN_IDS]))
    return listed + (f" … ({len(ids)} in all)" if len(ids) > _SHOWN_IDS else "")


def _check_ids(given: Any, what: str) -> list[str]:
    """Stream ids as a list; `StateMismatchError` for a non-string, an empty or an over-long id, or a repeat."""
    ids: list[str] = [given] if isinstance(given, str) else list(given)
    if not ids or (set(map(type, ids)) == {str} and min(map(len, ids)) > 0
                   and max(map(len, ids)) * 4 <= MAX_STREAM_ID_BYTES and len(set(ids)) == len(ids) and _unicode(ids)):
        return ids  # the common case, at C speed: a million ids in ~0.1 s
    text = [i for i in ids if isinstance(i, str) and not _unicode([i])]
    if text:
        raise StateMismatchError(f"{what}: a stream id must be Unicode text; found {_shown([ascii(t) for t in text])}"
                                 " (a lone surrogate?)")
    bad = [i for i in ids
           if not isinstance(i, str) or not i or len(i.encode("utf-8", "surrogatepass")) > MAX_STREAM_ID_BYTES]
    if bad:
        raise StateMismatchError(f"{what}: every stream id must be a non-empty string of at most {MAX_STREAM_ID_BYTES} "
                                 f"bytes; found {_shown([repr(b)[:40] for b in bad])}")
    if len(set(ids)) != len(ids):
        repeats = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise StateMismatchError(f"{what}: stream ids given more than once: {_shown(repeats)}")
    return ids


def _unicode(ids: Sequence[str]) -> bool:
    """Whether every id encodes as UTF-8 (no lone surrogates), in one pass at C speed."""
    try:
        "".join(ids).encode()
    except UnicodeEncodeError:
        return False
    return True


def _signature(layers: Sequence[_Layer]) -> StateSignature:
    """The layers as a `StateSignature` (no batch size; the dtype when all layers share one)."""
    dtypes = {layer.dtype for layer in layers}
    return StateSignature(tuple(LayerSignature(layer.kind, dims=layer.dims, name=layer.name) if layer.dims is not None
                                else LayerSignature(layer.kind, layer.units, layer.directions, layer.proj_units,
                                                    layer.name) for layer in layers),
                          None, dtypes.pop() if len(dtypes) == 1 else None)


def _fixed_size_problems(layer: LayerSignature) -> list[str]:
    """A store's columns have one size: a modern layer needs every size given, and an attention layer (whose
    length grows with the tokens seen) has none."""
    if layer.dims is None:
        return []
    if layer.kind == "attention":
        return ["an attention layer's keys grow with the tokens seen: a store's columns have one size; save "
                "hybrid sessions as files"]
    kind = MODERN[layer.kind]
    missing = [dim for dim in kind.dims if dim not in layer.dims]
    return [f"dims: a store needs every size of a {layer.kind} layer; missing {', '.join(missing)}"] if missing else []


# ---- the store ------------------------------------------------------------------------------------------------------

def create(url: str, signature: StateSignature, *, storage_options: dict[str, str] | None = None,
           states: StateSet | None = None) -> Store:
    """Create a store at `url` (a local directory or `s3://…`) for states of `signature`.

    >>> s = create("fleet.lance", StateSignature([LayerSignature("lstm", 64)], dtype="float32"))  # doctest: +SKIP

    The signature's batch size is ignored; its dtype (float32 if unset) applies to every layer.
    Layers without a name are called `layer0`, `layer1`, …. Refuses a URL that already holds a dataset.
    `states` (checked as a put) fills the new store in its first commit: a bulk load that writes the
    rows as they are, without the upsert's join (`put` into an empty store is about 2x slower).
    """
    if not isinstance(signature, StateSignature):
        raise TypeError(f"create() takes a StateSignature, not {type(signature).__name__}")
    if not signature.layers:
        raise StateFormatError("the signature has no layers", source=str(url))
    problems = [f"layer {index}: {problem}" for index, layer in enumerate(signature.layers)
                for problem in _fixed_size_problems(layer)]
    if problems:
        raise StateFormatError(problems, source=str(url))
    dtype = signature.dtype or "float32"
    layers = tuple(_Layer(layer.name or f"layer{index}", layer.kind, layer.units or 0, layer.directions,
                          layer.proj_units, dtype, dims=layer.dims) for index, layer in enumerate(signature.layers))
    url = _url(url)
    _parse_document(_document(layers), url)  # refuses what a reader would refuse: duplicate names, bad projections
    import lance
    import pyarrow as pa

    schema = _arrow_schema(layers)
    table = None if states is None else _table(layers, states, url)
    if table is None:
        empty = [pa.array([], pa.string())] + [
            _column(np.empty((layer.directions, 0, layer.width(s) // layer.directions), numpy_dtype(dtype)),
                    layer, s) for layer in layers for s in layer.states]
        table = pa.Table.from_arrays(empty, schema=schema)
    with _lance_errors(url, "cannot create the store"):
        try:
            dataset = lance.write_dataset(table, url, schema=schema, mode="create",
                                          storage_options=storage_options)
        except OSError as error:
            if "already exists" in str(error):
                raise StateFormatError("a dataset already exists here; open it, or choose another URL",
                                       source=url) from None
            raise
        dataset.create_scalar_index(ID_COLUMN, "BTREE", name=INDEX_NAME)
    _make_durable(url, 0)
    with _lance_errors(url, "cannot open the store just created"):
        dataset = lance.dataset(url, storage_options=storage_options)
    return Store(url, dataset, layers, storage_options, read_only=False)


def open(url: str, *, version: int | None = None,  # the name: store.open, beside create
         storage_options: dict[str, str] | None = None) -> Store:
    """Open the store at `url`: the latest version, or `version=N` read-only.

    >>> s = open("s3://bucket/fleet", storage_options={"aws_region": "eu-west-1"})  # doctest: +SKIP

    `StateFormatError` names the URL and the reason for anything that is not a readable statefmt store.
    """
    import lance

    url = _url(url)
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise StateFormatError(f"version: expected a version number (an int >= 0), found {version!r}", source=url)
    local = _local_path(url)
    if local is not None:
        versions = os.path.join(local, "_versions")
        if not os.path.isdir(versions):
            reason = "a file, not a store directory" if os.path.isfile(local) else \
                "no store here (no Lance dataset at this URL)"
            raise StateUnreadableError(reason, source=url)  # Lance would retry for seconds before it says so
        _refuse_special_files(versions, url)
    with _lance_errors(url, "not a readable statefmt store"):
        try:
            dataset = lance.dataset(url, version=version, storage_options=storage_options)
        except ValueError as error:
            if "not found" not in str(error).lower():
                raise
            if version is None:
                raise StateUnreadableError("no store here (no Lance dataset at this URL)", source=url) from None
            kept = [entry["version"] for entry in lance.dataset(url, storage_options=storage_options).versions()]
            raise StateFormatError(f"no version {version} here: the versions kept are {kept[:20]}"
                                   f"{' …' if len(kept) > 20 else ''}", source=url) from None
        layers = _check_schema(dataset.schema, url)
    return Store(url, dataset, layers, storage_options, read_only=version is not None)


def _refuse_special_files(folder: str, url: str) -> None:
    """A FIFO or device among a local store's manifests would block Lance's read forever: refuse it first."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=True) and not entry.is_dir(follow_symlinks=True):
                raise StateFormatError(f"_versions/{entry.name} is not a regular file (a FIFO or a device?): not a "
                                       "readable store", source=url)


def _make_durable(url: str, since_ns: int) -> None:
    """fsync what a commit wrote to a local store: Lance renames and links its files into place (atomic)
    but never fsyncs them, so without this a power cut could lose a commit that returned.

    Object stores need nothing: a completed PUT is durable. The files are found by modification time,
    with a margin for the file system's coarse clock; syncing an older file too is harmless.
    """
    root = _local_path(url)
    if root is None:
        return
    since_ns -= 100_000_000
    directories = [root]
    for sub in ("data", "_deletions", "_transactions", "_indices", "_versions"):
        path = os.path.join(root, sub)
        if os.path.isdir(path):
            directories.append(path)
    for directory in list(directories):
        for entry in os.scandir(directory):
            if directory == root or entry.name.startswith(".tmp"):  # another writer's file, not yet in place
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime_ns < since_ns:
                    continue
                if entry.is_dir(follow_symlinks=False):  # an index's own directory
                    directories.append(entry.path)
                    for inner in os.scandir(entry.path):
                        _fsync(inner.path)
                elif entry.is_file(follow_symlinks=False):
                    _fsync(entry.path)
            except FileNotFoundError:  # another writer's, renamed or cleaned up meanwhile
                continue
    for directory in directories:
        _fsync(directory)


def _fsync(path: str) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _local_path(url: str) -> str | None:
    """The local path of a URL without a scheme; None for an object store (`_url` turned file:// into a path)."""
    return None if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url) else url


def _url(url: Any) -> str:
    """The URL Lance is given: a path for a local store (a file:// URL names one on this machine only)."""
    text = os.fspath(url) if isinstance(url, os.PathLike) else url
    if not isinstance(text, str) or not text:
        raise StateFormatError(f"a store URL must be a non-empty path or URL, found {text!r}")
    return str(local_path(text))


def _check_schema(schema: Any, url: str) -> tuple[_Layer, ...]:
    """The layers of a store whose Arrow schema agrees with its document; `StateFormatError` otherwise."""
    import pyarrow as pa

    metadata = schema.metadata or {}
    if METADATA_KEY.encode() not in metadata:
        raise StateFormatError(f"a Lance dataset without a '{METADATA_KEY}' document in its schema metadata: "
                               "not a statefmt store", source=url)
    layers = _parse_document(metadata[METADATA_KEY.encode()], url)
    problems = []
    id_field = schema.field(ID_COLUMN) if ID_COLUMN in schema.names else None
    if id_field is None or id_field.type not in (pa.string(), pa.large_string()):
        problems.append(f"column {ID_COLUMN!r}: expected strings, found {id_field.type if id_field else 'none'}")
    for index, layer in enumerate(layers):
        for state in layer.states:
            name = layer.column(index, state)
            expected = pa.list_(_value_type(layer.dtype), layer.width(state))
            found = schema.field(name).type if name in schema.names else None
            if found != expected:
                problems.append(f"layer {index} {layer.name!r}: {state}: column {name!r} should be {expected}, "
                                f"found {found or 'no such column'}")
    if problems:
        raise StateFormatError(problems, source=url)
    return layers


class Store:
    """A store opened at one version. Reads see that version; `put`, `delete` and `compact` commit a new one
    and move the handle to it (`refresh()` moves it to the latest, others' writes included).

    >>> s = store.open("fleet.lance")  # doctest: +SKIP
    >>> h0, c0 = torch_adapter.initial_state(s.get(["pump-7"], missing="zeros"), lstm)  # doctest: +SKIP
    """

    def __init__(self, url: str, dataset: Any, layers: tuple[_Layer, ...],
                 storage_options: dict[str, str] | None, *, read_only: bool):
        self.url = url
        self._dataset = dataset
        self._layers = layers
        self._options = storage_options
        self._read_only = read_only

    # -- reading --

    @property
    def signature(self) -> StateSignature:
        """What the store holds, as a `StateSignature` (no batch size; the dtype when all layers share one).

        >>> s.signature.layers[0].units  # doctest: +SKIP
        64
        """
        return _signature(self._layers)

    @property
    def version(self) -> int:
        """The version this handle reads (and the one its last commit made).

        >>> s.version  # doctest: +SKIP
        12
        """
        return int(self._dataset.version)

    def __len__(self) -> int:
        with _lance_errors(self.url, "cannot count the streams"):
            return int(self._dataset.count_rows())

    def __contains__(self, stream_id: object) -> bool:
        if not isinstance(stream_id, str) or not stream_id:
            return False
        with _lance_errors(self.url, "cannot look up a stream"):
            return bool(self._dataset.count_rows(filter=_id_filter([stream_id])) > 0)

    def __repr__(self) -> str:
        return f"Store({self.url!r}, version={self.version}, layers={len(self._layers)})"

    def versions(self) -> list[tuple[int, datetime, int]]:
        """Every version kept: (version, commit time in UTC, stream count), oldest first.

        >>> s.versions()[-1]  # doctest: +SKIP
        (12, datetime.datetime(2026, 11, 25, 10, 22, tzinfo=datetime.timezone.utc), 1000000)
        """
        with _lance_errors(self.url, "cannot list the versions"):
            found = []
            for entry in self._dataset.versions():
                rows = (entry.get("metadata") or {}).get("total_rows")
                if rows is None:  # older manifests do not carry the count
                    rows = self._dataset.checkout_version(entry["version"]).count_rows()
                stamp = entry["timestamp"]  # Lance's is naive local time
                found.append((int(entry["version"]), stamp.astimezone(timezone.utc), int(rows)))
        return found

    def refresh(self) -> int:
        """Move a handle opened at the latest version to the newest one; returns it.

        >>> s.refresh()  # doctest: +SKIP
        13
        """
        if not self._read_only:
            with _lance_errors(self.url, "cannot read the latest version"):
                self._dataset = self._dataset.checkout_version(self._dataset.latest_version)
        return self.version

    def get(self, ids: Sequence[str], missing: Literal["error", "zeros"] | StateSet = "error") -> StateSet:
        """The states of `ids`, rows in the order asked, `stream_ids` set: ready for any adapter.

        >>> st.initial_state(s.get(["pump-7", "pump-2"], missing="zeros"), lstm)  # doctest: +SKIP

        `missing`: "error" raises `StateMismatchError` naming the unknown ids; "zeros" starts them from
        zeros; a batch-1 `StateSet` (a learned start) starts them from it.
        """
        ids = _check_ids(ids, "get")
        start = self._start_state(missing)
        rows, stored = self._read(ids)
        if len(ids) <= 16:  # a few: plain Python beats Arrow's call overhead
            position = {stream: row for row, stream in enumerate(stored.to_pylist())}
            order = np.array([position.get(stream, -1) for stream in ids], np.int64)
        else:
            import pyarrow as pa
            import pyarrow.compute as pc

            order = pc.index_in(pa.array(ids, pa.string()), value_set=stored).fill_null(-1).to_numpy()
        present = order >= 0
        if not present.all() and start is None:
            absent = [ids[i] for i in np.flatnonzero(~present)]
            raise StateMismatchError(f"no stream with id {_shown(absent)} at version {self.version} "
                                     "(missing='zeros' starts new streams from zeros)", source=self.url)
        layers = []
        for index, layer in enumerate(self._layers):
            arrays = {}
            for state in layer.states:
                found = rows[layer.column(index, state)]  # [found rows, directions, units]
                if present.all():
                    arrays[state] = layer.tensor(state, found[order])
                    continue
                out = np.empty((len(ids), *found.shape[1:]), found.dtype)
                out[present] = found[order[present]]
                out[~present] = layer.rows(start[index][state]) if isinstance(start, StateSet) else 0
                arrays[state] = layer.tensor(state, out)
            layers.append(LayerState(layer.name, layer.kind, **arrays, **layer.empty(len(ids))))
        return StateSet(layers, stream_ids=ids)

    def snapshot(self, streams: Sequence[str] | None = None) -> StateSet:
        """The whole fleet of the opened version, by stream id (sorted), or the streams given.

        >>> statefmt.save(store.open(url, version=12).snapshot(), "fleet-v12.statefmt")  # doctest: +SKIP
        """
        return self._snapshot() if streams is None else self.get(streams)

    def _snapshot(self, progress: Callable[[int], Any] | None = None) -> StateSet:
        """The whole fleet; `progress(rows)` is called as batches arrive (the CLI's progress bar)."""
        import pyarrow.compute as pc

        rows, stored = self._read(None, progress=progress)
        order = pc.sort_indices(stored).to_numpy()
        ids = stored.take(order).to_pylist()
        layers = []
        for index, layer in enumerate(self._layers):
            arrays = {s: layer.tensor(s, rows[layer.column(index, s)][order]) for s in layer.states}
            layers.append(LayerState(layer.name, layer.kind, **arrays, **layer.empty(len(ids))))
        return StateSet(layers, stream_ids=ids)

    def _read(self, ids: Sequence[str] | None, *,
              progress: Callable[[int], Any] | None = None) -> tuple[dict[str, np.ndarray], Any]:
        """The stored rows of `ids` (all rows for None) in the order Lance returns them, each checked finite,
        and their ids as an Arrow array."""
        columns = [ID_COLUMN] + [layer.column(i, s) for i, layer in enumerate(self._layers) for s in layer.states]
        if ids is not None and not ids:
            table = None
        else:
            with _lance_errors(self.url, "cannot read the streams"):
                if progress is None:
                    table = self._dataset.to_table(columns=columns, filter=None if ids is None else _id_filter(ids))
                else:
                    import pyarrow as pa

                    batches = []
                    for batch in self._dataset.to_batches(columns=columns):
                        batches.append(batch)
                        progress(batch.num_rows)
                    schema = pa.schema([self._dataset.schema.field(c) for c in columns])
                    table = pa.Table.from_batches(batches, schema=schema)
        import pyarrow as pa
        import pyarrow.compute as pc

        stored = pa.array([], pa.string()) if table is None else table.column(ID_COLUMN).combine_chunks()
        if len(stored) > 1 and pc.count_distinct(stored).as_py() != len(stored):
            counts = Counter(stored.to_pylist())
            raise StateFormatError(f"stream ids stored more than once at version {self.version}: "
                                   f"{_shown(sorted(i for i, n in counts.items() if n > 1))}", source=self.url)
        rows, problems = {}, []
        for index, layer in enumerate(self._layers):
            for state in layer.states:
                name = layer.column(index, state)
                if table is None:
                    units = layer.width(state) // layer.directions
                    rows[name] = np.empty((0, layer.directions, units), numpy_dtype(layer.dtype))
                    continue
                try:
                    rows[name] = _array(table.column(name), layer, state)
                except StateFormatError as error:
                    problems.append(f"layer {index} {layer.name!r}: {error.problems[0]}")
                    continue
                bad = _nonfinite_rows(rows[name])
                if bad.size:
                    problems.append(f"layer {index} {layer.name!r}: {state}: NaN or Inf in streams "
                                    f"{_shown(stored.take(bad).to_pylist())}")
        if problems:
            raise StateFormatError(problems, source=self.url)
        return rows, stored

    def _start_state(self, missing: Any) -> StateSet | str | None:
        if isinstance(missing, StateSet):
            problems = self._fit_problems(missing)
            if missing.batch_size != 1:
                problems.append(f"missing=: a start state has batch size 1, found {missing.batch_size}")
            if problems:
                raise StateMismatchError(["missing= does not fit the store: " + p for p in problems], source=self.url)
            return missing
        if missing == "error":
            return None
        if missing == "zeros":
            return "zeros"
        raise StateMismatchError(f"missing: expected 'error', 'zeros' or a batch-1 StateSet, found {missing!r}")

    def _fit_problems(self, states: StateSet) -> list[str]:
        return _fit_problems(self._layers, states)

    # -- writing --

    def _writable(self, action: str) -> None:
        if self._read_only:
            raise StateError(f"cannot {action}: the store was opened at version {self.version}, read-only",
                             source=self.url)

    def put(self, states: StateSet) -> int:
        """Upsert the rows of `states` by `states.stream_ids`, in one atomic commit; returns its version.

        >>> version = s.put(states)  # doctest: +SKIP

        Everything is checked first (kinds, units, directions, proj_units, dtype, NaN/Inf, ids), and every
        problem comes in one `StateMismatchError` (or `StateFormatError`) naming the ids: nothing is written
        then. Concurrent puts from other processes lose nothing; per stream, the last commit wins.
        """
        self._writable("put")
        if not isinstance(states, StateSet):
            raise TypeError(f"put() takes a StateSet, not {type(states).__name__}")
        if states.stream_ids is None:
            raise StateMismatchError("put needs states.stream_ids: StateSet.with_stream_ids names the rows",
                                     source=self.url)
        table = _table(self._layers, states, self.url)
        if table is None:
            return self.version
        return self._commit("put", lambda dataset: dataset.merge_insert(ID_COLUMN).when_matched_update_all()
                            .when_not_matched_insert_all().conflict_retries(COMMIT_ATTEMPTS).execute(table))

    def delete(self, ids: Sequence[str]) -> int:
        """Remove the streams `ids` (unknown ones are ignored) in one commit; returns its version.

        >>> s.delete(["pump-7"])  # doctest: +SKIP
        14
        """
        self._writable("delete")
        ids = _check_ids(ids, "delete")
        if not ids:
            return self.version
        return self._commit("delete", lambda dataset: dataset.delete(_id_filter(ids)))

    def compact(self) -> int:
        """Rewrite small fragments into large ones and bring the id index up to date; returns the version.

        Older versions stay readable until `cleanup`. A `put` leaves its rows outside the id index (a
        get scans them: ~9 ms per get after six puts of 10,000), so a streaming job compacts now and then.

        >>> s.compact()  # doctest: +SKIP
        15
        """
        self._writable("compact")

        def compact(dataset: Any) -> None:
            dataset.optimize.compact_files()
            dataset.optimize.optimize_indices()

        return self._commit("compact", compact)

    def cleanup(self, *, older_than: timedelta) -> dict[str, int]:
        """Delete the files of versions older than `older_than` (the latest version is always kept).

        >>> s.cleanup(older_than=timedelta(days=7))  # doctest: +SKIP
        """
        self._writable("cleanup")
        if not isinstance(older_than, timedelta):
            raise TypeError(f"cleanup(older_than=) takes a datetime.timedelta, not {type(older_than).__name__}")
        with _lance_errors(self.url, "cannot clean up old versions"):
            stats = self._dataset.cleanup_old_versions(older_than=older_than)
        return {"old_versions": int(stats.old_versions), "bytes_removed": int(stats.bytes_removed)}

    def _commit(self, action: str, operation: Callable[[Any], Any]) -> int:
        """Run a committing Lance operation on the latest version, retrying on commit conflicts."""
        delay = 0.01
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                started = time.time_ns()
                with _lance_errors(self.url, f"cannot {action}"):
                    dataset = self._dataset.checkout_version(self._dataset.latest_version)
                    operation(dataset)
                self._dataset = dataset
                _make_durable(self.url, started)
                return self.version
            except StateFormatError as error:
                if attempt == COMMIT_ATTEMPTS - 1 or not _is_conflict(error):
                    raise
                time.sleep(delay * (1 + np.random.random()))
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")



def _indexed_fragments(dataset: Any) -> set[int] | None:
    """The fragments the id index covers; None when there is no id index."""
    for index in dataset.describe_indices():
        if index.name == INDEX_NAME:
            return {fragment for segment in index.segments for fragment in segment.fragment_ids}
    return None


def _fit_problems(layers: Sequence[_Layer], states: StateSet) -> list[str]:
    """Every way `states` does not fit the store's layers: kind, units, directions, proj_units, dtype, and
    order. Layers match by position, as everywhere in statefmt; but a state whose layers carry the store's
    names in another order would be stored under the wrong names, so that is refused."""
    problems = _signature(layers).check(states)
    names, given = [layer.name for layer in layers], [layer.name for layer in states.layers]
    if given != names and sorted(given) == sorted(names):
        problems.append(f"layers: the store holds {names} in this order, the state gives {given}; "
                        "reorder them with StateSet.select(names)")
    for index, (layer, found) in enumerate(zip(layers, states.layers)):
        if found.dtype != layer.dtype:
            problems.append(f"layer {index} {found.name!r}: dtype: expected {layer.dtype}, found {found.dtype}")
    return problems


def _table(layers: Sequence[_Layer], states: StateSet, url: str) -> Any:
    """The Arrow table of a checked put (None when it holds no stream); every problem in one error first."""
    if not isinstance(states, StateSet):
        raise TypeError(f"expected a StateSet, not {type(states).__name__}")
    if states.stream_ids is None:
        raise StateMismatchError("a put needs states.stream_ids: StateSet.with_stream_ids names the rows",
                                 source=url)
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = states.stream_ids  # unique strings: StateSet checks that
    if not _unicode(ids):
        _check_ids(ids, "put")  # names the ids that are no Unicode text
    id_array = pa.array(ids, pa.string())
    if ids and (pc.min(pc.binary_length(id_array)).as_py() == 0
                or pc.max(pc.binary_length(id_array)).as_py() > MAX_STREAM_ID_BYTES):
        _check_ids(ids, "put")  # names the offending ids
    mismatches = _fit_problems(layers, states)
    poisoned = []
    for index, layer in enumerate(states.layers):
        for state in layer.state_names:
            bad = _nonfinite_rows(np.moveaxis(layer[state], layer.batch_axis, 0))
            if bad.size:
                poisoned.append(f"layer {index} {layer.name!r}: {state}: NaN or Inf in streams "
                                f"{_shown([ids[r] for r in bad])}")
    if mismatches or poisoned:
        error = StateMismatchError if mismatches else StateFormatError
        raise error(mismatches + poisoned + [f"nothing was written for streams {_shown(ids)}"], source=url)
    if not ids:
        return None
    arrays = [id_array]
    arrays += [_column(found[state], layer, state) for layer, found in zip(layers, states.layers)
               for state in layer.states]
    return pa.Table.from_arrays(arrays, schema=_arrow_schema(layers))


def _nonfinite_rows(rows: np.ndarray) -> np.ndarray:
    """Indices of the rows (axis 0) holding NaN or Inf."""
    if rows.size == 0:
        return np.empty(0, np.int64)
    if rows.dtype.itemsize >= 4 and np.isfinite(rows.sum()):  # NaN and Inf propagate: one cheap pass
        return np.empty(0, np.int64)
    rows = rows.astype(np.float32, copy=False) if rows.dtype.itemsize < 4 else rows  # float16, bfloat16
    if np.isfinite(rows).all():  # the sum overflowed, or 16-bit values
        return np.empty(0, np.int64)
    return np.flatnonzero(~np.isfinite(rows).reshape(rows.shape[0], -1).all(axis=1))
