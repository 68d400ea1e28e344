"""Mutations of valid statefmt files (2.0 and 1.0) and the one verdict every mutated file must get.

Each mutation takes a seed file and a `random.Random`, so the same seed gives the same input:
hypothesis drives it in the test suite, a seeded loop in `python -m fuzz`. Mutations that
reach past the checksums re-seal what they edit, the way `spec/vectors/generate.py` does (with
xxhash and json, not with statefmt): an edited document gets a new `statefmt_checksum`, edited
tensor data new block checksums (`checksums` and `checksum_blocks`). A mutation says what a
reader may return (the seed's data, or what a re-sealed edit made of it) and, where the spec
decides it, whether the file must load or must be refused, and at which step.

The expected data always comes from the seed, never from the reader under test: a seed saved
from memory is compared with that memory, a conformance vector with its `index.json` values,
and every seed is decoded here by an independent parser whose result must agree.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import json
import random
import re
import struct
import warnings
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import xxhash

import statefmt
from statefmt import (
    LayerState,
    LayerWeights,
    StateError,
    StateFormatError,
    StateMismatchError,
    StateSet,
    WeightSet,
)
from statefmt.cells import MODERN

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "spec" / "vectors"
STEPS = {1: "container", 2: "metadata", 3: "version", 4: "metadata-checksum", 5: "schema", 6: "semantics",
         7: "tensors", 8: "checksum", 9: "nonfinite", 10: "stream-index"}  # the spec's reader checks
DTYPES = {"F16": np.dtype("float16"), "BF16": np.dtype(ml_dtypes.bfloat16), "F32": np.dtype("float32"),
          "F64": np.dtype("float64"), "U8": np.dtype("uint8"), "U64": np.dtype("<u8")}
STREAM_TENSORS = ("stream_ids.bytes", "stream_ids.offsets", "stream_ids.buckets", "stream_ids.index")
BLOCK_SIZES = [4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576]
ODD_SCALARS = [None, True, False, 0, -1, 1, 2, 3, 2**31, 2**53 + 1, 2**63, 2**64, 10**30, -(10**30), 0.5, 1e308,
               2.0, 4096, "", "0", "h", "lstm", "float32", "xxh3_64:" + "0" * 16, "é🧠\x00\n", "1.0", "2.0", "\ud800"]
DTYPE_CODES = ["F32", "F16", "BF16", "F64", "I8", "U8", "BOOL", "I64", "U64", "C64", "F8_E4M3", "f32", ""]
GIANT = [0, 1, 7, 2**31, 2**32, 2**32 + 8, 2**53, 2**63 - 1, 2**63, 2**64 - 1, 100_000_000, 100_000_001]
ODD_IDS = ["", " ", "a", "b", "é🧠", "\x00", "\n", "x" * 300, "pump-1", "sensor-a", "A", "a\u0301", "á"]


@lru_cache(maxsize=1)
def vectors_writer() -> Any:
    """spec/vectors/generate.py, the independent 2.0 writer (safetensors + xxhash + json)."""
    spec = importlib.util.spec_from_file_location("statefmt_vectors_generate", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hexdigest(data: bytes) -> str:
    return "xxh3_64:" + xxhash.xxh3_64_hexdigest(data)


# --- what a reader may return ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Expected:
    """The data of a file, as the seed defines it: layers (name, kind, tensors) and stream ids."""

    content: str  # "state" or "weights"
    layers: tuple[tuple[str, str, dict[str, np.ndarray]], ...]
    stream_ids: tuple[str, ...] | None = None

    @property
    def batch(self) -> int:
        if self.content != "state":
            return 0
        _, kind, tensors = self.layers[0]
        return int(next(iter(tensors.values())).shape[_axis(kind)])

    @classmethod
    def of(cls, data: StateSet | WeightSet) -> Expected:
        if isinstance(data, StateSet):
            layers = tuple((layer.name, layer.kind, {n: np.asarray(layer[n]) for n in layer.state_names})
                           for layer in data.layers)
            return cls("state", layers, None if data.stream_ids is None else tuple(data.stream_ids))
        return cls("weights", tuple((layer.name, layer.kind, {n: np.asarray(layer[n]) for n in layer.weight_names})
                                    for layer in data.layers))


def _axis(kind: str) -> int:
    """The stream axis of a kind's tensors: modern kinds (format 2.1) put the batch first."""
    return 0 if kind in MODERN else 1


def same_data(got: StateSet | WeightSet, want: Expected, *, names: bool, rows: list[int] | None = None) -> str | None:
    """None if `got` holds exactly `want` (its `rows`, if given), else what differs."""
    if want.content != ("state" if isinstance(got, StateSet) else "weights"):
        return f"a {type(got).__name__} where the seed holds {want.content}"
    if len(got.layers) != len(want.layers):
        return f"{len(got.layers)} layers, expected {len(want.layers)}"
    for index, (layer, (name, kind, tensors)) in enumerate(zip(got.layers, want.layers)):
        if names and (layer.name, layer.kind) != (name, kind):
            return f"layer {index}: {layer.name!r} {layer.kind}, expected {name!r} {kind}"
        found = layer.state_names if isinstance(layer, LayerState) else layer.weight_names
        if set(found) != set(tensors):
            return f"layer {index}: tensors {sorted(found)}, expected {sorted(tensors)}"
        for key, array in tensors.items():
            value = np.asarray(layer[key])
            expected = array if rows is None else np.take(array, rows, axis=_axis(kind))
            if value.dtype != expected.dtype or value.shape != expected.shape:
                return f"layer {index} {key}: {value.dtype} {value.shape}, expected {expected.dtype} {expected.shape}"
            if value.tobytes() != expected.tobytes():
                return f"layer {index} {key}: values silently changed"
    return None


# --- an independent reader of valid files, and a writer of edited ones ------------------------------------------

@dataclass
class Parts:
    """A file taken apart: `__metadata__`, the tensor table in data order, each tensor's bytes."""

    metadata: dict[str, str]
    table: dict[str, dict[str, Any]]
    data: dict[str, bytes]
    document: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, raw: bytes) -> Parts:
        length = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + length])
        metadata = header.pop("__metadata__", {})
        body = raw[8 + length:]
        table = dict(sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]))
        data = {key: body[entry["data_offsets"][0]:entry["data_offsets"][1]] for key, entry in table.items()}
        document = json.loads(metadata["statefmt"]) if "statefmt" in metadata else {}
        return cls(metadata, table, data, document)

    def copy(self) -> Parts:
        return Parts(dict(self.metadata), {k: dict(v) for k, v in self.table.items()}, dict(self.data),
                     json.loads(json.dumps(self.document)))

    @property
    def major(self) -> str:
        return str(self.document.get("format_version", "2.0")).split(".")[0]

    def array(self, key: str) -> np.ndarray:
        entry = self.table[key]
        return np.frombuffer(self.data[key], DTYPES[entry["dtype"]]).reshape(entry["shape"])

    def put(self, key: str, array: np.ndarray, code: str | None = None) -> None:
        array = np.ascontiguousarray(array)
        code = code or next(c for c, d in DTYPES.items() if d == array.dtype)
        self.table.setdefault(key, {})
        self.table[key].update(dtype=code, shape=list(array.shape))
        self.data[key] = array.tobytes()

    def row_ids(self) -> tuple[str | None, ...] | None:
        """Each row's stream id as this file's own bytes give it: None for a row whose id is out of
        bounds or not UTF-8, and None in place of the tuple for a file without ids."""
        if self.major == "1":
            ids = self.document.get("stream_ids")
            return tuple(ids) if isinstance(ids, list) and all(isinstance(i, str) for i in ids) else None
        if not all(key in self.data for key in STREAM_TENSORS) or len(self.data["stream_ids.offsets"]) % 8:
            return None
        raw, offsets = self.data["stream_ids.bytes"], np.frombuffer(self.data["stream_ids.offsets"], "<u8").tolist()
        out: list[str | None] = []
        for a, b in itertools.pairwise(offsets):
            try:
                out.append(raw[a:b].decode() if a <= b <= len(raw) else None)
            except UnicodeDecodeError:
                out.append(None)
        return tuple(out)

    def ids(self) -> tuple[str, ...] | None:
        """The stream ids, if every row's decodes."""
        ids = self.row_ids()
        return None if ids is None or None in ids else ids  # type: ignore[return-value]

    def expected(self) -> Expected:
        content = self.document["content"]
        layers = []
        for index, layer in enumerate(self.document["layers"]):
            tensors = {key.rsplit(".", 1)[1]: self.array(key).copy() for key in self.table
                       if key.startswith(f"layers.{index}.")}
            layers.append((layer["name"], layer["kind"], tensors))
        ids = self.ids() if content == "state" and self.document.get("stream_ids") not in (None, False) else None
        return Expected(content, tuple(layers), ids)

    def checksum_order(self) -> list[str]:
        return vectors_writer().order(self.document, self.data)

    def reseal(self) -> None:
        """New checksums for every tensor as it now stands (2.x: block checksums; 1.x: whole tensors)."""
        if self.major == "1":
            for index, layer in enumerate(self.document.get("layers", [])):
                if isinstance(layer, dict) and isinstance(layer.get("checksums"), dict):
                    for name in layer["checksums"]:
                        key = f"layers.{index}.{name}"
                        if key in self.data:
                            layer["checksums"][name] = hexdigest(self.data[key])
            return
        block = self.document["block_bytes"]
        sums = []
        for key in self.checksum_order():
            raw = self.data[key]
            sums += [xxhash.xxh3_64_intdigest(raw[i:i + block]) for i in range(0, len(raw), block)]
        raw = np.array(sums, "<u8").tobytes()
        self.put("checksums", np.frombuffer(raw, "<u8"), "U64")
        self.document["checksum_blocks"] = [hexdigest(raw[i:i + block]) for i in range(0, len(raw), block)]

    def seal_document(self, text: str | None = None) -> None:
        text = text if text is not None else json.dumps(self.document, sort_keys=True, separators=(",", ":"),
                                                        ensure_ascii=False)
        self.metadata["statefmt"] = text
        self.metadata["statefmt_checksum"] = hexdigest(text.encode("utf-8", "surrogatepass"))

    def bytes(self, order: list[str] | None = None, *, ascii_header: bool = False, pad: bool = True) -> bytes:
        """The file, tensors laid out in `order` (default: as they were) with fresh data_offsets."""
        header: dict[str, Any] = {"__metadata__": self.metadata} if self.metadata else {}
        offset = 0
        for key in order or list(self.table):
            entry = dict(self.table[key])
            entry["data_offsets"] = [offset, offset + len(self.data[key])]
            offset += len(self.data[key])
            header[key] = entry
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=ascii_header).encode("utf-8", "surrogatepass")
        if pad:
            text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text + b"".join(self.data[k] for k in order or list(self.table))


# --- seeds --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    expected: Expected


def seed_states() -> list[StateSet | WeightSet]:
    """Small valid sets: the cell kinds, two directions, a projection, the dtypes, empty batches, many ids, weights."""
    rng = np.random.default_rng(7)

    def f(dtype, *shape):
        return rng.standard_normal(shape).astype(dtype)

    many = [f"pump-{i}" if i % 5 else f"Straße {i} é🧠" + "x" * (i % 11) for i in range(600)]
    return [
        StateSet([LayerState("enc", "lstm", h=f("float32", 2, 3, 4), c=f("float32", 2, 3, 4)),
                  LayerState("dec/gru 1", "gru", h=f("float32", 1, 3, 5))], stream_ids=["a", "b", "é🧠"],
                 metadata={"user": {"run": 1}, "source": {"framework": "numpy"}}),
        StateSet([LayerState("proj", "lstm", h=f(ml_dtypes.bfloat16, 1, 2, 2), c=f(ml_dtypes.bfloat16, 1, 2, 3)),
                  LayerState("rnn", "rnn", h=f(ml_dtypes.bfloat16, 1, 2, 1))]),
        StateSet([LayerState("half", "gru", h=f("float16", 1, 1, 6)),
                  LayerState("wide", "rnn", h=f("float64", 2, 1, 2))]),
        StateSet([LayerState("empty", "lstm", h=f("float32", 1, 0, 2), c=f("float32", 1, 0, 2))], stream_ids=[]),
        StateSet([LayerState("gru", "gru", h=f("float32", 1, 40, 3))], stream_ids=[f"s{i}" for i in range(40)]),
        StateSet([LayerState("big", "gru", h=f("float32", 1, 600, 4))], stream_ids=many),
        WeightSet([LayerWeights("lstm", "lstm", W=f("float32", 2, 16, 3), R=f("float32", 2, 16, 2),
                                Wb=f("float32", 2, 16), Rb=f("float32", 2, 16), P=f("float32", 2, 2, 4))]),
    ]


def encode(data: StateSet | WeightSet, path: Path) -> bytes:
    statefmt.save(data, path, durable=False)
    return path.read_bytes()


def _vector_expected(entry: dict[str, Any], parts: Parts) -> Expected:
    """A 2.0 vector's expected values from index.json, in the dtypes its tensors declare."""
    layers = []
    for index, (layer, values) in enumerate(zip(parts.document["layers"], entry["expected"]["layers"])):
        tensors = {}
        for name, spec in values.items():
            if name == "name":
                continue
            dtype = DTYPES[parts.table[f"layers.{index}.{name}"]["dtype"]]
            tensors[name] = np.array(spec["values"], np.float64).astype(dtype).reshape(spec["shape"])
        layers.append((values["name"], layer["kind"], tensors))
    ids = entry["expected"]["stream_ids"]
    return Expected(parts.document["content"], tuple(layers), None if ids is None else tuple(ids))


def _reblocked(raw: bytes, block: int) -> bytes:
    parts = Parts.of(raw)
    parts.document["block_bytes"] = block
    parts.reseal()
    parts.seal_document()
    return parts.bytes()


def seeds(folder: Path) -> list[Seed]:
    """The seeds: sets saved by statefmt (and two re-blocked to 4 KiB blocks), the valid 2.0 vectors
    and the frozen valid 1.0 vectors. Each one's expected data is checked against an independent decode."""
    out = []
    for index, data in enumerate(seed_states()):
        raw = encode(data, folder / f"seed-{index}.statefmt")
        out.append(Seed(f"saved-{index}", raw, Expected.of(data)))
        if index in (0, 5):
            out.append(Seed(f"saved-{index}-4k", _reblocked(raw, 4096), Expected.of(data)))
    for version, folder_ in (("2.0", VECTORS), ("1.0", VECTORS / "1.0")):
        for entry in json.loads((folder_ / "index.json").read_text()):
            if entry["valid"]:
                raw = (folder_ / entry["file"]).read_bytes()
                parts = Parts.of(raw)
                expected = _vector_expected(entry, parts) if version == "2.0" else parts.expected()
                out.append(Seed(f"v{version}/{entry['file']}", raw, expected))
    for seed in out:
        parts = Parts.of(seed.data)
        problem = _differs(parts.expected(), seed.expected)
        assert problem is None, f"seed {seed.name}: the independent decode differs: {problem}"
    return out


def _differs(a: Expected, b: Expected) -> str | None:
    if (a.content, a.stream_ids, len(a.layers)) != (b.content, b.stream_ids, len(b.layers)):
        return "content, stream ids or layer count"
    for (name, kind, tensors), (name_, kind_, tensors_) in zip(a.layers, b.layers):
        if (name, kind, set(tensors)) != (name_, kind_, set(tensors_)):
            return f"layer {name!r}"
        for key in tensors:
            if tensors[key].dtype != tensors_[key].dtype or tensors[key].tobytes() != tensors_[key].tobytes():
                return f"layer {name!r} {key}"
    return None


# --- mutations ------------------------------------------------------------------------------------------------------

@dataclass
class Mutant:
    """A mutated file and what a reader may make of it.

    `accept`: the data a successful read must equal (one of them). `must`: "valid" (a reader must
    load it), "invalid" (must refuse it) or None (either). `step`: the spec step a refusal must
    name, when the mutation decides it. `crafted`: the stream index was edited and re-sealed, so a
    row picked by id may carry the id this file's own bytes give that row (`file_ids`). `names`:
    layer names and kinds must be the seed's (False once the document was edited and re-sealed).
    """

    kind: str
    data: bytes
    accept: list[Expected]
    must: str | None = None
    step: int | None = None
    crafted: bool = False
    file_ids: tuple[str | None, ...] | None = None
    names: bool = True


def _nested(rnd: random.Random, depth: int) -> str:
    """A placeholder that `dumps` expands into `depth` nested arrays or objects (json.dumps would recurse)."""
    return f"@@deep:{depth}:{rnd.choice('[{')}@@"


def _expand(match: re.Match) -> str:
    depth, bracket = int(match.group(1)), match.group(2)
    return ("[" * depth + "]" * depth) if bracket == "[" else ('{"k":' * depth + "0" + "}" * depth)


def dumps(value: Any, ensure_ascii: bool = False) -> str:
    return re.sub(r'"@@deep:(\d+):([\[{])@@"', _expand,
                  json.dumps(value, ensure_ascii=ensure_ascii, sort_keys=True, separators=(",", ":")))


def _odd_value(rnd: random.Random) -> Any:
    roll = rnd.random()
    if roll < 0.6:
        return rnd.choice(ODD_SCALARS)
    if roll < 0.75:
        return [rnd.choice(ODD_SCALARS) for _ in range(rnd.randrange(4))]
    if roll < 0.85:
        return {rnd.choice(["h", "c", "name", "x", ""]): rnd.choice(ODD_SCALARS)}
    return _nested(rnd, rnd.choice([2, 50, 63, 64, 65, 900, 100_000]))


def _places(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in a JSON tree, so an edit can land anywhere."""
    out, stack = [], [node]
    while stack:
        item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, child in pairs:
            out.append((item, key))
            stack.append(child)
    return out


def truncate(data: bytes, rnd: random.Random) -> bytes:
    length = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0
    cut = rnd.choice([rnd.randrange(len(data)), rnd.randrange(9), 8 + length, 8 + length - 1, len(data) - 1])
    return data[:max(cut, 0)]


def flip_bits(data: bytes, rnd: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rnd.choice([1, 1, 1, 2, 3, 8])):
        out[rnd.randrange(len(out))] ^= 1 << rnd.randrange(8)
    return bytes(out)


def insert_bytes(data: bytes, rnd: random.Random) -> bytes:
    at = rnd.randrange(len(data) + 1)
    roll = rnd.random()
    if roll < 0.4:
        chunk = rnd.randbytes(rnd.randrange(1, 65))
    elif roll < 0.6:
        chunk = bytes([rnd.choice([0, 32, 0xFF, ord("{"), ord("[")])]) * rnd.randrange(1, 4096)
    elif roll < 0.8:
        start = rnd.randrange(len(data))
        chunk = data[start:start + rnd.randrange(1, 64)]
    else:  # a deletion
        return data[:at] + data[at + rnd.randrange(1, 64):]
    return data[:at] + chunk + data[at:]


def giant_length(data: bytes, rnd: random.Random) -> bytes:
    length = struct.unpack("<Q", data[:8])[0]
    value = rnd.choice(GIANT + [length + rnd.randrange(-16, 17), len(data), len(data) - 8])
    return struct.pack("<Q", max(0, min(value, 2**64 - 1))) + data[8:]


def _bytes_mutation(function: Any) -> Any:
    """A mutation of bytes alone, as a Mutant: the seed's data or a refusal; a cut file must be refused."""
    def mutation(seed: Seed, rnd: random.Random) -> Mutant:
        data = function(seed.data, rnd)
        cut = function is truncate and len(data) < len(seed.data)
        return Mutant(function.__name__, data, [seed.expected], "invalid" if cut else None, 1 if cut else None)
    mutation.__name__ = function.__name__
    return mutation


def flip_data(seed: Seed, rnd: random.Random) -> Mutant:
    """One bit of one tensor's data (layers, stream index or checksums), checksums left as they were: step 8."""
    parts = Parts.of(seed.data)
    keys = [key for key in parts.data if parts.data[key]]
    if not keys:
        return _bytes_mutation(flip_bits)(seed, rnd)
    key = rnd.choice(keys)
    raw = bytearray(parts.data[key])
    raw[rnd.randrange(len(raw))] ^= 1 << rnd.randrange(8)
    parts.data[key] = bytes(raw)
    return Mutant("flip_data", parts.bytes(), [seed.expected], "invalid", 8)


def edit_document(seed: Seed, rnd: random.Random) -> Mutant:
    """Set, delete or add one field anywhere in the metadata document; re-seal its checksum (mostly),
    and sometimes the block checksums too, so the checks behind those run."""
    parts = Parts.of(seed.data)
    document = parts.document
    container, key = rnd.choice(_places(document))
    roll = rnd.random()
    if roll < 0.6:
        container[key] = _odd_value(rnd)
    elif roll < 0.7 and isinstance(container, list) and isinstance(container[key], (int, float)):
        container[key] = container[key] + rnd.choice([-1, 1, 4096, 2**32])
    elif roll < 0.85 and isinstance(container, dict):
        del container[key]
    elif isinstance(container, dict):
        container[rnd.choice(["extra", "batch_size", "stream_ids", "c", "P", "input_size", "block_bytes",
                              "checksum_blocks", "checksums"])] = _odd_value(rnd)
    else:
        container.append(_odd_value(rnd) if rnd.random() < 0.5 else container[key])
    if rnd.random() < 0.3:
        # an edit may break what a re-seal needs: the file then keeps its old block checksums
        with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError, OverflowError):
            parts.reseal()
    resealed = rnd.random() < 0.9
    text = dumps(document, ensure_ascii=rnd.random() < 0.3) if rnd.random() < 0.95 else "[" * 100_000
    unchanged = text == parts.metadata["statefmt"]
    if resealed:
        parts.seal_document(text)
    else:
        parts.metadata["statefmt"] = text
    mutated = parts.bytes(ascii_header=rnd.random() < 0.5)
    # A re-sealed edit can make a valid file with other names or (1.0) other ids: its data must still be the seed's.
    return Mutant("edit_document", mutated, [seed.expected], None if resealed or unchanged else "invalid",
                  crafted=True, file_ids=_file_ids(mutated) if resealed else None, names=not resealed)


def _file_ids(raw: bytes) -> tuple[str | None, ...] | None:
    try:
        return Parts.of(raw).row_ids()
    except Exception:  # an edit that leaves no ids to read: none to allow either
        return None


def edit_header(seed: Seed, rnd: random.Random) -> Mutant:
    """Change one tensor's dtype, shape or offsets, swap or rename tensors, or the __metadata__ map itself."""
    length = struct.unpack("<Q", seed.data[:8])[0]
    header = json.loads(seed.data[8:8 + length])
    body = seed.data[8 + length:]
    keys = [key for key in header if key != "__metadata__"]
    roll = rnd.random()
    if roll < 0.6 and keys:
        entry = header[rnd.choice(keys)]
        what = rnd.choice(["dtype", "shape", "data_offsets", "swap"])
        if what == "dtype":
            entry["dtype"] = rnd.choice(DTYPE_CODES)
        elif what == "shape":
            entry["shape"] = [rnd.choice([0, 1, 2, 3, 2**32, 2**62, -1]) for _ in range(rnd.choice([0, 1, 3, 3, 4]))]
        elif what == "data_offsets":
            entry["data_offsets"] = [rnd.choice(GIANT + [len(body)]) for _ in range(rnd.choice([2, 2, 1, 3]))]
        else:  # two tensors of one size trade places: only the block checksums, by position, can tell
            other = header[rnd.choice(keys)]
            entry["data_offsets"], other["data_offsets"] = other["data_offsets"], entry["data_offsets"]
    elif roll < 0.7:
        header.setdefault("__metadata__", {})[rnd.choice(["statefmt", "statefmt_checksum", "other"])] = \
            _odd_value(rnd)
    elif roll < 0.75:
        header.setdefault("__metadata__", {})["other"] = "ignored"  # other entries MUST be ignored
        text = json.dumps(header).encode()
        return Mutant("edit_header", struct.pack("<Q", len(text)) + text + body, [seed.expected], "valid")
    elif roll < 0.85 and keys:
        header[rnd.choice(["layers.0.h", "layers.1.c", "layers.0.P", "checksums", "stream_ids.index",
                           "stream_ids.bytes", "extra"])] = header.pop(rnd.choice(keys))
    else:
        header[rnd.choice(["__metadata__", "extra"])] = _nested(rnd, rnd.choice([10, 200, 5000]))
    text = dumps(header, ensure_ascii=rnd.random() < 0.5).encode("utf-8", "surrogatepass")
    if rnd.random() < 0.8:
        text += b" " * (-len(text) % 8)
    return Mutant("edit_header", struct.pack("<Q", len(text)) + text + body, [seed.expected])


def relayout(seed: Seed, rnd: random.Random) -> Mutant:
    """The same tensors in another order in the data, with a consistent table: still a valid file."""
    parts = Parts.of(seed.data)
    order = list(parts.table)
    rnd.shuffle(order)
    return Mutant("relayout", parts.bytes(order, ascii_header=rnd.random() < 0.5, pad=rnd.random() < 0.5),
                  [seed.expected], "valid")


def duplicate_keys(seed: Seed, rnd: random.Random) -> Mutant:
    """A key twice in one JSON object: in the header, in __metadata__ or in the (re-sealed) document."""
    parts = Parts.of(seed.data)
    where = rnd.choice(["header", "metadata", "document", "layer"])
    if where in ("document", "layer"):
        text = parts.metadata["statefmt"]
        if where == "document":
            key = rnd.choice(sorted(parts.document))
            value = json.dumps(parts.document[key] if rnd.random() < 0.5 else _odd_value(rnd))
            text = text[:-1] + f',"{key}":{value}}}'
        else:
            text = text.replace('"kind":', '"kind":"gru","kind":', 1)
        parts.seal_document(text)
        return Mutant("duplicate_keys", parts.bytes(), [seed.expected], "invalid", 2)
    raw = parts.bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = raw[8:8 + length].rstrip(b" ")
    if where == "header":
        key = rnd.choice(list(parts.table) + ["__metadata__"])
        entry = json.dumps(parts.metadata if key == "__metadata__" else parts.table[key] | {"data_offsets": [0, 0]})
        doubled = header[:-1] + f',"{key}":{entry}}}'.encode()
    else:
        doubled = header.replace(b'"statefmt_checksum":', b'"statefmt_checksum":"x","statefmt_checksum":', 1)
    doubled += b" " * (-len(doubled) % 8)
    return Mutant("duplicate_keys", struct.pack("<Q", len(doubled)) + doubled + raw[8 + length:], [seed.expected],
                  "invalid", 1)


def json_constants(seed: Seed, rnd: random.Random) -> Mutant:
    """NaN, Infinity or -Infinity as a JSON value, in the re-sealed document or in the header."""
    parts = Parts.of(seed.data)
    constant = rnd.choice(["NaN", "Infinity", "-Infinity"])
    if rnd.random() < 0.7:
        text = parts.metadata["statefmt"]
        field_ = rnd.choice(['"user":{"x":%s}', '"batch_size":%s', '"extra":[%s]'])
        text = text[:-1] + "," + field_ % constant + "}"
        parts.seal_document(text)
        return Mutant("json_constants", parts.bytes(), [seed.expected], "invalid", 2)
    raw = parts.bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = raw[8:8 + length].rstrip(b" ")[:-1] + f',"extra":{constant}}}'.encode()
    header += b" " * (-len(header) % 8)
    return Mutant("json_constants", struct.pack("<Q", len(header)) + header + raw[8 + length:], [seed.expected],
                  "invalid", 1)


def deep_nesting(seed: Seed, rnd: random.Random) -> Mutant:
    """`user` (or an unknown field) nested deep, re-sealed: past 64 levels a reader must refuse, at step 2."""
    parts = Parts.of(seed.data)
    depth = rnd.choice([1, 10, 62, 63, 64, 65, 100, 1000, 100_000])
    where = rnd.choice(["user", "future_field"])
    parts.document[where] = {"k": _nested(rnd, depth)}
    parts.seal_document(dumps(parts.document))
    # 1.0 files may not hold unknown top-level keys; around the 64-level cap, who counts the top is the spec's call
    known = where == "user" or parts.major == "2"
    must, step = ("invalid", 2) if depth >= 100 else ("valid", None) if depth <= 10 and known else (None, None)
    return Mutant("deep_nesting", parts.bytes(), [seed.expected], must, step, names=False)


def _finite(array: np.ndarray) -> bool:
    return bool(np.isfinite(array.astype(np.float64)).all())


def reseal_values(seed: Seed, rnd: random.Random) -> Mutant:
    """New values in one layer tensor, checksums re-sealed: a valid file with other data, or NaN/Inf (step 9)."""
    parts = Parts.of(seed.data)
    keys = [key for key in parts.table if key.startswith("layers.") and parts.data[key]]
    if not keys:
        return edit_document(seed, rnd)
    key = rnd.choice(keys)
    array = parts.array(key).copy()
    flat = array.reshape(-1)
    roll = rnd.random()
    if roll < 0.4:
        flat[rnd.randrange(flat.size)] = rnd.choice([0.0, -0.0, 1e-40, 65504.0, -1.5, 3.0e38, 1e-300])
    elif roll < 0.6:
        flat[rnd.randrange(flat.size)] = rnd.choice([np.nan, np.inf, -np.inf])
    else:  # random bytes: any bit pattern, NaN payloads and subnormals included
        raw = flat.view(np.uint8)
        raw[:] = np.frombuffer(rnd.randbytes(raw.size), np.uint8)
    parts.put(key, array, parts.table[key]["dtype"])
    parts.reseal()
    parts.seal_document()
    index, name = key.split(".")[1:]
    layers = list(seed.expected.layers)
    lname, lkind, tensors = layers[int(index)]
    layers[int(index)] = (lname, lkind, {**tensors, name: array})
    changed = replace(seed.expected, layers=tuple(layers))
    if _finite(array):
        return Mutant("reseal_values", parts.bytes(), [changed], "valid")
    return Mutant("reseal_values", parts.bytes(), [changed], "invalid", 9)


def reblock(seed: Seed, rnd: random.Random) -> Mutant:
    """Another block size, checksums re-sealed: valid for each size the spec lists, refused (step 5) for others."""
    parts = Parts.of(seed.data)
    if parts.major == "1":
        return edit_document(seed, rnd)
    block = rnd.choice(BLOCK_SIZES + [4095, 3 * 4096, 2**21, 100_000])
    parts.document["block_bytes"] = block
    parts.reseal()
    parts.seal_document()
    if block in BLOCK_SIZES:
        return Mutant("reblock", parts.bytes(), [seed.expected], "valid")
    return Mutant("reblock", parts.bytes(), [seed.expected], "invalid", 5)


def _index_consistent(parts: Parts) -> bool:
    """Whether the four stream tensors are exactly what the independent writer makes of the file's ids."""
    ids = parts.ids()
    if ids is None or len(set(ids)) != len(ids):
        return False
    offsets = np.frombuffer(parts.data["stream_ids.offsets"], "<u8")
    if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(parts.data["stream_ids.bytes"]):
        return False
    if np.any(np.diff(offsets.astype(np.int64)) < 0):
        return False
    expected = vectors_writer().stream_tensors(list(ids))
    return all(np.ascontiguousarray(expected[key]).tobytes() == parts.data[key]
               and list(np.shape(expected[key])) == parts.table[key]["shape"] for key in STREAM_TENSORS)


def stream_index(seed: Seed, rnd: random.Random) -> Mutant:
    """Corrupt the stream-id index (bytes, offsets, index, buckets), re-sealed or not.

    Not re-sealed, a changed byte is refused at step 8. Re-sealed, a consistent index is a valid
    file whose ids are those its bytes give (`crafted`); an inconsistent one is refused at step 10
    by a whole read, while a read of some rows by id may still answer, with each row's own id.
    """
    parts = Parts.of(seed.data)
    if parts.major == "1" or "stream_ids.index" not in parts.data:
        return rename_ids(seed, rnd)
    key = rnd.choice(STREAM_TENSORS)
    before = parts.data[key]
    dtype = "<u8" if key != "stream_ids.bytes" else np.uint8
    values = np.frombuffer(before, dtype).copy()
    roll = rnd.random()
    if values.size == 0 or roll < 0.2:
        raw = bytearray(before + (b"\0" * 8 if not before else b""))
        raw[rnd.randrange(len(raw))] ^= 1 << rnd.randrange(8)
        values = np.frombuffer(bytes(raw), dtype).copy()
    elif roll < 0.4:
        values[rnd.randrange(values.size)] = rnd.choice([0, 1, 2**63, 2**64 - 1, values.size, values.size + 1,
                                                          int(values[rnd.randrange(values.size)])]
                                                         if dtype == "<u8" else [0, 0xFF, 0x80, ord("a")])
    elif roll < 0.6 and values.size > 1:
        i, j = rnd.randrange(values.size), rnd.randrange(values.size)
        values[i], values[j] = values[j], values[i]
    elif roll < 0.8 and key == "stream_ids.index" and values.size >= 4:
        rows = values.reshape(-1, 2)
        i, j = rnd.randrange(len(rows)), rnd.randrange(len(rows))
        rows[[i, j], rnd.choice([0, 1])] = rows[[j, i], rnd.choice([0, 1])]
    else:
        shifted = values.astype(object)  # Python ints: wrap around as the stored type does
        shifted[rnd.randrange(values.size):] += rnd.choice([-1, 1])
        values = np.array([v % (256 if dtype == np.uint8 else 2**64) for v in shifted], dtype)
    entry = parts.table[key]
    parts.put(key, values.reshape(-1, 2) if key == "stream_ids.index" and values.size % 2 == 0 else values,
              entry["dtype"])
    if parts.data[key] == before:
        return Mutant("stream_index", parts.bytes(), [seed.expected], "valid")
    if rnd.random() < 0.3:
        return Mutant("stream_index", parts.bytes(), [seed.expected], "invalid", 8 if len(before) ==
                      len(parts.data[key]) else None)
    parts.reseal()
    parts.seal_document()
    ids = parts.row_ids()
    if _index_consistent(parts):
        return Mutant("stream_index", parts.bytes(), [replace(seed.expected, stream_ids=ids)], "valid", crafted=True,
                      file_ids=ids)
    step = 10 if list(values.shape) == parts.table[key]["shape"] and len(before) == len(parts.data[key]) else None
    return Mutant("stream_index", parts.bytes(), [seed.expected], "invalid", step, crafted=True, file_ids=ids)


def rename_ids(seed: Seed, rnd: random.Random) -> Mutant:
    """New stream ids, with the index rebuilt by the independent writer and re-sealed: valid if unique (2.0);
    in a 1.0 file, the document's list, re-sealed."""
    parts = Parts.of(seed.data)
    if seed.expected.content != "state":
        return edit_document(seed, rnd)
    batch = seed.expected.batch
    old = list(seed.expected.stream_ids or [f"row {i}" for i in range(batch)])
    new = list(old)
    for _ in range(rnd.choice([1, 1, 2, 5])):
        if batch:
            new[rnd.randrange(batch)] = rnd.choice(ODD_IDS + old)
    if parts.major == "1":
        parts.document["stream_ids"] = new
        parts.seal_document()
    else:
        parts.document["stream_ids"] = True
        try:
            tensors = vectors_writer().stream_tensors(new)
        except UnicodeEncodeError:
            return edit_document(seed, rnd)
        for key in STREAM_TENSORS:
            parts.put(key, tensors[key], "U8" if key == "stream_ids.bytes" else "U64")
        parts.reseal()
        parts.seal_document()
    unique = len(set(new)) == len(new)
    must = "invalid" if not unique else "valid" if "" not in new else None
    step = 10 if not unique and parts.major == "2" else None
    return Mutant("rename_ids", parts.bytes(), [replace(seed.expected, stream_ids=tuple(new))], must, step,
                  crafted=True, file_ids=tuple(new))


def table_resealed(seed: Seed, rnd: random.Random) -> Mutant:
    """A tensor dropped, added, reshaped or retyped, with every checksum re-sealed: step 7 must catch it."""
    parts = Parts.of(seed.data)
    keys = [key for key in parts.table if key != "checksums"]
    key = rnd.choice(keys)
    roll = rnd.random()
    if roll < 0.3:
        del parts.table[key], parts.data[key]
    elif roll < 0.5:
        parts.put(rnd.choice(["extra", "layers.9.h", "layers.0.x", "stream_ids.extra"]), np.zeros(3, "float32"))
    elif roll < 0.75:
        array = parts.array(key)
        parts.put(key, array.reshape(-1) if array.ndim > 1 else array.reshape(1, -1), parts.table[key]["dtype"])
    else:
        raw = parts.data[key]
        code = rnd.choice([c for c in DTYPES if c != parts.table[key]["dtype"]])
        size = DTYPES[code].itemsize
        raw = raw[:len(raw) - len(raw) % size]
        parts.put(key, np.frombuffer(raw, DTYPES[code]), code)
    parts.reseal()
    parts.seal_document()
    return Mutant("table_resealed", parts.bytes(), [seed.expected], "invalid", 7)


def checksum_table(seed: Seed, rnd: random.Random) -> Mutant:
    """The block checksums themselves: a flipped bit in `checksums`, or `checksum_blocks` cut, grown or changed."""
    parts = Parts.of(seed.data)
    if parts.major == "1":
        return flip_data(seed, rnd)
    if rnd.random() < 0.5:
        raw = bytearray(parts.data["checksums"])
        raw[rnd.randrange(len(raw))] ^= 1 << rnd.randrange(8)
        parts.data["checksums"] = bytes(raw)
        return Mutant("checksum_table", parts.bytes(), [seed.expected], "invalid", 8)
    blocks = parts.document["checksum_blocks"]
    roll = rnd.random()
    if roll < 0.3:
        blocks.append(blocks[-1] if blocks else "xxh3_64:" + "0" * 16)
    elif roll < 0.5 and blocks:
        blocks.pop()
    elif blocks:
        i = rnd.randrange(len(blocks))
        blocks[i] = blocks[i][:-1] + ("0" if blocks[i][-1] != "0" else "1")
    parts.seal_document()
    return Mutant("checksum_table", parts.bytes(), [seed.expected], "invalid", 8)


def huge_json(seed: Seed, rnd: random.Random) -> Mutant:
    """Many layers, long strings, many ids, many tensors: within the header size caps, re-sealed."""
    parts = Parts.of(seed.data)
    document = parts.document
    roll = rnd.random()
    count = rnd.choice([100, 5_000, 70_000])
    if roll < 0.3:
        layer = document["layers"][0]
        document["layers"] = [dict(layer, name=f"l{i}" if rnd.random() < 0.5 else layer["name"])
                              for i in range(rnd.choice([100, 1_000, 2_000, 65_537]))]
    elif roll < 0.5:
        document["stream_ids"] = [str(i) if rnd.random() < 0.9 else i for i in range(count)]
        document["batch_size"] = count
    elif roll < 0.6:
        document["checksum_blocks"] = ["xxh3_64:" + "0" * 16] * count
    elif roll < 0.75:
        document[rnd.choice(["user", "created_by"])] = "x" * rnd.choice([10**4, 10**6, 3 * 10**6])
    elif roll < 0.85:
        document["layers"][0]["name"] = "🧠" * rnd.choice([10**3, 10**5])
    else:
        for i in range(min(count, 10_000)):
            parts.table[f"extra.{i}"] = {"dtype": "F32", "shape": [0]}
            parts.data[f"extra.{i}"] = b""
    parts.seal_document(dumps(document))
    return Mutant("huge_json", parts.bytes(), [seed.expected], names=False, crafted=True,
                  file_ids=_file_ids(parts.bytes()) if parts.major == "1" else None)


def _quiet(mutation: Any) -> Any:
    """The mutator's own casts (NaN, overflow) warn: no finding, so not shown."""
    def quiet(seed: Seed, rnd: random.Random) -> Mutant:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return mutation(seed, rnd)
    quiet.__name__ = mutation.__name__
    return quiet


MUTATIONS = {f.__name__: _quiet(f) for f in (*map(_bytes_mutation, (truncate, flip_bits, insert_bytes, giant_length)),
                                     flip_data, edit_document,
                                     edit_header, relayout, duplicate_keys, json_constants, deep_nesting,
                                     reseal_values, reblock, stream_index, rename_ids, table_resealed,
                                     checksum_table, huge_json)}


def mutate(seed: Seed, rnd: random.Random, kind: str | None = None) -> Mutant:
    """One mutation of `seed` (of `kind`, or a random kind); sometimes a byte-level one stacked on top."""
    if kind is None:
        kind = rnd.choice(sorted(MUTATIONS))
        if kind == "huge_json" and rnd.random() < 0.8:  # megabytes each: a fifth as often as the others
            kind = rnd.choice(sorted(MUTATIONS))
    mutant = MUTATIONS[kind](seed, rnd)
    if rnd.random() < 0.1 and mutant.data:
        stacked = rnd.choice([truncate, flip_bits, insert_bytes])(mutant.data, rnd)
        changed = stacked != mutant.data
        mutant = replace(mutant, data=stacked, must=None if changed else mutant.must,
                         step=None if changed else mutant.step)
    return mutant


# --- the verdict --------------------------------------------------------------------------------------------------

def _refusal(error: StateError, *, file_check: bool) -> None:
    """A refusal must be one line per problem and, for a file check, name the spec's step and its code."""
    assert error.problems and all(p and "\n" not in p for p in error.problems), f"not one line each: {error!r}"
    if file_check:
        assert error.step in STEPS and error.code == STEPS[error.step], \
            f"no spec step and code (step {error.step!r}, code {error.code!r}): {error!r}"


def _matches(got: StateSet | WeightSet, mutant: Mutant) -> str | None:
    problems = []
    for want in mutant.accept:
        problem = same_data(got, want, names=mutant.names)
        if problem is None and isinstance(got, StateSet):
            ids = None if got.stream_ids is None else tuple(got.stream_ids)
            if ids != want.stream_ids and not (mutant.crafted and ids == mutant.file_ids):
                problem = f"stream ids {str(ids)[:200]}, expected {str(want.stream_ids)[:200]}"
        if problem is None:
            return None
        problems.append(problem)
    return "; ".join(problems)


def _pick(mutant: Mutant, rnd: random.Random) -> list[str | int]:
    """Some stream keys to ask for: ids and indices of the seed, negative indices, sometimes an absent id."""
    want = mutant.accept[0]
    if want.content != "state":
        return [0]
    batch = want.batch
    keys: list[str | int] = []
    for _ in range(rnd.choice([1, 1, 2, 3])):
        roll = rnd.random()
        if roll < 0.5 and want.stream_ids:
            keys.append(rnd.choice(want.stream_ids))
        elif roll < 0.6 and mutant.file_ids and any(i is not None for i in mutant.file_ids):
            keys.append(rnd.choice([i for i in mutant.file_ids if i is not None]))
        elif roll < 0.85 and batch:
            keys.append(rnd.randrange(-batch, batch))
        else:
            keys.append(rnd.choice(["no such stream", batch, -batch - 1, "", "é🧠"]))
    return keys


def _check_rows(got: StateSet, keys: list[str | int], mutant: Mutant) -> str | None:
    """Every row returned is the row asked for, with its data and its id: never another stream's."""
    problems = []
    for want in mutant.accept:
        problem = _rows_problem(got, keys, want, mutant)
        if problem is None:
            return None
        problems.append(problem)
    return "; ".join(problems)


def _rows_problem(got: StateSet, keys: list[str | int], want: Expected, mutant: Mutant) -> str | None:
    if want.content != "state" or len(got.layers) != len(want.layers):
        return "layers or content differ from the seed's"
    if got.batch_size != len(keys):
        return f"{got.batch_size} rows for {len(keys)} keys"
    ids = got.stream_ids
    if (ids is None) != (want.stream_ids is None) and not (mutant.crafted and ids is None and mutant.file_ids is None):
        return f"stream ids {str(ids)[:100]}, the seed has {'none' if want.stream_ids is None else 'some'}"
    own: dict[int, set[str]] = {r: {want.stream_ids[r]} if want.stream_ids else set() for r in range(want.batch)}
    if mutant.crafted and mutant.file_ids:
        for r, text in enumerate(mutant.file_ids[:want.batch]):
            if text is not None:
                own[r].add(text)
    for position, key in enumerate(keys):
        if isinstance(key, int):
            candidates = [key % want.batch] if want.batch else []
        else:
            candidates = [r for r in range(want.batch) if key in own[r]]
        if not any((ids is None or (ids[position] in own[r] and (isinstance(key, int) or ids[position] == key)))
                   and _row_equal(got, position, want, r, names=mutant.names) for r in candidates):
            return f"row {position} (asked for as {key!r}, id {None if ids is None else ids[position]!r}) is not " \
                   "that stream's row"
    return None


def _row_equal(got: StateSet, position: int, want: Expected, row: int, *, names: bool) -> bool:
    for layer, (name, kind, tensors) in zip(got.layers, want.layers):
        if (names and (layer.name, layer.kind) != (name, kind)) or set(layer.state_names) != set(tensors):
            return False
        for key, array in tensors.items():
            value = np.asarray(layer[key])
            axis = _axis(kind)
            if value.dtype != array.dtype or \
                    np.take(value, position, axis).tobytes() != np.take(array, row, axis).tobytes():
                return False
    return True


def _rows_of(states: StateSet, keys: list[str | int]) -> list[int] | None:
    """The rows `keys` name in a set that was read whole, if each names one and no row twice."""
    rows = []
    for key in keys:
        if isinstance(key, int):
            if not -states.batch_size <= key < states.batch_size:
                return None
            rows.append(key % states.batch_size)
        elif states.stream_ids is not None and key in states.stream_ids:
            rows.append(list(states.stream_ids).index(key))
        else:
            return None
    return rows if len(set(rows)) == len(rows) else None


_CLI_OUTPUT = io.StringIO()
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _check_cli(path: Path, *, valid: bool) -> None:
    """`statefmt validate` and `inspect`: the same verdict, exit 0 or 1, no traceback, no raw control characters."""
    from statefmt.cli import main as cli

    for command in (["validate", str(path)], ["validate", "--json", str(path)], ["inspect", str(path)]):
        # one output stream for every call: click caches a text stream per sys.stdout it meets, in a
        # WeakKeyDictionary whose value holds the key, so each new StringIO (or CliRunner) would stay alive
        out = _CLI_OUTPUT
        out.seek(0)
        out.truncate()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                cli.main(command, prog_name="statefmt")
                code: Any = 0
            except SystemExit as exit_:  # any other exception is a traceback a user would see: it propagates
                code = exit_.code
        output = out.getvalue()
        assert code in (0, 1), f"statefmt {command[0]}: exit {code}"
        assert "Traceback" not in output, f"statefmt {command[0]}: a traceback"
        assert not _CONTROL.search(output), f"statefmt {command[0]}: raw control characters: {output[:300]!r}"
        if command[0] == "validate":
            assert (code == 0) == valid, f"statefmt validate exits {code}, read says {valid}"


def verdict(path: Path, mutant: Mutant, rnd: random.Random | None = None) -> str:
    """'valid' or 'format_error'; anything else (another exception, a silent change, a bad message, a warning,
    `validate` and `read` disagreeing, a file the spec says must load refused or must be refused loaded) raises.

    A mutated file that reads must hold exactly data the mutation allows: a change that
    passes the checksums would be silent corruption.
    """
    rnd = rnd or random.Random(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_error: StateFormatError | None = None
        try:
            got = statefmt.read(path)
        except StateFormatError as error:
            _refusal(error, file_check=True)
            read_error = error
        try:
            statefmt.validate(path)
            validate_error = None
        except StateFormatError as error:
            _refusal(error, file_check=True)
            validate_error = error
        assert (read_error is None) == (validate_error is None), \
            f"read and validate disagree: read {read_error!r}, validate {validate_error!r}"
        if read_error is not None:
            assert mutant.must != "valid", f"a valid file was refused: {read_error!r}"
            assert mutant.step is None or read_error.step == mutant.step, \
                f"refused at step {read_error.step}, the spec's check is step {mutant.step}: {read_error!r}"
        else:
            assert mutant.must != "invalid", "a file the spec refuses was read"
            problem = _matches(got, mutant)
            assert problem is None, f"read returned other data: {problem}"
            statefmt.validate(got)  # what a read returns is valid in memory too
            again = path.with_name(path.name + ".saved")
            try:  # and it can be written again (as `statefmt upgrade` does), and read back the same
                statefmt.save(got, again, durable=False)
                back = statefmt.read(again)
                problem = same_data(back, Expected.of(got), names=True)
                assert problem is None, f"saved and read again, it differs: {problem}"
                assert getattr(back, "stream_ids", None) == getattr(got, "stream_ids", None), "saved, ids differ"
            finally:
                again.unlink(missing_ok=True)
        keys = _pick(mutant, rnd)
        try:
            rows = statefmt.load(path, streams=keys)
        except (StateFormatError, StateMismatchError) as error:
            _refusal(error, file_check=False)
            if read_error is None and isinstance(got, StateSet) and _rows_of(got, keys) is not None:
                raise AssertionError(f"load(streams={keys!r}) refused rows that a whole read holds: {error!r}") \
                    from None
        else:
            problem = _check_rows(rows, keys, mutant)
            assert problem is None, f"load(streams={keys!r}) returned other data: {problem}"
        if rnd.random() < 0.05:
            _check_cli(path, valid=read_error is None)
    return "valid" if read_error is None else "format_error"
