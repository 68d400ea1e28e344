"""The store's schema: its layers, the statefmt document in the dataset's metadata, the Arrow fields.

The document is built and parsed here only, through the file's document model (spec/store.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._document import BLOCK_BYTES, FORMAT_VERSION, METADATA_KEY, Document, LayerEntry, strict_json
from .._dtypes import numpy_dtype
from ..cells import MODERN, STATE_NAMES
from ..errors import StateFormatError
from ..limits import MAX_STORE_DOCUMENT_BYTES, MAX_STORE_LAYERS, VERSION_PATTERN
from ..signature import LayerSignature, StateSignature

STORE_FORMAT_VERSION = FORMAT_VERSION  # a store shares the file format's version (2.x)
ID_COLUMN = "stream_id"
INDEX_NAME = "stream_id_idx"
CHECKSUM_COLUMN = "row_checksum"  # uint64 per row, written by put, checked by get (spec/store.md)
PRIMARY_KEY = {"lance-schema:unenforced-primary-key": "true"}  # a second insert of a new id conflicts, then retries


class Layer(LayerEntry):
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


def document_json(layers: Sequence[Layer]) -> str:
    """The JSON kept under `statefmt` in the dataset's schema metadata: a file's document minus its tensors."""
    from .. import __version__

    model = Document(format_version=FORMAT_VERSION, content="state", layers=tuple(layers), batch_size=0,
                     created_by=f"statefmt {__version__}").to_dict()
    document = {"format_version": model["format_version"], "content": "store", "layers": model["layers"],
                "created_by": model["created_by"]}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_document(text: str | bytes, url: str) -> tuple[Layer, ...]:
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
    return tuple(Layer(e.name, e.kind, e.units, e.directions, e.proj_units, e.dtype, dims=e.dims) for e in entries)


def arrow_schema(layers: Sequence[Layer]) -> Any:
    import pyarrow as pa

    fields = [pa.field(ID_COLUMN, pa.string(), nullable=False, metadata=PRIMARY_KEY)]
    for index, layer in enumerate(layers):
        for state in layer.states:
            fields.append(pa.field(layer.column(index, state), pa.list_(value_type(layer.dtype), layer.width(state)),
                                   nullable=False))
    fields.append(pa.field(CHECKSUM_COLUMN, pa.uint64(), nullable=False))
    return pa.schema(fields, metadata={METADATA_KEY: document_json(layers)})


def value_type(dtype: str) -> Any:
    import pyarrow as pa

    if dtype == "bfloat16":
        from lance.arrow import BFloat16Type

        return BFloat16Type()  # type: ignore[no-untyped-call]
    return {"float16": pa.float16(), "float32": pa.float32(), "float64": pa.float64()}[dtype]


def signature_of(layers: Sequence[Layer]) -> StateSignature:
    """The layers as a `StateSignature` (no batch size; the dtype when all layers share one)."""
    dtypes = {layer.dtype for layer in layers}
    return StateSignature(tuple(LayerSignature(layer.kind, dims=layer.dims, name=layer.name) if layer.dims is not None
                                else LayerSignature(layer.kind, layer.units, layer.directions, layer.proj_units,
                                                    layer.name) for layer in layers),
                          None, dtypes.pop() if len(dtypes) == 1 else None)


def fixed_size_problems(layer: LayerSignature) -> list[str]:
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


def check_schema(schema: Any, url: str) -> tuple[Layer, ...]:
    """The layers of a store whose Arrow schema agrees with its document; `StateFormatError` otherwise."""
    import pyarrow as pa

    metadata = schema.metadata or {}
    if METADATA_KEY.encode() not in metadata:
        raise StateFormatError(f"a Lance dataset without a '{METADATA_KEY}' document in its schema metadata: "
                               "not a statefmt store", source=url)
    layers = parse_document(metadata[METADATA_KEY.encode()], url)
    problems = []
    id_field = schema.field(ID_COLUMN) if ID_COLUMN in schema.names else None
    if id_field is None or id_field.type not in (pa.string(), pa.large_string()):
        problems.append(f"column {ID_COLUMN!r}: expected strings, found {id_field.type if id_field else 'none'}")
    for index, layer in enumerate(layers):
        for state in layer.states:
            name = layer.column(index, state)
            expected = pa.list_(value_type(layer.dtype), layer.width(state))
            found = schema.field(name).type if name in schema.names else None
            if found != expected:
                problems.append(f"layer {index} {layer.name!r}: {state}: column {name!r} should be {expected}, "
                                f"found {found or 'no such column'}")
    if CHECKSUM_COLUMN in schema.names and schema.field(CHECKSUM_COLUMN).type != pa.uint64():
        problems.append(f"column {CHECKSUM_COLUMN!r}: expected uint64, found {schema.field(CHECKSUM_COLUMN).type}")
    if problems:
        raise StateFormatError(problems, source=url)
    return layers
