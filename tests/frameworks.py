"""One harness per adapter: what the adapter contract (tests/adapters/test_contract.py) needs of a framework.

A harness builds a target of a kind (lstm, gru, rnn) and a layout (single, stacked,
bidirectional), runs it from what the adapter's `initial_state` returned, and reads the arrays
of a state in the framework's own form. It calls the adapter's verbs itself only where a
framework needs more than the target (Flax linen's variables). A new adapter gets the whole
contract by adding a harness to FRAMEWORKS.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import importlib
import io
import types
import warnings

import ml_dtypes
import numpy as np
import pytest

INPUT, UNITS = 5, 4
FLAX_CELLS = {"lstm": "LSTMCell", "gru": "GRUCell", "rnn": "SimpleCell"}
LAYER_COUNT = {"single": 1, "stacked": 2, "bidirectional": 1}


class Harness:
    name: str  # the framework, as test ids show it
    needs: tuple[str, ...]  # the modules it skips without
    adapter_name: str
    source: str  # the framework an export names in its `source` metadata
    dtypes = ("float16", "bfloat16", "float32")
    in_place = True  # import_weights fills the target and returns it, rather than returning a new one

    def __init__(self) -> None:
        for module in self.needs:
            pytest.importorskip(module)
        self.adapter = importlib.import_module(self.adapter_name)
        self._built: dict[tuple, object] = {}

    def target(self, kind, layout, dtype="float32"):
        """A target built once per harness, shared by the tests that only read it; tests that import weights build."""
        key = (kind, layout, dtype)
        if key not in self._built:
            self._built[key] = self.build(kind, layout, dtype)
        return self._built[key]

    # what each framework does its own way

    def build(self, kind, layout, dtype="float32", seed=0):
        raise NotImplementedError

    def run(self, target, x, init):
        """(the output sequence as float64, the final state as the framework returns it) of a run from `init`."""
        raise NotImplementedError

    def arrays(self, native) -> list[np.ndarray]:
        """The arrays of a state in the framework's form (a run's final state or initial_state's result), in order."""
        raise NotImplementedError

    def parameters(self, target) -> list[np.ndarray]:
        raise NotImplementedError

    # the adapter's verbs

    def subject(self, target):
        """What the adapter's verbs take."""
        return target

    def signature(self, target, **options):
        return self.adapter.signature(self.subject(target), **options)

    def export(self, target, state, **options):
        return self.adapter.export(self.subject(target), state, **options)

    def initial_state(self, states, target, **options):
        return self.adapter.initial_state(states, self.subject(target), **options)

    def export_weights(self, target, **options):
        return self.adapter.export_weights(self.subject(target), **options)

    def weight_signature(self, target):
        return self.adapter.weight_signature(self.subject(target))

    def import_weights(self, weights, target):
        """What the adapter's import_weights returns: the subject itself where the framework fills it in place."""
        return self.adapter.import_weights(weights, self.subject(target))

    def holding(self, target, returned):
        """The target that holds the weights import_weights returned, where it does not fill `target` in place."""
        raise NotImplementedError


def _flat(native, convert) -> list[np.ndarray]:
    if isinstance(native, (list, tuple)):
        return [array for entry in native for array in _flat(entry, convert)]
    return [convert(native)]


class Keras(Harness):
    """Keras 3 on the TensorFlow backend: return_state layers run eagerly; the target is their functional model."""

    name, needs, adapter_name, source = "keras", ("tensorflow", "keras"), "statefmt.adapters.keras", "keras"

    def build(self, kind, layout, dtype="float32", seed=0):
        import keras

        keras.utils.set_random_seed(seed)
        cls = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "rnn": keras.layers.SimpleRNN}[kind]

        def layer():
            options = {"unit_forget_bias": False} if kind == "lstm" else {}  # else the forget bias starts at 1
            return cls(UNITS, return_sequences=True, return_state=True, dtype=dtype,
                       recurrent_initializer="glorot_uniform",  # orthogonal has no bfloat16 kernel on CPU
                       bias_initializer=keras.initializers.RandomNormal(stddev=0.5), **options)

        if layout == "bidirectional":
            layers = [keras.layers.Bidirectional(layer(), dtype=dtype)]
        else:
            layers = [layer() for _ in range(LAYER_COUNT[layout])]
        inputs = keras.Input((None, INPUT), dtype=dtype)
        x, finals = inputs, []
        for each in layers:
            x, *state = each(x)
            finals += state
        return types.SimpleNamespace(model=keras.Model(inputs, [x, *finals]), layers=layers, dtype=dtype)

    def run(self, target, x, init):
        import keras

        x = keras.ops.convert_to_tensor(x, target.dtype)
        per_layer = [init] if len(target.layers) == 1 else init  # one layer: initial_state gives its own list
        finals = []
        for layer, initial in zip(target.layers, per_layer):
            x, *state = layer(x, initial_state=initial)
            finals.append(state)
        return keras.ops.convert_to_numpy(x).astype(np.float64), finals

    def arrays(self, native):
        import keras

        return _flat(native, keras.ops.convert_to_numpy)

    def parameters(self, target):
        import keras

        return [keras.ops.convert_to_numpy(v) for v in target.model.weights]

    def subject(self, target):
        return target.model


class Torch(Harness):
    name, needs, adapter_name, source = "torch", ("torch",), "statefmt.adapters.torch", "torch"
    dtypes = ("float16", "bfloat16", "float32", "float64")

    def build(self, kind, layout, dtype="float32", seed=0):
        import torch

        torch.manual_seed(seed)
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
        return cls(INPUT, UNITS, num_layers=LAYER_COUNT[layout], bidirectional=layout == "bidirectional",
                   batch_first=True, dtype=getattr(torch, dtype))

    def run(self, target, x, init):
        import torch

        with torch.no_grad():
            y, final = target(torch.as_tensor(x, dtype=next(target.parameters()).dtype), init)
        return y.double().numpy(), final

    def arrays(self, native):
        return _flat(native, _torch_numpy)

    def parameters(self, target):
        return [_torch_numpy(p.detach().clone()) for p in target.parameters()]


def _torch_numpy(tensor):
    import torch

    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: the same bits as ml_dtypes'
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


class _Flax(Harness):
    adapter_name, source = "statefmt.adapters.flax", "flax"
    needs = ("jax", "flax")

    def cell(self, kind, width, dtype, seed):
        raise NotImplementedError

    def build(self, kind, layout, dtype="float32", seed=0):
        lib = importlib.import_module(self.library)

        def rnn(width, offset=0):
            return lib.RNN(self.cell(kind, width, dtype, seed + offset))

        modules = {"single": lambda: rnn(INPUT), "stacked": lambda: [rnn(INPUT), rnn(UNITS, 1)],
                   "bidirectional": lambda: lib.Bidirectional(rnn(INPUT), rnn(INPUT, 1))}[layout]()
        return types.SimpleNamespace(modules=modules, variables=self.init(modules, dtype, seed), dtype=dtype)

    def init(self, modules, dtype, seed):
        return None

    def run(self, target, x, init):
        import jax.numpy as jnp

        y = jnp.asarray(x, target.dtype)
        if not isinstance(target.modules, list):
            carry, y = self.apply(target.modules, target.variables, y, init)
            return np.asarray(y, np.float64), carry
        finals = []
        for k, module in enumerate(target.modules):
            carry, y = self.apply(module, None if target.variables is None else target.variables[k], y, init[k])
            finals.append(carry)
        return np.asarray(y, np.float64), finals

    def arrays(self, native):
        import jax

        return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(native)]

    def subject(self, target):
        return target.modules


class Linen(_Flax):
    """Flax linen: modules hold no params, so the weight verbs take `variables=` and import returns new ones."""

    name, library, in_place = "linen", "flax.linen", False

    def cell(self, kind, width, dtype, seed):
        from flax import linen as nn

        return getattr(nn, FLAX_CELLS[kind])(UNITS, param_dtype=dtype, dtype=dtype,
                                             bias_init=nn.initializers.normal(0.5),
                                             recurrent_kernel_init=nn.initializers.lecun_normal())

    def init(self, modules, dtype, seed):
        import jax
        import jax.numpy as jnp

        if not isinstance(modules, list):
            return modules.init(jax.random.key(seed), jnp.zeros((1, 2, INPUT), dtype))
        return [module.init(jax.random.key(seed + k), jnp.zeros((1, 2, width), dtype))
                for k, (module, width) in enumerate(zip(modules, (INPUT, UNITS)))]

    def apply(self, module, variables, x, carry):
        return module.apply(variables, x, initial_carry=carry, return_carry=True)

    def parameters(self, target):
        import jax

        return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(target.variables)]

    def export_weights(self, target, **options):
        return self.adapter.export_weights(target.modules, variables=target.variables, **options)

    def weight_signature(self, target):
        return self.adapter.weight_signature(target.modules, variables=target.variables)

    def import_weights(self, weights, target):
        return self.adapter.import_weights(weights, target.modules, variables=target.variables)

    def holding(self, target, returned):
        return types.SimpleNamespace(modules=target.modules, variables=returned, dtype=target.dtype)


class NNX(_Flax):
    name, library = "nnx", "flax.nnx"

    def cell(self, kind, width, dtype, seed):
        from flax import nnx

        return getattr(nnx, FLAX_CELLS[kind])(width, UNITS, param_dtype=dtype, dtype=dtype, rngs=nnx.Rngs(seed),
                                              bias_init=nnx.initializers.normal(0.5),
                                              recurrent_kernel_init=nnx.initializers.lecun_normal())

    def apply(self, module, variables, x, carry):
        return module(x, initial_carry=carry, return_carry=True)

    def parameters(self, target):
        import jax
        from flax import nnx

        return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(nnx.state(target.modules, nnx.Param))]


class Onnx(Harness):
    """ONNX Runtime on a torch.onnx export (TorchScript exporter, batch and time dynamic), states as graph inputs
    h0, c0 and outputs hn, cn; import_weights returns a new model and leaves the target as it was."""

    name, needs, adapter_name, source = "onnx", ("onnx", "onnxruntime", "torch"), "statefmt.adapters.onnx", \
        "onnxruntime"
    dtypes = ("float32",)
    in_place = False

    def build(self, kind, layout, dtype="float32", seed=0):
        import onnx
        import torch

        assert dtype == "float32", "the harness exports float32 graphs"
        module = Torch().build(kind, layout, dtype, seed)

        class Stack(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = module

            def forward(self, x, *state):
                y, final = self.rnn(x, tuple(state) if kind == "lstm" else state[0])
                return (y, *final) if kind == "lstm" else (y, final)

        names = ["h0", "c0"] if kind == "lstm" else ["h0"]
        outputs = ["y", "hn", "cn"][:1 + len(names)]
        shape = (LAYER_COUNT[layout] * (2 if layout == "bidirectional" else 1), 2, UNITS)
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Stack(), (torch.zeros(2, 3, INPUT), *[torch.zeros(shape) for _ in names]), buffer,
                              input_names=["x", *names], output_names=outputs, dynamo=False,
                              dynamic_axes={"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "time"},
                                            **{n: {1: "batch"} for n in names + outputs[1:]}})
        return self._served(onnx.load_from_string(buffer.getvalue()))

    def _served(self, proto):
        import onnxruntime

        return types.SimpleNamespace(proto=proto, session=onnxruntime.InferenceSession(proto.SerializeToString()))

    def run(self, target, x, init):
        outputs = target.session.run(None, {"x": np.asarray(x, np.float32), **init})
        return outputs[0].astype(np.float64), outputs

    def arrays(self, native):
        if isinstance(native, dict):  # initial_state's feeds
            return [native[name] for name in ("h0", "c0") if name in native]
        return list(native[1:])  # session.run's outputs: y, then hn (and cn)

    def parameters(self, target):
        from onnx import numpy_helper

        return [numpy_helper.to_array(t) for t in target.proto.graph.initializer]

    def subject(self, target):
        return target.proto

    def holding(self, target, returned):
        return self._served(returned)


FRAMEWORKS = {harness.name: harness for harness in (Keras, Torch, Linen, NNX, Onnx)}
