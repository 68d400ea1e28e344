"""Write the conformance vectors and their expected verdicts (`index.json`).

    python spec/vectors/generate.py [OUTPUT_DIR]

The output is deterministic: running it again gives the same bytes, which a test checks.
Invalid files are built by hand around the container writer so that each one breaks exactly
one rule of the spec.
"""

from __future__ import annotations

import json
import pickle
import struct
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

import statefmt
from statefmt import LayerState, LayerWeights, StateSet, WeightSet, _container
from statefmt.io import METADATA_KEY, metadata_entries

HERE = Path(__file__).parent


def _rng():
    return np.random.default_rng(20261125)


def _lstm_state() -> StateSet:
    rng = _rng()
    layer = LayerState("encoder", "lstm", h=rng.standard_normal((1, 2, 3), "float32"),
                       c=rng.standard_normal((1, 2, 3), "float32"))
    return StateSet([layer], stream_ids=["sensor-a", "sensor-b"], metadata={"source": {"framework": "numpy"}})


def _mixed_state() -> StateSet:
    rng = _rng()
    return StateSet([
        LayerState("enc/fwd.bwd 0", "lstm", h=rng.standard_normal((2, 3, 2), "float32"),
                   c=rng.standard_normal((2, 3, 4), "float32")),
        LayerState("dec", "gru", h=rng.standard_normal((1, 3, 5)).astype(ml_dtypes.bfloat16)),
        LayerState("head", "rnn", h=rng.standard_normal((1, 3, 2)).astype("float16")),
        LayerState("tail", "rnn", h=rng.standard_normal((1, 3, 1))),
    ])


def _weights() -> WeightSet:
    rng = _rng()
    f = lambda *shape: rng.standard_normal(shape, "float32")  # noqa: E731
    return WeightSet([LayerWeights("gru", "gru", W=f(1, 9, 2), R=f(1, 9, 3), Wb=f(1, 9), Rb=f(1, 9))])


def _document(states: StateSet) -> tuple[dict, list[tuple[str, np.ndarray]]]:
    """The metadata document and tensors `statefmt.save` would write, for editing."""
    document = {"format_version": "1.0", "content": "state", "batch_size": states.batch_size, "layers": []}
    if states.stream_ids:
        document["stream_ids"] = list(states.stream_ids)
    tensors = []
    for index, layer in enumerate(states.layers):
        entry = {"name": layer.name, "kind": layer.kind, "units": layer.units, "directions": layer.directions,
                 "proj_units": layer.proj_units, "dtype": layer.dtype, "checksums": {}}
        for name in layer.state_names:
            entry["checksums"][name] = _container.checksum(layer[name])
            tensors.append((f"layers.{index}.{name}", layer[name]))
        document["layers"].append(entry)
    return document, tensors


def _write(path: Path, document, tensors) -> None:
    text = document if isinstance(document, str) else json.dumps(document, sort_keys=True, separators=(",", ":"))
    _container.write(path, tensors, metadata_entries(text), durable=False)


def _edited(path: Path, edit) -> None:
    document, tensors = _document(_lstm_state())
    tensors = dict(tensors)
    edit(document, tensors)
    _write(path, document, list(tensors.items()))


def generate(out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    verdicts = []

    def vector(name: str, description: str, error: str | None = None) -> Path:
        verdicts.append({"file": name, "valid": error is None, "error": error, "description": description})
        return out / name

    statefmt.save(_lstm_state(), vector("lstm.statefmt", "one LSTM layer, two named streams"), durable=False)
    statefmt.save(_mixed_state(), vector("mixed.statefmt", "bidirectional projected LSTM, bfloat16 GRU, "
                                         "float16 and float64 RNNs, odd names"), durable=False)
    statefmt.save(_lstm_state().rows([]), vector("zero_batch.statefmt", "a batch of 0 rows"), durable=False)
    statefmt.save(_weights(), vector("gru_weights.statefmt", "weights of one GRU layer"), durable=False)
    _edited(vector("future_minor.statefmt", "version 1.7 with keys a 1.0 reader does not know: ignored"),
            lambda d, t: d.update(format_version="1.7", future_field={"x": 1}))

    (vector("empty.statefmt", "an empty file", "not a valid safetensors file")).write_bytes(b"")
    vector("random.statefmt", "random bytes", "not a valid safetensors file").write_bytes(
        _rng().bytes(256))
    good = (out / "lstm.statefmt").read_bytes()
    vector("truncated.statefmt", "the valid LSTM file cut short", "not a valid safetensors file").write_bytes(
        good[:-5])
    vector("huge_header_length.statefmt", "a header length far beyond the file",
           "not a valid safetensors file").write_bytes(struct.pack("<Q", 2**40) + good[8:])
    broken = b"{not json" + b" " * 7
    vector("header_not_json.statefmt", "a header that is not JSON", "not a valid safetensors file").write_bytes(
        struct.pack("<Q", len(broken)) + broken)
    vector("pickle.safetensors", "a pickle under a safetensors name", "not a valid safetensors file").write_bytes(
        pickle.dumps({"h": [1.0, 2.0]}, protocol=4))
    _container.write(vector("plain.safetensors", "a plain safetensors file without statefmt metadata",
                            "not a statefmt file"), [("h", np.zeros((1, 2, 3), "float32"))], {}, durable=False)
    document, tensors = _document(_lstm_state())
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    _container.write(vector("metadata_checksum.statefmt", "a layer name changed after the metadata checksum "
                            "was taken", "the metadata checksum ('statefmt_checksum') does not match"), tensors,
                     {**metadata_entries(text), METADATA_KEY: text.replace("encoder", "encodes")}, durable=False)
    _container.write(vector("metadata_no_checksum.statefmt", "no metadata checksum",
                            "the metadata checksum ('statefmt_checksum') is missing"), tensors,
                     {METADATA_KEY: text}, durable=False)
    _edited(vector("future_major.statefmt", "format_version 2.0", "format_version 2.0 is not supported"),
            lambda d, t: d.update(format_version="2.0"))
    _write(vector("metadata_not_json.statefmt", "statefmt metadata that is not JSON",
                  "statefmt metadata is not valid JSON"), "{'layers': ", _document(_lstm_state())[1])
    _edited(vector("units_lie.statefmt", "metadata says 4 units, tensors have 3", "metadata says [1, 2, 4] float32"),
            lambda d, t: d["layers"][0].update(units=4))
    _edited(vector("batch_lie.statefmt", "metadata says batch 5, tensors have 2", "metadata says [1, 5, 3] float32"),
            lambda d, t: d.update(batch_size=5, stream_ids=["a", "b", "c", "d", "e"]))
    _edited(vector("dtype_lie.statefmt", "metadata says float64, tensors are float32", "metadata says [1, 2, 3] float64"),
            lambda d, t: d["layers"][0].update(dtype="float64"))
    _edited(vector("unknown_kind.statefmt", "kind 'transformer'", "kind: 'transformer' is not one of"),
            lambda d, t: d["layers"][0].update(kind="transformer"))
    _edited(vector("duplicate_names.statefmt", "two layers named 'encoder'", "duplicate layer names: 'encoder'"),
            lambda d, t: (d["layers"].append({**d["layers"][0]}),
                          t.update({"layers.1.h": t["layers.0.h"], "layers.1.c": t["layers.0.c"]})))
    _edited(vector("stream_count.statefmt", "3 stream ids for a batch of 2", "stream_ids: expected 2 (batch_size), found 3"),
            lambda d, t: d.update(stream_ids=["a", "b", "c"]))
    _edited(vector("gru_projection.statefmt", "proj_units on a GRU", "proj_units: only an LSTM may project"),
            lambda d, t: (d["layers"][0].update(kind="gru", proj_units=2), d["layers"][0]["checksums"].pop("c"),
                          t.pop("layers.0.c")))
    _edited(vector("missing_tensor.statefmt", "the LSTM's c tensor is absent", "tensor `layers.0.c` is missing"),
            lambda d, t: t.pop("layers.0.c"))
    _edited(vector("extra_tensor.statefmt", "a tensor no layer describes", "tensors not described by the metadata: extra"),
            lambda d, t: t.update(extra=np.zeros(2, "float32")))
    _edited(vector("checksum.statefmt", "one bit of h flipped after the checksum was taken", "checksum mismatch"),
            lambda d, t: t.update({"layers.0.h": _flip_bit(t["layers.0.h"])}))
    for value, name in ((np.nan, "nan"), (np.inf, "inf")):
        def poison(d, t, value=value):
            h = t["layers.0.h"].copy()
            h[0, 1, 2] = value
            d["layers"][0]["checksums"]["h"] = _container.checksum(h)
            t["layers.0.h"] = h
        _edited(vector(f"{name}.statefmt", f"{name.upper()} in a state", "non-finite values"), poison)

    (out / "index.json").write_text(json.dumps(verdicts, indent=2) + "\n")
    return verdicts


def _flip_bit(array: np.ndarray) -> np.ndarray:
    raw = array.copy().reshape(-1).view(np.uint8)
    raw[3] ^= 0x10
    return raw.view(array.dtype).reshape(array.shape)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
