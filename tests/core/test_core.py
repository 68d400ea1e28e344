"""The numpy core: building, saving, loading, selecting and validating states and weights."""

import json
import os
import stat

import numpy as np
import pytest
from builders import DTYPES, _dtype, assert_same, make_states, make_weights, one_gru
from safetensors.numpy import load_file

import statefmt
from statefmt import LayerSignature, LayerState, LayerWeights, StateSet, StateSignature, WeightSet


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_load_round_trip(tmp_path, dtype):
    states = make_states(dtype)
    statefmt.save(states, tmp_path / "s.statefmt", metadata={"user": {"run": 7}, "source": {"framework": "numpy"}})
    back = statefmt.load(tmp_path / "s.statefmt")
    assert_same(states, back)
    assert back.metadata["user"] == {"run": 7} and back.metadata["source"] == {"framework": "numpy"}
    assert back.metadata["created_by"] == f"statefmt {statefmt.__version__}"


def test_layer_properties():
    layer = make_states()["enc"]
    assert (layer.kind, layer.units, layer.proj_units, layer.directions, layer.batch_size, layer.state_names) == \
           ("lstm", 5, 3, 2, 4, ("h", "c"))
    assert make_states()["head"].proj_units is None and make_states()["head"].state_names == ("h",)
    with pytest.raises(statefmt.StateMismatchError, match="has states h, not 'c'"):
        make_states()["head"]["c"]


def test_plain_safetensors_readers_read_the_file(tmp_path):
    states = make_states()
    statefmt.save(states, tmp_path / "s.statefmt")
    tensors = load_file(tmp_path / "s.statefmt")
    assert sorted(tensors) == ["checksums", "layers.0.c", "layers.0.h", "layers.1.h", "layers.2.h",
                               "stream_ids.buckets", "stream_ids.bytes", "stream_ids.index", "stream_ids.offsets"]
    np.testing.assert_array_equal(tensors["layers.1.h"], states["dec/gru 1"]["h"])


def test_same_state_same_bytes(tmp_path):
    statefmt.save(make_states(), tmp_path / "a.statefmt")
    statefmt.save(make_states(), tmp_path / "b.statefmt")
    assert (tmp_path / "a.statefmt").read_bytes() == (tmp_path / "b.statefmt").read_bytes()


@pytest.mark.parametrize("streams, rows", [(["stream-2"], [2]), ([3, 0], [3, 0]), (["stream-1", 2, -1], [1, 2, 3]),
                                           ([], [])])
def test_load_selected_streams(tmp_path, streams, rows):
    states = make_states()
    statefmt.save(states, tmp_path / "s.statefmt")
    part = statefmt.load(tmp_path / "s.statefmt", streams=streams)
    assert part.stream_ids == tuple(f"stream-{r}" for r in rows)
    assert_same(states.rows(rows), part)


@pytest.mark.parametrize("streams, message", [(["nope"], "no stream with id 'nope'"), ([4], "out of range"),
                                              ([1, 1], "more than once")])
def test_load_bad_streams(tmp_path, streams, message):
    statefmt.save(make_states(), tmp_path / "s.statefmt")
    with pytest.raises(statefmt.StateMismatchError, match=message):
        statefmt.load(tmp_path / "s.statefmt", streams=streams)


def test_streams_by_id_need_ids(tmp_path):
    statefmt.save(make_states(stream_ids=False), tmp_path / "s.statefmt")
    with pytest.raises(statefmt.StateMismatchError, match="no stream_ids"):
        statefmt.load(tmp_path / "s.statefmt", streams=["a"])


def test_stream_ids_added_to_an_exported_state(tmp_path):
    plain = make_states(stream_ids=False)
    named = plain.with_stream_ids([f"s{i}" for i in range(plain.batch_size)])
    assert named.layers == plain.layers and plain.stream_ids is None
    statefmt.save(named, tmp_path / "s.statefmt")
    assert statefmt.load(tmp_path / "s.statefmt", streams=["s1"]).stream_ids == ("s1",)
    with pytest.raises(statefmt.StateFormatError, match=f"stream_ids: expected {plain.batch_size} unique strings"):
        plain.with_stream_ids(["only-one"])


def test_select_layers():
    states = make_states()
    picked = states.select(["head", 0])
    assert [x.name for x in picked.layers] == ["head", "enc"] and picked.stream_ids == states.stream_ids
    assert states.select("dec/gru 1").layers == (states["dec/gru 1"],)
    with pytest.raises(statefmt.StateMismatchError, match="no layer named 'x'; the layers are 'enc'"):
        states.select(["x"])
    with pytest.raises(statefmt.StateMismatchError, match="no layer at position 5"):
        states.select([5])


@pytest.mark.parametrize("build, message", [
    (lambda h: LayerState("a", "lstm", h=h), "an LSTM needs both h and c"),
    (lambda h: LayerState("a", "gru", h=h, c=h), "a GRU has h only"),
    (lambda h: LayerState("a", "mlp", h=h), "kind: expected one of lstm, gru, rnn, mamba, .*, found 'mlp'"),
    (lambda h: LayerState("a", "rnn", h=h[0]),
     r"expected shape \[directions \(1 or 2\), batch, units\], found \[2, 3\]"),
    (lambda h: LayerState("a", "rnn", h=h.astype("int32")), "unsupported dtype int32"),
    (lambda h: LayerState("", "rnn", h=h), "non-empty string"),
    (lambda h: LayerState("a", "lstm", h=np.zeros((1, 2, 4), "float32"), c=h), "h is wider than c"),
    (lambda h: StateSet([LayerState("a", "rnn", h=h), LayerState("a", "rnn", h=h)]), "duplicate layer names: 'a'"),
    (lambda h: StateSet([LayerState("a", "rnn", h=h), LayerState("b", "rnn", h=h[:, :1])]), "disagree on batch size"),
    (lambda h: StateSet([LayerState("a", "rnn", h=h)], stream_ids=["x", "x"]),
     "2 unique strings, found 2 \\(1 unique\\)"),
    (lambda h: StateSet([]), "at least one layer"),
])
def test_malformed_in_memory_states(build, message):
    with pytest.raises(statefmt.StateFormatError, match=message):
        build(np.zeros((1, 2, 3), "float32"))


def test_nonfinite_state_is_never_written(tmp_path):
    path = tmp_path / "s.statefmt"
    statefmt.save(make_states(), path)
    before = path.read_bytes()
    poisoned = make_states()
    poisoned["enc"]["c"][1, 2, 0] = np.nan
    with pytest.raises(statefmt.StateFormatError, match=r"layer 0 'enc': c: 1 non-finite values"):
        statefmt.save(poisoned, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["s.statefmt"]  # no temporary left behind
    with pytest.raises(statefmt.StateFormatError, match="non-finite"):
        statefmt.validate(poisoned)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype, bits", [("bfloat16", 0xFFFF), ("bfloat16", 0x7F81), ("float16", 0xFFFF)])
def test_every_nan_pattern_is_refused_without_a_warning(dtype, bits):
    """Found by `python -m fuzz.coverage`: ml_dtypes' isfinite warned on some bfloat16 NaNs."""
    h = np.zeros((1, 2, 3), np.uint16)
    h[0, 1, 2] = bits
    with pytest.raises(statefmt.StateFormatError, match="h: 1 non-finite values"):
        statefmt.validate(StateSet([LayerState("gru", "gru", h=h.view(_dtype(dtype)))]))


def test_unknown_metadata_field_is_refused(tmp_path):
    with pytest.raises(statefmt.StateFormatError,
                       match="unknown metadata fields \\['owner'\\]; free-form data belongs under 'user'"):
        statefmt.save(make_states(), tmp_path / "s.statefmt", metadata={"owner": "me"})


def test_save_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    path = tmp_path / "s.statefmt"
    statefmt.save(make_states(), path)
    os.chmod(path, 0o640)
    statefmt.save(make_states(), path, durable=False)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_validate_against_signature_reports_every_mismatch(tmp_path):
    path = tmp_path / "s.statefmt"
    statefmt.save(make_states(), path)
    signature = StateSignature([LayerSignature("lstm", 5, directions=1), LayerSignature("lstm", 6)],
                               batch_size=8, dtype="float64")
    with pytest.raises(statefmt.StateMismatchError) as error:
        statefmt.validate(path, against=signature)
    assert error.value.problems == [
        "layer count: expected 2, found 3 (StateSet.select picks the layers a target holds)",
        "layer 0 'enc': directions: expected 1, found 2",
        "layer 0 'enc': proj_units: expected None, found 3",
        "layer 0 'enc': dtype: expected float64, found float32",
        "layer 1 'dec/gru 1': kind: expected lstm, found gru",
        "layer 1 'dec/gru 1': dtype: expected float64, found float32",
        "batch size: expected 8, found 4",
    ]
    assert str(error.value).startswith(f"{path}: 7 problems: layer count")
    assert statefmt.validate(path, against=StateSignature.of(make_states())) is None


def test_broadcast_accepts_a_batch_of_one():
    signature = StateSignature.of(make_states(batch=8))
    one = make_states(batch=1)
    assert signature.check(one) == ["batch size: expected 8, found 1 (broadcast=True starts every stream from it)"]
    assert signature.check(one, broadcast=True) == []
    assert signature.check(make_states(batch=2), broadcast=True) == ["batch size: expected 8, found 2"]


def test_signature_json_round_trip():
    signature = StateSignature.of(make_states(), dtype="float32")
    assert StateSignature.from_json(signature.to_json()) == signature
    assert json.loads(signature.to_json())["statefmt_signature"] == "1.0"
    with pytest.raises(statefmt.StateFormatError, match="not a statefmt signature"):
        StateSignature.from_json("[1, 2]")
    with pytest.raises(statefmt.StateFormatError, match=r"expected a 1\.x version, found '2\.0'"):
        StateSignature.from_json('{"statefmt_signature": "2.0", "layers": []}')


def test_weights_round_trip(tmp_path):
    weights = make_weights()
    statefmt.save(weights, tmp_path / "w.statefmt")
    back = statefmt.load_weights(tmp_path / "w.statefmt")
    for x, y in zip(weights.layers, back.layers):
        assert (x.name, x.kind, x.units, x.input_size, x.proj_units, x.directions, x.activation,
                x.recurrent_activation, x.linear_before_reset) == \
               (y.name, y.kind, y.units, y.input_size, y.proj_units, y.directions, y.activation,
                y.recurrent_activation, y.linear_before_reset)
        for name in x.weight_names:
            np.testing.assert_array_equal(x[name], y[name])
    assert back["gru"].gate("R", "n").shape == (3, 3)
    np.testing.assert_array_equal(back["gru"].gate("Wb", "z"), weights["gru"]["Wb"][0, 3:6])


def test_state_and_weights_files_are_told_apart(tmp_path):
    statefmt.save(make_weights(), tmp_path / "w.statefmt")
    statefmt.save(make_states(), tmp_path / "s.statefmt")
    with pytest.raises(statefmt.StateFormatError,
                       match=r"holds weights, not a state; read it with statefmt\.load_weights"):
        statefmt.load(tmp_path / "w.statefmt")
    with pytest.raises(statefmt.StateFormatError, match="holds a state, not weights"):
        statefmt.load_weights(tmp_path / "s.statefmt")


@pytest.mark.parametrize("kwargs, message", [
    (dict(W=np.zeros((1, 7, 3))), r"W: expected \[directions, 4\*units, input_size\]"),
    (dict(R=np.zeros((1, 8, 3))), r"R: expected shape \[1, 8, 2\], found \[1, 8, 3\]"),
    (dict(P=np.zeros((1, 1, 2))), r"R: expected shape \[1, 8, 1\], found \[1, 8, 2\]"),
    (dict(Rb=np.zeros((1, 8), "float16")), "tensors disagree on dtype: float16, float64"),
])
def test_malformed_weights(kwargs, message):
    arrays = dict(W=np.zeros((1, 8, 3)), R=np.zeros((1, 8, 2)), Wb=np.zeros((1, 8)), Rb=np.zeros((1, 8)))
    with pytest.raises(statefmt.StateFormatError, match=message):
        LayerWeights("l", "lstm", **{**arrays, **kwargs})


def test_a_huge_bad_value_gives_a_short_problem_line(tmp_path):
    import generate  # the conformance vectors' way of writing a file that breaks a rule (spec/vectors)

    path = tmp_path / "s.statefmt"
    path.write_bytes(generate.build(generate._lstm, lambda document, tensors: document.update(user=["x" * 100_000])))
    with pytest.raises(statefmt.StateFormatError) as error:
        statefmt.load(path)
    assert error.value.problems[0].startswith("user: [") and len(error.value.problems[0]) < 300


def test_nan_in_weights_is_refused_in_the_words_of_weights(tmp_path):
    weights = make_weights()
    zeros = {key: np.zeros(shape, "float32") for key, shape in (("R", (1, 2, 2)), ("Wb", (1, 2)), ("Rb", (1, 2)))}
    poisoned = WeightSet([LayerWeights("rnn", "rnn", W=np.full((1, 2, 3), np.nan, "float32"), **zeros),
                          *weights.layers[:1]])
    for action in (lambda: statefmt.validate(poisoned), lambda: statefmt.save(poisoned, tmp_path / "w.statefmt")):
        with pytest.raises(statefmt.StateFormatError) as error:
            action()
        (problem,) = error.value.problems
        assert problem.startswith("layer 0 'rnn': W: 6 non-finite values (NaN or Inf)")
        assert "weights" in problem and "state" not in problem


# --- byte order and numpy strings come in as they are meant -----------------------------------------------------------

def test_big_endian_state_round_trips(tmp_path):
    expected = np.linspace(-1.5, 2.5, 24).reshape(1, 4, 6)  # float64, native: the independent truth
    swapped = expected.astype(">f4")
    statefmt.save(one_gru(swapped, ["a", "b", "c", "d"]), tmp_path / "be.statefmt")
    loaded = statefmt.load(tmp_path / "be.statefmt")[0]["h"]
    assert loaded.dtype.name == "float32"
    np.testing.assert_array_equal(loaded.astype(np.float64), expected.astype(np.float32).astype(np.float64))


def test_numpy_string_stream_ids_are_strings():
    ids = np.array(["pump-7", "pump-2"])
    states = one_gru(np.zeros((1, 2, 3), "f4"), ids)  # type: ignore[arg-type]
    assert states.stream_ids == ("pump-7", "pump-2")
    assert all(type(i) is str for i in states.stream_ids)
