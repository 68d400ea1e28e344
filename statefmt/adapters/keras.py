"""Keras 3 adapter: recurrent state and weights to and from the neutral layout, on any Keras backend.

Keras keeps one recurrent layer per `LSTM`, `GRU` or `SimpleRNN` (or `RNN` over their cells),
and `Bidirectional` wraps two of them. A run with `return_state=True` returns `[output, h, c]`
(`[output, fwd_h, fwd_c, bwd_h, bwd_c]` for a Bidirectional) and `initial_state=` takes the
states in that order. An `RNN(StackedRNNCells([...]))` holds one neutral layer per cell, named
"rnn/cell"; its `return_state` and `initial_state=` take one such list per cell. A
`stateful=True` layer keeps its states in the variables `layer.states`, which `model.save()`
does not persist: `export` reads them, `load_into` assigns them.

A target is one of those layers or a model; a model's recurrent layers are found in order,
nested models included (named "outer/inner"). Only `keras.ops` is used, so every backend
works; Keras itself is imported on first use, never when this module is imported.
"""

from __future__ import annotations

import contextlib
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
from statefmt.cells import ACTIVATIONS, FRAMEWORK_GATE_ORDER, STATE_NAMES, gate_rows

from ._common import fit, fit_weights, prefixed, require, source_metadata

_SUPPORTED = ("LSTM, GRU or SimpleRNN (or RNN of an LSTMCell, GRUCell or SimpleRNNCell, or of StackedRNNCells of "
              "them), or a Bidirectional of one")


def signature(target: Any, *, name: str | None = None) -> StateSignature:
    """What `target` expects: its recurrent layers in order, the batch size its stateful layers fix, its dtype.

    >>> signature(model)
    StateSignature(layers=(LayerSignature(kind='lstm', units=4, directions=1, proj_units=None, name='lstm'),),
                   batch_size=3, dtype='float32')
    """
    layers = _layers(target)
    batches = {layer.batch_size for layer in layers if layer.batch_size is not None}
    dtypes = {layer.dtype for layer in layers}
    return StateSignature([LayerSignature(x.kind, x.units, x.directions, None, prefixed(name, x.name))
                           for x in layers],
                          batch_size=batches.pop() if len(batches) == 1 else None,
                          dtype=dtypes.pop() if len(dtypes) == 1 else None)


def export(source: Any, state: Any = None, *, name: str | None = None) -> StateSet:
    """The state of `source` (a recurrent layer or a model) as a StateSet of numpy arrays.

    >>> statefmt.save(export(model), "today.statefmt")          # stateful layers: read layer.states
    >>> out, h, c = lstm(x)  # lstm = keras.layers.LSTM(4, return_state=True)
    >>> statefmt.save(export(lstm, [h, c]), "today.statefmt")

    `state` is what `return_state=True` returns after the output (h, or h, c; forward states
    then backward for a Bidirectional); for a model, a list with one such entry per recurrent
    layer. Without it, every layer must be stateful and built. Each array is copied to the host once.
    """
    layers = _layers(source)
    if state is None:
        problems = [problem for layer in layers for problem in layer.check_stateful(
            "pass the states a return_state=True run returned: export(source, state)")]
        if problems:
            raise StateError(problems)
        tensors = [[variable.value for variable in layer.variables()] for layer in layers]
    elif len(layers) > 1:  # a model, or an RNN(StackedRNNCells), with several recurrent layers
        if not isinstance(state, (list, tuple)) or len(state) != len(layers):
            found = f"{len(state)} entries" if isinstance(state, (list, tuple)) else type(state).__name__
            raise StateMismatchError(f"state: {source.name!r} has {len(layers)} recurrent layers and takes a list of "
                                     f"{len(layers)} entries (one layer's return_state tensors each), found {found}")
        tensors = list(state)
    elif (_is_model(source) and isinstance(state, (list, tuple)) and len(state) == 1
          and isinstance(state[0], (list, tuple))):
        tensors = list(state)  # a one-layer model's state given as a list of one layer's list
    else:
        tensors = [state]
    tensors = [list(entry) if isinstance(entry, (list, tuple)) else [entry] for entry in tensors]
    problems = [problem for layer, entry in zip(layers, tensors) for problem in layer.check_tensors(entry)]
    if problems:
        raise StateMismatchError(problems)
    return StateSet([layer.export(entry, name) for layer, entry in zip(layers, tensors)],
                    metadata={"source": source_metadata("keras", "keras", source.name)})


def initial_state(states: StateSet, target: Any, *, strict: bool = False, broadcast: bool = False,
                  batch_size: int | None = None, device: Any = None) -> list[Any]:
    """What `target` takes as `initial_state=`: the list of tensors its recurrent layer takes.

    >>> out, h, c = lstm(x2, initial_state=initial_state(statefmt.load("today.statefmt"), lstm))

    For a layer, or a model with one recurrent layer (a subclassed model whose `call` hands
    `initial_state` on to its LSTM), that layer's list: `[h, c]`, `[h]`, or forward then backward
    for a Bidirectional. For a model with several, one such list per recurrent layer, in order.
    Tensors are cast to the layer's dtype (`strict=True` refuses any other dtype) and made
    under `keras.device(device)` when a device is given. `broadcast=True` starts every stream
    from a batch-1 state, at the batch a stateful target fixes (or `batch_size=N`).
    """
    keras = require("keras", "keras")
    layers = _layers(target)
    states = fit(states, signature(target), strict=strict, broadcast=broadcast, batch_size=batch_size)
    with keras.device(device) if device is not None else contextlib.nullcontext():
        lists = [[keras.ops.convert_to_tensor(array, dtype=layer.dtype) for array in layer.arrays(state)]
                 for layer, state in zip(layers, states.layers)]
    return lists if len(lists) > 1 else lists[0]


def load_into(states: StateSet, target: Any, *, strict: bool = False, broadcast: bool = False,
              batch_size: int | None = None) -> Any:
    """Assign `states` to the states of a stateful model (or layer), and return it: resume where it stopped.

    >>> model = load_into(statefmt.load("today.statefmt"), model)
    >>> y = model(x2)  # continues from the saved state

    Every recurrent layer must be stateful and built (`keras.Input(batch_shape=...)`). Nothing
    is assigned unless the whole state fits; values are cast to each state variable's dtype.
    """
    keras = require("keras", "keras")
    if not isinstance(states, StateSet):
        fit(states, StateSignature())  # says what was given and what is expected
    layers = _layers(target)
    problems = [problem for layer in layers for problem in layer.check_stateful(
        "pass initial_state(states, layer) to its initial_state= instead")]
    if problems:
        raise StateMismatchError(problems)
    states = fit(states, signature(target), strict=strict, broadcast=broadcast, batch_size=batch_size)
    for layer, state in zip(layers, states.layers):
        for variable, array in zip(layer.variables(), layer.arrays(state)):
            variable.assign(keras.ops.convert_to_tensor(array, dtype=variable.dtype))
    return target


def export_weights(source: Any, *, name: str | None = None) -> WeightSet:
    """The recurrent weights of `source` (a layer or a model) in the neutral layout (statefmt.weights).

    >>> statefmt.save(export_weights(model), "weights.statefmt")

    Kernels are transposed, GRU gates reordered z, r, h -> r, z, n; an LSTM's or simple RNN's
    one bias goes to Wb (Rb zero); a GRU `reset_after=True` bias `[input; recurrent]` to Wb and
    Rb, a `reset_after=False` one to Wb with `linear_before_reset=False`. No bias: zeros.
    """
    layers = _layers(source)
    problems = [problem for layer in layers for problem in layer.check_weights()]
    if problems:
        raise StateMismatchError(problems)
    return WeightSet([layer.export_weights(name) for layer in layers],
                     metadata={"source": source_metadata("keras", "keras", source.name)})


def weight_signature(target: Any) -> WeightSignature:
    """What `target` can take as weights: per recurrent layer its sizes, what it computes, how to rebuild it.

    >>> weight_signature(model).check(statefmt.load_weights("weights.statefmt"))
    []
    """
    layers = _layers(target)
    problems = [problem for layer in layers for problem in layer.check_built()]
    if problems:
        raise StateMismatchError(problems)
    return WeightSignature([layer.weight_signature() for layer in layers])


def import_weights(weights: WeightSet, target: Any) -> Any:
    """Assign neutral weights to `target`'s recurrent layers and return it, refusing (all at once) what does not map.

    >>> model = import_weights(statefmt.load_weights("weights.statefmt"), model)

    What fits is `weight_signature(target)`'s to say: layer count, kind, units, input size,
    directions, activations, a projection P (Keras has none), biases into `use_bias=False`,
    and the GRU candidate convention (`linear_before_reset` against `reset_after`). Values are
    cast to each variable's dtype. (Not Keras' `Model.load_weights`, which reads a file.)
    """
    layers = _layers(target)
    fit_weights(weights, weight_signature(target),
                [problem for layer in layers for problem in layer.check_directions()])
    for layer, source in zip(layers, weights.layers):
        layer.import_weights(source)
    return target


# --- the recurrent layers of a target ------------------------------------------------------------

def _is_model(target) -> bool:
    return isinstance(target, require("keras", "keras").Model)


def _layers(target) -> list[_Layer]:
    keras = require("keras", "keras")
    recurrent = (keras.layers.RNN, keras.layers.Bidirectional)
    found: list[Any] = []

    def visit(layer, name):
        if isinstance(layer, keras.layers.RNN) and isinstance(layer.cell, keras.layers.StackedRNNCells):
            for slot, cell in enumerate(layer.cell.cells):  # one neutral layer per cell, in order
                found.append(_Layer.of(len(found), f"{name}/{cell.name}", layer, slot))
        elif isinstance(layer, recurrent):
            found.append(_Layer.of(len(found), name, layer))
        elif isinstance(layer, keras.Model):  # Sequential, functional or subclassed: its layers in order
            for inner in layer.layers:
                visit(inner, f"{name}/{inner.name}" if name else inner.name)
        elif any(isinstance(inner, recurrent) for inner in layer._flatten_layers(include_self=False)):
            raise StateMismatchError(f"layer {name!r} ({type(layer).__name__}) holds recurrent layers inside a "
                                     "custom layer, whose order statefmt cannot know; pass those layers themselves")

    if isinstance(target, recurrent):
        visit(target, target.name)
    elif isinstance(target, keras.Model):
        visit(target, "")
    else:
        raise StateMismatchError(f"target: expected a Keras model or a recurrent layer ({_SUPPORTED}), "
                                 f"found {type(target).__name__}")
    if not found:
        raise StateMismatchError(f"model {target.name!r} has no recurrent layer ({_SUPPORTED})")
    return found


def _cell(rnn, slot):
    """An RNN's cell, or cell `slot` of its StackedRNNCells."""
    cell = getattr(rnn, "cell", rnn)
    return cell if slot is None else cell.cells[slot]


class _Layer:
    """One recurrent layer of a target: its RNNs (forward, then backward for a Bidirectional), and for an
    `RNN(StackedRNNCells)` which of its cells (`slot`): each cell of a stack is a neutral layer of its own."""

    def __init__(self, index, name, kind, rnns, slot=None):
        self.index, self.name, self.kind, self.rnns, self.slot = index, name, kind, rnns, slot
        self.where = f"layer {index} {name!r}"
        self.cells = [_cell(rnn, slot) for rnn in rnns]
        self.units = self.cells[0].units
        self.directions = len(rnns)
        self.stateful = rnns[0].stateful
        built = self.stateful and rnns[0].states is not None
        variables = self.variables() if built else []
        self.batch_size = int(variables[0].shape[0]) if built else None
        # the dtype the layer keeps its state in: its state variables', else its compute dtype (a name)
        self.dtype = variables[0].dtype if built else rnns[0].compute_dtype

    @classmethod
    def of(cls, index, name, layer, slot=None) -> _Layer:
        keras = require("keras", "keras")
        kinds = {keras.layers.LSTMCell: "lstm", keras.layers.GRUCell: "gru", keras.layers.SimpleRNNCell: "rnn"}
        bidirectional = isinstance(layer, keras.layers.Bidirectional)
        rnns: tuple[Any, ...] = (layer.forward_layer, layer.backward_layer) if bidirectional else (layer,)
        where = f"layer {index} {name!r}"
        if bidirectional and any(isinstance(getattr(rnn, "cell", None), keras.layers.StackedRNNCells) for rnn in rnns):
            raise StateMismatchError(f"{where}: a Bidirectional of RNN(StackedRNNCells) has no neutral layout yet; "
                                     "stack Bidirectional layers instead, one per cell")
        cells = [_cell(rnn, slot) for rnn in rnns]
        found = [next((kind for k, kind in kinds.items() if isinstance(cell, k)), None) for cell in cells]
        if None in found or len(set(found)) > 1:
            names = " and ".join(type(cell).__name__ for cell in cells)
            both = ", with the same cell both ways" if bidirectional else ""
            what = f"RNN(StackedRNNCells) cell {slot}, a {names}," if slot is not None else \
                f"{type(layer).__name__} of {names}"
            raise StateMismatchError(f"{where}: {what} has no neutral layout; statefmt maps an {_SUPPORTED}{both}")
        if bidirectional and len({rnn.cell.units for rnn in rnns}) > 1:
            raise StateMismatchError(f"{where}: the forward and backward layers differ in units "
                                     f"({rnns[0].cell.units} vs {rnns[1].cell.units}); the neutral layout stacks "
                                     "the directions of a layer, so build both with the same units")
        return cls(index, name, found[0], rnns, slot)

    @property
    def _names(self) -> tuple[str, ...]:
        return STATE_NAMES[self.kind]

    # states

    def variables(self) -> list:
        """The state variables, forward then backward, in `return_state` order (of this cell, in a stack)."""
        tree = require("keras", "keras").tree
        return [variable for rnn in self.rnns
                for variable in tree.flatten(rnn.states if self.slot is None else rnn.states[self.slot])]

    def check_stateful(self, otherwise: str) -> list[str]:
        if not self.stateful:
            return [f"{self.where}: not stateful, so it keeps no states; {otherwise}"]
        if self.batch_size is None:
            return [f"{self.where}: stateful but not built, so it has no states yet; "
                    "build the model with keras.Input(batch_shape=...) first"]
        return []

    def check_tensors(self, tensors) -> list[str]:
        expected = [f"{prefix}{name}" for prefix in (("fwd_", "bwd_") if self.directions == 2 else ("",))
                    for name in self._names]
        if len(tensors) != len(expected):
            return [f"{self.where}: state: takes [{', '.join(expected)}] (return_state outputs after the output), "
                    f"found {len(tensors)} tensors"]
        problems = []
        for label, tensor in zip(expected, tensors):
            shape = tuple(getattr(tensor, "shape", ()))
            if len(shape) != 2 or shape[1] != self.units:
                problems.append(f"{self.where}: {label}: expected shape (batch, {self.units}), found {shape}")
        return problems

    def export(self, tensors, prefix: str | None = None) -> LayerState:
        ops = require("keras", "keras").ops
        arrays = {}
        for position, name in enumerate(self._names):
            pieces = tensors[position::len(self._names)]
            if len(pieces) == 1:
                arrays[name] = ops.convert_to_numpy(pieces[0])[None]
            else:  # stacked on the device, so the host copy stays the only one
                arrays[name] = ops.convert_to_numpy(ops.stack(pieces))
        return LayerState(prefixed(prefix, self.name), self.kind, **arrays)

    def arrays(self, state: LayerState) -> list[np.ndarray]:
        """The state's arrays in `initial_state=` order: per direction, h then c."""
        return [state[name][direction] for direction in range(self.directions) for name in self._names]

    # weights

    def check_weights(self) -> list[str]:
        problems = self.check_directions() + self.check_built()
        for setting, name in self._functions():
            if name not in ACTIVATIONS:
                problems.append(f"{self.where}: {setting}: {name} has no neutral name; the neutral layout knows "
                                f"{', '.join(ACTIVATIONS)}")
        return problems

    def check_built(self) -> list[str]:
        if all(cell.built for cell in self.cells):
            return []
        return [f"{self.where}: not built, so it has no weights yet; call the model once or build it"]

    def check_directions(self) -> list[str]:
        if self.rnns[0].go_backwards or (self.directions == 2 and not self.rnns[1].go_backwards):
            return [f"{self.where}: go_backwards: direction 0 of the neutral layout runs forward and direction 1 "
                    "backward; use go_backwards=False, or a Bidirectional for both directions"]
        return []

    def _order(self) -> np.ndarray:
        """Keras gate rows in neutral order: `neutral = keras[order]`."""
        return gate_rows(self.kind, self.units, FRAMEWORK_GATE_ORDER["keras"][self.kind])

    def export_weights(self, prefix: str | None = None) -> LayerWeights:
        ops = require("keras", "keras").ops
        order = self._order()
        arrays: dict[str, list[np.ndarray]] = {"W": [], "R": [], "Wb": [], "Rb": []}
        for cell in self.cells:
            kernel = ops.convert_to_numpy(cell.kernel)
            zeros = np.zeros(kernel.shape[1], kernel.dtype)
            bias = None if cell.bias is None else ops.convert_to_numpy(cell.bias)
            if bias is None:
                wb, rb = zeros, zeros
            elif bias.ndim == 2:  # GRU reset_after=True: [input; recurrent]
                wb, rb = bias[0], bias[1]
            else:
                wb, rb = bias, zeros
            values = (kernel.T[order], ops.convert_to_numpy(cell.recurrent_kernel).T[order], wb[order], rb[order])
            for key, value in zip(arrays, values):
                arrays[key].append(value)
        cell = self.cells[0]
        functions = dict(self._functions())
        return LayerWeights(prefixed(prefix, self.name), self.kind,
                            **{key: np.stack(value) for key, value in arrays.items()},
                            activation=functions["activation"],
                            recurrent_activation=functions.get("recurrent_activation", "sigmoid"),
                            linear_before_reset=getattr(cell, "reset_after", True))

    def weight_signature(self) -> LayerWeightSignature:
        """What the layer computes, and how Keras builds one that computes something else."""
        cell = self.cells[0]
        functions = dict(self._functions())
        layer = "GRU" if self.kind == "gru" else "layer"
        advice = {f"{setting}={name}": f"build the layer with {setting}={name!r}"
                  for setting in functions for name in ACTIVATIONS}
        advice.update({
            "proj_units": "Keras layers have no projection of h: load them into a PyTorch LSTM with "
                          "proj_size={value}, or use weights without P",
            "bias": "build the layer with use_bias=True",
            "linear_before_reset=False": f"build the {layer} with reset_after=False",
            "linear_before_reset=True": f"build the {layer} with reset_after=True (the Keras default)",
        })
        return LayerWeightSignature(
            self.kind, self.units, int(cell.kernel.shape[0]), self.directions, None, self.name,
            activation=functions["activation"], recurrent_activation=functions.get("recurrent_activation", "sigmoid"),
            activations=tuple(ACTIVATIONS), recurrent_activations=tuple(ACTIVATIONS),
            linear_before_reset=bool(getattr(cell, "reset_after", True)), bias=bool(cell.use_bias), advice=advice)

    def import_weights(self, weights: LayerWeights) -> None:
        ops = require("keras", "keras").ops
        order = np.argsort(self._order())  # neutral rows in Keras order
        for direction, cell in enumerate(self.cells):
            wb, rb = weights["Wb"][direction], weights["Rb"][direction]
            values = [(cell.kernel, weights["W"][direction][order].T),
                      (cell.recurrent_kernel, weights["R"][direction][order].T)]
            if cell.bias is not None:
                two = getattr(cell, "reset_after", False)  # GRU reset_after=True keeps [input; recurrent]
                values.append((cell.bias, np.stack([wb[order], rb[order]]) if two else (wb + rb)[order]))
            for variable, value in values:
                variable.assign(ops.convert_to_tensor(value, dtype=variable.dtype))

    def _functions(self) -> list[tuple[str, str]]:
        settings = ("activation",) if self.kind == "rnn" else ("activation", "recurrent_activation")
        return [(setting, _activation_name(getattr(self.cells[0], setting))) for setting in settings]


def _activation_name(function) -> str:
    """Keras's registered name ("tanh", "hard_sigmoid", ...); "module.name" for a function Keras does not know."""
    keras = require("keras", "keras")
    name = getattr(function, "__name__", None)
    try:  # not keras.activations.serialize: on the torch or JAX backend it imports TensorFlow (3.5 s)
        if name and keras.activations.get(name) is function:
            return name
    except (ValueError, TypeError):
        pass
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"
