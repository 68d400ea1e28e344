"""Small states and weights that tests in every part build, the comparisons they share, and a trip through a file."""

import json
from pathlib import Path

import ml_dtypes
import numpy as np

import statefmt
from statefmt import LayerState, LayerWeights, StateSet, WeightSet
from statefmt.cells import STATE_NAMES

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


def relabel(weights, **fields):
    """`weights` with the same arrays and other settings: activation, recurrent_activation or linear_before_reset."""
    layers = []
    for layer in weights:
        options = {"activation": layer.activation, "recurrent_activation": layer.recurrent_activation,
                   "linear_before_reset": layer.linear_before_reset, **fields}
        layers.append(LayerWeights(layer.name, layer.kind, *(layer[k] for k in layer.weight_names), **options))
    return WeightSet(layers)


def states_of(seed, batch=2, units=3, ids=True):
    """A random two-layer state (an LSTM, then a bidirectional GRU) from `seed`: different seeds, different bytes."""
    rng = np.random.default_rng(seed)
    f = lambda *shape: rng.standard_normal(shape).astype("float32")  # noqa: E731
    layers = [LayerState("enc", "lstm", h=f(1, batch, units), c=f(1, batch, units)),
              LayerState("dec", "gru", h=f(2, batch, units))]
    return StateSet(layers, stream_ids=[f"s{i}" for i in range(batch)] if ids else None)


def same(a: StateSet, b: StateSet) -> bool:
    """Byte for byte the same state: ids, layer names, dtypes and values."""
    return (a.stream_ids == b.stream_ids and [x.name for x in a] == [y.name for y in b]
            and all(x[n].dtype == y[n].dtype and x[n].tobytes() == y[n].tobytes()
                    for x, y in zip(a, b) for n in x.state_names))


def random_states(signature, *, batch=3, dtype="float32", seed=1):
    """A non-zero state that fits `signature` (what an adapter's `signature(target)` returns)."""
    rng = np.random.default_rng(seed)
    layers = []
    for k, layer in enumerate(signature.layers):
        widths = {"h": layer.proj_units or layer.units, "c": layer.units}
        arrays = {name: (0.5 * rng.standard_normal((layer.directions, batch, widths[name]))).astype(_dtype(dtype))
                  for name in STATE_NAMES[layer.kind]}
        layers.append(LayerState(layer.name or f"l{k}", layer.kind, **arrays))
    return StateSet(layers)


def through_file(data, folder, name="data.statefmt", **options):
    """`data` (a state or weights) saved in `folder` and read back, as a file hands it over."""
    path = Path(folder) / name
    statefmt.save(data, path)
    return statefmt.load(path, **options) if isinstance(data, StateSet) else statefmt.load_weights(path)


def largest_difference(a, b) -> float:
    """The largest absolute difference between two arrays, or two equally long lists of arrays, of any framework."""
    pairs = zip(a, b, strict=True) if isinstance(a, (list, tuple)) else [(a, b)]
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in pairs)


def fleet(batch: int, units: int = 300, dtype="float32", ids=True) -> StateSet:
    """A two-layer state whose every row is distinct; row r of h starts with the value r."""
    rng = np.random.default_rng(batch)
    h = rng.standard_normal((2, batch, units)).astype(_dtype(dtype))
    h[0, :, 0] = np.arange(batch)
    c = rng.standard_normal((2, batch, units)).astype(_dtype(dtype))
    g = rng.standard_normal((1, batch, 7)).astype(_dtype(dtype))
    layers = [LayerState("enc", "lstm", h=h, c=c), LayerState("dec", "gru", h=g)]
    return StateSet(layers, stream_ids=[f"pump-{i}" for i in range(batch)] if ids else None)


def flip(path: Path, tensor: str, offset: int) -> None:
    """Flip one bit of a tensor's data in place, leaving every checksum as it was."""
    data = bytearray(path.read_bytes())
    length = int.from_bytes(data[:8], "little")
    start = json.loads(data[8:8 + length])[tensor]["data_offsets"][0]
    data[8 + length + start + offset] ^= 0x04
    path.write_bytes(bytes(data))


def one_gru(h, ids=None, name="g") -> StateSet:
    """A state of one GRU layer holding `h` [directions, batch, units] as given (any dtype, any byte order)."""
    return StateSet([LayerState(name, "gru", h=h)], stream_ids=ids)
