"""Small states and weights that tests in every part build, and the comparison they share."""

import ml_dtypes
import numpy as np

from statefmt import LayerState, LayerWeights, StateSet, WeightSet

DTYPES = ["float16", "bfloat16", "float32", "float64"]


def _dtype(name):
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def make_states(dtype="float32", batch=4, stream_ids=True):
    rng = np.random.default_rng(1)
    f = lambda *shape: rng.standard_normal(shape).astype(_dtype(dtype))  # noqa: E731
    layers = [
        LayerState("enc", "lstm", h=f(2, batch, 3), c=f(2, batch, 5)),
        LayerState("dec/gru 1", "gru", h=f(1, batch, 6)),
        LayerState("head", "rnn", h=f(1, batch, 2)),
    ]
    ids = [f"stream-{i}" for i in range(batch)] if stream_ids else None
    return StateSet(layers, stream_ids=ids)


def assert_same(a: StateSet, b: StateSet):
    assert [(x.name, x.kind, x.units, x.proj_units, x.directions, x.dtype) for x in a.layers] == \
           [(x.name, x.kind, x.units, x.proj_units, x.directions, x.dtype) for x in b.layers]
    assert a.stream_ids == b.stream_ids
    for x, y in zip(a.layers, b.layers):
        for name in x.state_names:
            assert x[name].dtype == y[name].dtype
            np.testing.assert_array_equal(x[name], y[name])


def make_weights():
    rng = np.random.default_rng(2)
    f = lambda *shape: rng.standard_normal(shape, "float32")  # noqa: E731
    return WeightSet([
        LayerWeights("lstm", "lstm", W=f(2, 16, 3), R=f(2, 16, 2), Wb=f(2, 16), Rb=f(2, 16), P=f(2, 2, 4)),
        LayerWeights("gru", "gru", W=f(1, 9, 4), R=f(1, 9, 3), Wb=f(1, 9), Rb=f(1, 9), linear_before_reset=False),
        LayerWeights("rnn", "rnn", W=f(1, 2, 3), R=f(1, 2, 2), Wb=f(1, 2), Rb=f(1, 2), activation="relu"),
    ])
