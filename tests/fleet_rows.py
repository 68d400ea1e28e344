"""Rows of a fleet, for the store's tests in every file and in the processes they start (imports no lance).

Expected values are built here with numpy, independent of the store's code paths.
"""

from __future__ import annotations

import numpy as np

from statefmt import LayerSignature, LayerState, StateSet, StateSignature

# an LSTM with a projection, a bidirectional GRU and a simple RNN: every column shape the layout has
SIGNATURE = StateSignature([LayerSignature("lstm", 6, proj_units=4, name="enc"),
                            LayerSignature("gru", 5, directions=2, name="mid"),
                            LayerSignature("rnn", 3, name="out")], dtype="float32")
BIG = StateSignature([LayerSignature("lstm", 256, name="l0"), LayerSignature("lstm", 256, name="l1")])  # 4 KiB a row


def states_for(ids, seed: int, dtype="float32", signature=SIGNATURE) -> StateSet:
    """Random states for `ids` shaped by `signature`; each stream's values are distinct."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    layers = []
    for layer in signature.layers:
        h_units = layer.proj_units or layer.units
        arrays = {"h": rng.standard_normal((layer.directions, n, h_units)).astype(dtype)}
        if layer.kind == "lstm":
            arrays["c"] = rng.standard_normal((layer.directions, n, layer.units)).astype(dtype)
        layers.append(LayerState(layer.name, layer.kind, **arrays))
    return StateSet(layers, stream_ids=list(ids))


def constant(ids, value, signature=SIGNATURE) -> StateSet:
    """States for `ids` whose every value is `value`: which put a row came from shows in any of its values."""
    layers = [LayerState(x.name, x.kind, **{s: np.full((x.directions, len(ids),
              (x.proj_units or x.units) if s == "h" else x.units), value, "float32")
              for s in (("h", "c") if x.kind == "lstm" else ("h",))}) for x in signature.layers]
    return StateSet(layers, stream_ids=list(ids))


def row_values(states: StateSet) -> np.ndarray:
    """Per stream, the one value its arrays hold (each row came whole from one put of `constant`)."""
    flat = np.concatenate([np.swapaxes(layer[s], 0, 1).reshape(states.batch_size, -1)
                           for layer in states.layers for s in layer.state_names], axis=1)
    assert (flat == flat[:, :1]).all(), "a stream's row mixes values of two puts"
    return flat[:, 0]


def column(states: StateSet, stream_id: str) -> dict:
    """One stream's arrays, keyed (layer, state), from a StateSet holding it."""
    row = states.stream_ids.index(stream_id)
    return {(i, s): layer[s][:, row] for i, layer in enumerate(states.layers) for s in layer.state_names}


def assert_stream(got: StateSet, expected: StateSet, stream_id: str) -> None:
    want, have = column(expected, stream_id), column(got, stream_id)
    assert want.keys() == have.keys()
    for key in want:
        np.testing.assert_array_equal(have[key], want[key], err_msg=f"{stream_id} {key}")
