"""The ONNX Runtime adapter against real exports: torch.onnx (both exporters), tf2onnx, and ONNX's own reference.

Expected values come from the framework that trained the model (an uninterrupted PyTorch or
Keras run) or from the numpy yardstick `reference.run`, never from the adapter under test.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from functools import cache

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

import statefmt
from statefmt import LayerSignature, LayerState, StateError, StateMismatchError, StateSet, StateSignature

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import reference  # noqa: E402  (tests/reference.py, on the path from conftest)
from builders import random_states  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from statefmt.adapters import onnx as oa  # noqa: E402
from statefmt.adapters import torch as ta  # noqa: E402

BATCH, INPUT, UNITS, STEPS = 3, 5, 4, 6
CLASSES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


class Stack(torch.nn.Module):
    """What a user exports: the recurrent module with its state as inputs and outputs."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, *state):
        lstm = isinstance(self.rnn, torch.nn.LSTM)
        y, final = self.rnn(x, tuple(state) if lstm else state[0])
        return (y, *final) if lstm else (y, final)


@cache
def exported(kind, layers=1, bidirectional=False, dynamo=False, seed=0, dynamic=True):
    """(torch module, ONNX bytes) of a batch-first recurrent stack exported with its state as graph inputs."""
    torch.manual_seed(seed)
    rnn = CLASSES[kind](INPUT, UNITS, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    D = 2 if bidirectional else 1
    names = ["h0", "c0"] if kind == "lstm" else ["h0"]
    state = [torch.randn(D * layers, BATCH, UNITS) for _ in names]  # distinct tensors: aliases merge in dynamo
    outputs = ["y", "hn", "cn"][:1 + len(names)]
    axes = {"x": {0: "batch"}, **{n: {1: "batch"} for n in names + outputs[1:]}, "y": {0: "batch"}}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Stack(rnn), (torch.zeros(BATCH, STEPS, INPUT), *state), buffer, input_names=["x", *names],
                          output_names=outputs, dynamo=dynamo, dynamic_axes=None if dynamo or not dynamic else axes)
    return rnn, buffer.getvalue()


def inputs(seed=0, batch=BATCH):
    x = np.random.default_rng(seed).standard_normal((batch, 2 * STEPS, INPUT)).astype("float32")
    return x[:, :STEPS], x[:, STEPS:], x


def torch_run(rnn, x, state=None):
    with torch.no_grad():
        y, final = rnn(torch.from_numpy(x), state)
    return y.numpy(), final


def states_for(kind, layers, directions, batch=BATCH):
    """A non-zero state of `layers` layers l0, l1, ... of `kind`, as the graphs here take."""
    return random_states(StateSignature([LayerSignature(kind, UNITS, directions)] * layers), batch=batch, seed=3)


# --- states through torch.onnx exports --------------------------------------------------------------

@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_a_torch_lstm_continues_in_onnx_runtime(dynamo):
    rnn, data = exported("lstm", layers=2, dynamo=dynamo)
    session = ort.InferenceSession(data)
    first, second, whole = inputs()
    expected, _ = torch_run(rnn, whole)
    _, state = torch_run(rnn, first)

    sig = oa.signature(session)
    assert [(layer.kind, layer.units, layer.directions) for layer in sig.layers] == [("lstm", UNITS, 1)] * 2
    assert sig.dtype == "float32"
    assert sig.batch_size == (BATCH if dynamo else None)  # the dynamo export fixes the example's batch
    assert [(n.initial_h, n.initial_c, n.Y_h, n.Y_c) for n in oa.nodes(session)] == [(("h0",), ("c0",), ("hn",),
                                                                                      ("cn",))] * 2
    feeds = oa.initial_state(ta.export(rnn, state), session)
    assert sorted(feeds) == ["c0", "h0"]
    y, *_ = session.run(None, {"x": second, **feeds})
    np.testing.assert_allclose(y, expected[:, STEPS:], atol=1e-5, rtol=0)
    zero = {name: np.zeros_like(value) for name, value in feeds.items()}
    y0, *_ = session.run(None, {"x": second, **zero})
    assert np.max(np.abs(y0 - expected[:, STEPS:])) > 1e-3


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layout", ["single", "stacked", "bidirectional"])
def test_export_reads_what_torch_returned(kind, layout):
    rnn, data = exported(kind, layers=2 if layout == "stacked" else 1, bidirectional=layout == "bidirectional")
    session = ort.InferenceSession(data)
    first, _, _ = inputs()
    _, final = torch_run(rnn, first)
    expected = ta.export(rnn, final)
    outputs = session.run(None, {"x": first, **oa.initial_state(_zeros(rnn, kind), session)})
    states = oa.export(session, outputs)
    by_name = oa.export(session, dict(zip([o.name for o in session.get_outputs()], outputs)))
    assert states.metadata["source"]["framework"] == "onnxruntime"
    for got in (states, by_name):
        assert [layer.kind for layer in got.layers] == [layer.kind for layer in expected.layers]
        for mine, theirs in zip(got.layers, expected.layers):
            for s in mine.state_names:
                np.testing.assert_allclose(mine[s], theirs[s], atol=1e-6, rtol=0)


def _zeros(rnn, kind):
    D = 2 if rnn.bidirectional else 1
    names = ("h", "c") if kind == "lstm" else ("h",)
    return StateSet([LayerState(f"l{k}", kind, **{s: np.zeros((D, BATCH, UNITS), "float32") for s in names})
                     for k in range(rnn.num_layers)])


def test_a_state_round_trips_through_the_feeds_and_a_file(tmp_path):
    """A saved state, fed to a bidirectional GRU, continues as the torch module does from it."""
    rnn, data = exported("gru", bidirectional=True)
    session = ort.InferenceSession(data)
    states = states_for("gru", 1, 2)
    statefmt.save(states, tmp_path / "s.statefmt")
    feeds = oa.initial_state(statefmt.load(tmp_path / "s.statefmt"), session)
    np.testing.assert_array_equal(feeds["h0"], states.layers[0]["h"])
    _, second, _ = inputs()
    y, hn = session.run(None, {"x": second, **feeds})
    expected, final = torch_run(rnn, second, torch.from_numpy(states.layers[0]["h"]))
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(oa.export(session, [y, hn]).layers[0]["h"], final.numpy(), atol=1e-5, rtol=0)


def test_the_dynamo_exporter_writes_gru_linear_before_reset():
    """pytorch#189225: the dynamo exporter once wrote linear_before_reset=0, a silent 14% error."""
    rnn, data = exported("gru", bidirectional=True, dynamo=True)
    assert [n.linear_before_reset for n in oa.nodes(data_model(data))] == [True]
    assert oa.export_weights(data_model(data)).layers[0].linear_before_reset is True
    session = ort.InferenceSession(data)
    _, second, _ = inputs()
    states = states_for("gru", 1, 2)
    y, _ = session.run(None, {"x": second, **oa.initial_state(states, session)})
    expected, _ = torch_run(rnn, second, torch.from_numpy(states.layers[0]["h"]))
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("layout", ["single", "stacked", "bidirectional"])
def test_dynamo_exports_continue_as_torch_does(kind, layout):
    """Every LSTM and GRU layout through the dynamo exporter (about 2 s each), states and weights both ways."""
    layers, bidirectional = (2 if layout == "stacked" else 1), layout == "bidirectional"
    rnn, data = exported(kind, layers=layers, bidirectional=bidirectional, dynamo=True)
    session = ort.InferenceSession(data)
    states = states_for(kind, layers, 2 if bidirectional else 1)
    _, second, _ = inputs()
    outputs = session.run(None, {"x": second, **oa.initial_state(states, session)})
    expected, final = torch_run(rnn, second, ta.initial_state(states, rnn))
    np.testing.assert_allclose(outputs[0], expected, atol=1e-5, rtol=0)
    got, want = oa.export(session, outputs), ta.export(rnn, final)
    for mine, theirs in zip(got.layers, want.layers):
        for s in mine.state_names:
            np.testing.assert_allclose(mine[s], theirs[s], atol=1e-5, rtol=0)
    for mine, theirs in zip(oa.export_weights(data_model(data)).layers, ta.export_weights(rnn).layers):
        for key in ("W", "R", "Wb", "Rb"):
            np.testing.assert_array_equal(mine[key], theirs[key])


def test_the_dynamo_exporter_unrolls_rnn_and_the_adapter_says_what_works():
    _, data = exported("rnn", dynamo=True)
    with pytest.raises(StateMismatchError, match=r"no LSTM, GRU or RNN node.*dynamo=False"):
        oa.signature(data_model(data))


def data_model(data):
    return onnx.load_from_string(data)


def test_a_model_is_a_proto_a_path_or_a_session(tmp_path):
    _, data = exported("lstm", layers=2)
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    expected = oa.signature(data_model(data))
    for model in (str(path), path, ort.InferenceSession(str(path)), ort.InferenceSession(data)):
        assert oa.signature(model) == expected


# --- weights ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layout", ["stacked", "bidirectional"])
def test_weights_port_both_ways_in_the_neutral_gate_order(kind, layout):
    layers, bidirectional = (2, False) if layout == "stacked" else (1, True)
    source, data = exported(kind, layers=layers, bidirectional=bidirectional, seed=0)
    target, _ = exported(kind, layers=layers, bidirectional=bidirectional, seed=1)
    mine = oa.export_weights(data_model(data))
    theirs = ta.export_weights(source)
    for a, b in zip(mine.layers, theirs.layers):
        for key in ("W", "R", "Wb", "Rb"):
            np.testing.assert_array_equal(a[key], b[key])
    # torch weights of another module into the ONNX model: it now computes that module
    model = oa.import_weights(ta.export_weights(target), data_model(data))
    session = ort.InferenceSession(model.SerializeToString())
    first, _, _ = inputs()
    states = states_for(kind, layers, 2 if bidirectional else 1)
    y, *_ = session.run(None, {"x": first, **oa.initial_state(states, session)})
    expected, _ = torch_run(target, first, ta.initial_state(states, target))
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=0)
    assert np.max(np.abs(session.run(None, {"x": first, **oa.initial_state(states, data_model(data))})[0]
                         - ort.InferenceSession(data).run(None, {"x": first, **oa.initial_state(
                             states, data_model(data))})[0])) > 1e-3


def test_import_weights_sets_the_math_the_weights_describe():
    """GRU weights with linear_before_reset=False (Keras reset_after=False) and relu into a torch-exported GRU."""
    _, data = exported("gru", layers=2)
    rng = np.random.default_rng(5)
    layers = []
    for k, width in enumerate((INPUT, UNITS)):
        arrays = {"W": rng.standard_normal((1, 3 * UNITS, width)), "R": rng.standard_normal((1, 3 * UNITS, UNITS)),
                  "Wb": rng.standard_normal((1, 3 * UNITS)), "Rb": rng.standard_normal((1, 3 * UNITS))}
        layers.append(statefmt.LayerWeights(f"g{k}", "gru", **{n: a.astype("float32") * 0.5 for n, a in arrays.items()},
                                            activation="relu", linear_before_reset=False))
    weights = statefmt.WeightSet(layers)
    model = oa.import_weights(weights, data_model(data))
    assert [n.linear_before_reset for n in oa.nodes(model)] == [False, False]
    session = ort.InferenceSession(model.SerializeToString())
    first, _, _ = inputs()
    states = states_for("gru", 2, 1)
    y, *_ = session.run(None, {"x": first, **oa.initial_state(states, session)})
    expected, _ = reference.run(weights, first, states)
    np.testing.assert_allclose(y, expected, atol=1e-4, rtol=0)
    again = oa.export_weights(model)  # and the model's weights read back as they went in
    assert [(layer.activation, layer.linear_before_reset) for layer in again.layers] == [("relu", False)] * 2
    np.testing.assert_allclose(again.layers[1]["R"], weights.layers[1]["R"])


def test_import_weights_refuses_a_projection():
    """What does not fit any adapter's target (layer count, kind, sizes, NaN): test_contract.py."""
    projected = torch.nn.LSTM(INPUT, UNITS, proj_size=2)
    with pytest.raises(StateMismatchError, match="ONNX's LSTM has no projection"):
        oa.import_weights(ta.export_weights(projected), data_model(exported("lstm")[1]))


def test_weight_signature_describes_each_node_and_takes_every_spec_activation():
    from statefmt.cells import ACTIVATIONS

    source, data = exported("gru", bidirectional=True)
    sig = oa.weight_signature(data_model(data))
    layer = sig.layers[0]
    assert (layer.kind, layer.units, layer.input_size, layer.directions, layer.linear_before_reset) == (
        "gru", UNITS, INPUT, 2, True)
    assert set(layer.activations) == set(ACTIVATIONS) == set(layer.recurrent_activations)
    assert sig.check(ta.export_weights(source)) == []
    assert "input_size: expected 5, found 4" in " ".join(sig.check(ta.export_weights(
        torch.nn.GRU(UNITS, UNITS, bidirectional=True))))


@pytest.mark.parametrize("activation", ["linear", "hard_sigmoid", "relu", "sigmoid"])
def test_every_spec_activation_runs_in_onnx_runtime(activation):
    """Each activation the spec names, as the RNN's activation, against the numpy yardstick."""
    rng = np.random.default_rng(9)
    layer = statefmt.LayerWeights("r", "rnn", rng.standard_normal((1, UNITS, INPUT)).astype("float32") * 0.3,
                                  rng.standard_normal((1, UNITS, UNITS)).astype("float32") * 0.3,
                                  rng.standard_normal((1, UNITS)).astype("float32"),
                                  np.zeros((1, UNITS), "float32"), activation=activation)
    weights = statefmt.WeightSet([layer])
    model = oa.to_onnx(weights)
    assert oa.export_weights(model).layers[0].activation == activation
    first, _, _ = inputs()
    states = states_for("rnn", 1, 1)
    y, _ = ort.InferenceSession(model.SerializeToString()).run(None, {"x": first, **oa.initial_state(states, model)})
    if activation in reference.ACTIVATIONS:
        np.testing.assert_allclose(y, reference.run(weights, first, states)[0], atol=1e-5, rtol=0)
    else:  # the yardstick knows tanh, relu and sigmoid: check the step equations directly
        expected, h = [], states.layers[0]["h"][0].astype("float64")
        f = {"linear": lambda v: v, "hard_sigmoid": lambda v: np.clip(v / 6 + 0.5, 0, 1)}[activation]
        for t in range(STEPS):
            h = f(first[:, t] @ layer["W"][0].T + layer["Wb"][0] + h @ layer["R"][0].T)
            expected.append(h)
        np.testing.assert_allclose(y, np.stack(expected, axis=1), atol=1e-5, rtol=0)


# --- to_onnx ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_to_onnx_runs_neutral_weights_with_named_state(kind):
    rnn, _ = exported(kind, layers=2, seed=4)
    weights = ta.export_weights(rnn)
    model = oa.to_onnx(weights)
    names = ["x"] + [f"l{k}.{s}0" for k in range(2) for s in (("h", "c") if kind == "lstm" else ("h",))]
    assert [i.name for i in model.graph.input] == names
    session = ort.InferenceSession(model.SerializeToString())
    _, _, whole = inputs(batch=7)  # the batch is dynamic
    states = states_for(kind, 2, 1, batch=7)
    outputs = session.run(None, {"x": whole, **oa.initial_state(states, session)})
    expected, final = torch_run(rnn, whole, ta.initial_state(states, rnn))
    np.testing.assert_allclose(outputs[0], expected, atol=1e-5, rtol=0)
    got = oa.export(session, outputs)
    np.testing.assert_allclose(got.layers[1]["h"], ta.export(rnn, final).layers[1]["h"], atol=1e-5, rtol=0)


def test_to_onnx_with_a_static_batch_broadcasts_one_warm_start():
    rnn, _ = exported("lstm", seed=4)
    model = oa.to_onnx(ta.export_weights(rnn), batch_size=5)
    assert oa.signature(model).batch_size == 5
    one = states_for("lstm", 1, 1, batch=1)
    feeds = oa.initial_state(one, model, broadcast=True)
    assert feeds["l0.h0"].shape == (1, 5, UNITS)
    np.testing.assert_array_equal(feeds["l0.c0"][0, 4], one.layers[0]["c"][0, 0])
    with pytest.raises(StateMismatchError, match="batch size: expected 5, found 1"):
        oa.initial_state(one, model)


def test_a_static_batch_refuses_another_batch_size():
    """broadcast and batch_size on a dynamic batch, as in every adapter: test_contract.py."""
    one = states_for("gru", 1, 1, batch=1)
    static = oa.to_onnx(ta.export_weights(exported("gru")[0]), batch_size=5)
    with pytest.raises(StateMismatchError, match="the target fixes batch size 5, found batch_size=6"):
        oa.initial_state(one, static, broadcast=True, batch_size=6)


def test_hard_sigmoid_maps_onto_keras_3():
    keras = pytest.importorskip("keras")
    from statefmt.adapters import keras as ka

    keras.utils.set_random_seed(0)
    layer = keras.layers.LSTM(UNITS, recurrent_activation="hard_sigmoid", return_sequences=True, return_state=True)
    first, _, _ = inputs()
    expected, *_ = layer(first)
    model = oa.to_onnx(ka.export_weights(layer))
    session = ort.InferenceSession(model.SerializeToString())
    zeros = {i.name: np.zeros((1, BATCH, UNITS), "float32") for i in model.graph.input[1:]}
    y, *_ = session.run(None, {"x": first, **zeros})
    np.testing.assert_allclose(y, np.asarray(expected), atol=1e-5, rtol=0)
    assert oa.export_weights(model).layers[0].recurrent_activation == "hard_sigmoid"


# --- chains the exporters do not write, checked with ONNX's reference implementation ------------------

def _graph(nodes, inputs_, outputs_, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs_, outputs_, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _lstm_weights(seed=0, directions=1):
    rng = np.random.default_rng(seed)
    return [numpy_helper.from_array(rng.standard_normal(shape).astype("float32") * 0.5, name)
            for name, shape in (("W", (directions, 4 * UNITS, INPUT)), ("R", (directions, 4 * UNITS, UNITS)),
                                ("B", (directions, 8 * UNITS)))]


def _info(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_one_input_for_all_states_through_gather_split_and_layout_1():
    """One `state` input [batch, 4, units] holds h and c of two layers; layout=1 takes [batch, directions, units]."""
    from onnx.reference import ReferenceEvaluator

    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("i0", [0]), ("i1", [1]), ("i2", [2]), ("split", [2, 2]))]
    nodes = [
        helper.make_node("Split", ["state", "split"], ["s01", "s23"], axis=1),
        helper.make_node("Gather", ["s01", "i0"], ["h_0"], axis=1),  # [batch, 1, units]
        helper.make_node("Gather", ["s01", "i1"], ["c_0"], axis=1),
        helper.make_node("Transpose", ["s23"], ["s23t"], perm=[1, 0, 2]),  # [2, batch, units]
        helper.make_node("Slice", ["s23t", "i0", "i1"], ["h_1t"]),
        helper.make_node("Slice", ["s23t", "i1", "split"], ["c_1t"]),  # ends [2] clamps to 2
        helper.make_node("Transpose", ["h_1t"], ["h_1"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["c_1t"], ["c_1"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["x", "W", "R", "B", "", "h_0", "c_0"], ["Y0", "hn0", "cn0"], hidden_size=UNITS,
                         layout=1, name="first"),
        helper.make_node("Squeeze", ["Y0", "i2"], ["x1"]),  # Y [batch, seq, 1, units] -> [batch, seq, units]
        helper.make_node("LSTM", ["x1", "W1", "R1", "B1", "", "h_1", "c_1"], ["Y1", "hn1", "cn1"], hidden_size=UNITS,
                         layout=1, name="second"),
        helper.make_node("Concat", ["hn0", "cn0", "hn1", "cn1"], ["state_out"], axis=1),
    ]
    rng = np.random.default_rng(1)
    second = [numpy_helper.from_array(rng.standard_normal(s).astype("float32") * 0.5, n) for n, s in
              (("W1", (1, 4 * UNITS, UNITS)), ("R1", (1, 4 * UNITS, UNITS)), ("B1", (1, 8 * UNITS)))]
    model = _graph(nodes, [_info("x", ["batch", STEPS, INPUT]), _info("state", ["batch", 4, UNITS])],
                   [_info("state_out", ["batch", 4, UNITS])], _lstm_weights(0) + second + consts)
    assert [(n.layout, n.initial_h, n.Y_c) for n in oa.nodes(model)] == [(1, ("state",), ("state_out",))] * 2
    weights = oa.export_weights(model)
    states = states_for("lstm", 2, 1)
    feeds = oa.initial_state(states, model)
    assert list(feeds) == ["state"] and feeds["state"].shape == (BATCH, 4, UNITS)
    first, _, _ = inputs()
    (state_out,) = ReferenceEvaluator(model).run(None, {"x": first, **feeds})
    _, expected = reference.run(weights, first, states)
    got = oa.export(model, [state_out])
    for k in range(2):
        for s in ("h", "c"):
            np.testing.assert_allclose(got.layers[k][s], expected.layers[k][s], atol=1e-5, rtol=0)


def test_reshape_cast_identity_and_flatten_chains():
    """Per-layer 2-D states `[batch, units]` reshaped in (Reshape, Identity, Cast), flattened out (Flatten, Reshape)."""
    from onnx.reference import ReferenceEvaluator

    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("to3d", [1, -1, UNITS]), ("to2d", [-1, UNITS]))]
    nodes = [
        helper.make_node("Reshape", ["h", "to3d"], ["h3"]),
        helper.make_node("Identity", ["h3"], ["h3i"]),
        helper.make_node("Cast", ["h3i"], ["h3c"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["c", "to3d"], ["c3"]),
        helper.make_node("LSTM", ["x", "W", "R", "B", "", "h3c", "c3"], ["Y", "hn", "cn"], hidden_size=UNITS),
        helper.make_node("Flatten", ["hn"], ["hn_flat"], axis=2),  # [1 * batch, units]
        helper.make_node("Reshape", ["cn", "to2d"], ["c_out"]),
    ]
    model = _graph(nodes, [_info("x", [STEPS, "batch", INPUT]), _info("h", ["batch", UNITS]),
                           _info("c", ["batch", UNITS])],
                   [_info("hn_flat", ["batch", UNITS]), _info("c_out", ["batch", UNITS])], _lstm_weights() + consts)
    states = states_for("lstm", 1, 1, batch=5)
    feeds = oa.initial_state(states, model)
    np.testing.assert_array_equal(feeds["h"], states.layers[0]["h"][0])
    x = np.random.default_rng(4).standard_normal((STEPS, 5, INPUT)).astype("float32")
    outputs = ReferenceEvaluator(model).run(None, {"x": x, **feeds})
    _, expected = reference.run(oa.export_weights(model), x.transpose(1, 0, 2), states)
    got = oa.export(model, outputs)
    assert got.batch_size == 5
    for s in ("h", "c"):
        np.testing.assert_allclose(got.layers[0][s], expected.layers[0][s], atol=1e-5, rtol=0)


def test_a_state_reached_through_arithmetic_is_refused_naming_the_op():
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    nodes = [helper.make_node("Mul", ["h0", "half"], ["h_half"], name="scale"),
             helper.make_node("LSTM", ["x", "W", "R", "B", "", "h_half", "c0"], ["Y", "hn", "cn"], hidden_size=UNITS)]
    model = _graph(nodes, [_info("x", [STEPS, BATCH, INPUT]), _info("h0", [1, BATCH, UNITS]),
                           _info("c0", [1, BATCH, UNITS])], [_info("hn", [1, BATCH, UNITS])], _lstm_weights() + [half])
    with pytest.raises(StateMismatchError, match=r"initial_h: it goes through Mul \(node 'scale'\), which statefmt "
                                                 r"cannot invert"):
        oa.initial_state(states_for("lstm", 1, 1), model)
    with pytest.raises(StateMismatchError, match=r"Y_c: no graph output carries the node's final c"):
        oa.export(model, [np.zeros((1, BATCH, UNITS), "float32")])


def test_one_input_feeding_h_and_c_needs_them_equal():
    """torch.onnx's dynamo exporter merges aliased example inputs: one `h0` can end up feeding h and c."""
    from onnx.reference import ReferenceEvaluator

    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "h0"], ["Y", "hn", "cn"], hidden_size=UNITS,
                              name="shared")]
    model = _graph(nodes, [_info("x", [STEPS, BATCH, INPUT]), _info("h0", [1, BATCH, UNITS])],
                   [_info("hn", [1, BATCH, UNITS]), _info("cn", [1, BATCH, UNITS])], _lstm_weights())
    states = states_for("lstm", 1, 1)
    with pytest.raises(StateMismatchError, match=r"node 'shared', LSTM\): initial_[hc]: the graph feeds one input "
                                                 r"element to several state elements"):
        oa.initial_state(states, model)
    same = StateSet([LayerState("l0", "lstm", h=states.layers[0]["h"], c=states.layers[0]["h"])])
    feeds = oa.initial_state(same, model)
    np.testing.assert_array_equal(feeds["h0"], states.layers[0]["h"])
    hn, cn = ReferenceEvaluator(model).run(None, {"x": inputs()[0].transpose(1, 0, 2), **feeds})
    got = oa.export(model, [hn, cn])
    np.testing.assert_array_equal(got.layers[0]["c"], cn)


def test_hostile_shapes_are_refused_before_any_allocation():
    huge = [1, 1 << 40, UNITS]
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["Y", "hn", "cn"], hidden_size=UNITS)]
    model = _graph(nodes, [_info("x", [STEPS, "n", INPUT]), _info("h0", huge), _info("c0", huge)],
                   [_info("hn", [1, "n", UNITS])], _lstm_weights())
    with pytest.raises(StateMismatchError, match=r"graph input 'h0' of shape \[1, 1099511627776, 4\] is larger than "
                                                 r"statefmt follows"):
        oa.initial_state(states_for("lstm", 1, 1), model)
    shape = numpy_helper.from_array(np.array([1, 1 << 40, UNITS], np.int64), "big")
    nodes = [helper.make_node("Expand", ["h0", "big"], ["h_big"], name="blow_up"),
             helper.make_node("LSTM", ["x", "W", "R", "B", "", "h_big", "c0"], ["Y", "hn", "cn"], hidden_size=UNITS)]
    model = _graph(nodes, [_info("x", [STEPS, "n", INPUT]), _info("h0", [1, 1, UNITS]), _info("c0", [1, "n", UNITS])],
                   [_info("hn", [1, "n", UNITS])], _lstm_weights() + [shape])
    with pytest.raises(StateMismatchError, match=r"Expand \(node 'blow_up'\) would make \d+ elements, more than "
                                                 r"statefmt follows"):
        oa.initial_state(states_for("lstm", 1, 1), model)


def test_a_node_without_initial_state_is_refused():
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y", "hn", "cn"], hidden_size=UNITS)]
    model = _graph(nodes, [_info("x", [STEPS, BATCH, INPUT])], [_info("hn", [1, BATCH, UNITS])], _lstm_weights())
    with pytest.raises(StateMismatchError, match="has no initial_h input, so it always starts from zeros"):
        oa.initial_state(states_for("lstm", 1, 1), model)


def _lstm_with(**changes):
    attrs = {"hidden_size": UNITS, **changes.pop("attrs", {})}
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0", *changes.pop("extra", [])],
                            ["Y", "hn", "cn"], name="lstm", **attrs)
    return _graph([node], [_info("x", [STEPS, BATCH, INPUT]), _info("h0", [1, BATCH, UNITS]),
                           _info("c0", [1, BATCH, UNITS])], [_info("hn", [1, BATCH, UNITS])],
                  _lstm_weights() + changes.pop("initializers", []))


@pytest.mark.parametrize(("changes", "message"), [
    ({"extra": ["P"], "initializers": [numpy_helper.from_array(np.ones((1, 3 * UNITS), np.float32), "P")]},
     "the node has peepholes \\(ONNX's LSTM input P, which is not statefmt's projection P\\)"),
    ({"attrs": {"clip": 3.0}}, "clip=3.0: the node clips its cell inputs"),
    ({"attrs": {"input_forget": 1}}, "input_forget=1: the node couples the input and forget gates"),
    ({"attrs": {"activations": ["HardSigmoid", "Tanh", "Tanh"]}},
     "HardSigmoid\\(alpha=0.2, beta=0.5\\), Keras 2's hard_sigmoid rather than Keras 3's"),
    ({"attrs": {"activations": ["Sigmoid", "Tanh", "Relu"]}}, "the cell candidate uses tanh and the output relu"),
])
def test_export_weights_refuses_what_the_neutral_layout_cannot_hold(changes, message):
    with pytest.raises(StateMismatchError, match=message):
        oa.export_weights(_lstm_with(**changes))


def test_zero_peepholes_export_and_import_drops_them():
    zeros = numpy_helper.from_array(np.zeros((1, 3 * UNITS), np.float32), "P")
    model = _lstm_with(extra=["P"], initializers=[zeros], attrs={"clip": 3.0})
    with pytest.raises(StateMismatchError, match="clip"):
        oa.export_weights(model)
    weights = oa.export_weights(_lstm_with(extra=["P"], initializers=[zeros]))
    served = oa.import_weights(weights, model)
    node = next(n for n in served.graph.node if n.op_type == "LSTM")
    assert len(node.input) < 8 and "clip" not in [a.name for a in node.attribute]
    assert "P" not in [t.name for t in served.graph.initializer]


# --- tf2onnx (Keras) ---------------------------------------------------------------------------------

@cache
def keras_converted(kind, bidirectional):
    pytest.importorskip("tf2onnx")
    import keras
    import tensorflow as tf
    import tf2onnx

    keras.utils.set_random_seed(2)
    cls = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "rnn": keras.layers.SimpleRNN}[kind]
    layer = cls(UNITS, return_sequences=True, return_state=True)
    if bidirectional:
        layer = keras.layers.Bidirectional(layer)
    count = (2 if kind == "lstm" else 1) * (2 if bidirectional else 1)
    layer(np.zeros((BATCH, 1, INPUT), "float32"))
    spec = [tf.TensorSpec((None, None, INPUT), tf.float32, name="x")]
    spec += [tf.TensorSpec((None, UNITS), tf.float32, name=f"s{i}") for i in range(count)]

    @tf.function(input_signature=spec)
    def run(x, *state):
        return layer(x, initial_state=list(state))

    model, _ = tf2onnx.convert.from_function(run, input_signature=spec, opset=17)
    return layer, model


def test_a_keras_bidirectional_lstm_through_tf2onnx_continues_in_onnx_runtime():
    from statefmt.adapters import keras as ka

    layer, model = keras_converted("lstm", True)
    assert oa.nodes(model)[0].direction == "bidirectional"
    first, second, _ = inputs()
    _, *final = layer(first)
    states = StateSet([ka.export(layer, state=final)[0]])
    expected, *_ = layer(second, initial_state=ka.initial_state(states, layer))
    session = ort.InferenceSession(model.SerializeToString())
    feeds = oa.initial_state(states, session)
    assert sorted(feeds) == ["s0", "s1", "s2", "s3"]  # Keras' order: forward h, c, backward h, c
    outputs = session.run(None, {"x": second, **feeds})
    np.testing.assert_allclose(outputs[0], np.asarray(expected), atol=1e-5, rtol=0)
    _, *after = layer(second, initial_state=ka.initial_state(states, layer))
    for s in ("h", "c"):
        np.testing.assert_allclose(oa.export(session, outputs).layers[0][s], ka.export(layer, state=after)[0][s],
                                   atol=1e-5, rtol=0)


def test_tf2onnx_writes_a_keras_gru_as_a_loop_and_the_adapter_says_what_works():
    _, model = keras_converted("gru", False)
    with pytest.raises(StateMismatchError, match=r"its recurrence is a Loop \(tf2onnx writes Keras GRU and "
                                                 r"SimpleRNN that way.*to_onnx\(weights\)"):
        oa.signature(model)


# --- refusals of what is not a model or not a state ---------------------------------------------------

def test_hostile_or_mistaken_arguments_get_one_line_errors(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07not really a model" * 10)
    with pytest.raises(StateError, match=r"junk\.onnx: not an ONNX model") as caught:
        oa.signature(junk)
    assert "\n" not in str(caught.value)
    with pytest.raises(StateError, match="cannot read the model"):
        oa.signature(tmp_path / "missing.onnx")
    with pytest.raises(StateMismatchError, match=r"takes an onnx\.ModelProto, a path"):
        oa.signature(object())
    _, data = exported("lstm")
    with pytest.raises(StateMismatchError, match=r"expected a WeightSet .* found a StateSet"):
        oa.to_onnx(states_for("lstm", 1, 1))
    with pytest.raises(StateError, match=r"ONNX Runtime keeps no state: pass what session.run returned"):
        oa.export(data_model(data))
    with pytest.raises(StateMismatchError, match="outputs: the model has 3 outputs"):
        oa.export(data_model(data), [np.zeros(1)])
    with pytest.raises(StateMismatchError, match=r"'hn', 'cn' carry final states and are missing"):
        oa.export(data_model(data), {"y": np.zeros(1)})
    with pytest.raises(StateMismatchError, match="device: ONNX Runtime takes host arrays"):
        oa.initial_state(states_for("lstm", 1, 1), data_model(data), device="cuda")
    with pytest.raises(StateMismatchError, match="layer 0 'l0': units: expected 4, found 3"):
        oa.initial_state(StateSet([LayerState("l0", "lstm", h=np.zeros((1, 2, 3), "f4"), c=np.zeros((1, 2, 3), "f4"))]),
                         data_model(data))


# --- malformed models, special files and unbounded work (issue 19) ------------------------------------

def _external(model, location):
    tensor = model.graph.initializer[0]
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location


def _set_attribute(name, value):
    def change(model):
        node = model.graph.node[0]
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute(name, value)])
    return change


def _retype_initializer(position, array):
    def change(model):
        name = model.graph.initializer[position].name
        model.graph.initializer[position].CopyFrom(numpy_helper.from_array(array, name))
    return change


MALFORMED = {
    "raw data cut short": lambda m: setattr(m.graph.initializer[0], "raw_data", m.graph.initializer[0].raw_data[:10]),
    "dims that disagree with the data": lambda m: m.graph.initializer[0].dims.__setitem__(2, INPUT + 1),
    "an undefined element type": lambda m: setattr(m.graph.initializer[0], "data_type", 0),
    "a string W": lambda m: setattr(m.graph.initializer[0], "data_type", TensorProto.STRING),
    "an integer W": _retype_initializer(0, np.ones((1, 4 * UNITS, INPUT), np.int32)),
    "a 1-D W": _retype_initializer(0, np.ones(4 * UNITS * INPUT, np.float32)),
    "a B too short": _retype_initializer(2, np.ones((1, 3), np.float32)),
    "an R of two directions": _retype_initializer(1, np.ones((2, 4 * UNITS, UNITS), np.float32)),
    "external data that is missing": lambda m: _external(m, "weights.bin"),
    "external data outside the folder": lambda m: _external(m, "../../etc/passwd"),
    "hidden_size a string": _set_attribute("hidden_size", "four"),
    "hidden_size a float": _set_attribute("hidden_size", 4.5),
    "hidden_size zero": _set_attribute("hidden_size", 0),
    "layout 7": _set_attribute("layout", 7),
    "layout a string": _set_attribute("layout", "one"),
    "direction sideways": _set_attribute("direction", "sideways"),
    "activations ints": _set_attribute("activations", [1, 2, 3]),
    "activation_alpha strings": lambda m: (_set_attribute("activations", ["HardSigmoid", "Tanh", "Tanh"])(m),
                                           _set_attribute("activation_alpha", ["a"])(m)),
    "a state input with no type": lambda m: m.graph.input[1].type.Clear(),
    "a state input of strings": lambda m: setattr(m.graph.input[1].type.tensor_type, "elem_type", TensorProto.STRING),
    "a state input that is a sequence": lambda m: m.graph.input[1].CopyFrom(
        helper.make_tensor_sequence_value_info("h0", TensorProto.FLOAT, [1, BATCH, UNITS])),
    "a negative dimension": lambda m: m.graph.input[1].type.tensor_type.shape.dim[1].__setattr__("dim_value", -3),
}


def _every_verb(model):
    """Each verb in turn, as a user would call them; a malformed model must stop one of them."""
    states = states_for("lstm", 1, 1)
    oa.signature(model)
    oa.nodes(model)
    oa.initial_state(states, model)
    oa.export(model, [np.zeros((1, BATCH, UNITS), "float32")] * 2)
    weights = oa.export_weights(model)
    oa.weight_signature(model)
    oa.import_weights(weights, model)


@pytest.mark.parametrize("what", list(MALFORMED))
def test_a_malformed_model_is_refused_naming_the_file(tmp_path, what):
    model = _lstm_with()
    model.graph.output.append(_info("cn", [1, BATCH, UNITS]))
    _every_verb(model)  # the model as made works
    MALFORMED[what](model)
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(StateError) as caught:
        _every_verb(path)
    assert isinstance(caught.value, oa.ModelError), f"{type(caught.value).__name__}: {caught.value}"
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_external_data_of_a_model_in_memory_is_refused_naming_the_tensor():
    model = _lstm_with()
    _external(model, "weights.bin")
    with pytest.raises(oa.ModelError, match=r"'W' is stored in external data \('weights.bin'\)"):
        oa.export_weights(model)


def test_external_data_in_its_own_file_is_read(tmp_path):
    from onnx.external_data_helper import convert_model_to_external_data

    model = _lstm_with()
    expected = oa.export_weights(model)
    convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    onnx.save(model, tmp_path / "m.onnx")
    got = oa.export_weights(tmp_path / "m.onnx")
    np.testing.assert_array_equal(got.layers[0]["W"], expected.layers[0]["W"])


def _limited(code, *, seconds=60, memory=None):
    """`code` in a fresh interpreter, under a deadline and (`memory` bytes over what the imports took) an address
    space limit, so that a hang or a runaway allocation fails the test instead of the machine."""
    prelude = ("import os, resource, statefmt, numpy as np, onnx\nfrom statefmt.adapters import onnx as oa\n"
               "oa.signature  # the adapter and onnx imported before the limit\n")
    if memory:
        prelude += ("size = int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE')\n"
                    f"resource.setrlimit(resource.RLIMIT_AS, (size + {memory}, resource.RLIM_INFINITY))\n")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=seconds,
                              env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"did not finish in {seconds} s")


@pytest.mark.parametrize("kind", ["fifo", "device", "external fifo"])
def test_a_model_path_that_is_a_special_file_is_refused_without_blocking(tmp_path, kind):
    path = tmp_path / "m.onnx"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = "/dev/zero"
    else:
        model = _lstm_with()
        _external(model, "weights.bin")
        path.write_bytes(model.SerializeToString())
        os.mkfifo(tmp_path / "weights.bin")
    result = _limited(f"try:\n    oa.export_weights({str(path)!r})\nexcept oa.ModelError as error:\n"
                      "    print(error)\n", seconds=30, memory=2**30)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"{path}: "), result.stdout
    assert "regular file" in result.stdout


def _chain(nodes, initializers, state_shape):
    """An LSTM whose initial_h comes from input h0 through `nodes` (ending in value `h`); static shapes, so that
    signature() follows the chain to find the batch size."""
    return _graph(nodes + [helper.make_node("LSTM", ["x", "W", "R", "B", "", "h", "c0"], ["Y", "hn", "cn"],
                                            hidden_size=UNITS)],
                  [_info("x", [STEPS, "n", INPUT]), _info("h0", state_shape), _info("c0", [1, 1, UNITS])],
                  [_info("hn", [1, "n", UNITS])], _lstm_weights() + initializers)


def test_work_on_index_arrays_is_bounded_by_the_sizes_the_model_declares(tmp_path):
    """A 1 KB model whose chain gathers one element 2^26 times: 2 GiB of indices, refused before any is made.

    (Before, each op's output was bounded alone, and a MemoryError was taken for a chain it cannot follow, so
    the signature came back with no batch size.)"""
    many = helper.make_tensor("many", TensorProto.INT64, [1], [1 << 26])
    zero = helper.make_tensor("v", TensorProto.INT64, [1], [0])
    nodes = [helper.make_node("ConstantOfShape", ["many"], ["zeros"], value=zero, name="indices"),
             helper.make_node("Gather", ["h0", "zeros"], ["h"], axis=1, name="blow_up")]
    path = tmp_path / "small.onnx"
    onnx.save(_chain(nodes, [many], [1, 1, UNITS]), path)
    assert path.stat().st_size < 2000
    result = _limited(f"try:\n    print(oa.signature({str(path)!r}))\nexcept statefmt.StateError as error:\n"
                      "    print(type(error).__name__, error)\n", memory=2**30)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("StateMismatchError"), result.stdout
    assert "ConstantOfShape (node 'indices') would make 67108864 elements, more than statefmt follows" in result.stdout


def test_a_memory_error_is_never_swallowed_into_a_wrong_answer(tmp_path):
    """A chain within the bound, in a process that cannot hold it: MemoryError, not a signature without a batch."""
    nodes = [helper.make_node("Concat", ["h0", "h0"], ["h"], axis=1, name="twice")]
    path = tmp_path / "m.onnx"
    onnx.save(_chain(nodes, [], [1, 1 << 24, UNITS]), path)  # h0: 2^26 elements; the map of h: 2^27 (1 GiB)
    result = _limited(f"try:\n    print(oa.signature({str(path)!r}))\nexcept MemoryError:\n    print('MemoryError')\n",
                      memory=3 * 2**28)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "MemoryError", result.stdout
