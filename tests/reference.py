"""A plain numpy run of the neutral weight layout: the yardstick every adapter's weight port is held to.

It follows `statefmt.weights` (PyTorch's equations, ONNX's layout) in float64, so an adapter
that agrees with it agrees with every other adapter that does.
"""

from __future__ import annotations

import numpy as np

from statefmt import LayerState, StateSet, WeightSet

ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "hard_sigmoid": lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0),  # Keras 3 and jax.nn; Keras 2's was 0.2 x + 0.5
    "linear": lambda x: x,
}


def run(weights: WeightSet, x: np.ndarray, states: StateSet | None = None):
    """Run `x` `[batch, time, features]` through the layers; return the last layer's output and the final states.

    A bidirectional layer's output concatenates forward and backward features, as every framework does.
    Missing `states` start from zeros.
    """
    x = np.asarray(x, np.float64)
    batch = x.shape[0]
    finals = []
    for index, layer in enumerate(weights.layers):
        outputs, finals_h, finals_c = [], [], []
        for d in range(layer.directions):
            h_units = layer.proj_units or layer.units
            h = np.zeros((batch, h_units)) if states is None else np.asarray(states.layers[index]["h"][d], np.float64)
            c = np.zeros((batch, layer.units))
            if layer.kind == "lstm" and states is not None:
                c = np.asarray(states.layers[index]["c"][d], np.float64)
            steps = range(x.shape[1]) if d == 0 else reversed(range(x.shape[1]))
            out = np.zeros((batch, x.shape[1], h_units))
            for t in steps:
                h, c = _step(layer, d, x[:, t], h, c)
                out[:, t] = h
            outputs.append(out)
            finals_h.append(h)
            finals_c.append(c)
        x = np.concatenate(outputs, axis=-1)
        arrays = {"h": np.stack(finals_h)}
        if layer.kind == "lstm":
            arrays["c"] = np.stack(finals_c)
        finals.append(LayerState(layer.name, layer.kind, **arrays))
    return x, StateSet(finals)


def _step(layer, d, x_t, h, c):
    W, R, Wb, Rb = (np.asarray(layer[k][d], np.float64) for k in ("W", "R", "Wb", "Rb"))
    act, rec = ACTIVATIONS[layer.activation], ACTIVATIONS[layer.recurrent_activation]
    u = layer.units
    if layer.kind == "rnn":
        return act(x_t @ W.T + Wb + h @ R.T + Rb), c
    if layer.kind == "lstm":
        g = x_t @ W.T + Wb + h @ R.T + Rb
        i, f, cand, o = rec(g[:, :u]), rec(g[:, u:2 * u]), act(g[:, 2 * u:3 * u]), rec(g[:, 3 * u:])
        c = f * c + i * cand
        h = o * act(c)
        if layer.proj_units:
            h = h @ np.asarray(layer["P"][d], np.float64).T
        return h, c
    gx, gh = x_t @ W.T + Wb, h @ R.T + Rb
    r, z = rec(gx[:, :u] + gh[:, :u]), rec(gx[:, u:2 * u] + gh[:, u:2 * u])
    if layer.linear_before_reset:
        n = act(gx[:, 2 * u:] + r * gh[:, 2 * u:])
    else:
        n = act(gx[:, 2 * u:] + (r * h) @ R[2 * u:].T + Rb[2 * u:])
    return (1 - z) * n + z * h, c
