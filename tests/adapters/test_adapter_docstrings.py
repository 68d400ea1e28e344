"""The examples in the adapters' docstrings run, each against its framework (skipped where it is not installed).

Each framework's namespace holds a small LSTM (5 inputs, 4 units: `lstm`, or ONNX's `forecaster.onnx`
and its `session`) and input chunks `x`, `x2`; `today.statefmt` and `weights.statefmt` in the current
folder hold its state and weights.
"""

import numpy as np
import pytest
from docstrings import docstrings, run

import statefmt


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def save(states, weights):
    statefmt.save(states, "today.statefmt", durable=False)
    statefmt.save(weights, "weights.statefmt", durable=False)


@pytest.fixture
def torch_namespace(folder):
    torch = pytest.importorskip("torch")
    from statefmt.adapters import torch as ta

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 4, batch_first=True)
    x, x2 = torch.randn(3, 6, 5), torch.randn(3, 4, 5)
    with torch.no_grad():
        _, state = lstm(x)
    save(ta.export(lstm, state), ta.export_weights(lstm))
    return {"statefmt": statefmt, "torch": torch, "nn": torch.nn, "lstm": lstm, "x": x, "x2": x2}


@pytest.fixture
def keras_namespace(folder):
    keras = pytest.importorskip("keras")
    from statefmt.adapters import keras as ka

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(batch_shape=(3, None, 5)), keras.layers.LSTM(4, stateful=True, name="lstm")])
    lstm = keras.layers.LSTM(4, return_state=True, name="lstm")
    x, x2 = (np.random.default_rng(0).standard_normal((3, steps, 5)).astype("float32") for steps in (6, 4))
    model(x)
    lstm(x)
    save(ka.export(model), ka.export_weights(model))
    return {"statefmt": statefmt, "keras": keras, "model": model, "lstm": lstm, "x": x, "x2": x2}


@pytest.fixture
def flax_namespace(folder):
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    from flax import linen, nnx

    from statefmt.adapters import flax as fa

    rnn = nnx.RNN(nnx.LSTMCell(5, 4, rngs=nnx.Rngs(0)))
    linen_rnn = linen.RNN(linen.LSTMCell(4))
    x, x2 = (jax.random.normal(jax.random.key(k), (3, steps, 5)) for k, steps in ((1, 6), (2, 4)))
    variables = linen_rnn.init(jax.random.key(3), x)
    carry, _ = rnn(x, return_carry=True)
    weights = fa.export_weights(rnn)
    save(fa.export(rnn, carry), weights)
    return {"statefmt": statefmt, "jax": jax, "nn": linen, "nnx": nnx, "rnn": rnn, "linen_rnn": linen_rnn,
            "variables": variables, "weights": weights, "x": x, "x2": x2}


@pytest.mark.parametrize("module, name", docstrings("statefmt.adapters.torch"))
def test_the_torch_adapters_example_runs(torch_namespace, module, name):
    run(module, name, torch_namespace)


@pytest.mark.parametrize("module, name", docstrings("statefmt.adapters.keras"))
def test_the_keras_adapters_example_runs(keras_namespace, module, name):
    run(module, name, keras_namespace)


@pytest.mark.parametrize("module, name", docstrings("statefmt.adapters.flax"))
def test_the_flax_adapters_example_runs(flax_namespace, module, name):
    run(module, name, flax_namespace)


@pytest.fixture
def onnx_namespace(folder):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from statefmt.adapters import onnx as oa

    rng = np.random.default_rng(0)
    values = lambda *shape: rng.standard_normal(shape).astype("float32")  # noqa: E731
    weights = statefmt.WeightSet([statefmt.LayerWeights("l0", "lstm", W=values(1, 16, 5), R=values(1, 16, 4),
                                                        Wb=values(1, 16), Rb=values(1, 16))])
    with open("forecaster.onnx", "wb") as file:
        file.write(oa.to_onnx(weights).SerializeToString())
    session = ort.InferenceSession("forecaster.onnx")
    x, x2 = values(3, 6, 5), values(3, 4, 5)
    zeros = np.zeros((1, 3, 4), "float32")
    feeds = oa.initial_state(statefmt.StateSet([statefmt.LayerState("l0", "lstm", h=zeros, c=zeros)]), session)
    save(oa.export(session, session.run(None, {"x": x, **feeds})), weights)
    return {"statefmt": statefmt, "onnxruntime": ort, "session": session, "feeds": feeds, "x": x, "x2": x2}


@pytest.mark.parametrize("module, name", docstrings("statefmt.adapters.onnx"))
def test_the_onnx_adapters_example_runs(onnx_namespace, module, name):
    run(module, name, onnx_namespace)
