"""In-memory recurrent state: `LayerState` per layer, `StateSet` per model.

Classic cells' arrays follow ONNX's layout, `[directions, batch, units]`, whatever framework
they came from; modern kinds' (`statefmt.kinds`) put the batch first. Arrays are kept by
reference, never copied.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from ._dtypes import dtype_name, little_endian, numpy_dtype
from .cells import KINDS, MODERN, STATE_KINDS, STATE_NAMES
from .errors import StateFormatError, StateMismatchError
from .kinds import BATCH, StateKind

__all__ = ["KINDS", "STATE_NAMES", "LayerState", "StateSet"]  # KINDS, STATE_NAMES: from statefmt.cells


class LayerState:
    """The state of one recurrent layer.

    >>> layer = LayerState("encoder", "lstm", h=np.zeros((1, 4, 8), "float32"), c=np.zeros((1, 4, 8), "float32"))
    >>> layer.units, layer.directions, layer.batch_size, layer.state_names
    (8, 1, 4, ('h', 'c'))

    An LSTM whose h is projected (PyTorch `proj_size`) has an `h` narrower than `c`. A layer of a
    modern kind (`statefmt.kinds`) takes its tensors by name, batch first, and has `dims` instead:

    >>> ssm = LayerState("l0", "mamba2", conv=np.zeros((2, 24, 3), "float32"),
    ...                  ssm=np.zeros((2, 4, 4, 8), "float32"))
    >>> ssm.dims["heads"], ssm.batch_size
    (4, 2)
    """

    __slots__ = ("_arrays", "kind", "name", "window")

    def __init__(self, name: str, kind: str, h: Any = None, c: Any = None, *, window: Any = None,
                 **arrays: Any) -> None:
        where = f"layer {name!r}"
        if not isinstance(name, str) or not name:
            raise StateFormatError(f"layer name must be a non-empty string, found {name!r}")
        if kind not in STATE_NAMES:
            raise StateFormatError(f"{where}: kind: expected one of {', '.join(STATE_KINDS)}, found {kind!r}")
        self.name = name
        self.kind = kind
        self.window = window
        if kind in MODERN:
            given = {key: value for key, value in (("h", h), ("c", c)) if value is not None}
            self._arrays = _modern_arrays(where, MODERN[kind], {**given, **arrays}, window)
            return
        if arrays or window is not None:
            raise StateFormatError(f"{where}: a {kind.upper()} has h{' and c' if kind == 'lstm' else ''} only, "
                                   f"found {', '.join(sorted([*arrays] + (['window'] if window else [])))}")
        if h is None:
            raise StateFormatError(f"{where}: a {kind.upper()} needs h")
        if (kind == "lstm") != (c is not None):
            expected = "an LSTM needs both h and c" if kind == "lstm" else f"a {kind.upper()} has h only, no c"
            raise StateFormatError(f"{where}: {expected}")
        checked = {"h": little_endian(h)} if c is None else {"h": little_endian(h), "c": little_endian(c)}
        for state, array in checked.items():
            if array.ndim != 3 or array.shape[0] not in (1, 2):
                raise StateFormatError(
                    f"{where}: {state}: expected shape [directions (1 or 2), batch, units], found {list(array.shape)}"
                )
            dtype_name(array.dtype)  # refuses anything but the four float dtypes
        if c is not None:
            h_, c_ = checked["h"], checked["c"]
            if h_.shape[:2] != c_.shape[:2] or h_.dtype != c_.dtype:
                raise StateFormatError(
                    f"{where}: h and c disagree: h {list(h_.shape)} {h_.dtype}, c {list(c_.shape)} {c_.dtype}"
                )
            if h_.shape[2] > c_.shape[2]:
                raise StateFormatError(
                    f"{where}: h is wider than c ({h_.shape[2]} > {c_.shape[2]}); only a projection narrows h"
                )
        self._arrays = checked

    @property
    def state_names(self) -> tuple[str, ...]:
        return STATE_NAMES[self.kind]

    @property
    def modern(self) -> bool:
        """A kind of format 2.1 (`statefmt.kinds`): batch first, sized by `dims`."""
        return self.kind in MODERN

    @property
    def batch_axis(self) -> int:
        """The stream axis of every tensor: 1 for the classic `[directions, batch, units]`, else 0."""
        return 0 if self.modern else 1

    @property
    def dims(self) -> dict[str, int | None]:
        """A modern layer's named sizes (and its settings: attention's `window`), read from its tensors."""
        if not self.modern:
            return {"units": self.units, "directions": self.directions, "proj_units": self.proj_units}
        kind = MODERN[self.kind]
        sizes: dict[str, int | None] = {}
        for name, axes in kind.tensors:
            sizes.update({axis: int(size) for axis, size in zip(axes[1:], self._arrays[name].shape[1:])})
        sizes.update({setting: getattr(self, setting) for setting in kind.settings})
        return sizes

    @property
    def units(self) -> int:
        return int(self._classic()["c" if self.kind == "lstm" else "h"].shape[2])

    @property
    def proj_units(self) -> int | None:
        width = int(self._classic()["h"].shape[2])
        return width if width != self.units else None

    @property
    def directions(self) -> int:
        return int(self._classic()["h"].shape[0])

    def _classic(self) -> dict[str, np.ndarray]:
        if self.modern:
            raise StateMismatchError(f"layer {self.name!r} is a {self.kind} layer: it has dims "
                                     f"({', '.join(MODERN[self.kind].dims)}), not units, directions or proj_units")
        return self._arrays

    @property
    def batch_size(self) -> int:
        return int(next(iter(self._arrays.values())).shape[self.batch_axis])

    @property
    def dtype(self) -> str:
        return dtype_name(next(iter(self._arrays.values())).dtype)

    def __getitem__(self, state: str) -> np.ndarray:
        try:
            return self._arrays[state]
        except (KeyError, TypeError):
            raise StateMismatchError(f"layer {self.name!r} ({self.kind}) has states "
                                     f"{', '.join(self.state_names)}, not {state!r}") from None

    def with_arrays(self, **arrays: np.ndarray) -> LayerState:
        """The same layer with other arrays, e.g. a batch slice or a cast.

        >>> half = layer.with_arrays(h=layer["h"].astype("float16"), c=layer["c"].astype("float16"))
        """
        return LayerState(self.name, self.kind, window=self.window, **arrays)

    def astype(self, dtype: str) -> LayerState:
        """The same layer with every tensor cast to `dtype` (a name: "bfloat16", "float32", ...): an explicit
        cast, never done behind the caller's back.

        >>> layer.astype("bfloat16").dtype  # doctest: +SKIP
        'bfloat16'
        """
        target = numpy_dtype(dtype)
        return self.with_arrays(**{name: array.astype(target) for name, array in self._arrays.items()})

    def __repr__(self) -> str:
        if self.modern:
            sizes = ", ".join(f"{key}={value}" for key, value in self.dims.items())
            return f"LayerState({self.name!r}, {self.kind}, {sizes}, batch={self.batch_size}, dtype={self.dtype})"
        proj = f", proj_units={self.proj_units}" if self.proj_units else ""
        return (
            f"LayerState({self.name!r}, {self.kind}, units={self.units}{proj}, directions={self.directions}, "
            f"batch={self.batch_size}, dtype={self.dtype})"
        )


def _modern_arrays(where: str, kind: StateKind, arrays: dict[str, Any], window: Any) -> dict[str, np.ndarray]:
    """The tensors of a modern layer, checked against its kind: names, axes, sizes that agree, one dtype."""
    missing, extra = [n for n in kind.names if n not in arrays], sorted(set(arrays) - set(kind.names))
    if missing or extra:
        raise StateFormatError(f"{where}: a {kind.kind} layer has tensors {', '.join(kind.names)}; "
                               + "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                                           + ([f"unknown {', '.join(extra)}"] if extra else [])))
    checked = {name: little_endian(arrays[name]) for name in kind.names}
    sizes: dict[str, int] = {}
    for name, axes in kind.tensors:
        array = checked[name]
        dtype_name(array.dtype)
        if array.ndim != len(axes):
            raise StateFormatError(f"{where}: {name}: expected shape [{', '.join(axes)}], found {list(array.shape)}")
        for axis, size in zip(axes, array.shape):
            if sizes.setdefault(axis, int(size)) != size:
                raise StateFormatError(f"{where}: {name}: {axis}: expected {sizes[axis]} (as in the layer's other "
                                       f"tensors), found {size}")
            if size == 0 and axis != BATCH and axis not in kind.zero:
                raise StateFormatError(f"{where}: {name}: {axis} must be at least 1, found 0")
    dtypes = {str(array.dtype) for array in checked.values()}
    if len(dtypes) > 1:
        raise StateFormatError(f"{where}: tensors of one layer share one dtype, found {', '.join(sorted(dtypes))}")
    if "window" in kind.settings:
        if window is not None and (isinstance(window, bool) or not isinstance(window, (int, np.integer))
                                   or window < 1):
            raise StateFormatError(f"{where}: window: expected a whole number >= 1, or None for full attention, "
                                   f"found {window!r}")
        if window is not None and sizes["length"] > window:
            raise StateFormatError(f"{where}: length: a sliding window of {window} keeps at most {window} "
                                   f"positions, found {sizes['length']}")
    elif window is not None:
        raise StateFormatError(f"{where}: window applies to attention layers only, found {window!r} on a {kind.kind}")
    return checked


class StateSet:
    """The recurrent state of a model: its layers in order from input to output, one batch for all.

    >>> h = np.zeros((1, 2, 3), "float32")
    >>> states = StateSet([LayerState("gru", "gru", h=h)], stream_ids=["a", "b"])
    >>> states.rows(["b"]).batch_size
    1

    `metadata` holds the optional descriptive fields of the file: `source`, `created_by`, `user`;
    `file` is the file it was read from (None in memory), which a mismatch error names.
    """

    def __init__(
        self,
        layers: Iterable[LayerState],
        *,
        stream_ids: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        file: str | None = None,
    ) -> None:
        self.layers = tuple(layers)
        if not self.layers:
            raise StateFormatError("a StateSet needs at least one layer")
        refuse_duplicate_names(self.layers)
        batches = {layer.batch_size for layer in self.layers}
        if len(batches) > 1:
            found = ", ".join(f"{layer.name!r} {layer.batch_size}" for layer in self.layers)
            raise StateFormatError(f"layers disagree on batch size: {found}")
        ids = None if stream_ids is None else tuple(stream_ids)
        if ids is not None:
            if len(ids) != self.batch_size or len(set(ids)) != len(ids):
                raise StateFormatError(
                    f"stream_ids: expected {self.batch_size} unique strings, found {len(ids)} "
                    f"({len(set(ids))} unique)"
                )
            if not set(map(type, ids)) <= {str}:  # at C speed: 10^7 ids; str subclasses (np.str_) as plain str
                if not all(isinstance(i, str) for i in ids):
                    raise StateFormatError("stream_ids: every stream id must be a string")
                ids = tuple(map(str, ids))
        self.stream_ids: tuple[str, ...] | None = ids
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.file = file  # the file (or URL) it was read from, which errors about it name

    @property
    def batch_size(self) -> int:
        return self.layers[0].batch_size

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerState]:
        return iter(self.layers)

    def __getitem__(self, key: str | int) -> LayerState:
        return self.layers[layer_index(self.layers, key)]

    def select(self, names_or_indices: str | int | Iterable[str | int]) -> StateSet:
        """The layers named (or at the positions given), in the order given.

        Use it when a target model holds fewer recurrent layers than the file.

        >>> encoder_only = states.select(["encoder"])
        """
        keys = [names_or_indices] if isinstance(names_or_indices, (str, int)) else list(names_or_indices)
        return StateSet([self.layers[layer_index(self.layers, key)] for key in keys], stream_ids=self.stream_ids,
                        metadata=self.metadata, file=self.file)

    def rows(self, ids_or_indices: str | int | Iterable[str | int]) -> StateSet:
        """The batch rows given by stream id or by index, in the order given.

        >>> states.rows(["pump-2", 0]).batch_size
        2
        """
        rows = resolve_rows(ids_or_indices, self.batch_size, self.stream_ids)
        stream_ids = None if self.stream_ids is None else [self.stream_ids[row] for row in rows]
        layers = [layer.with_arrays(**{s: np.take(layer[s], rows, axis=layer.batch_axis) for s in layer.state_names})
                  for layer in self.layers]
        metadata = self.metadata  # the token fingerprint hashes every stream's tokens: only all of them keep it
        if rows != list(range(self.batch_size)):
            metadata = {key: value for key, value in metadata.items() if key != "token_fingerprint"}
        return StateSet(layers, stream_ids=stream_ids, metadata=metadata, file=self.file)

    def astype(self, dtype: str) -> StateSet:
        """Every layer cast to `dtype`, explicitly: e.g. a smaller stored dtype, whose cost in precision
        the caller measures (statefmt never downcasts a state on its own).

        >>> statefmt.save(states.astype("bfloat16"), "small.statefmt")  # doctest: +SKIP
        """
        return StateSet([layer.astype(dtype) for layer in self.layers], stream_ids=self.stream_ids,
                        metadata=self.metadata, file=self.file)

    def with_stream_ids(self, stream_ids: Sequence[str] | None) -> StateSet:
        """The same state with one id per batch row, so a later `load(path, streams=[id])` or
        `rows([id])` can pick a stream by name (adapters export rows by position only).

        >>> statefmt.save(states.with_stream_ids(["pump-7", "pump-8", "pump-9"]), "tomorrow.statefmt")
        >>> statefmt.load("tomorrow.statefmt", streams=["pump-8"]).stream_ids
        ('pump-8',)
        """
        return StateSet(self.layers, stream_ids=stream_ids, metadata=self.metadata, file=self.file)

    def __repr__(self) -> str:
        body = ", ".join(repr(layer) for layer in self.layers)
        return f"StateSet(batch={self.batch_size}, layers=[{body}])"


class _Named(Protocol):
    @property
    def name(self) -> str: ...


def layer_index(layers: Sequence[_Named], key: object) -> int:
    """The position of the layer named `key`, or at position `key`; `StateMismatchError` when there is none."""
    if isinstance(key, str):
        for index, layer in enumerate(layers):
            if layer.name == key:
                return index
        names = ", ".join(repr(layer.name) for layer in layers)
        raise StateMismatchError(f"no layer named {key!r}; the layers are {names}")
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and -len(layers) <= key < len(layers):
        return int(key) % len(layers)
    raise StateMismatchError(f"no layer at position {key!r}; there are {len(layers)} layers")


def refuse_duplicate_names(layers: Iterable[_Named]) -> None:
    counts = Counter(layer.name for layer in layers)  # not list.count: quadratic in thousands of layers
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        raise StateFormatError(f"duplicate layer names: {', '.join(map(repr, duplicates))}; names must be unique")


def stream_keys(ids_or_indices: Any) -> list[Any]:
    """The streams asked for, as a list: one id (str) or row (int), or an iterable of them. Bytes are
    refused, not iterated as row numbers."""
    if isinstance(ids_or_indices, (str, int, np.integer)):
        return [ids_or_indices]
    if isinstance(ids_or_indices, (bytes, bytearray, memoryview)) or not isinstance(ids_or_indices, Iterable):
        raise StateMismatchError(f"streams: expected a stream id (str), a row (int) or a list of them, found "
                                 f"{type(ids_or_indices).__name__}")
    return list(ids_or_indices)


def resolve_rows(ids_or_indices: str | int | Iterable[str | int], batch_size: int,
                 stream_ids: Sequence[str] | Mapping[str, int] | None) -> list[int]:
    """Batch row indices for stream ids or indices; refuses unknown ids, out-of-range and repeated rows.

    `stream_ids` is the ids in row order, or (a file's index read for the ids asked) a map id -> row.
    """
    keys = stream_keys(ids_or_indices)
    rows = []
    position = None
    for key in keys:
        if isinstance(key, str):
            if stream_ids is None:
                raise StateMismatchError(f"stream {key!r} asked for by id, but the state has no stream_ids")
            if position is None:  # a few ids: a scan at C speed each; many: one lookup table
                position = (stream_ids.__getitem__ if isinstance(stream_ids, Mapping) else stream_ids.index
                            if len(keys) <= 16 else {s: i for i, s in enumerate(stream_ids)}.__getitem__)
            try:
                rows.append(position(key))
            except (ValueError, KeyError):
                raise StateMismatchError(f"no stream with id {key!r}") from None
        elif isinstance(key, (int, np.integer)) and not isinstance(key, bool) and -batch_size <= key < batch_size:
            rows.append(int(key) % batch_size)
        else:
            raise StateMismatchError(f"stream row {key!r} out of range for batch size {batch_size}")
    if len(set(rows)) != len(rows):
        raise StateMismatchError(f"streams asked for more than once: {keys[:20]}")
    return rows
