"""Write the format 2.0 conformance vectors and their expected verdicts (`index.json`).

    python spec/vectors/generate.py [OUTPUT_DIR]

Files are written with the safetensors library's own writer, xxhash and json, not with
statefmt: this is how another language's implementation would write them, and the suite
checks that statefmt reads them. The output is deterministic (no statefmt version inside),
which a test checks. Each invalid file breaks exactly one rule of the spec; its verdict is the
reader check that must fail, by step number and code. Valid files list their expected values.
The frozen 1.0 vectors are in `1.0/`: files a 2.x reader must still read.
"""

from __future__ import annotations

import json
import pickle
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import xxhash
from safetensors.numpy import save as safetensors_bytes

HERE = Path(__file__).parent
BLOCK = 4096  # small blocks, so that tiny tensors still span several
CREATED_BY = "statefmt conformance vectors"
Document = dict[str, Any]
Tensors = dict[str, np.ndarray]


def _rng() -> np.random.Generator:
    return np.random.default_rng(20261125)


def _lstm() -> tuple[Document, Tensors, list[str] | None]:
    rng = _rng()
    tensors = {"layers.0.h": rng.standard_normal((1, 2, 3), "float32"),
               "layers.0.c": rng.standard_normal((1, 2, 3), "float32")}
    layers = [{"name": "encoder", "kind": "lstm", "units": 3, "directions": 1, "proj_units": None, "dtype": "float32"}]
    return _state(layers, 2, source={"framework": "numpy"}), tensors, ["sensor-a", "sensor-b"]


def _mixed() -> tuple[Document, Tensors, list[str] | None]:
    rng = _rng()
    tensors = {"layers.0.h": rng.standard_normal((2, 3, 2), "float32"),
               "layers.0.c": rng.standard_normal((2, 3, 4), "float32"),
               "layers.1.h": rng.standard_normal((1, 3, 5)).astype(ml_dtypes.bfloat16),
               "layers.2.h": rng.standard_normal((1, 3, 2)).astype("float16"),
               "layers.3.h": rng.standard_normal((1, 3, 1))}
    layers = [{"name": "enc/fwd.bwd 0", "kind": "lstm", "units": 4, "directions": 2, "proj_units": 2,
               "dtype": "float32"},
              {"name": "dec", "kind": "gru", "units": 5, "directions": 1, "proj_units": None, "dtype": "bfloat16"},
              {"name": "head", "kind": "rnn", "units": 2, "directions": 1, "proj_units": None, "dtype": "float16"},
              {"name": "tail ✓", "kind": "rnn", "units": 1, "directions": 1, "proj_units": None, "dtype": "float64"}]
    return _state(layers, 3), tensors, None


def _many_ids() -> tuple[Document, Tensors, list[str] | None]:
    """300 streams: 32 hash buckets, ids of 1 to 40 bytes, non-ASCII among them."""
    rng = _rng()
    tensors = {"layers.0.h": rng.standard_normal((1, 300, 2), "float32")}
    layers = [{"name": "gru", "kind": "gru", "units": 2, "directions": 1, "proj_units": None, "dtype": "float32"}]
    ids = [f"pump-{i}" if i % 7 else f"Straße {i} " + "x" * (i % 23) for i in range(300)]
    return _state(layers, 300), tensors, ids


def _weights() -> tuple[Document, Tensors, list[str] | None]:
    rng = _rng()
    f = lambda *shape: rng.standard_normal(shape, "float32")  # noqa: E731
    tensors = {"layers.0.W": f(1, 9, 2), "layers.0.R": f(1, 9, 3), "layers.0.Wb": f(1, 9), "layers.0.Rb": f(1, 9)}
    layers = [{"name": "gru", "kind": "gru", "units": 3, "directions": 1, "proj_units": None, "dtype": "float32",
               "input_size": 2, "activation": "tanh", "recurrent_activation": "sigmoid", "linear_before_reset": True}]
    return {"format_version": "2.0", "content": "weights", "layers": layers, "created_by": CREATED_BY}, tensors, None


# Format 2.1's kinds as the spec's tables give them: tensors in checksum order, each by its axes (batch first).
MODERN = {
    "mamba": {"conv": ("channels", "conv_window"), "ssm": ("channels", "state_size")},
    "mamba2": {"conv": ("conv_channels", "conv_window"), "ssm": ("heads", "head_dim", "state_size")},
    "gated_deltanet": {"conv": ("conv_channels", "conv_window"), "recurrent": ("heads", "key_dim", "value_dim")},
    "rwkv4": {name: ("channels",) for name in ("att_x", "att_num", "att_den", "att_max", "ffn_x")},
    "rwkv7": {"att_x": ("channels",), "wkv": ("heads", "key_dim", "value_dim"), "ffn_x": ("channels",)},
    "rglru": {"conv": ("channels", "conv_window"), "rg_lru": ("channels",)},
    "mlstm": {"C": ("heads", "key_dim", "value_dim"), "n": ("heads", "key_dim"), "m": ("heads",),
              "conv": ("conv_channels", "conv_window")},
    "slstm": {"h": ("units",), "c": ("units",), "n": ("units",), "m": ("units",),
              "conv": ("conv_channels", "conv_window")},
    "attention": {"keys": ("kv_heads", "length", "head_dim"), "values": ("kv_heads", "length", "value_dim")},
}
SIZES = {"channels": 6, "conv_channels": 10, "conv_window": 3, "state_size": 4, "heads": 2, "head_dim": 3,
         "key_dim": 3, "value_dim": 2, "units": 5, "kv_heads": 1, "length": 3}


def _kind(kind: str, batch: int = 2, **override: Any) -> Callable[[], tuple[Document, Tensors, list[str] | None]]:
    """One layer of a 2.1 kind, with the session fields; `override` changes sizes (a window, no conv)."""
    def make() -> tuple[Document, Tensors, list[str] | None]:
        rng = _rng()
        sizes = {**SIZES, **override}
        tensors = {f"layers.0.{name}": rng.standard_normal((batch, *(sizes[a] for a in axes)), "float32")
                   for name, axes in MODERN[kind].items()}
        dims = {axis: sizes[axis] for axes in MODERN[kind].values() for axis in axes}
        if kind == "attention":
            dims["window"] = sizes.get("window")
        layers = [{"name": f"{kind} 0", "kind": kind, "dtype": "float32", "dims": dims}]
        document = _state(layers, batch, version="2.1", tokens=9, compute_dtype="float32",
                          model={"implementation": "numpy", "config": "xxh3_64:" + "0" * 16})
        return document, tensors, [f"session-{i}" for i in range(batch)]
    return make


def _state(layers: list[dict[str, Any]], batch: int, version: str = "2.0", **fields: Any) -> Document:
    return {"format_version": version, "content": "state", "batch_size": batch, "stream_ids": False, "layers": layers,
            "created_by": CREATED_BY, **fields}


# --- an independent writer: safetensors + xxhash + json, as the spec describes ---------------------------------

def stream_tensors(ids: list[str]) -> Tensors:
    encoded = [i.encode() for i in ids]
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.uint64)
    hashes = [xxhash.xxh3_64_intdigest(e) for e in encoded]
    entries = sorted((h, row) for row, h in enumerate(hashes))
    bits = max(0, (max(1, len(ids) // 8) - 1).bit_length())
    bucket = (lambda h: h >> (64 - bits)) if bits else (lambda h: 0)
    bounds = [sum(1 for h, _ in entries if bucket(h) < b) for b in range(2**bits + 1)]
    return {"stream_ids.bytes": np.frombuffer(b"".join(encoded), np.uint8).copy(),
            "stream_ids.offsets": offsets,
            "stream_ids.index": np.array(entries, np.uint64).reshape(len(ids), 2),
            "stream_ids.buckets": np.array(bounds, np.uint64)}


def order(document: Document, tensors: Tensors) -> list[str]:
    """Checksum order: layers in order, each's tensors in the spec's order, then the stream index."""
    keys = []
    for i, layer in enumerate(document["layers"]):
        names = list(MODERN.get(layer["kind"], ())) or ["h", "c", "W", "R", "Wb", "Rb", "P"]
        keys += [f"layers.{i}.{n}" for n in names if f"layers.{i}.{n}" in tensors]
    return keys + [k for k in ("stream_ids.bytes", "stream_ids.offsets", "stream_ids.buckets", "stream_ids.index")
                   if k in tensors]


def hexdigest(data: bytes) -> str:
    return "xxh3_64:" + xxhash.xxh3_64_hexdigest(data)


def seal(document: Document, tensors: Tensors) -> tuple[Document, Tensors]:
    """Add the block checksums: the `checksums` tensor and the document's `checksum_blocks`."""
    sums = []
    for key in order(document, tensors):
        raw = np.ascontiguousarray(tensors[key]).tobytes()
        sums += [xxhash.xxh3_64_intdigest(raw[i:i + BLOCK]) for i in range(0, len(raw), BLOCK)]
    checksums = np.array(sums, "<u8")
    raw = checksums.tobytes()
    document = {**document, "block_bytes": BLOCK,
                "checksum_blocks": [hexdigest(raw[i:i + BLOCK]) for i in range(0, len(raw), BLOCK)]}
    return document, {**tensors, "checksums": checksums}


def file_bytes(document: Document | str, tensors: Tensors, **metadata: str) -> bytes:
    text = document if isinstance(document, str) else json.dumps(document, sort_keys=True, separators=(",", ":"),
                                                                   ensure_ascii=False)
    entries = {"statefmt": text, "statefmt_checksum": hexdigest(text.encode()), **metadata}
    return sorted_metadata(safetensors_bytes({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                                             metadata=entries))


def sorted_metadata(data: bytes) -> bytes:
    """The same file with its `__metadata__` keys sorted: safetensors' writer orders them as a hash map
    does, which would make the vectors differ from run to run in those bytes alone."""
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (length - len(text))
    return data[:8] + text + data[8 + length:]


def build(make: Callable[[], tuple[Document, Tensors, list[str] | None]],
          edit: Callable[[Document, Tensors], Any] | None = None, *, reseal: bool = True) -> bytes:
    document, tensors, ids = make()
    if ids is not None:
        document["stream_ids"] = True
        tensors.update(stream_tensors(ids))
    if edit is not None and reseal:
        edit(document, tensors)
    document, tensors = seal(document, tensors)
    if edit is not None and not reseal:
        edit(document, tensors)
    return file_bytes(document, tensors)


def expected_values(make: Callable[[], tuple[Document, Tensors, list[str] | None]]) -> dict[str, Any]:
    document, tensors, ids = make()
    layers = []
    for i, layer in enumerate(document["layers"]):
        values = {k.split(".")[-1]: {"shape": list(v.shape), "values": np.asarray(v, np.float64).ravel().tolist()}
                  for k, v in tensors.items() if k.startswith(f"layers.{i}.")}
        layers.append({"name": layer["name"], **values})
    return {"stream_ids": ids, "layers": layers}


def _flip(tensor_key: str, byte: int) -> Callable[[Document, Tensors], None]:
    def edit(document: Document, tensors: Tensors) -> None:
        raw = np.ascontiguousarray(tensors[tensor_key]).copy()
        raw.reshape(-1).view(np.uint8)[byte] ^= 0x10
        tensors[tensor_key] = raw
    return edit


def _poison(value: float) -> Callable[[Document, Tensors], None]:
    def edit(document: Document, tensors: Tensors) -> None:
        tensors["layers.0.h"][0, 1, 2] = value
    return edit


def generate(out: Path) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    verdicts: list[dict[str, Any]] = []

    def vector(name: str, description: str, data: bytes, step: int | None = None, code: str | None = None,
               expected: dict[str, Any] | None = None) -> None:
        verdict: dict[str, Any] = {"file": name, "valid": step is None, "description": description}
        if step is None:
            verdict["expected"] = expected
        else:
            verdict.update(step=step, code=code)
        verdicts.append(verdict)
        (out / name).write_bytes(data)

    vector("lstm.statefmt", "one LSTM layer, two named streams", build(_lstm), expected=expected_values(_lstm))
    vector("mixed.statefmt", "bidirectional projected LSTM, bfloat16 GRU, float16 and float64 RNNs, odd names",
           build(_mixed), expected=expected_values(_mixed))
    vector("many_ids.statefmt", "300 named streams in 32 hash buckets, non-ASCII ids", build(_many_ids),
           expected=expected_values(_many_ids))

    def zero_batch() -> tuple[Document, Tensors, list[str] | None]:
        document, tensors, _ = _lstm()
        document["batch_size"] = 0
        return document, {k: v[:, :0] for k, v in tensors.items()}, []
    vector("zero_batch.statefmt", "a batch of 0 rows, with an (empty) stream index", build(zero_batch),
           expected=expected_values(zero_batch))
    vector("gru_weights.statefmt", "weights of one GRU layer", build(_weights), expected=expected_values(_weights))
    vector("future_minor.statefmt", "version 2.7 with keys a 2.0 reader does not know: ignored",
           build(_lstm, lambda d, t: d.update(format_version="2.7", future_field={"x": 1})),
           expected=expected_values(_lstm))

    for kind in MODERN:
        vector(f"kind_{kind}.statefmt", f"format 2.1: one {kind} layer, two named streams, the session fields",
               build(_kind(kind)), expected=expected_values(_kind(kind)))
    for name, make, text in (
            ("kind_attention_window", _kind("attention", window=4), "a sliding-window attention layer"),
            ("kind_attention_empty", _kind("attention", length=0), "an attention layer that has seen no token"),
            ("kind_mlstm_no_conv", _kind("mlstm", conv_channels=0, conv_window=0), "an mLSTM layer without conv")):
        vector(f"{name}.statefmt", f"format 2.1: {text}", build(make), expected=expected_values(make))

    good = build(_lstm)
    vector("empty.statefmt", "an empty file", b"", 1, "container")
    vector("random.statefmt", "random bytes", _rng().bytes(256), 1, "container")
    vector("truncated.statefmt", "the valid LSTM file cut short", good[:-5], 1, "container")
    vector("trailing.statefmt", "bytes after the last tensor", good + b"\0" * 8, 1, "container")
    vector("huge_header_length.statefmt", "a header length far beyond the file",
           struct.pack("<Q", 2**40) + good[8:], 1, "container")
    broken = b"{not json" + b" " * 7
    vector("header_not_json.statefmt", "a header that is not JSON", struct.pack("<Q", len(broken)) + broken, 1,
           "container")
    header_len = struct.unpack("<Q", good[:8])[0]
    header = good[8:8 + header_len].rstrip(b" ")
    doubled = header[:-1] + b',"__metadata__":{}}'
    doubled += b" " * (-len(doubled) % 8)
    vector("duplicate_header_key.statefmt", "the safetensors header holds `__metadata__` twice",
           struct.pack("<Q", len(doubled)) + doubled + good[8 + header_len:], 1, "container")
    vector("pickle.safetensors", "a pickle under a safetensors name", pickle.dumps({"h": [1.0, 2.0]}, protocol=4), 1,
           "container")
    vector("plain.safetensors", "a plain safetensors file without statefmt metadata",
           safetensors_bytes({"h": np.zeros((1, 2, 3), "float32")}), 2, "metadata")
    document, tensors = seal(*_lstm()[:2])
    vector("metadata_not_json.statefmt", "statefmt metadata that is not JSON", file_bytes("{'layers': ", tensors), 2,
           "metadata")
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    vector("metadata_duplicate_key.statefmt", "the document holds `batch_size` twice, each parser would keep another",
           file_bytes(text[:-1] + ',"batch_size":5}', tensors), 2, "metadata")
    vector("metadata_nan.statefmt", "NaN as a JSON value in the document",
           file_bytes(text[:-1] + ',"user":{"x":NaN}}', tensors), 2, "metadata")
    vector("future_major.statefmt", "format_version 3.0", build(_lstm, lambda d, t: d.update(format_version="3.0")),
           3, "version")
    vector("metadata_checksum.statefmt", "a layer name changed after the metadata checksum was taken",
           sorted_metadata(safetensors_bytes(tensors, metadata={"statefmt": text.replace("encoder", "encodes"),
                                                                "statefmt_checksum": hexdigest(text.encode())})), 4,
           "metadata-checksum")
    vector("metadata_no_checksum.statefmt", "no metadata checksum",
           safetensors_bytes(tensors, metadata={"statefmt": text}), 4, "metadata-checksum")
    vector("unknown_kind.statefmt", "kind 'transformer'",
           build(_lstm, lambda d, t: d["layers"][0].update(kind="transformer")), 5, "schema")
    vector("kind_unknown.statefmt", "format 2.1, kind 'mamba3', which no 2.1 reader knows: refused by name",
           build(_kind("mamba"), lambda d, t: d["layers"][0].update(kind="mamba3")), 5, "schema")
    vector("kind_dims_missing.statefmt", "a mamba2 layer without its state_size",
           build(_kind("mamba2"), lambda d, t: d["layers"][0]["dims"].pop("state_size")), 5, "schema")
    vector("kind_in_2_0.statefmt", "a mamba2 layer in a file that says format 2.0",
           build(_kind("mamba2"), lambda d, t: d.update(format_version="2.0")), 6, "semantics")
    vector("kind_window_lie.statefmt", "an attention layer keeping 3 positions in a window of 2",
           build(_kind("attention", window=2)), 6, "semantics")
    vector("kind_dims_lie.statefmt", "dims say 3 heads, the ssm tensor has 2",
           build(_kind("mamba2"), lambda d, t: d["layers"][0]["dims"].update(heads=3)), 7, "tensors")
    vector("kind_nan.statefmt", "NaN in a mamba2 ssm state",
           build(_kind("mamba2"), lambda d, t: t["layers.0.ssm"].__setitem__((1, 0, 0, 0), np.nan)), 9, "nonfinite")
    vector("batch_float.statefmt", "batch_size 2.0, a float",
           build(_lstm, lambda d, t: d.update(batch_size=2.0)), 5, "schema")
    vector("activation_unknown.statefmt", "weights with activation 'gelu', outside the spec's list",
           build(_weights, lambda d, t: d["layers"][0].update(activation="gelu")), 5, "schema")
    vector("weights_missing_activation.statefmt", "weights without recurrent_activation",
           build(_weights, lambda d, t: d["layers"][0].pop("recurrent_activation")), 5, "schema")
    vector("duplicate_names.statefmt", "two layers named 'encoder'",
           build(_lstm, lambda d, t: (d["layers"].append({**d["layers"][0]}),
                                      t.update({"layers.1.h": t["layers.0.h"], "layers.1.c": t["layers.0.c"]}))),
           6, "semantics")
    vector("gru_projection.statefmt", "proj_units on a GRU",
           build(_lstm, lambda d, t: (d["layers"][0].update(kind="gru", proj_units=2), t.pop("layers.0.c"))),
           6, "semantics")
    vector("units_lie.statefmt", "metadata says 4 units, tensors have 3",
           build(_lstm, lambda d, t: d["layers"][0].update(units=4)), 7, "tensors")
    vector("batch_lie.statefmt", "metadata says batch 5, tensors have 2",
           build(_lstm, lambda d, t: d.update(batch_size=5)), 7, "tensors")
    vector("dtype_lie.statefmt", "metadata says float64, tensors are float32",
           build(_lstm, lambda d, t: d["layers"][0].update(dtype="float64")), 7, "tensors")
    vector("missing_tensor.statefmt", "the LSTM's c tensor is absent", build(_lstm, lambda d, t: t.pop("layers.0.c")),
           7, "tensors")
    vector("extra_tensor.statefmt", "a tensor no layer describes",
           build(_lstm, lambda d, t: t.update(extra=np.zeros(2, "float32"))), 7, "tensors")
    vector("weights_shape.statefmt", "weights whose R has the wrong width",
           build(_weights, lambda d, t: t.update({"layers.0.R": np.zeros((1, 9, 4), "float32")})), 7, "tensors")
    vector("checksum.statefmt", "one bit of h flipped after the checksums were taken",
           build(_lstm, _flip("layers.0.h", 3), reseal=False), 8, "checksum")
    vector("checksum_table.statefmt", "one bit of the checksums tensor flipped",
           build(_lstm, _flip("checksums", 0), reseal=False), 8, "checksum")
    vector("weights_checksum.statefmt", "one bit of a weight flipped after the checksums were taken",
           build(_weights, _flip("layers.0.W", 5), reseal=False), 8, "checksum")
    for value, name in ((np.nan, "nan"), (np.inf, "inf")):
        vector(f"{name}.statefmt", f"{name.upper()} in a state", build(_lstm, _poison(value)), 9, "nonfinite")
    vector("weights_nan.statefmt", "NaN in the weights",
           build(_weights, lambda d, t: t["layers.0.W"].__setitem__((0, 0, 0), np.nan)), 9, "nonfinite")
    vector("stream_ids_duplicate.statefmt", "the same stream id twice, indexed consistently",
           build(lambda: (_lstm()[0], _lstm()[1], ["same", "same"])), 10, "stream-index")
    vector("stream_index_wrong.statefmt", "an index that points a hash at the wrong row (checksums valid)",
           build(_lstm, lambda d, t: t["stream_ids.index"].__setitem__((slice(None), 1),
                                                                         t["stream_ids.index"][::-1, 1].copy())),
           10, "stream-index")
    vector("stream_ids_not_utf8.statefmt", "a stream id that is not UTF-8",
           build(_lstm, lambda d, t: t["stream_ids.bytes"].__setitem__(0, 0xFF)), 10, "stream-index")
    (out / "index.json").write_text(json.dumps(verdicts, indent=1, ensure_ascii=False) + "\n")
    return verdicts


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
