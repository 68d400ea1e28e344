"""The `Store` class, and `create` and `open`, which make one."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, NamedTuple

import numpy as np

from .._dtypes import numpy_dtype
from ..errors import StateError, StateFormatError, StateMismatchError, StoreConflictError, StoreNotFoundError
from ..signature import StateSignature
from ..states import LayerState, StateSet
from ._arrow import (
    array,
    check_ids,
    column,
    fit_problems,
    id_filter,
    nonfinite_rows,
    put_table,
    row_checksums,
    shown,
)
from ._durable import make_durable
from ._lance import lance_errors, local_store_path, refuse_special_files, store_url
from ._schema import (
    CHECKSUM_COLUMN,
    ID_COLUMN,
    INDEX_NAME,
    Layer,
    arrow_schema,
    check_schema,
    document_json,
    fixed_size_problems,
    parse_document,
    signature_of,
)

COMMIT_ATTEMPTS = 20
MERGE_ROWS = 20_000  # a put of up to this many streams is Lance's upsert; a larger one, a delete and an append
BATCH_ROWS = 8_192  # rows per Arrow batch handed to Lance
# Rows per fragment (data file), at most. A get pays for the deleted rows of the fragment it reads (Lance
# walks its deletion vector): 300,000 deleted in a 10^6-row fragment cost +3 ms a get, 30 % deleted in
# 131,072-row fragments nothing measurable; and 80 fragments of this size serve a get of 10^7 streams in 2 ms.
FRAGMENT_ROWS = 131_072
INDEX_FOLD_ROWS = 8_192  # rows outside the id index that make a put fold them in
INDEX_SEGMENTS = 8  # a fold adds a segment to the id index (~0.05 ms a get each); at this many, the next merges all
SMALL_FRAGMENTS = 8  # so many fragments of under FRAGMENT_ROWS / 2 rows make a put merge them
# Lance's caches, per open store: every fold and merge leaves index pages and deletion vectors of a new version
# in them, so with Lance's defaults a process's memory grew by ~12 MiB a put (10^6 streams, puts of 10,000).
# Bounded, it levels off; the id index of 10^7 streams (~170 MB) still fits.
INDEX_CACHE_BYTES, METADATA_CACHE_BYTES = 512 * 2**20, 256 * 2**20
WHAT = "statefmt"  # the transaction property that says what a version did, for versions()
_NO_STORE = ("no store here (no Lance dataset at this URL): create one (store.create, `statefmt store create`), "
             "or check the URL and its storage options")


class Version(NamedTuple):
    """A version kept: its number, its commit time (UTC), how many streams it holds, and what made it."""

    version: int
    timestamp: datetime
    streams: int
    what: str


# What a version made by Lance itself (not by a statefmt put) did, by the name of its Lance operation.
_OPERATIONS = {"CreateIndex": "the id index built or updated (no row changed)", "Delete": "delete",
               "Rewrite": "compaction (no row changed)", "Overwrite": "created", "Append": "append (by another writer)",
               "Update": "put"}


def create(url: str, signature: StateSignature, *, storage_options: dict[str, str] | None = None,
           states: StateSet | None = None) -> Store:
    """Create a store at `url` (a local directory or `s3://…`) for states of `signature`.

    >>> s = create("plant-b.lance", StateSignature([LayerSignature("lstm", 64)], dtype="float32"))

    The signature's batch size is ignored; its dtype applies to every layer. Without one, each layer
    takes the dtype of that layer of `states` (a file may hold per-layer dtypes), or float32.
    Layers without a name are called `layer0`, `layer1`, …. Refuses a URL that already holds a dataset.
    `states` (checked as a put) fills the new store in its first commit: a bulk load that writes the
    rows as they are, without the upsert's join (`put` into an empty store is about 2x slower).
    """
    if not isinstance(signature, StateSignature):
        raise TypeError(f"create() takes a StateSignature, not {type(signature).__name__}")
    if not signature.layers:
        raise StateFormatError("the signature has no layers", source=str(url))
    problems = [f"layer {index}: {problem}" for index, layer in enumerate(signature.layers)
                for problem in fixed_size_problems(layer)]
    if problems:
        raise StateFormatError(problems, source=str(url))
    given = [layer.dtype for layer in states.layers] if isinstance(states, StateSet) else []
    dtypes = [signature.dtype or (given[index] if index < len(given) else "float32")
              for index in range(len(signature.layers))]
    layers = tuple(Layer(layer.name or f"layer{index}", layer.kind, layer.units or 0, layer.directions,
                         layer.proj_units, dtypes[index], dims=layer.dims)
                   for index, layer in enumerate(signature.layers))
    url = store_url(url)
    parse_document(document_json(layers), url)  # refuses what a reader would refuse: duplicate names, bad projections
    import lance
    import pyarrow as pa

    schema = arrow_schema(layers)
    table = None if states is None else put_table(layers, states, url)
    if table is None:
        empty = [pa.array([], pa.string())] + [
            column(np.empty((layer.directions, 0, layer.width(s) // layer.directions), numpy_dtype(layer.dtype)),
                   layer, s) for layer in layers for s in layer.states] + [pa.array([], pa.uint64())]
        table = pa.Table.from_arrays(empty, schema=schema)
    with lance_errors(url, "cannot create the store"):
        try:
            dataset = lance.write_dataset(table, url, schema=schema, mode="create", storage_options=storage_options,
                                          max_rows_per_file=FRAGMENT_ROWS,
                                          transaction_properties={WHAT: f"created, {table.num_rows} stream(s)"})
        except OSError as error:
            if "already exists" in str(error):
                raise StateFormatError("a dataset already exists here; open it, or choose another URL",
                                       source=url) from None
            raise
        dataset.create_scalar_index(ID_COLUMN, "BTREE", name=INDEX_NAME)  # Lance commits an index as its own version
    make_durable(url, 0)
    with lance_errors(url, "cannot open the store just created"):
        dataset = _dataset(url, storage_options=storage_options)
    return Store(url, dataset, layers, storage_options, read_only=False)


def open(url: str, *, version: int | None = None,  # the name: store.open, beside create
         storage_options: dict[str, str] | None = None) -> Store:
    """Open the store at `url`: the latest version, or `version=N` read-only.

    >>> s = open("s3://bucket/fleet", storage_options={"aws_region": "eu-west-1"})

    `StoreNotFoundError` when there is no store (or no such version) at `url`; `StateFormatError` names the
    URL and the reason for anything else that is not a readable statefmt store.
    """
    import lance

    url = store_url(url)
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise StateFormatError(f"version: expected a version number (an int >= 0), found {version!r}", source=url)
    local = local_store_path(url)
    if local is not None:
        versions = os.path.join(local, "_versions")
        if not os.path.isdir(versions):
            if os.path.isfile(local):
                raise StateFormatError("a file, not a store directory", source=url)
            raise StoreNotFoundError(_NO_STORE, source=url)  # Lance would retry for seconds before it says so
        refuse_special_files(local, url)
    with lance_errors(url, "not a readable statefmt store"):
        try:
            dataset = _dataset(url, version=version, storage_options=storage_options)
        except ValueError as error:
            if "not found" not in str(error).lower():
                raise
            if version is None:
                raise StoreNotFoundError(_NO_STORE, source=url) from None
            kept = [entry["version"] for entry in lance.dataset(url, storage_options=storage_options).versions()]
            raise StoreNotFoundError(f"no version {version} here: the versions kept are {kept[:20]}"
                                     f"{' …' if len(kept) > 20 else ''} (`statefmt store versions` lists them)",
                                     source=url) from None
        layers = check_schema(dataset.schema, url)
    return Store(url, dataset, layers, storage_options, read_only=version is not None)


class Store:
    """A store opened at one version. Reads see that version; `put`, `delete` and `compact` commit a new one
    and move the handle to it (`refresh()` moves it to the latest, others' writes included).

    >>> s = store.open("fleet.lance")
    >>> h0, c0 = torch_adapter.initial_state(s.get(["pump-7"], missing="zeros"), lstm)
    """

    def __init__(self, url: str, dataset: Any, layers: tuple[Layer, ...],
                 storage_options: dict[str, str] | None, *, read_only: bool):
        self.url = url
        self._dataset = dataset
        self._layers = layers
        self._options = storage_options
        self._read_only = read_only
        self._verified = CHECKSUM_COLUMN in dataset.schema.names  # stores made before statefmt 0.3 have none

    # -- reading --

    @property
    def signature(self) -> StateSignature:
        """What the store holds, as a `StateSignature` (no batch size; the dtype when all layers share one).

        >>> s.signature.layers[0].units
        64
        """
        return signature_of(self._layers)

    @property
    def version(self) -> int:
        """The version this handle reads (and the one its last commit made).

        >>> s.version
        3
        """
        return int(self._dataset.version)

    def __len__(self) -> int:
        with lance_errors(self.url, "cannot count the streams"):
            return int(self._dataset.count_rows())

    def __contains__(self, stream_id: object) -> bool:
        if not isinstance(stream_id, str) or not stream_id:
            return False
        with lance_errors(self.url, "cannot look up a stream"):
            return bool(self._dataset.count_rows(filter=id_filter([stream_id])) > 0)

    def __repr__(self) -> str:
        return f"Store({self.url!r}, version={self.version}, layers={len(self._layers)})"

    def versions(self) -> list[Version]:
        """Every version kept, oldest first, as `Version(version, timestamp, streams, what)` (the time in UTC).

        >>> s.versions()[-1]
        Version(version=3, timestamp=datetime.datetime(..., tzinfo=datetime.timezone.utc), streams=2, what='put')

        A new store shows two versions: the rows' commit, then the id index's (Lance commits an index as a
        version of its own); a put may be followed by an index update in the same way.
        """
        with lance_errors(self.url, "cannot list the versions"):
            found = []
            for entry in self._dataset.versions():
                rows = (entry.get("metadata") or {}).get("total_rows")
                if rows is None:  # older manifests do not carry the count
                    rows = self._dataset.checkout_version(entry["version"]).count_rows()
                stamp = entry["timestamp"]  # Lance's is naive local time
                found.append(Version(int(entry["version"]), stamp.astimezone(timezone.utc), int(rows),
                                     self._what(int(entry["version"]))))
        return found

    def _what(self, version: int) -> str:
        transaction = self._dataset.read_transaction(version)
        if transaction is None:
            return "?"
        tagged = (transaction.transaction_properties or {}).get(WHAT)
        kind = type(transaction.operation).__name__
        return tagged or _OPERATIONS.get(kind, kind)

    def refresh(self) -> int:
        """Move a handle opened at the latest version to the newest one; returns it.

        >>> store.open(url).delete(["pump-2"])  # another writer's commit
        4
        >>> s.refresh()
        4
        """
        if not self._read_only:
            with lance_errors(self.url, "cannot read the latest version"):
                self._dataset = self._dataset.checkout_version(self._dataset.latest_version)
        return self.version

    def get(self, ids: Sequence[str], missing: Literal["error", "zeros"] | StateSet = "error") -> StateSet:
        """The states of `ids`, rows in the order asked, `stream_ids` set: ready for any adapter.

        >>> h0, c0 = st.initial_state(s.get(["pump-7", "pump-2"], missing="zeros"), lstm)

        `missing`: "error" raises `StateMismatchError` naming the unknown ids; "zeros" starts them from
        zeros; a batch-1 `StateSet` (a learned start) starts them from it.
        """
        ids = check_ids(ids, "get")
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
            raise StateMismatchError(f"no stream with id {shown(absent)} at version {self.version} "
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

    def snapshot(self, streams: Sequence[str] | None = None, *,
                 progress: Callable[[int], Any] | None = None) -> StateSet:
        """The whole fleet of the opened version, by stream id (sorted), or the streams given.

        >>> statefmt.save(store.open(url, version=3).snapshot(), "fleet-v3.statefmt")

        `progress(rows)` is called as the whole fleet's batches arrive (the CLI's progress bar).
        """
        if streams is not None:
            return self.get(streams)
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
        columns += [CHECKSUM_COLUMN] if self._verified else []
        if ids is not None and not ids:
            table = None
        else:
            with lance_errors(self.url, "cannot read the streams"):
                if progress is None:
                    table = self._dataset.to_table(columns=columns, filter=None if ids is None else id_filter(ids))
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
        if len(stored) > 1 and pc.count_distinct(stored).as_py() != len(stored):  # a foreign writer, a race
            counts = Counter(stored.to_pylist())
            twice = sorted(i for i, n in counts.items() if n > 1)
            raise StateFormatError(f"stream ids stored more than once at version {self.version}: {shown(twice)}; "
                                   "the other streams read as usual. To repair: read the rows you want to keep "
                                   "from an older version, delete these ids, then put them again", source=self.url)
        rows, problems = {}, []
        for index, layer in enumerate(self._layers):
            for state in layer.states:
                name = layer.column(index, state)
                if table is None:
                    units = layer.width(state) // layer.directions
                    rows[name] = np.empty((0, layer.directions, units), numpy_dtype(layer.dtype))
                    continue
                try:
                    rows[name] = array(table.column(name), layer, state)
                except StateFormatError as error:
                    problems.append(f"layer {index} {layer.name!r}: {error.problems[0]}")
                    continue
                bad = nonfinite_rows(rows[name])
                if bad.size:
                    problems.append(f"layer {index} {layer.name!r}: {state}: NaN or Inf in streams "
                                    f"{shown(stored.take(bad).to_pylist())}")
        if table is not None and self._verified and not problems:
            expected = table.column(CHECKSUM_COLUMN).to_numpy()
            found = row_checksums([rows[name] for name in columns[1:-1]])
            damaged = np.flatnonzero(found != expected)
            if damaged.size:
                problems.append(f"the values of streams {shown(stored.take(damaged).to_pylist())} do not match their "
                                "row checksum: a damaged data file; read them from an older version, or put them "
                                "again")
        if problems:
            raise StateFormatError(problems, source=self.url)
        return rows, stored

    def _start_state(self, missing: Any) -> StateSet | str | None:
        if isinstance(missing, StateSet):
            problems = fit_problems(self._layers, missing)
            if missing.batch_size != 1:
                problems.append(f"missing=: a start state has batch size 1, found {missing.batch_size}")
            problems += [f"missing=: layer {index} {layer.name!r}: {state}: NaN or Inf"
                         for index, layer in enumerate(missing.layers) for state in layer.state_names
                         if nonfinite_rows(layer[state].reshape(1, -1)).size]
            if problems:
                raise StateMismatchError(["missing= does not fit the store: " + p for p in problems], source=self.url)
            return missing
        if missing == "error":
            return None
        if missing == "zeros":
            return "zeros"
        raise StateMismatchError(f"missing: expected 'error', 'zeros' or a batch-1 StateSet, found {missing!r}")

    def check(self, states: StateSet) -> None:
        """Check `states` as `put` would, writing nothing: every problem in one `StateError`.

        >>> s.check(states)
        """
        put_table(self._layers, states, self.url)

    # -- writing --

    def _writable(self, action: str) -> None:
        if self._read_only:
            raise StateError(f"cannot {action}: the store was opened at version {self.version}, read-only",
                             source=self.url)

    def put(self, states: StateSet) -> int:
        """Upsert the rows of `states` by `states.stream_ids`, in one atomic commit; returns its version.

        >>> version = s.put(states)

        Everything is checked first (kinds, units, directions, proj_units, dtype, NaN/Inf, ids, repeats), and
        every problem comes in one `StateMismatchError` (or `StateFormatError`) naming the ids: nothing is
        written then. Any size, in memory that grows with the put, not the store: up to `MERGE_ROWS` streams
        Lance's upsert (its join holds them all), above it a delete of those ids and an append of their rows,
        in one transaction. Concurrent puts from other processes lose nothing; per stream, the last commit
        wins. Two concurrent puts larger than `MERGE_ROWS` that both insert the same new id store it twice
        (Lance checks new ids only in its upsert); a read of it then names it and says how to repair.
        Then `_upkeep` may merge small fragments and fold new rows into the id index: commits that change no row.
        """
        self._writable("put")
        if not isinstance(states, StateSet):
            raise TypeError(f"put() takes a StateSet, not {type(states).__name__}")
        if states.stream_ids is None:
            raise StateMismatchError("put needs states.stream_ids: StateSet.with_stream_ids names the rows",
                                     source=self.url)
        table = put_table(self._layers, states, self.url)
        if table is None:
            return self.version
        import pyarrow as pa

        def upsert(dataset: Any) -> None:  # Lance's own commit: it alone checks two inserts of one new id
            reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(BATCH_ROWS))  # a stream:
            (dataset.merge_insert(ID_COLUMN).when_matched_update_all()  # Lance's join then stays in bounds
             .when_not_matched_insert_all().conflict_retries(COMMIT_ATTEMPTS).execute(reader))

        version = self._commit("put", upsert if table.num_rows <= MERGE_ROWS else
                               lambda dataset: _replace(dataset, table), f"put, {table.num_rows} stream(s)")
        self._upkeep()
        return version

    def _upkeep(self) -> None:
        """Keep gets fast under a stream of puts, without a manual `compact`: a get opens every fragment, scans
        the rows outside the id index, and looks in every segment of the index. So once `SMALL_FRAGMENTS`
        fragments under `FRAGMENT_ROWS` / 2 rows have piled up, they are merged (Lance's `compact_files`; full
        fragments and deletions left alone, so it rewrites recent rows only, whatever the store's size); and
        once `INDEX_FOLD_ROWS` rows are outside the id index, they are indexed as a new segment (Lance's
        `optimize_indices` with no merge: its cost follows those rows); once the index has `INDEX_SEGMENTS`
        segments, the next fold merges them all into one (a cost that follows the store: ~3 s at 10^7 streams,
        once in `INDEX_SEGMENTS` folds). Each is a commit that changes no row. Best effort: one that another
        writer's commit preempted is left to the next put."""
        fragments = self._dataset.get_fragments()
        segments = _segments(self._dataset)
        covered = {fragment for segment in segments for fragment in segment.fragment_ids}
        outside = sum(fragment.physical_rows for fragment in fragments if fragment.fragment_id not in covered)
        full = [fragment.fragment_id for fragment in fragments if fragment.physical_rows >= FRAGMENT_ROWS]
        small = sum(fragment.physical_rows < FRAGMENT_ROWS // 2 for fragment in fragments)

        def merge(dataset: Any) -> None:
            dataset.optimize.compact_files(target_rows_per_fragment=FRAGMENT_ROWS, materialize_deletions=False,
                                           excluded_fragment_ids=full)

        def fold(dataset: Any) -> None:
            merged = len(segments) if len(segments) >= INDEX_SEGMENTS else 0  # Lance's default merges one
            dataset.optimize.optimize_indices(index_names=[INDEX_NAME], num_indices_to_merge=merged)

        try:
            if small >= SMALL_FRAGMENTS:
                self._commit("merge small fragments", merge)
                outside = INDEX_FOLD_ROWS
            if outside >= INDEX_FOLD_ROWS:
                self._commit("update the id index", fold)
        except StoreConflictError:
            return

    def delete(self, ids: Sequence[str]) -> int:
        """Remove the streams `ids` (unknown ones are ignored) in one commit; returns its version.

        >>> s.delete(["pump-7"])
        4
        """
        self._writable("delete")
        ids = check_ids(ids, "delete")
        if not ids:
            return self.version

        def delete(dataset: Any) -> None:
            dataset.delete(id_filter(ids))

        return self._commit("delete", delete)

    def compact(self) -> int:
        """Rewrite small fragments into large ones and bring the id index up to date; returns the version.

        Older versions stay readable until `cleanup`. Puts keep gets fast without it (`_upkeep`), but
        leave deleted rows in place: `compact` rewrites the fragments with 10 % or more deleted, which
        gives back their disk space, and merges the id index into one segment.

        >>> s.compact()
        4
        """
        self._writable("compact")

        def compact(dataset: Any) -> None:
            dataset.optimize.compact_files(target_rows_per_fragment=FRAGMENT_ROWS)
            dataset = dataset.checkout_version(dataset.latest_version)
            dataset.optimize.optimize_indices(index_names=[INDEX_NAME], num_indices_to_merge=len(_segments(dataset)))

        return self._commit("compact", compact)

    def cleanup(self, *, older_than: timedelta) -> dict[str, int]:
        """Delete the files of versions older than `older_than` (the latest version is always kept).

        >>> s.cleanup(older_than=timedelta(days=7))
        {'old_versions': 0, 'bytes_removed': 0}
        """
        self._writable("cleanup")
        if not isinstance(older_than, timedelta):
            raise TypeError(f"cleanup(older_than=) takes a datetime.timedelta, not {type(older_than).__name__}")
        with lance_errors(self.url, "cannot clean up old versions"):
            stats = self._dataset.cleanup_old_versions(older_than=older_than)
        return {"old_versions": int(stats.old_versions), "bytes_removed": int(stats.bytes_removed)}

    def _commit(self, action: str, operation: Callable[[Any], Any], what: str | None = None) -> int:
        """Run `operation` on the latest version and commit the Lance operation it returns, tagged with `what` it
        did for `versions()`; an operation that commits itself (with Lance's own retries) returns None.

        One retry layer per operation: Lance's own, or this loop, which makes a commit that another writer's
        commit preempted (Lance's `CommitConflictError`) again on the newer version."""
        import lance
        from lance.commit import CommitConflictError

        delay = 0.01
        for attempt in range(COMMIT_ATTEMPTS):
            started = time.time_ns()
            with lance_errors(self.url, f"cannot {action}"):
                dataset = self._dataset.checkout_version(self._dataset.latest_version)
                made = operation(dataset)
                if made is None:
                    dataset = dataset.checkout_version(dataset.latest_version)
                else:
                    transaction = lance.Transaction(dataset.version, made,
                                                    transaction_properties={WHAT: what or action})
                    try:
                        dataset = lance.LanceDataset.commit(dataset, transaction)
                    except CommitConflictError:
                        if attempt == COMMIT_ATTEMPTS - 1:
                            raise
                        time.sleep(delay * (1 + np.random.random()))
                        delay = min(delay * 2, 1.0)
                        continue
            self._dataset = dataset
            make_durable(self.url, started)
            return self.version
        raise AssertionError("unreachable")


def _dataset(url: str, **options: Any) -> Any:
    """The Lance dataset at `url`, its caches bounded (`INDEX_CACHE_BYTES`, `METADATA_CACHE_BYTES`)."""
    import lance

    return lance.dataset(url, index_cache_size_bytes=INDEX_CACHE_BYTES,
                         metadata_cache_size_bytes=METADATA_CACHE_BYTES, **options)


def _segments(dataset: Any) -> list[Any]:
    """The segments of the id index (Lance's default `optimize_indices` merges only the newest one)."""
    return [segment for index in dataset.describe_indices() if index.name == INDEX_NAME for segment in index.segments]


def _replace(dataset: Any, table: Any) -> Any:
    """The Lance operation of a large put: delete the rows of its ids wherever they are, and append its rows, as
    one `Update` (one version). Memory: the put's rows and ids, and one batch of the store's id column at a time
    (the scan that finds the rows), never the store."""
    import lance
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = table.column(ID_COLUMN).combine_chunks()
    doomed: dict[int, list[np.ndarray]] = {}
    for batch in dataset.to_batches(columns=[ID_COLUMN], with_row_address=True, batch_size=65_536):
        hit = pc.is_in(batch.column(ID_COLUMN), value_set=ids)
        if pc.any(hit).as_py():
            addresses = pc.filter(batch.column("_rowaddr"), hit).to_numpy()
            for fragment in np.unique(addresses >> 32):
                doomed.setdefault(int(fragment), []).append(addresses[addresses >> 32 == fragment] & 0xFFFFFFFF)
    removed, updated = [], []
    for fragment in dataset.get_fragments():
        if fragment.fragment_id in doomed:
            metadata = fragment.delete_rows(np.concatenate(doomed[fragment.fragment_id]))
            if metadata is None:
                removed.append(fragment.fragment_id)
            else:
                updated.append(metadata)
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(BATCH_ROWS))
    new = lance.fragment.write_fragments(reader, dataset, schema=table.schema, max_rows_per_file=FRAGMENT_ROWS)
    return lance.LanceOperation.Update(removed_fragment_ids=removed, updated_fragments=updated, new_fragments=new)
