"""The Keras 3 adapter's own cases, on the TensorFlow backend: stateful layers and load_into, nested models, mixed
precision, GRU reset_after=False and other options, StackedRNNCells, Keras' advice in refusals; a smoke run on the
JAX and torch backends. What every adapter keeps is in test_contract.py."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import functools
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import reference
from builders import largest_difference, random_states, through_file
from cli_check import assert_cli_reports

import statefmt
from statefmt import LayerState, LayerWeights, StateError, StateMismatchError, StateSet, WeightSet

keras = pytest.importorskip("keras")
ka = pytest.importorskip("statefmt.adapters.keras")
L = keras.layers

BATCH, INPUT, UNITS, UNITS2, STEPS, SPLIT = 3, 5, 4, 6, 8, 5
KINDS = ("lstm", "gru", "rnn")
LAYER_CLASSES = {"lstm": L.LSTM, "gru": L.GRU, "rnn": L.SimpleRNN}
# variants of a kind: the Keras options beyond the defaults
VARIANTS = {"gru_reset_before": ("gru", {"reset_after": False}), "lstm_no_bias": ("lstm", {"use_bias": False}),
            "rnn_relu": ("rnn", {"activation": "relu"}), "gru_no_bias": ("gru", {"use_bias": False})}


def make_layer(kind, units, dtype="float32", stateful=False, **options):
    kind, variant = VARIANTS.get(kind, (kind, {}))
    options = {"return_sequences": True, "stateful": stateful, "dtype": dtype,
               "recurrent_initializer": "glorot_uniform",  # orthogonal has no bfloat16 kernel on CPU
               "bias_initializer": keras.initializers.RandomNormal(stddev=0.5), **variant, **options}
    if kind == "lstm":
        options["unit_forget_bias"] = False  # else the forget-gate bias starts at exactly 1
    return LAYER_CLASSES[kind](units, **options)


class Net:
    """Recurrent layers in a stack, run eagerly with `layer(x, initial_state=...)`; `model` is the target.

    layout: "single" (one layer), "stack" (two layers, units 4 then 6), "bidir" (a Bidirectional).
    """

    def __init__(self, kind, layout, dtype="float32", seed=0, **options):
        keras.utils.set_random_seed(seed)
        if layout == "bidir":
            self.layers = [L.Bidirectional(make_layer(kind, UNITS, dtype, return_state=True, **options),
                                           dtype=dtype)]
        else:
            sizes = (UNITS, UNITS2) if layout == "stack" else (UNITS,)
            self.layers = [make_layer(kind, units, dtype, return_state=True, **options) for units in sizes]
        self.dtype = dtype
        inputs = keras.Input((None, INPUT), dtype=dtype)
        x, finals = inputs, []
        for layer in self.layers:
            x, *state = layer(x)
            finals += state
        self.model = keras.Model(inputs, [x, *finals])

    def run(self, x, init=None):
        """(last layer's output sequence, [each layer's final state list]) from `init` (zeros when None).

        `init` is what `initial_state(states, self.model)` returns."""
        x = keras.ops.convert_to_tensor(x, self.dtype)
        init = None if init is None else per_layer(init, self.model)
        finals = []
        for index, layer in enumerate(self.layers):
            x, *state = layer(x, initial_state=None if init is None else init[index])
            finals.append(state)
        return x, finals


@functools.cache
def net(kind, layout, dtype="float32", seed=0):
    """Built once per module; tests that load weights into a net build their own."""
    return Net(kind, layout, dtype, seed)


def stateful_model(kind, layout, seed=0, batch=BATCH):
    """A stateful functional model with a static batch; "nested" puts the first layer in a nested Sequential."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(batch_shape=(batch, None, INPUT))
    if layout == "bidir":
        outputs = L.Bidirectional(make_layer(kind, UNITS, stateful=True), name="bi")(inputs)
    elif layout == "single":
        outputs = make_layer(kind, UNITS, stateful=True, name="first")(inputs)
    else:
        first = make_layer(kind, UNITS, stateful=True, name="first")
        if layout == "nested":
            first = keras.Sequential([first], name="encoder")
        outputs = make_layer(kind, UNITS2, stateful=True, name="second")(first(inputs))
    return keras.Model(inputs, outputs)


def inputs(seed=2, dtype="float32", batch=BATCH):
    return np.random.default_rng(seed).normal(size=(batch, STEPS, INPUT)).astype(dtype)


def per_layer(result, model):
    """A model-level `initial_state` result as one list per recurrent layer (one layer: its own list)."""
    return [result] if len(ka.signature(model).layers) == 1 else result


def flat(states):
    return [tensor for layer in states for tensor in layer]


# 1. a stateful model's states, and a layer's own list, round trip exactly

@pytest.mark.parametrize("layout", ["single", "stack", "nested", "bidir"])
@pytest.mark.parametrize("kind", KINDS)
def test_stateful_states_round_trip_exactly(kind, layout, tmp_path):
    model = stateful_model(kind, layout)
    model(inputs())
    states = through_file(ka.export(model), tmp_path)
    variables = [v for layer in ka._layers(model) for v in layer.variables()]
    back = flat(per_layer(ka.initial_state(states, model, strict=True), model))
    assert len(back) == len(variables)
    for found, variable in zip(back, variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(found), keras.ops.convert_to_numpy(variable))
    assert np.abs(states[0]["h"]).max() > 1e-3  # a real state, not zeros


def test_a_layer_target_takes_and_gives_its_own_list():
    target = net("lstm", "bidir")
    layer = target.layers[0]
    _, (finals,) = target.run(inputs())
    states = ka.export(layer, finals)
    assert (states[0].directions, states[0].units, states[0].batch_size) == (2, UNITS, BATCH)
    assert states.metadata["source"]["model"] == layer.name
    back = ka.initial_state(states, layer)
    assert len(back) == 4  # fwd_h, fwd_c, bwd_h, bwd_c
    for found, expected in zip(back, finals):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(found), keras.ops.convert_to_numpy(expected))


def test_signature_names_nested_layers_by_path_and_reports_batch_and_dtype():
    sig = ka.signature(stateful_model("gru", "nested"))
    assert [(layer.name, layer.kind, layer.units, layer.directions) for layer in sig.layers] == [
        ("encoder/first", "gru", UNITS, 1), ("second", "gru", UNITS2, 1)]
    assert (sig.batch_size, sig.dtype) == (BATCH, "float32")
    sig = ka.signature(net("lstm", "bidir").model)  # not stateful: no batch fixed
    assert (sig.layers[0].directions, sig.batch_size) == (2, None)


def test_initial_state_places_tensors_on_the_device_given():
    target = net("rnn", "single")
    (h,) = ka.initial_state(random_states(ka.signature(target.model)), target.model, device="cpu:0")
    assert "CPU:0" in h.device


# 2. a sequence in two chunks, state handed over through a file, equals one run (other kinds: test_contract.py)

@pytest.mark.parametrize("layout", ["single", "stack"])
def test_a_reset_before_gru_in_two_chunks_through_a_file_equals_one_run(layout, tmp_path):
    target = net("gru_reset_before", layout)
    x = inputs()
    whole, whole_finals = target.run(x)
    _, finals = target.run(x[:, :SPLIT])
    states = through_file(ka.export(target.model, finals), tmp_path)
    second, second_finals = target.run(x[:, SPLIT:], ka.initial_state(states, target.model))
    expected = keras.ops.convert_to_numpy(whole)[:, SPLIT:]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(second), expected, rtol=0, atol=1e-5)
    assert largest_difference(flat(second_finals), flat(whole_finals)) < 1e-5
    cold, _ = target.run(x[:, SPLIT:])
    assert np.max(np.abs(keras.ops.convert_to_numpy(cold) - expected)) > 1e-3


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_precision_hands_over_the_float16_state_and_stateful_float32(kind, tmp_path, mixed_float16):
    """Under mixed_float16 a layer computes, and returns its states, in float16; a stateful
    layer keeps float32 state variables. The file holds each as it is, and strict fits."""
    x = inputs()
    layer = make_layer(kind, UNITS, dtype=None, return_state=True)  # dtype=None: the global policy
    whole = keras.ops.convert_to_numpy(layer(x)[0]).astype(np.float64)[:, SPLIT:]
    finals = layer(x[:, :SPLIT])[1:]
    states = through_file(ka.export(layer, finals), tmp_path)
    assert (states[0].dtype, ka.signature(layer).dtype) == ("float16", "float16")
    initial = ka.initial_state(states, layer, strict=True)
    second = keras.ops.convert_to_numpy(layer(x[:, SPLIT:], initial_state=initial)[0])
    np.testing.assert_allclose(second.astype(np.float64), whole, rtol=0, atol=2e-3)  # float16 arithmetic
    cold = keras.ops.convert_to_numpy(layer(x[:, SPLIT:])[0]).astype(np.float64)
    assert np.max(np.abs(cold - whole)) > 1e-2

    stateful = keras.Sequential([keras.Input(batch_shape=(BATCH, None, INPUT)),
                                 make_layer(kind, UNITS, dtype=None, stateful=True)])
    stateful(x[:, :SPLIT])
    exported = through_file(ka.export(stateful), tmp_path, "stateful.statefmt")
    assert (exported[0].dtype, ka.signature(stateful).dtype) == ("float32", "float32")
    ka.load_into(exported, stateful, strict=True)


# the stateful resume: today's model stops, tomorrow's fresh model continues

@pytest.mark.parametrize("layout", ["single", "nested", "bidir"])
@pytest.mark.parametrize("kind", KINDS)
def test_load_into_resumes_a_fresh_stateful_model(kind, layout, tmp_path):
    today = stateful_model(kind, layout)
    x = inputs()
    today(x[:, :SPLIT])
    exported = ka.export(today)
    snapshot = [np.array(layer[name]) for layer in exported for name in layer.state_names]
    statefmt.save(exported, tmp_path / "today.statefmt")
    expected = keras.ops.convert_to_numpy(today(x[:, SPLIT:]))
    # the export is a copy: running on did not change it
    assert all(np.array_equal(a, layer[name]) for a, (layer, name) in
               zip(snapshot, [(layer, name) for layer in exported for name in layer.state_names]))
    tomorrow = stateful_model(kind, layout, seed=9)
    tomorrow.set_weights(today.get_weights())
    ka.load_into(statefmt.load(tmp_path / "today.statefmt"), tomorrow)
    resumed = keras.ops.convert_to_numpy(tomorrow(x[:, SPLIT:]))
    np.testing.assert_allclose(resumed, expected, rtol=0, atol=1e-5)
    cold = stateful_model(kind, layout, seed=9)  # same weights, states from zeros
    cold.set_weights(today.get_weights())
    assert np.max(np.abs(keras.ops.convert_to_numpy(cold(x[:, SPLIT:])) - expected)) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_one_stream_of_a_batch_model_resumes_in_a_batch_1_model(kind, tmp_path):
    """Trained and run at batch 3, one stream continued alone tomorrow, picked by its id from the file."""
    today = stateful_model(kind, "stack")
    x = inputs()
    today(x[:, :SPLIT])
    statefmt.save(ka.export(today).with_stream_ids(["pump-a", "pump-b", "pump-c"]), tmp_path / "today.statefmt")
    expected = keras.ops.convert_to_numpy(today(x[:, SPLIT:]))
    alone = stateful_model(kind, "stack", seed=9, batch=1)
    alone.set_weights(today.get_weights())
    one = statefmt.load(tmp_path / "today.statefmt", streams=["pump-b"])
    assert (one.batch_size, one.stream_ids) == (1, ("pump-b",))
    ka.load_into(one, alone)
    resumed = keras.ops.convert_to_numpy(alone(x[1:2, SPLIT:]))
    np.testing.assert_allclose(resumed[0], expected[1], rtol=0, atol=1e-5)
    assert np.max(np.abs(expected[0] - expected[1])) > 1e-3  # another stream's state would show


def test_load_into_refuses_a_batch_mismatch_and_broadcasts_one_stream(tmp_path):
    today = stateful_model("lstm", "stack")
    x = inputs()
    today(x[:, :SPLIT])
    states = through_file(ka.export(today), tmp_path)
    expected = keras.ops.convert_to_numpy(today(x[:, SPLIT:]))
    tomorrow = stateful_model("lstm", "stack", seed=9)
    tomorrow.set_weights(today.get_weights())
    with pytest.raises(StateMismatchError) as error:
        ka.load_into(states.rows([0, 1]), tomorrow)
    assert error.value.problems == ["batch size: expected 3, found 2"]
    with pytest.raises(StateMismatchError, match=r"batch size: expected 3, found 1 \(broadcast=True starts"):
        ka.load_into(states.rows([1]), tomorrow)
    ka.load_into(states.rows([1]), tomorrow, broadcast=True)  # three streams from stream 1
    resumed = keras.ops.convert_to_numpy(tomorrow(np.repeat(x[1:2, SPLIT:], BATCH, axis=0)))
    for row in range(BATCH):
        np.testing.assert_allclose(resumed[row], expected[1], rtol=0, atol=1e-5)
    assert np.max(np.abs(expected[0] - expected[1])) > 1e-3  # the rows did differ


# 3. weights: the exported neutral weights run by the numpy reference equal Keras

WEIGHT_CASES = [(variant, "single") for variant in VARIANTS] + [("gru_reset_before", "bidir")]  # others: contract


@pytest.mark.parametrize("kind, layout", WEIGHT_CASES)
def test_exported_weights_match_the_reference(kind, layout):
    target = net(kind, layout)
    weights = ka.export_weights(target.model)
    states = random_states(ka.signature(target.model))
    output, finals = target.run(inputs(), ka.initial_state(states, target.model))
    expected_output, expected = reference.run(weights, inputs(), states)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(output), expected_output, rtol=0, atol=1e-5)
    found = ka.export(target.model, finals)
    for found_layer, expected_layer in zip(found, expected):
        for name in found_layer.state_names:
            np.testing.assert_allclose(found_layer[name], expected_layer[name], rtol=0, atol=1e-5)
    zero_output, _ = reference.run(weights, inputs())
    assert np.max(np.abs(zero_output - expected_output)) > 1e-3  # the initial state mattered


def test_export_weights_records_the_keras_layout():
    gru, lstm = (ka.export_weights(net(kind, "single").model)[0] for kind in ("gru", "lstm_no_bias"))
    cell = net("gru", "single").layers[0].cell
    kernel, bias = (keras.ops.convert_to_numpy(v) for v in (cell.kernel, cell.bias))
    np.testing.assert_array_equal(gru.gate("W", "r"), kernel[:, UNITS:2 * UNITS].T)  # Keras z, r, h
    np.testing.assert_array_equal(gru.gate("W", "z"), kernel[:, :UNITS].T)
    np.testing.assert_array_equal(gru.gate("Rb", "n"), bias[1, 2 * UNITS:])
    assert gru.linear_before_reset and (gru.activation, gru.recurrent_activation) == ("tanh", "sigmoid")
    assert not np.any(lstm["Wb"]) and not np.any(lstm["Rb"])
    assert not ka.export_weights(net("gru_reset_before", "single").model)[0].linear_before_reset


@pytest.mark.parametrize("kind, layout", [("gru_reset_before", "single")])
def test_weights_through_a_file_into_a_fresh_model_give_identical_outputs(kind, layout, tmp_path):
    source = net(kind, layout)
    weights = through_file(ka.export_weights(source.model), tmp_path, "weights.statefmt")
    fresh = Net(kind, layout, seed=5)
    x, init = inputs(), ka.initial_state(random_states(ka.signature(source.model)), source.model)
    expected = keras.ops.convert_to_numpy(source.run(x, init)[0])
    assert np.max(np.abs(keras.ops.convert_to_numpy(fresh.run(x, init)[0]) - expected)) > 1e-3
    assert ka.import_weights(weights, fresh.model) is fresh.model
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fresh.run(x, init)[0]), expected)


def test_a_reset_after_gru_with_diagonal_candidate_loads_exactly_into_reset_before():
    source = ka.export_weights(net("gru", "single").model)[0]
    u = UNITS
    R, Rb = source["R"].copy(), source["Rb"].copy()
    R[0, 2 * u:] = np.diag(np.diag(R[0, 2 * u:]))  # r * (D h) == D (r * h) for a diagonal D
    Rb[0, 2 * u:] = 0
    weights = WeightSet([LayerWeights("gru", "gru", source["W"], R, source["Wb"], Rb)])
    target = Net("gru_reset_before", "single", seed=5)
    ka.import_weights(weights, target.model)
    states = random_states(ka.signature(target.model))
    output, _ = target.run(inputs(), ka.initial_state(states, target.model))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(output), reference.run(weights, inputs(), states)[0],
                               rtol=0, atol=1e-5)


# 4. every mismatch in a stateful model names the layer and the field

def mismatched(case):
    """A state that differs from stateful_model("lstm", "stack") in one field, or several."""
    rng = np.random.default_rng(3)

    def layer(name, kind="lstm", units=UNITS, directions=1, batch=BATCH, dtype="float32", proj=None):
        arrays = {"h": rng.normal(size=(directions, batch, proj or units)).astype(dtype)}
        if kind == "lstm":
            arrays["c"] = rng.normal(size=(directions, batch, units)).astype(dtype)
        return LayerState(name, kind, **arrays)

    second = layer("second", units=UNITS2, batch=2 if case == "batch size" else BATCH)
    first = {"layer count": layer("first"), "kind": layer("first", kind="gru"), "units": layer("first", units=5),
             "directions": layer("first", directions=2), "proj_units": layer("first", proj=3),
             "batch size": layer("first", batch=2), "dtype": layer("first", dtype="float16"),
             "all at once": layer("first", kind="gru", units=5, directions=2)}[case]
    return StateSet([first] if case == "layer count" else [first, second])


MISMATCHES = {
    "layer count": ["layer count: expected 2, found 1 (StateSet.select picks the layers a target holds)"],
    "kind": ["layer 0 'first': kind: expected lstm, found gru"],
    "units": ["layer 0 'first': units: expected 4, found 5"],
    "directions": ["layer 0 'first': directions: expected 1, found 2"],
    "proj_units": ["layer 0 'first': proj_units: expected None, found 3"],
    "batch size": ["batch size: expected 3, found 2"],
    "dtype": ["layer 0 'first': dtype: expected float32, found float16"],
    "all at once": ["layer 0 'first': kind: expected lstm, found gru", "layer 0 'first': units: expected 4, found 5",
                    "layer 0 'first': directions: expected 1, found 2"],
}


@functools.cache
def mismatch_target():
    return stateful_model("lstm", "stack")


@pytest.mark.parametrize("case", MISMATCHES)
def test_load_into_names_layer_and_field_of_a_mismatch(case):
    """initial_state and the CLI say the same of every adapter's target: test_contract.py."""
    with pytest.raises(StateMismatchError) as error:
        ka.load_into(mismatched(case), mismatch_target(), strict=True)
    assert error.value.problems == MISMATCHES[case]


def test_cli_accepts_a_state_exported_from_the_model(tmp_path):
    model = mismatch_target()
    assert ka.signature(model).batch_size == BATCH
    assert_cli_reports(ka.export(model), ka.signature(model), [], tmp_path)


# 5. refusals: whatever cannot be mapped exactly, or cannot be read, says why and what would work

def weights_of(kind, name="rec", **changes):
    """The weights of net(kind, "single") as layer `name`, with some arrays or settings changed."""
    layer = ka.export_weights(net(kind, "single").model)[0]
    arrays = {key: layer[key] for key in layer.weight_names}
    options = {"activation": layer.activation, "recurrent_activation": layer.recurrent_activation,
               "linear_before_reset": layer.linear_before_reset}
    for key, value in changes.items():
        (arrays if key in ("W", "R", "Wb", "Rb", "P") else options)[key] = value
    return WeightSet([LayerWeights(name, layer.kind, **arrays, **options)])


LOAD_REFUSALS = {
    "projection": (
        lambda: weights_of("lstm", P=np.ones((1, 3, UNITS), "float32"), R=np.ones((1, 4 * UNITS, 3), "float32")),
        "lstm",
        ["layer 0 'rec': proj_units: expected None, found 3; Keras layers have no projection of h: load them into a "
         "PyTorch LSTM with proj_size=3, or use weights without P"]),
    "reset before into reset after": (
        lambda: weights_of("gru_reset_before"), "gru",
        ["layer 0 'rec': linear_before_reset: the weights apply r before the recurrent matmul "
         "(linear_before_reset=False), the target after it; that is exact only when R_n is diagonal and Rb_n "
         "zero, not so in direction 0; build the GRU with reset_after=False"]),
    "reset after into reset before": (
        lambda: weights_of("gru"), "gru_reset_before",
        ["layer 0 'rec': linear_before_reset: the weights apply r after the recurrent matmul "
         "(linear_before_reset=True), the target before it; that is exact only when R_n is diagonal and Rb_n "
         "zero, not so in direction 0; build the GRU with reset_after=True (the Keras default)"]),
    "biases into use_bias=False": (
        lambda: weights_of("lstm"), "lstm_no_bias",
        ["layer 0 'rec': Wb and Rb: the weights have non-zero biases and the target has none; build the layer "
         "with use_bias=True"]),
    "activation": (
        lambda: weights_of("lstm", recurrent_activation="hard_sigmoid"), "lstm",
        ["layer 0 'rec': recurrent_activation: the weights use hard_sigmoid, the target uses sigmoid; "
         "build the layer with recurrent_activation='hard_sigmoid'"]),
}


@pytest.mark.parametrize("case", LOAD_REFUSALS)
def test_import_weights_refuses_with_keras_advice(case):
    weights, kind, expected = LOAD_REFUSALS[case]
    target = Net(kind, "single", seed=7)
    before = [keras.ops.convert_to_numpy(v) for v in target.model.weights]
    with pytest.raises(StateMismatchError) as error:
        ka.import_weights(weights(), target.model)
    assert error.value.problems == expected
    assert all(np.array_equal(a, keras.ops.convert_to_numpy(v)) for a, v in zip(before, target.model.weights))


def test_export_weights_records_activations_keras_has_and_others_may_refuse():
    keras.utils.set_random_seed(0)
    layer = L.LSTM(UNITS, recurrent_activation="hard_sigmoid")
    layer(inputs())
    weights = ka.export_weights(layer)
    assert (weights[0].activation, weights[0].recurrent_activation) == ("tanh", "hard_sigmoid")
    with pytest.raises(StateMismatchError, match="recurrent_activation: the weights use sigmoid, the target "
                                                 "uses hard_sigmoid; build the layer with "
                                                 "recurrent_activation='sigmoid'"):
        ka.import_weights(ka.export_weights(net("lstm", "single").model), layer)
    elu = L.SimpleRNN(UNITS, activation="elu")
    elu(inputs())
    with pytest.raises(StateMismatchError) as error:
        ka.export_weights(elu)
    assert error.value.problems == [f"layer 0 {elu.name!r}: activation: elu has no neutral name; the neutral layout "
                                    "knows tanh, sigmoid, relu, hard_sigmoid, linear"]


REFUSED_TARGETS = {
    "go_backwards": (
        lambda: L.GRU(UNITS, go_backwards=True), ka.export_weights,
        "go_backwards: direction 0 of the neutral layout runs forward and direction 1 backward; use "
        "go_backwards=False, or a Bidirectional for both directions"),
    "conv lstm": (
        lambda: L.ConvLSTM1D(2, 3), ka.signature,
        "ConvLSTM1D of ConvLSTMCell has no neutral layout; statefmt maps an LSTM, GRU or SimpleRNN"),
    "unequal bidirectional": (
        lambda: L.Bidirectional(L.GRU(UNITS), backward_layer=L.GRU(UNITS2, go_backwards=True)), ka.signature,
        "the forward and backward layers differ in units (4 vs 6); the neutral layout stacks the directions"),
    "mixed bidirectional": (
        lambda: L.Bidirectional(L.GRU(UNITS), backward_layer=L.LSTM(UNITS, go_backwards=True)), ka.signature,
        "Bidirectional of GRUCell and LSTMCell has no neutral layout"),
}


@pytest.mark.parametrize("case", REFUSED_TARGETS)
def test_targets_without_a_neutral_layout_are_refused(case):
    build, verb, expected = REFUSED_TARGETS[case]
    layer = build()
    if case != "conv lstm":
        layer(inputs())
    with pytest.raises(StateMismatchError) as error:
        verb(layer)
    assert expected in str(error.value) and str(error.value).startswith("layer 0 ")
    assert ("with the same cell both ways" in str(error.value)) == (case == "mixed bidirectional")


class MinimalCell(L.Layer):
    """A cell statefmt has no layout for."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units, self.state_size = units, units

    def call(self, x, states):
        return x, states


def test_a_stack_with_a_cell_without_neutral_layout_is_refused_by_its_cell():
    layer = L.RNN(L.StackedRNNCells([L.LSTMCell(UNITS), MinimalCell(UNITS, name="minimal")]), name="rnn")
    with pytest.raises(StateMismatchError) as error:
        ka.signature(layer)
    assert str(error.value) == (
        "layer 1 'rnn/minimal': RNN(StackedRNNCells) cell 1, a MinimalCell, has no neutral layout; statefmt maps an "
        "LSTM, GRU or SimpleRNN (or RNN of an LSTMCell, GRUCell or SimpleRNNCell, or of StackedRNNCells of them), or "
        "a Bidirectional of one")


def test_a_custom_layer_hiding_a_recurrent_layer_is_refused():
    class Wrapper(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = L.LSTM(UNITS)

        def call(self, x):
            return self.inner(x)

    inputs_ = keras.Input((None, INPUT))
    model = keras.Model(inputs_, Wrapper(name="wrapper")(inputs_))
    with pytest.raises(StateMismatchError, match="layer 'wrapper' \\(Wrapper\\) holds recurrent layers inside a "
                                                 "custom layer"):
        ka.signature(model)


def test_export_needs_states_it_can_read():
    target = net("lstm", "stack")
    with pytest.raises(StateError) as error:
        ka.export(target.model)
    assert len(error.value.problems) == 2
    assert error.value.problems[0].endswith("not stateful, so it keeps no states; pass the states a "
                                            "return_state=True run returned: export(source, state)")
    _, finals = target.run(inputs())
    with pytest.raises(StateMismatchError, match=r"takes a list of 2 entries .*, found 1 entries"):
        ka.export(target.model, finals[:1])
    with pytest.raises(StateMismatchError, match=r"state: takes \[h, c\] \(return_state outputs after the output\), "
                                                 "found 3 tensors"):
        ka.export(target.model, [finals[0] + finals[0][:1], finals[1]])
    with pytest.raises(StateMismatchError, match=r": c: expected shape \(batch, 4\), found \(3, 6\)"):
        ka.export(target.model, [[finals[0][0], finals[1][1]], finals[1]])


def test_load_into_needs_stateful_built_layers():
    target = net("gru", "single")
    with pytest.raises(StateMismatchError, match="not stateful, so it keeps no states; pass initial_state"):
        ka.load_into(random_states(ka.signature(target.model)), target.model)


# 6. another backend works (imports and a missing framework: test_adapter_imports.py)

def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_export_and_continue(backend, tmp_path):
    result = run_python(f"""
        import numpy as np, keras, statefmt
        from statefmt.adapters import keras as ka
        assert keras.backend.backend() == "{backend}"
        n = keras.ops.convert_to_numpy
        x = np.random.default_rng(0).normal(size=(2, 6, 3)).astype("float32")
        layer = keras.layers.LSTM(4, return_sequences=True, return_state=True, bias_initializer="ones")
        whole, *_ = layer(x)
        _, h, c = layer(x[:, :4])
        statefmt.save(ka.export(layer, [h, c]), r"{tmp_path}/s.statefmt")
        init = ka.initial_state(statefmt.load(r"{tmp_path}/s.statefmt"), layer)
        second, *_ = layer(x[:, 4:], initial_state=init)
        cold, *_ = layer(x[:, 4:])
        whole = n(whole)[:, 4:]
        print(float(np.abs(n(second) - whole).max()), float(np.abs(n(cold) - whole).max()))
        model = keras.Sequential([keras.Input(batch_shape=(2, None, 3)), keras.layers.GRU(4, stateful=True)])
        model(x[:, :4]); states = ka.export(model); expected = n(model(x[:, 4:]))
        ka.load_into(states, model)
        print(float(np.abs(n(model(x[:, 4:])) - expected).max()))
        ka.import_weights(ka.export_weights(layer), layer)
        import sys
        print("tensorflow" in sys.modules)  # the adapter needs no other backend's framework
        """, KERAS_BACKEND=backend)
    assert result.returncode == 0, result.stderr
    *numbers, tensorflow_loaded = result.stdout.split()
    continued, cold, resumed = map(float, numbers)
    assert tensorflow_loaded == "False"
    assert continued < 1e-5 and resumed < 1e-5 and cold > 1e-3


# 7. an RNN(StackedRNNCells) is a stack of neutral layers, one per cell

def stacked_cells(stateful=False, seed=0, **options):
    keras.utils.set_random_seed(seed)
    bias = keras.initializers.RandomNormal(stddev=0.5)
    cells = [L.LSTMCell(UNITS, bias_initializer=bias, unit_forget_bias=False, name="first"),
             L.GRUCell(UNITS2, bias_initializer=bias, name="second")]
    return L.RNN(L.StackedRNNCells(cells), return_sequences=True, stateful=stateful, name="stack", **options)


def test_stacked_cells_hand_their_state_over_through_a_file(tmp_path):
    layer, x = stacked_cells(return_state=True), inputs()
    whole, *_ = layer(x)
    _, *state = layer(x[:, :SPLIT])
    states = through_file(ka.export(layer, state), tmp_path)
    assert [(s.name, s.kind, s.units) for s in states] == [("stack/first", "lstm", UNITS),
                                                            ("stack/second", "gru", UNITS2)]
    initial = ka.initial_state(states, layer)
    assert [len(entry) for entry in initial] == [2, 1]  # what the layer's initial_state= takes: a list per cell
    second, *_ = layer(x[:, SPLIT:], initial_state=initial)
    expected = keras.ops.convert_to_numpy(whole)[:, SPLIT:]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(second), expected, rtol=0, atol=1e-5)
    cold, *_ = layer(x[:, SPLIT:])
    assert np.max(np.abs(keras.ops.convert_to_numpy(cold) - expected)) > 1e-3


def test_stacked_cells_weights_run_like_the_reference_and_load_into_a_fresh_stack(tmp_path):
    layer, x = stacked_cells(), inputs()
    expected = keras.ops.convert_to_numpy(layer(x))
    weights = through_file(ka.export_weights(layer), tmp_path, "weights.statefmt")
    assert [(w.name, w.input_size) for w in weights] == [("stack/first", INPUT), ("stack/second", UNITS)]
    np.testing.assert_allclose(reference.run(weights, x)[0], expected, rtol=0, atol=1e-5)
    fresh = stacked_cells(seed=5)
    assert np.max(np.abs(keras.ops.convert_to_numpy(fresh(x)) - expected)) > 1e-3
    ka.import_weights(weights, fresh)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fresh(x)), expected)


def test_stateful_stacked_cells_resume_in_a_fresh_model(tmp_path):
    def build(seed):
        return keras.Sequential([keras.Input(batch_shape=(BATCH, None, INPUT)), stacked_cells(True, seed)])

    today, x = build(0), inputs()
    today(x[:, :SPLIT])
    states = through_file(ka.export(today), tmp_path)
    expected = keras.ops.convert_to_numpy(today(x[:, SPLIT:]))
    tomorrow = build(9)
    tomorrow.set_weights(today.get_weights())
    ka.load_into(states, tomorrow)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tomorrow(x[:, SPLIT:])), expected, rtol=0, atol=1e-5)
    cold = build(9)
    cold.set_weights(today.get_weights())
    assert np.max(np.abs(keras.ops.convert_to_numpy(cold(x[:, SPLIT:])) - expected)) > 1e-3


# 8. a subclassed model whose call takes initial_state= passes on what initial_state returns

class Forecaster(keras.Model):
    """One LSTM inside, as users write it: call(inputs, initial_state=None)."""

    def __init__(self):
        super().__init__()
        self.lstm = make_layer("lstm", UNITS, return_state=True)
        self.head = L.Dense(1)

    def call(self, inputs, initial_state=None):
        y, h, c = self.lstm(inputs, initial_state=initial_state)
        return self.head(y), [h, c]


def test_a_subclassed_model_continues_from_initial_state_of_the_model(tmp_path):
    keras.utils.set_random_seed(0)
    model, x = Forecaster(), inputs()
    whole, _ = model(x)
    _, state = model(x[:, :SPLIT])
    states = through_file(ka.export(model, state), tmp_path)
    assert [layer.name for layer in states] == [model.lstm.name]
    continued, _ = model(x[:, SPLIT:], initial_state=ka.initial_state(states, model))
    expected = keras.ops.convert_to_numpy(whole)[:, SPLIT:]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(continued), expected, rtol=0, atol=1e-5)
    cold, _ = model(x[:, SPLIT:])
    assert np.max(np.abs(keras.ops.convert_to_numpy(cold) - expected)) > 1e-3


# 9. load_into, like every adapter's initial_state (test_contract.py), refuses weights clearly

def test_load_into_refuses_weights():
    target = stateful_model("gru", "single")
    with pytest.raises(StateMismatchError, match="expected a StateSet .*, found a WeightSet; weights go to an "
                                                 r"adapter's import_weights\(weights, target\)"):
        ka.load_into(ka.export_weights(target), target)
