"""Format 2.1's state kinds (statefmt.kinds): one table read by the schema, the document, the reader and the
signature; every kind saved, read whole and by stream, and refused with one line per misfit."""

import json
from pathlib import Path

import numpy as np
import pytest

import statefmt
from statefmt import (
    LayerSignature,
    LayerState,
    StateFormatError,
    StateMismatchError,
    StateSet,
    StateSignature,
    _document,
    cells,
    kinds,
)
from statefmt.adapters._common import fit

SCHEMA = json.loads((Path(statefmt.__file__).parent / "statefmt.schema.json").read_text())
SIZES = {"channels": 6, "conv_channels": 10, "conv_window": 3, "state_size": 4, "heads": 2, "head_dim": 3,
         "key_dim": 3, "value_dim": 2, "units": 5, "kv_heads": 1, "length": 3}
FINGERPRINT = {"implementation": "test", "config": "xxh3_64:" + "1" * 16, "weights": "xxh3_64:" + "2" * 16}


def layer(kind, batch=3, name=None, dtype="float32", seed=0, window=None, **sizes):
    rng = np.random.default_rng(seed)
    sizes = {**SIZES, **sizes}
    arrays = {tensor: rng.standard_normal((batch, *(sizes[a] for a in axes[1:]))).astype(dtype)
              for tensor, axes in kinds.KINDS_2_1[kind].tensors}
    return LayerState(name or kind, kind, window=window, **arrays)


def states(*kinds_, batch=3, **metadata):
    return StateSet([layer(k, batch, seed=i) for i, k in enumerate(kinds_)],
                    stream_ids=[f"session-{i}" for i in range(batch)], metadata=metadata)


def test_the_schema_is_the_table():
    defs = SCHEMA["$defs"]
    assert tuple(defs["stateKind"]["enum"]) == cells.STATE_KINDS
    for kind, entry in kinds.KINDS_2_1.items():
        dims = defs[f"dims.{kind}"]
        assert tuple(dims["required"]) == entry.dims + entry.settings
        assert {d for d, rule in dims["properties"].items() if rule["$ref"] == "#/$defs/dim0"} == set(entry.zero)
    assert (Path(statefmt.__file__).parents[1] / "spec" / "statefmt.schema.json").read_text() == \
        (Path(statefmt.__file__).parent / "statefmt.schema.json").read_text()


@pytest.mark.parametrize("kind", kinds.KINDS_2_1)
def test_each_kind_round_trips_whole_and_by_stream(tmp_path, kind):
    original = StateSet(
        [layer(kind), LayerState("lstm", "lstm", h=np.ones((1, 3, 2), "float32"), c=np.ones((1, 3, 2), "float32"))],
        stream_ids=["a", "b", "c"], metadata={"tokens": 11, "compute_dtype": "float32", "model": FINGERPRINT})
    path = tmp_path / "s.statefmt"
    statefmt.save(original, path)
    statefmt.validate(path)
    read = statefmt.load(path)
    assert json.loads(statefmt._container.Container(statefmt._source.open_source(path)).metadata["statefmt"])[
        "format_version"] == "2.1"
    assert {k: read.metadata[k] for k in ("tokens", "compute_dtype", "model")} == \
        {"tokens": 11, "compute_dtype": "float32", "model": FINGERPRINT}
    for name in kinds.KINDS_2_1[kind].names:
        np.testing.assert_array_equal(read[kind][name], original[kind][name])
    picked = statefmt.load(path, streams=["c", "a"])
    assert picked.stream_ids == ("c", "a")
    for got, want in zip(picked, original.rows(["c", "a"])):
        for name in got.state_names:
            np.testing.assert_array_equal(got[name], want[name])
    assert read[kind].dims == original[kind].dims
    assert StateSignature.of(read).check(original) == []


def test_a_classic_file_is_still_written_as_2_0(tmp_path):
    statefmt.save(StateSet([LayerState("g", "gru", h=np.zeros((1, 2, 3), "float32"))]), tmp_path / "g.statefmt")
    metadata = statefmt._container.Container(statefmt._source.open_source(tmp_path / "g.statefmt")).metadata
    assert json.loads(metadata["statefmt"])["format_version"] == "2.0"


@pytest.mark.parametrize(("build", "message"), [
    (lambda: LayerState("x", "mamba2", conv=np.zeros((2, 4, 3), "float32")), "missing ssm"),
    (lambda: LayerState("x", "mamba", conv=np.zeros((2, 4, 3), "float32"), ssm=np.zeros((2, 5, 8), "float32")),
     "ssm: channels: expected 4"),
    (lambda: LayerState("x", "rglru", conv=np.zeros((2, 4, 3), "float32"), rg_lru=np.zeros((2, 4), "float64")),
     "share one dtype"),
    (lambda: LayerState("x", "rglru", conv=np.zeros((2, 4, 3), "float32"), rg_lru=np.zeros((2, 4), "float32"),
                        window=3), "window applies to attention layers only"),
    (lambda: layer("attention", window=2), "a sliding window of 2 keeps at most 2 positions, found 3"),
    (lambda: layer("mamba2", heads=0), "heads must be at least 1"),
    (lambda: LayerState("x", "lstm", h=np.zeros((1, 2, 3), "float32"), c=np.zeros((1, 2, 3), "float32"), conv=1),
     "found conv"),
])
def test_malformed_modern_layers_are_refused(build, message):
    with pytest.raises(StateFormatError, match=message):
        build()


def test_a_modern_layer_has_dims_not_units():
    with pytest.raises(StateMismatchError, match="mamba2 layer: it has dims"):
        layer("mamba2").units  # noqa: B018


def test_every_misfit_is_one_line_through_the_core():
    """Another kind, units, heads, window, dtype and model: each named with layer, field, expected, found."""
    expected = StateSignature([
        LayerSignature("mamba2", dims={"heads": 4, "head_dim": 3, "state_size": 4}, name="a"),
        LayerSignature("attention", dims={"kv_heads": 1, "head_dim": 3, "window": 8}, name="b"),
        LayerSignature("gated_deltanet", dims={"heads": 2}, name="c"),
        LayerSignature("gru", 5, name="d"),
    ], dtype="bfloat16", model=FINGERPRINT)
    other = {**FINGERPRINT, "config": "xxh3_64:" + "3" * 16}
    found = StateSet([layer("mamba2", name="a"), layer("attention", name="b"), layer("mamba", name="c"),
                      LayerState("d", "gru", h=np.zeros((1, 3, 4), "float32"))], metadata={"model": other})
    with pytest.raises(StateMismatchError) as error:
        fit(found, expected, downcast=False)
    assert error.value.problems == [
        f"model: config: expected {FINGERPRINT['config']}, found {other['config']} (a state of a model with another "
        "configuration)",
        "layer 0 'a': heads: expected 4, found 2",
        "layer 0 'a': dtype: expected bfloat16 or narrower, found float32",
        "layer 1 'b': window: expected 8, found None",
        "layer 1 'b': dtype: expected bfloat16 or narrower, found float32",
        "layer 2 'c': kind: expected gated_deltanet, found mamba",
        "layer 2 'c': dtype: expected bfloat16 or narrower, found float32",
        "layer 3 'd': units: expected 5, found 4",
        "layer 3 'd': dtype: expected bfloat16 or narrower, found float32",
    ]


def test_a_narrower_state_goes_in_and_a_wider_one_is_not_cast_down():
    signature = StateSignature.of(states("mamba2"), dtype="float32")
    small = states("mamba2").astype("bfloat16")
    assert fit(small, signature, downcast=False) is small  # bfloat16 into float32: exact
    with pytest.raises(StateMismatchError, match="dtype: expected bfloat16 or narrower, found float32"):
        fit(states("mamba2"), StateSignature.of(small, dtype="bfloat16"), downcast=False)


def test_fingerprints_of_another_implementation_are_not_compared():
    signature = StateSignature.of(states("rwkv7"), dtype="float32")
    signature = StateSignature(signature.layers, signature.batch_size, "float32", FINGERPRINT)
    elsewhere = states("rwkv7", model={"implementation": "rwkv", "weights": "xxh3_64:" + "9" * 16})
    assert signature.check(elsewhere) == []
    same = states("rwkv7", model={**FINGERPRINT, "weights": "xxh3_64:" + "9" * 16})
    assert signature.check(same) == [f"model: weights: expected {FINGERPRINT['weights']}, found xxh3_64:"
                                     f"{'9' * 16} (a state of other weights)"]


def test_a_file_is_checked_against_a_signature_without_its_data(tmp_path):
    path = tmp_path / "s.statefmt"
    statefmt.save(states("mamba2", "attention", model=FINGERPRINT), path)
    wrong = StateSignature([LayerSignature("mamba2", dims={"state_size": 16}), LayerSignature("attention", dims={})],
                           model={**FINGERPRINT, "weights": "xxh3_64:" + "0" * 16})
    with pytest.raises(StateMismatchError) as error:
        statefmt.validate(path, against=wrong)
    assert len(error.value.problems) == 2 and "state_size: expected 16, found 4" in str(error.value)


def test_signatures_of_modern_kinds_round_trip_json():
    signature = StateSignature.of(states("mlstm", "attention", "rwkv4"), batch_size=None, dtype="float32")
    assert StateSignature.from_json(signature.to_json()) == signature
    with pytest.raises(StateFormatError, match="a mamba2 layer has sizes"):
        LayerSignature("mamba2", dims={"units": 3})
    with pytest.raises(StateFormatError, match="dims and dtypes apply to modern kinds"):
        LayerSignature("gru", 3, dims={"heads": 1})


def test_broadcast_and_astype_keep_the_stream_axis():
    one = states("mamba2", "attention", batch=1)
    wide = fit(one, StateSignature.of(one, batch_size=4), broadcast=True)
    assert wide.batch_size == 4 and wide["attention"]["keys"].shape[0] == 4
    assert one.astype("bfloat16")["mamba2"].dtype == "bfloat16"


def test_the_document_refuses_session_fields_on_weights(tmp_path):
    weights = statefmt.WeightSet([statefmt.LayerWeights("g", "gru", W=np.zeros((1, 6, 1), "float32"),
                                                        R=np.zeros((1, 6, 2), "float32"),
                                                        Wb=np.zeros((1, 6), "float32"),
                                                        Rb=np.zeros((1, 6), "float32"))])
    with pytest.raises(StateFormatError, match="tokens: describe a state"):
        statefmt.save(weights, tmp_path / "w.statefmt", metadata={"tokens": 3})
    assert _document.FORMAT_VERSION == "2.1"
