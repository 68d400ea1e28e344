"""Mutations of valid statefmt files and the one verdict every mutated file must get.

Each mutation takes the bytes of a valid file and a `random.Random`, so the same seed gives
the same input: hypothesis drives it in the test suite, a seeded loop in `python -m fuzz`.
"""

from __future__ import annotations

import json
import random
import re
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

import statefmt
from statefmt import LayerState, StateFormatError, StateSet
from statefmt._document import metadata_entries

ODD_SCALARS = [None, True, False, 0, -1, 1, 2, 3, 2**31, 2**53 + 1, 2**63, 2**64, 10**30, -(10**30), 0.5, 1e308,
               float("nan"), float("inf"), "", "0", "h", "lstm", "float32", "xxh3_64:" + "0" * 16, "é🧠\x00\n", "1.0", "2.0"]
DTYPE_CODES = ["F32", "F16", "BF16", "F64", "I8", "U8", "BOOL", "I64", "C64", "F8_E4M3", "f32", ""]
GIANT = [0, 1, 7, 2**31, 2**32, 2**32 + 8, 2**53, 2**63 - 1, 2**63, 2**64 - 1, 100_000_000, 100_000_001]


def seed_states() -> list[StateSet]:
    """Small valid states covering the cell kinds, two directions, a projection, the dtypes and empty batches."""
    rng = np.random.default_rng(7)

    def f(dtype, *shape):
        return rng.standard_normal(shape).astype(dtype)

    return [
        StateSet([LayerState("enc", "lstm", h=f("float32", 2, 3, 4), c=f("float32", 2, 3, 4)),
                  LayerState("dec/gru 1", "gru", h=f("float32", 1, 3, 5))], stream_ids=["a", "b", "é🧠"],
                 metadata={"user": {"run": 1}, "source": {"framework": "numpy"}}),
        StateSet([LayerState("proj", "lstm", h=f(ml_dtypes.bfloat16, 1, 2, 2), c=f(ml_dtypes.bfloat16, 1, 2, 3)),
                  LayerState("rnn", "rnn", h=f(ml_dtypes.bfloat16, 1, 2, 1))]),
        StateSet([LayerState("half", "gru", h=f("float16", 1, 1, 6)), LayerState("wide", "rnn", h=f("float64", 2, 1, 2))]),
        StateSet([LayerState("empty", "lstm", h=f("float32", 1, 0, 2), c=f("float32", 1, 0, 2))], stream_ids=[]),
    ]


def encode(states: StateSet, path: Path) -> bytes:
    statefmt.save(states, path, durable=False)
    return path.read_bytes()


def split(data: bytes) -> tuple[dict, bytes]:
    """The outer safetensors header (parsed) and the tensor data of a valid file."""
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + length]), data[8 + length:]


def join(header: dict, body: bytes, rnd: random.Random) -> bytes:
    text = dumps(header, ensure_ascii=rnd.random() < 0.5).encode()
    if rnd.random() < 0.8:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _nested(rnd: random.Random, depth: int) -> str:
    """A placeholder that `dumps` expands into `depth` nested arrays or objects (json.dumps would recurse)."""
    return f"@@deep:{depth}:{rnd.choice('[{')}@@"


def _expand(match: re.Match) -> str:
    depth, bracket = int(match.group(1)), match.group(2)
    return ("[" * depth + "]" * depth) if bracket == "[" else ('{"k":' * depth + "0" + "}" * depth)


def dumps(value, ensure_ascii: bool = False) -> str:
    return re.sub(r'"@@deep:(\d+):([\[{])@@"', _expand, json.dumps(value, ensure_ascii=ensure_ascii))


def _odd_value(rnd: random.Random):
    roll = rnd.random()
    if roll < 0.6:
        return rnd.choice(ODD_SCALARS)
    if roll < 0.75:
        return [rnd.choice(ODD_SCALARS) for _ in range(rnd.randrange(4))]
    if roll < 0.85:
        return {rnd.choice(["h", "c", "name", "x", ""]): rnd.choice(ODD_SCALARS)}
    return _nested(rnd, rnd.choice([2, 50, 900, 2000, 100_000]))


def _paths(node, prefix=()):
    """Every (container, key) in a JSON tree, so an edit can land anywhere."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield node, key
        yield from _paths(child, prefix + (key,))


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


def edit_document(data: bytes, rnd: random.Random) -> bytes:
    """Set, delete or add one field anywhere in the statefmt metadata document."""
    header, body = split(data)
    document = json.loads(header["__metadata__"]["statefmt"])
    places = list(_paths(document))
    container, key = rnd.choice(places)
    roll = rnd.random()
    if roll < 0.7:
        container[key] = _odd_value(rnd)
    elif roll < 0.85 and isinstance(container, dict):
        del container[key]
    elif isinstance(container, dict):
        container[rnd.choice(["extra", "batch_size", "stream_ids", "c", "P", "input_size"])] = _odd_value(rnd)
    else:
        container.append(_odd_value(rnd) if rnd.random() < 0.5 else container[key])
    _set_document(header, dumps(document) if rnd.random() < 0.95 else "[" * 100_000, rnd)
    return join(header, body, rnd)


def _set_document(header: dict, text: str, rnd: random.Random) -> None:
    """Put an edited document in, mostly with its checksum updated so the checks behind that one run too."""
    header["__metadata__"]["statefmt"] = text
    if rnd.random() < 0.9:
        header["__metadata__"].update(metadata_entries(text))


def edit_header(data: bytes, rnd: random.Random) -> bytes:
    """Change one tensor's dtype, shape or offsets, or the __metadata__ map itself."""
    header, body = split(data)
    keys = [key for key in header if key != "__metadata__"]
    roll = rnd.random()
    if roll < 0.75 and keys:
        entry = header[rnd.choice(keys)]
        field = rnd.choice(["dtype", "shape", "data_offsets"])
        if field == "dtype":
            entry["dtype"] = rnd.choice(DTYPE_CODES)
        elif field == "shape":
            entry["shape"] = [rnd.choice([0, 1, 2, 3, 2**32, 2**62, -1]) for _ in range(rnd.choice([0, 1, 3, 3, 4]))]
        else:
            entry["data_offsets"] = [rnd.choice(GIANT + [len(body)]) for _ in range(rnd.choice([2, 2, 1, 3]))]
    elif roll < 0.85:
        header["__metadata__"][rnd.choice(["statefmt", "other"])] = _odd_value(rnd)
    elif roll < 0.95 and keys:
        header[f"layers.{rnd.randrange(3)}.{rnd.choice('hcx')}"] = header.pop(rnd.choice(keys))
    else:
        header[rnd.choice(["__metadata__", "extra"])] = _nested(rnd, rnd.choice([10, 200, 5000]))
    return join(header, body, rnd)


def huge_json(data: bytes, rnd: random.Random) -> bytes:
    """Many layers, long strings, long stream id lists, many tensors: within the header size caps."""
    header, body = split(data)
    document = json.loads(header["__metadata__"]["statefmt"])
    roll = rnd.random()
    count = rnd.choice([100, 5_000, 70_000])
    if roll < 0.3:
        layer = document["layers"][0]
        document["layers"] = [dict(layer, name=f"l{i}" if rnd.random() < 0.5 else layer["name"])
                              for i in range(rnd.choice([100, 1_000, 2_000]))]  # jsonschema: ~0.15 ms a layer
    elif roll < 0.5:
        document["stream_ids"] = [str(i) if rnd.random() < 0.9 else i for i in range(count)]
        document["batch_size"] = count
    elif roll < 0.7:
        document[rnd.choice(["user", "created_by"])] = "x" * rnd.choice([10**4, 10**6, 3 * 10**6])
    elif roll < 0.85:
        document["layers"][0]["name"] = "🧠" * rnd.choice([10**3, 10**5])
    else:
        for i in range(min(count, 10_000)):
            header[f"extra.{i}"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    _set_document(header, dumps(document), rnd)
    return join(header, body, rnd)


MUTATIONS = {f.__name__: f for f in (truncate, flip_bits, insert_bytes, giant_length, edit_document, edit_header,
                                     huge_json)}


def mutate(data: bytes, rnd: random.Random, kind: str | None = None) -> tuple[str, bytes]:
    """One mutation of `data` (of `kind`, or a random kind); sometimes two stacked."""
    kind = kind or rnd.choice(sorted(MUTATIONS))
    out = MUTATIONS[kind](data, rnd)
    if rnd.random() < 0.1 and out:
        out = MUTATIONS[rnd.choice(["truncate", "flip_bits", "insert_bytes"])](out, rnd)
    return kind, out


def verdict(path: Path, original: StateSet) -> str:
    """'valid' or 'format_error'; anything else (another exception, a silent change, a bad message) raises.

    A mutated file that loads must hold exactly the original tensors: a change that
    passes the checksums would be silent corruption.
    """
    try:
        states = statefmt.load(path)
    except StateFormatError as error:
        assert error.problems and all(p and "\n" not in p for p in error.problems), f"not one line each: {error!r}"
        return "format_error"
    assert isinstance(states, StateSet)
    assert len(states.layers) == len(original.layers)
    for got, want in zip(states.layers, original.layers):
        assert got.state_names == want.state_names
        for name in got.state_names:
            assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
            assert got[name].tobytes() == want[name].tobytes(), f"{got.name}: {name} silently changed"
    return "valid"
