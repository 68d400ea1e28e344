"""Flax adapter (linen and NNX): carries and recurrent weights to and from the neutral layout.

Flax keeps no state inside its modules: a run returns its carry, and the next run takes it
as `initial_carry=`. An LSTM carry is `(c, h)` (c first, unlike PyTorch and Keras), a GRU or
simple-RNN carry is `h`, a `Bidirectional` carry is `(carry_fwd, carry_bwd)`. Flax has no
multi-layer RNN: a list of RNNs (or cells) is a stack, with a list of carries.

A target is a cell (`LSTMCell`, `OptimizedLSTMCell`, `GRUCell`, `SimpleCell`), an `RNN` of
one, a `Bidirectional` of two RNNs, or a list of these, from `flax.linen` or `flax.nnx`.
Flax itself is imported on first use, never when this module is imported.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from statefmt import (
    LayerSignature,
    LayerState,
    LayerWeights,
    LayerWeightSignature,
    StateError,
    StateMismatchError,
    StateSet,
    StateSignature,
    WeightSet,
    WeightSignature,
)
from statefmt.cells import CELLS

from ._common import fit, fit_weights, prefixed, require, source_metadata

_SUPPORTED = "LSTMCell, OptimizedLSTMCell, GRUCell or SimpleCell in an RNN, a Bidirectional, or a list of these"


def signature(target: Any, *, name: str | None = None) -> StateSignature:
    """What `target` expects: its layers in order; no batch size (Flax fixes none); its param dtype.

    >>> signature(nn.RNN(nn.LSTMCell(64))).layers
    (LayerSignature(kind='lstm', units=64, directions=1, proj_units=None, name='lstm_0'),)
    """
    layers = _layers(target)
    dtypes = {layer.dtype for layer in layers}
    return StateSignature([LayerSignature(x.kind, x.units, x.directions, None, prefixed(name, x.name))
                           for x in layers], dtype=dtypes.pop() if len(dtypes) == 1 else None)


def export(source: Any, state: Any = None, *, name: str | None = None) -> StateSet:
    """The carry of `source` (a carry, or a list of carries for a stack) as a StateSet.

    >>> carry, y = rnn(x, return_carry=True)
    >>> statefmt.save(export(rnn, carry), "today.statefmt")

    Flax modules hold no state, so `state` is required. Flax's `(c, h)` goes to statefmt's
    "c" and "h"; each array is copied to the host once.
    """
    if state is None:
        raise StateError("Flax modules keep no carry: pass the carry a run returned, "
                         "e.g. export(rnn, carry) after `carry, y = rnn(x, return_carry=True)`")
    layers = _layers(source)
    carries = _per_layer(source, state, "carry", "carries")
    problems = [problem for layer, carry in zip(layers, carries) for problem in layer.check_carry(carry)]
    if problems:
        raise StateMismatchError(problems)
    return StateSet([layer.export(carry, name) for layer, carry in zip(layers, carries)], metadata=_source(layers))


def initial_state(states: StateSet, target: Any, *, strict: bool = False, broadcast: bool = False,
                  batch_size: int | None = None, device: Any = None) -> Any:
    """The carry `target` takes as `initial_carry=` (a list of carries for a stack), from `states`.

    >>> carry = initial_state(statefmt.load("today.statefmt"), rnn)
    >>> carry, y = rnn(x2, initial_carry=carry, return_carry=True)

    Arrays are cast to the target's `param_dtype` (`strict=True` refuses any other dtype) and
    placed with `jax.device_put(x, device)`. Flax fixes no batch size: `broadcast=True,
    batch_size=N` starts N streams from a batch-1 state.
    """
    jax = require("jax", "flax")
    layers = _layers(target)
    states = fit(states, signature(target), strict=strict, broadcast=broadcast, batch_size=batch_size)

    def put(array: np.ndarray, dtype: Any) -> Any:
        return jax.device_put(array, device).astype(dtype)

    carries = [layer.carry(state, put) for layer, state in zip(layers, states.layers)]
    return carries if isinstance(target, (list, tuple)) else carries[0]


def export_weights(source: Any, *, variables: Any = None, name: str | None = None) -> WeightSet:
    """The recurrent weights of `source` in the neutral layout (statefmt.weights).

    >>> weights = export_weights(linen_rnn, variables=variables)  # linen: modules hold no params
    >>> weights = export_weights(rnn)                             # NNX: modules hold their params

    `variables` is what linen's `module.init` returns (a list of them for a stack). Flax's
    one bias per gate goes to Wb (Rb zero); a GRU candidate keeps `in` in Wb_n and `hn` in Rb_n.
    """
    layers = _layers(source)
    trees = _param_trees(layers, source, variables)
    problems = [problem for layer in layers for problem in layer.check_exportable()]
    if problems:
        raise StateMismatchError(problems)
    return WeightSet([layer.export_weights(tree, name) for layer, tree in zip(layers, trees)],
                     metadata=_source(layers))


def weight_signature(target: Any, *, variables: Any = None) -> WeightSignature:
    """What `target` can take as weights: per layer its sizes, what it computes, and how to rebuild it.

    >>> weight_signature(linen_rnn, variables=variables).check(weights)  # linen
    []
    """
    layers = _layers(target)
    trees = _param_trees(layers, target, variables)
    return WeightSignature([layer.weight_signature(tree) for layer, tree in zip(layers, trees)])


def import_weights(weights: WeightSet, target: Any, *, variables: Any = None) -> Any:
    """Load neutral weights into `target` and return what holds them, refusing (all at once) what does not map.

    >>> variables = import_weights(weights, linen_rnn, variables=variables)  # linen: new variables
    >>> rnn = import_weights(weights, rnn)                                    # NNX: the module

    What fits is `weight_signature(target)`'s to say: layer count, kind, units, input size,
    directions, activations, and every weight Flax cannot hold (a projection P; a GRU without
    linear_before_reset; a non-zero Rb_n for an NNX GRUCell, which has no recurrent candidate
    bias). Values are cast to each param's dtype. linen modules are immutable, so linen gets
    new variables (a list for a stack); NNX gets its module (or list) back, holding the weights.
    """
    layers = _layers(target)
    trees = _param_trees(layers, target, variables, copy=True)
    fit_weights(weights, WeightSignature([layer.weight_signature(tree) for layer, tree in zip(layers, trees)]),
                [problem for layer in layers for problem in layer.check_reverse()])
    for layer, tree, source in zip(layers, trees, weights.layers):
        layer.import_weights(source, tree)
    if layers[0].api == "nnx":
        return target
    return trees if isinstance(target, (list, tuple)) else trees[0]


# --- the layers of a target -------------------------------------------------------------------

@lru_cache(maxsize=1)
def _cell_table():
    """Flax cell class -> (kind, input Dense names, recurrent Dense names), names in PyTorch gate order."""
    nn = require("flax.linen", "flax")
    nnx = require("flax.nnx", "flax")
    lstm = (("ii", "if", "ig", "io"), ("hi", "hf", "hg", "ho"))
    fused = (("dense_i",), ("dense_h",))
    return {
        nn.LSTMCell: ("lstm", *lstm), nn.OptimizedLSTMCell: ("lstm", *lstm),
        nn.GRUCell: ("gru", ("ir", "iz", "in"), ("hr", "hz", "hn")), nn.SimpleCell: ("rnn", ("i",), ("h",)),
        nnx.LSTMCell: ("lstm", ("ii", "if_", "ig", "io"), lstm[1]), nnx.OptimizedLSTMCell: ("lstm", *fused),
        nnx.GRUCell: ("gru", *fused), nnx.SimpleCell: ("rnn", *fused),
    }


def _layers(target) -> list[_Layer]:
    modules = list(target) if isinstance(target, (list, tuple)) else [target]
    if not modules:
        raise StateMismatchError("an empty list is not a stack; pass at least one RNN")
    layers = [_Layer.of(index, module) for index, module in enumerate(modules)]
    if len({layer.api for layer in layers}) > 1:
        raise StateMismatchError("a stack mixes flax.linen and flax.nnx modules; build it from one API")
    return layers


def _source(layers) -> dict:
    model = ", ".join(f"{layer.api}.{type(layer.cells[0]).__name__}" + " x2 (bidirectional)" * (layer.directions == 2)
                      for layer in layers)
    return {"source": source_metadata("flax", "flax", model)}


def _per_layer(target, values, singular: str, plural: str) -> list:
    """One value per layer: `values` itself for one module, its items for a stack."""
    if not isinstance(target, (list, tuple)):
        return [values]
    if not isinstance(values, (list, tuple)) or len(values) != len(target):
        found = f"{len(values)} items" if isinstance(values, (list, tuple)) else type(values).__name__
        raise StateMismatchError(f"{plural}: a stack of {len(target)} layers takes a list of {len(target)} "
                                 f"{plural} (one {singular} per layer), found {found}")
    return list(values)


def _param_trees(layers, target, variables, *, copy: bool = False) -> list:
    """Per layer, where its params live: the NNX module itself, or linen's `variables["params"]`."""
    if layers[0].api == "nnx":
        if variables is not None:
            raise StateError("NNX modules hold their params: call without `variables`")
        return [None] * len(layers)
    if variables is None:
        raise StateError("linen modules hold no params: pass the variables `module.init` returned, "
                         "e.g. export_weights(rnn, variables=variables)")
    core = require("flax.core", "flax")
    trees = _per_layer(target, variables, "variables dict", "variables")
    if not all(hasattr(tree, "keys") and "params" in tree for tree in trees):
        raise StateError("variables: expected what linen's `module.init` returns, a dict with a 'params' "
                         "collection; for bare params pass {'params': params}")
    return [core.unfreeze(tree) if copy else tree for tree in trees]


class _Layer:
    """One layer of a target: its cells (one per direction) and where each keeps its params."""

    def __init__(self, index, api, kind, cells, paths, names, reverse):
        self.index, self.api, self.kind, self.cells, self.paths, self.reverse = index, api, kind, cells, paths, reverse
        self.input_names, self.hidden_names = names
        self.name = f"{kind}_{index}"
        self.where = f"layer {index} {self.name!r}"
        cell = cells[0]
        self.units = cell.hidden_features if api == "nnx" else cell.features
        self.dtype = np.dtype(cell.param_dtype).name
        self.directions = len(cells)

    @classmethod
    def of(cls, index: int, module) -> _Layer:
        nn = require("flax.linen", "flax")
        nnx = require("flax.nnx", "flax")
        api = "nnx" if isinstance(module, nnx.Module) else "linen"
        rnns: tuple[Any, ...]
        paths: tuple[tuple[str, ...], ...]
        if isinstance(module, (nn.Bidirectional, nnx.Bidirectional)):
            rnns, paths = (module.forward_rnn, module.backward_rnn), (("forward_rnn", "cell"), ("backward_rnn", "cell"))
        elif isinstance(module, (nn.RNN, nnx.RNN)):
            rnns, paths = (module,), (("cell",),)
        else:
            rnns, paths = (None,), ((),)
        cells: tuple[Any, ...] = tuple(module if rnn is None else getattr(rnn, "cell", None) for rnn in rnns)
        table = _cell_table()
        found = [next((table[k] for k in type(cell).__mro__ if k in table), None) for cell in cells]
        if None in found or len(set(found)) > 1:
            names = " and ".join(type(cell).__name__ for cell in cells)
            both = ", with the same cell both ways" if len(cells) == 2 else ""
            raise StateMismatchError(f"layer {index}: {type(module).__name__} of {names} has no neutral layout; "
                                     f"statefmt maps a {_SUPPORTED}{both}")
        units = {cell.hidden_features if api == "nnx" else cell.features for cell in cells}
        if len(units) > 1:
            raise StateMismatchError(f"layer {index}: the forward and backward cells differ in units "
                                     f"({' vs '.join(map(str, sorted(units)))}); the neutral layout stacks the "
                                     "directions of a layer, so build both with the same units")
        entry = found[0]
        assert entry is not None  # refused above
        kind, *names = entry
        reverse = rnns[0] is not None and len(rnns) == 1 and bool(rnns[0].reverse)
        return cls(index, api, kind, cells, paths, names, reverse)

    # states

    def check_carry(self, carry) -> list[str]:
        where = f"layer {self.index} {self.name!r}: carry"
        parts = carry if self.directions == 2 else (carry,)
        if self.directions == 2 and (not isinstance(carry, (tuple, list)) or len(carry) != 2):
            return [f"{where}: a Bidirectional carry is (carry_fwd, carry_bwd), found {_describe(carry)}"]
        problems = []
        for part in parts:
            if self.kind == "lstm" and (not isinstance(part, (tuple, list)) or len(part) != 2):
                return [f"{where}: an LSTM carry is (c, h), found {_describe(part)}"]
            arrays = part if self.kind == "lstm" else (part,)
            for array in arrays:
                shape = tuple(getattr(array, "shape", ()))
                if len(shape) != 2 or shape[1] != self.units:
                    problems.append(f"{where}: expected arrays of shape (batch, {self.units}), found {shape} "
                                    "(an unbatched carry takes carry[None])")
        return problems

    def export(self, carry, prefix: str | None = None) -> LayerState:
        parts = carry if self.directions == 2 else (carry,)
        names = ("c", "h") if self.kind == "lstm" else ("h",)
        arrays = {}
        for position, name in enumerate(names):
            pieces = [part[position] if self.kind == "lstm" else part for part in parts]
            if len(pieces) == 1:
                arrays[name] = np.asarray(pieces[0])[None]
            else:
                arrays[name] = np.asarray(_stack(pieces))
        return LayerState(prefixed(prefix, self.name), self.kind, **arrays)

    def carry(self, state: LayerState, put):
        dtype = self.cells[0].param_dtype

        def one(direction):
            if self.kind == "lstm":
                return put(state["c"][direction], dtype), put(state["h"][direction], dtype)
            return put(state["h"][direction], dtype)

        return (one(0), one(1)) if self.directions == 2 else one(0)

    # weights

    def check_exportable(self) -> list[str]:
        problems = self.check_reverse()
        for setting, function in self._functions(self.cells[0]):
            if _activation_name(function) is None:
                problems.append(f"{self.where}: {setting}: {_function_name(function)} has no neutral name; the "
                                f"neutral layout knows {', '.join(f'{n} ({f})' for n, f in _JAX_NAMES.items())}")
        return problems

    def check_reverse(self) -> list[str]:
        if not self.reverse:
            return []
        return [f"{self.where}: reverse=True: a backward-only RNN has no neutral layout (direction 0 runs "
                "forward); wrap it with a forward RNN in a Bidirectional, or use reverse=False"]

    def export_weights(self, tree, prefix: str | None = None) -> LayerWeights:
        arrays: dict[str, list[np.ndarray]] = {"W": [], "R": [], "Wb": [], "Rb": []}
        apart = self._apart()
        for direction, cell in enumerate(self.cells):
            params = self._params(tree, direction)
            kernel_i, bias_i = _fused([params[name] for name in self.input_names])
            kernel_h, bias_h = _fused([params[name] for name in self.hidden_names])
            if getattr(cell, "residual", False):
                kernel_h = kernel_h + np.eye(self.units, dtype=kernel_h.dtype)  # h' = act(... + W_h h + h)
            wb, rb = bias_i + bias_h, np.zeros_like(bias_i)
            wb[apart], rb[apart] = bias_i[apart], bias_h[apart]  # the GRU candidate's recurrent bias sits in r * (...)
            for key, value in zip(("W", "R", "Wb", "Rb"), (kernel_i.T, kernel_h.T, wb, rb)):
                arrays[key].append(value)
        functions = {setting: _activation_name(function) for setting, function in self._functions(self.cells[0])}
        stacked: dict[str, Any] = {k: np.stack(v) for k, v in arrays.items()}
        return LayerWeights(prefixed(prefix, self.name), self.kind, **stacked,
                            activation=str(functions["activation"]),  # named: check_exportable refused others
                            recurrent_activation=functions.get("recurrent_activation") or "sigmoid")

    def weight_signature(self, tree) -> LayerWeightSignature:
        """What the cell computes, and how Flax builds one that computes something else."""
        input_size = int(np.shape(self._params(tree, 0)[self.input_names[0]][0])[0])
        functions = {setting: _activation_name(function) or _function_name(function)
                     for setting, function in self._functions(self.cells[0])}
        advice = {f"{setting}={name}": f"build the cell with {_FLAX_SETTINGS[setting]}={function}"
                  for setting in functions for name, function in _JAX_NAMES.items()}
        advice.update({setting: f"JAX has no {{value}} function statefmt knows: load them into Keras, whose layers "
                                f"take {setting}={{value}}" for setting in functions})
        advice.update({
            "proj_units": "Flax cells have no projection of h: load them into a PyTorch LSTM with "
                          "proj_size={value}, or use weights without P",
            "linear_before_reset=False": "Flax GRU cells apply r after the recurrent matmul: load them into "
                                         "Keras GRU(reset_after=False)",
            "candidate_bias": f"flax.{self.api} {type(self.cells[0]).__name__} has none: use a target with a "
                              "recurrent candidate bias (flax.linen GRUCell, PyTorch GRU, Keras "
                              "GRU(reset_after=True)), or weights whose Rb_n is zero",
        })
        return LayerWeightSignature(
            self.kind, self.units, input_size, self.directions, None, self.name,
            activation=functions["activation"], recurrent_activation=functions.get("recurrent_activation", "sigmoid"),
            activations=tuple(_JAX_NAMES), recurrent_activations=tuple(_JAX_NAMES),
            candidate_bias=not (self.kind == "gru" and self.hidden_names == ("dense_h",)), advice=advice)

    def import_weights(self, weights: LayerWeights, tree) -> None:
        apart = self._apart()
        for direction, cell in enumerate(self.cells):
            params = self._params(tree, direction)
            kernel_h = weights["R"][direction].T
            if getattr(cell, "residual", False):
                kernel_h = kernel_h - np.eye(self.units, dtype=kernel_h.dtype)
            wb, rb = weights["Wb"][direction], weights["Rb"][direction]
            bias_i, bias_h = wb + rb, wb + rb  # one bias per gate: the merged one, wherever the Dense has it
            bias_i[apart], bias_h[apart] = wb[apart], rb[apart]
            for names, kernel, bias in ((self.input_names, weights["W"][direction].T, bias_i),
                                        (self.hidden_names, kernel_h, bias_h)):
                start = 0
                for name in names:
                    width = int(np.shape(params[name][0])[1])
                    params[name] = (kernel[:, start:start + width], bias[start:start + width])
                    start += width
            self._store(tree, direction, params)

    def _apart(self) -> np.ndarray:
        """The bias rows whose input and recurrent parts stay apart (statefmt.cells: the GRU candidate)."""
        cell = CELLS[self.kind]
        return np.concatenate([np.arange(self.units) + cell.gates.index(gate) * self.units for gate in cell.apart]
                              ).astype(int) if cell.apart else np.zeros(0, int)

    # parameters: linen keeps them in a nested dict, NNX on the modules

    def _params(self, tree, direction) -> dict[str, tuple]:
        """Dense name -> (kernel, bias or None), as numpy views of the params."""
        names = self.input_names + self.hidden_names
        if self.api == "nnx":
            denses = {name: getattr(self.cells[direction], name) for name in names}
            return {name: (np.asarray(d.kernel.get_value()),
                           None if d.bias is None else np.asarray(d.bias.get_value())) for name, d in denses.items()}
        node = self._linen_node(tree, direction)
        return {name: (np.asarray(node[name]["kernel"]),
                       np.asarray(node[name]["bias"]) if "bias" in node[name] else None) for name in names}

    def _store(self, tree, direction, params) -> None:
        jnp = require("jax.numpy", "flax")
        for name, (kernel, bias) in params.items():
            if self.api == "nnx":
                dense = getattr(self.cells[direction], name)
                slots = [(dense.kernel, kernel)] + ([(dense.bias, bias)] if dense.bias is not None else [])
                for variable, value in slots:
                    variable.set_value(jnp.asarray(value, variable.get_value().dtype))
            else:
                entry = self._linen_node(tree, direction)[name]
                entry["kernel"] = jnp.asarray(kernel, entry["kernel"].dtype)
                if "bias" in entry:
                    entry["bias"] = jnp.asarray(bias, entry["bias"].dtype)

    def _linen_node(self, tree, direction):
        node = tree["params"]
        for key in self.paths[direction]:
            node = node[key]
        return node

    def _functions(self, cell) -> list[tuple[str, Any]]:
        """(neutral setting, the cell's function), for the settings the cell has."""
        return [(setting, getattr(cell, name)) for setting, name in _FLAX_SETTINGS.items() if hasattr(cell, name)]


def _fused(params):
    """One (in, G*units) kernel and its (G*units,) bias, zeros where a Dense has no bias."""
    kernel = np.concatenate([k for k, _ in params], axis=1)
    bias = np.concatenate([np.zeros(k.shape[1], k.dtype) if b is None else b for k, b in params])
    return kernel, bias


def _stack(pieces):
    jnp = require("jax.numpy", "flax")
    return jnp.stack(pieces)  # on the device: the host copy stays the only one


_FLAX_SETTINGS = {"activation": "activation_fn", "recurrent_activation": "gate_fn"}
_JAX_NAMES = {"tanh": "jax.numpy.tanh", "sigmoid": "jax.nn.sigmoid", "relu": "jax.nn.relu",
              "hard_sigmoid": "jax.nn.hard_sigmoid"}  # statefmt.cells.ACTIVATIONS that JAX names (not "linear")


def _activation_name(function) -> str | None:
    """The neutral name of a JAX function (statefmt.cells.ACTIVATIONS), or None."""
    jax = require("jax", "flax")
    known = ((jax.nn.sigmoid, "sigmoid"), (jax.numpy.tanh, "tanh"), (jax.nn.relu, "relu"),
             (jax.nn.hard_sigmoid, "hard_sigmoid"))  # Keras 3's: relu6(x + 3) / 6
    return next((name for known_function, name in known if function is known_function), None)


def _function_name(function) -> str:
    return _activation_name(function) or str(getattr(function, "__name__", repr(function)))


def _describe(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"{type(value).__name__} of shape {tuple(getattr(value, 'shape', ()))}"

