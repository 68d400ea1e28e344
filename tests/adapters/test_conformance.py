"""The conformance matrix: state and weights handed from every framework to every other.

For each ordered pair of {Keras, PyTorch, Flax linen, Flax NNX, ONNX Runtime} x {LSTM, GRU,
simple RNN} x {1 layer, 2 stacked, bidirectional}: chunk 1 runs in the source; its state and
weights go through files into a freshly built (differently initialised) target; chunk 2 runs
there and must equal the source's continuation within 1e-5 (float32), while a zero-state run of
the target must differ. The continuation of a one-way stack is one uninterrupted run of the
source over both chunks; a bidirectional layer's backward half reads the future, so there it is
the source's own run of chunk 2 from its chunk-1 state. A cell that cannot be mapped exactly
asserts the refusal message. Source runs are shared by all the targets they feed.

ONNX sources come from the exporters a user would use: `onnx` is torch.onnx.export (the
TorchScript exporter, which writes all three kinds as recurrent nodes; the dynamo exporter is
tested in test_onnx_adapter.py); `onnx_keras` is tf2onnx for Keras LSTMs, and `to_onnx` of the
Keras weights for GRU and SimpleRNN, which tf2onnx writes as a `Loop` no adapter can read.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from functools import cache

import numpy as np
import pytest

import statefmt
from statefmt import StateSet

BATCH, INPUT, UNITS, STEPS = 3, 5, 4, 6
KINDS = ("lstm", "gru", "rnn")
LAYOUTS = ("single", "stacked", "bidirectional")
ATOL = 1e-5


def _inputs(seed=0):
    x = np.random.default_rng(seed).standard_normal((BATCH, 2 * STEPS, INPUT)).astype("float32")
    return x[:, :STEPS], x[:, STEPS:]


class Keras:
    name = "keras"

    def build(self, kind, layout, seed):
        import keras

        from statefmt.adapters import keras as adapter

        self.adapter = adapter
        keras.utils.set_random_seed(seed)
        cls = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "rnn": keras.layers.SimpleRNN}[kind]

        def layer():
            return cls(UNITS, return_sequences=True, return_state=True,
                       bias_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=seed))

        layers = {"single": lambda: [layer()], "stacked": lambda: [layer(), layer()],
                  "bidirectional": lambda: [keras.layers.Bidirectional(layer())]}[layout]()
        self.run(layers, np.zeros((BATCH, 1, INPUT), "float32"), None)  # builds the weights
        return layers

    def run(self, layers, x, states):
        y, exported = x, []
        for index, layer in enumerate(layers):
            initial = None if states is None else self.adapter.initial_state(states.select([index]), layer)
            y, *final = layer(y, initial_state=initial)
            exported.append(self.adapter.export(layer, state=final)[0])
        return np.asarray(y), StateSet(exported)

    def export_weights(self, layers):
        return WeightSetOf([self.adapter.export_weights(layer) for layer in layers])

    def load_weights(self, weights, layers):
        for index, layer in enumerate(layers):
            self.adapter.import_weights(statefmt.WeightSet([weights.layers[index]]), layer)
        return layers


class Torch:
    name = "torch"

    def build(self, kind, layout, seed):
        import torch

        from statefmt.adapters import torch as adapter

        self.adapter = adapter
        torch.manual_seed(seed)
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
        return cls(INPUT, UNITS, num_layers=2 if layout == "stacked" else 1,
                   bidirectional=layout == "bidirectional", batch_first=True)

    def run(self, module, x, states):
        import torch

        initial = None if states is None else self.adapter.initial_state(states, module)
        with torch.no_grad():
            y, final = module(torch.from_numpy(x), initial)
        return y.numpy(), self.adapter.export(module, final)

    def export_weights(self, module):
        return self.adapter.export_weights(module)

    def load_weights(self, weights, module):
        return self.adapter.import_weights(weights, module)


class Linen:
    name = "linen"

    def build(self, kind, layout, seed):
        import jax
        from flax import linen as nn

        from statefmt.adapters import flax as adapter

        self.adapter = adapter
        cls = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.SimpleCell}[kind]
        bias = nn.initializers.normal(0.5)

        def rnn():
            return nn.RNN(cls(UNITS, bias_init=bias))

        modules = {"single": lambda: [rnn()], "stacked": lambda: [rnn(), rnn()],
                   "bidirectional": lambda: [nn.Bidirectional(rnn(), rnn())]}[layout]()
        key = jax.random.key(seed)
        variables, width = [], INPUT
        for module in modules:
            key, sub = jax.random.split(key)
            variables.append(module.init(sub, np.zeros((BATCH, 1, width), "float32")))
            width = UNITS * (2 if layout == "bidirectional" else 1)
        return modules, variables

    def run(self, model, x, states):
        modules, variables = model
        carries = None if states is None else self.adapter.initial_state(states, modules)
        y, finals = x, []
        for index, (module, params) in enumerate(zip(modules, variables)):
            initial = None if carries is None else carries[index]
            carry, y = module.apply(params, y, initial_carry=initial, return_carry=True)
            finals.append(carry)
        return np.asarray(y), self.adapter.export(modules, finals)

    def export_weights(self, model):
        modules, variables = model
        return self.adapter.export_weights(modules, variables=variables)

    def load_weights(self, weights, model):
        modules, variables = model
        return modules, self.adapter.import_weights(weights, modules, variables=variables)


class NNX:
    name = "nnx"

    def build(self, kind, layout, seed):
        from flax import nnx

        from statefmt.adapters import flax as adapter

        self.adapter = adapter
        rngs = nnx.Rngs(seed)
        cls = {"lstm": nnx.OptimizedLSTMCell, "gru": nnx.GRUCell, "rnn": nnx.SimpleCell}[kind]
        bias = nnx.initializers.normal(0.5)

        def rnn(width):
            return nnx.RNN(cls(width, UNITS, bias_init=bias, rngs=rngs))

        return {"single": lambda: [rnn(INPUT)], "stacked": lambda: [rnn(INPUT), rnn(UNITS)],
                "bidirectional": lambda: [nnx.Bidirectional(rnn(INPUT), rnn(INPUT))]}[layout]()

    def run(self, modules, x, states):
        carries = None if states is None else self.adapter.initial_state(states, modules)
        y, finals = x, []
        for index, module in enumerate(modules):
            initial = None if carries is None else carries[index]
            carry, y = module(y, initial_carry=initial, return_carry=True)
            finals.append(carry)
        return np.asarray(y), self.adapter.export(modules, finals)

    def export_weights(self, modules):
        return self.adapter.export_weights(modules)

    def load_weights(self, weights, modules):
        return self.adapter.import_weights(weights, modules)


class Onnx:
    """An ONNX Runtime session of a torch.onnx export; a model is (ModelProto, InferenceSession)."""

    name = "onnx"

    def build(self, kind, layout, seed):
        return self._session(_torch_onnx(kind, layout, seed))

    def _session(self, proto):
        import onnxruntime

        from statefmt.adapters import onnx as adapter

        self.adapter = adapter
        return proto, onnxruntime.InferenceSession(proto.SerializeToString())

    def run(self, model, x, states):
        _, session = model
        if states is None:
            states = _zeros(self.adapter.signature(session), x.shape[0])
        outputs = session.run(None, {"x": x, **self.adapter.initial_state(states, session)})
        return outputs[0], self.adapter.export(session, outputs)

    def export_weights(self, model):
        return self.adapter.export_weights(model[0])

    def load_weights(self, weights, model):
        return self._session(self.adapter.import_weights(weights, model[0]))


class OnnxKeras(Onnx):
    """A Keras model served by ONNX Runtime: tf2onnx's conversion for LSTM, to_onnx of the weights otherwise."""

    name = "onnx_keras"

    def build(self, kind, layout, seed):
        keras = Keras()
        layers = keras.build(kind, layout, seed)
        if kind != "lstm":
            from statefmt.adapters import onnx as adapter

            return self._session(adapter.to_onnx(keras.export_weights(layers)))
        pytest.importorskip("tf2onnx", reason="tf2onnx converts the Keras LSTM sources (pip install tf2onnx)")
        return self._session(_tf2onnx(layers))


@cache
def _torch_onnx(kind, layout, seed):
    import io
    import warnings

    import torch

    module = Torch().build(kind, layout, seed)

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = module

        def forward(self, x, *state):
            y, final = self.rnn(x, tuple(state) if kind == "lstm" else state[0])
            return (y, *final) if kind == "lstm" else (y, final)

    names = ["h0", "c0"] if kind == "lstm" else ["h0"]
    outputs = ["y", "hn", "cn"][:1 + len(names)]
    shape = (module.num_layers * (2 if module.bidirectional else 1), BATCH, UNITS)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Stack(), (torch.zeros(BATCH, STEPS, INPUT), *[torch.zeros(shape) for _ in names]), buffer,
                          input_names=["x", *names], output_names=outputs, dynamo=False,
                          dynamic_axes={"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "time"},
                                        **{n: {1: "batch"} for n in names},
                                        **{n: {1: "batch"} for n in outputs[1:]}})
    import onnx

    return onnx.load_from_string(buffer.getvalue())


def _tf2onnx(layers):
    """tf2onnx's conversion of Keras layers run one after the other, each layer's states as inputs and outputs."""
    import tensorflow as tf
    import tf2onnx

    counts = [2 * (2 if hasattr(layer, "forward_layer") else 1) for layer in layers]
    spec = [tf.TensorSpec((None, None, INPUT), tf.float32, name="x")]
    spec += [tf.TensorSpec((None, UNITS), tf.float32, name=f"s{i}") for i in range(sum(counts))]

    @tf.function(input_signature=spec)
    def run(x, *states):
        y, finals, start = x, [], 0
        for layer, count in zip(layers, counts):
            y, *final = layer(y, initial_state=list(states[start:start + count]))
            finals += final
            start += count
        return [y, *finals]

    model, _ = tf2onnx.convert.from_function(run, input_signature=spec, opset=17)
    return model


def _zeros(signature, batch):
    return StateSet([statefmt.LayerState(f"l{k}", layer.kind, **{
        s: np.zeros((layer.directions, batch, layer.units), "float32")
        for s in (("h", "c") if layer.kind == "lstm" else ("h",))}) for k, layer in enumerate(signature.layers)])


def WeightSetOf(sets):
    return statefmt.WeightSet([layer for weights in sets for layer in weights.layers])


FRAMEWORKS = {runner.name: runner for runner in (Keras(), Torch(), Linen(), NNX(), Onnx())}
SOURCES = {**FRAMEWORKS, "onnx_keras": OnnxKeras()}

# Cells that cannot be mapped exactly, and the reason the target gives.
NNX_GRU_REFUSAL = "no recurrent candidate bias"
REFUSED = {(source, "nnx", "gru"): NNX_GRU_REFUSAL for source in SOURCES if source != "nnx"}


@cache
def _source(name, kind, layout, folder):
    """Run chunk 1 in the source, save state and weights, and keep the source's continuation."""
    runner = SOURCES[name]
    model = runner.build(kind, layout, seed=1)
    first, second = _inputs()
    _, state = runner.run(model, first, None)
    if layout == "bidirectional":
        expected, _ = runner.run(model, second, state)
    else:
        whole, _ = runner.run(model, np.concatenate([first, second], axis=1), None)
        expected = whole[:, STEPS:]
    stem = os.path.join(folder, f"{name}-{kind}-{layout}")
    statefmt.save(state, stem + ".state.statefmt")
    statefmt.save(runner.export_weights(model), stem + ".weights.statefmt")
    return stem, expected


@cache
def _target(name, kind, layout):
    """A target built once (seeded apart from every source) and reused: each cell overwrites all its weights."""
    return FRAMEWORKS[name].build(kind, layout, seed=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("conformance"))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", FRAMEWORKS)
@pytest.mark.parametrize("source", SOURCES)
def test_hand_off(source, target, kind, layout, folder):
    stem, expected = _source(source, kind, layout, folder)
    runner = FRAMEWORKS[target]
    model = _target(target, kind, layout)
    weights = statefmt.load_weights(stem + ".weights.statefmt")
    refusal = REFUSED.get((source, target, kind))
    if refusal:
        with pytest.raises(statefmt.StateMismatchError, match=refusal):
            runner.load_weights(weights, model)
        return
    model = runner.load_weights(weights, model)
    _, second = _inputs()
    continued, _ = runner.run(model, second, statefmt.load(stem + ".state.statefmt"))
    np.testing.assert_allclose(continued, expected, atol=ATOL, rtol=0)
    from_zero, _ = runner.run(model, second, None)
    assert np.max(np.abs(from_zero - expected)) > 1e-3, "a zero state should not continue the sequence"
