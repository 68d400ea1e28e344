"""PyTorch adapter: `nn.LSTM`, `nn.GRU`, `nn.RNN` and their cells, states and weights to and from the neutral layout.

PyTorch modules keep no state: a run returns `(h_n, c_n)` (LSTM) or `h_n`, stacked
`[layers*directions, batch, hidden]` with index `layer*directions + direction`, and the next
run takes them as `hx`. Cells take and return `(h, c)` or `h` of shape `(batch, hidden)`.
Unbatched input goes with 2-D states (1-D for cells): `export` detects them, and the batch-1
row of `initial_state`'s result is one. Each PyTorch layer is one neutral layer, named "l0",
"l1", ... (or "<name>/l0" with `name=`, as in every adapter). PyTorch's gate order (LSTM
i, f, g, o; GRU r, z, n) and kernel layout `(gates*hidden, in)` are the neutral ones.
PyTorch itself is imported on first use, never when this module is imported.
"""

from __future__ import annotations

import dataclasses
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
from statefmt.cells import ACTIVATIONS, CELLS

from ._common import fit, fit_weights, prefixed, require, source_metadata

_SUPPORTED = "nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell or nn.RNNCell"


def signature(target: Any, *, name: str | None = None) -> StateSignature:
    """What `target` expects: one layer per PyTorch layer; no batch size (PyTorch fixes none); its param dtype.

    >>> signature(nn.LSTM(5, 4, num_layers=2)).layers[1]
    LayerSignature(kind='lstm', units=4, directions=1, proj_units=None, name='l1')
    """
    t = _Target.of(target)
    return StateSignature([LayerSignature(t.kind, t.units, t.directions, t.proj, _name(name, k))
                           for k in range(t.layers)], dtype=str(t.dtype).removeprefix("torch."))


def export(source: Any, state: Any = None, *, name: str | None = None) -> StateSet:
    """The state a run of `source` returned, as a StateSet.

    >>> y, (h_n, c_n) = lstm(x)
    >>> statefmt.save(export(lstm, (h_n, c_n)), "today.statefmt")

    Tensors are detached and moved to the host once; on the CPU the arrays share memory
    with them. Unbatched states (2-D, or 1-D for a cell) are detected and export as batch 1.
    """
    if state is None:
        raise StateError("PyTorch modules keep no state: pass the state a run returned, "
                         "e.g. export(lstm, (h_n, c_n)) after `y, (h_n, c_n) = lstm(x)`")
    t = _Target.of(source)
    tensors = t.unpack(state)
    arrays = {s: _numpy(tensor) for s, tensor in tensors.items()}
    batched = 2 if t.cell else 3
    arrays = {s: a[None] if t.cell else a for s, a in arrays.items()}  # a cell is one layer, one direction
    if next(iter(tensors.values())).dim() < batched:
        arrays = {s: a[:, None] for s, a in arrays.items()}  # unbatched: batch 1
    D = t.directions
    layers = [LayerState(_name(name, k), t.kind, **{s: a[k * D:(k + 1) * D] for s, a in arrays.items()})
              for k in range(t.layers)]
    return StateSet(layers, metadata={"source": t.source()})


def initial_state(states: StateSet, target: Any, *, strict: bool = False, broadcast: bool = False,
                  batch_size: int | None = None, device: Any = None) -> Any:
    """What `target` takes as initial state: `(h0, c0)` for an LSTM, `h0` otherwise.

    >>> h0, c0 = initial_state(statefmt.load("today.statefmt"), lstm)
    >>> y, (h_n, c_n) = lstm(x2, (h0, c0))

    Stacked `[layers*directions, batch, hidden]` (cells: `(batch, hidden)`), cast to the
    module's param dtype (`strict=True` refuses any other dtype) on the module's device (or
    `device`). A one-layer state already in that dtype on the CPU is not copied: the tensors
    share memory with the arrays; a stack is copied once into one tensor. PyTorch fixes no
    batch size: `broadcast=True, batch_size=N` starts N streams from a batch-1 state (an
    expanded view). For unbatched input take the batch-1 row: `h0[:, 0]` (a cell's `h0[0]`).
    """
    torch = require("torch", "torch")
    t = _Target.of(target)
    batch = fit(states, signature(target), strict=strict, broadcast=broadcast, batch_size=batch_size).batch_size
    device = t.device if device is None else torch.device(device)
    result = []
    for s in states.layers[0].state_names:
        pieces = [_tensor(layer[s]) for layer in states.layers]
        tensor = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        tensor = tensor.to(device=device, dtype=t.dtype).expand(-1, batch, -1)
        if t.cell:
            tensor = tensor[0]
        result.append(tensor)
    return tuple(result) if t.kind == "lstm" else result[0]


def export_weights(source: Any, *, name: str | None = None) -> WeightSet:
    """The recurrent weights of `source` in the neutral layout (statefmt.weights).

    >>> statefmt.save(export_weights(lstm), "weights.statefmt")

    PyTorch's layout is the neutral one: `bias_ih` goes to Wb, `bias_hh` to Rb (zeros when
    `bias=False`), `weight_hr` to P. Every PyTorch recurrent module maps exactly.
    """
    torch = require("torch", "torch")
    t = _Target.of(source)
    layers = []
    with torch.no_grad():
        for k in range(t.layers):
            params = [t.params(k, d) for d in range(t.directions)]
            arrays: dict[str, Any] = {key: _numpy(torch.stack([p[key] for p in params])) for key in params[0]}
            layers.append(LayerWeights(_name(name, k), t.kind, **arrays, activation=t.activation))
    return WeightSet(layers, metadata={"source": t.source()})


def weight_signature(target: Any) -> WeightSignature:
    """What `target` can take as weights: per PyTorch layer its sizes, what it computes, and how to rebuild it.

    >>> weight_signature(nn.LSTM(5, 4)).check(statefmt.load_weights("weights.statefmt"))
    []
    """
    t = _Target.of(target)
    return WeightSignature([t.layer_signature(k) for k in range(t.layers)])


def import_weights(weights: WeightSet, target: Any) -> Any:
    """Copy neutral weights into `target`'s parameters and return it, refusing (all at once) what does not map.

    >>> lstm = import_weights(statefmt.load_weights("weights.statefmt"), nn.LSTM(5, 4))

    What fits is `weight_signature(target)`'s to say: layer count, kind, units, input size,
    directions and projection, the activations (PyTorch LSTM and GRU use tanh and sigmoid;
    nn.RNN tanh or relu), GRU's linear_before_reset, and zero biases for `bias=False`.
    Values are cast to the parameters' dtype and device. Nothing is assigned unless all fits.
    """
    torch = require("torch", "torch")
    t = _Target.of(target)
    fit_weights(weights, weight_signature(target))
    with torch.no_grad():
        for k, layer in enumerate(weights.layers):
            for d in range(t.directions):
                for key, param in t.params(k, d, zeros=False).items():
                    param.copy_(_tensor(layer[key][d]))
    return target


# --- the module ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Target:
    """What the adapter needs to know of a PyTorch recurrent module."""

    module: object
    kind: str
    cell: bool
    layers: int
    directions: int
    units: int
    proj: int | None

    @classmethod
    def of(cls, module) -> _Target:
        nn = require("torch.nn", "torch")
        kinds = ((nn.LSTM, "lstm", False), (nn.GRU, "gru", False), (nn.RNN, "rnn", False),
                 (nn.LSTMCell, "lstm", True), (nn.GRUCell, "gru", True), (nn.RNNCell, "rnn", True))
        found = next(((kind, cell) for klass, kind, cell in kinds if isinstance(module, klass)), None)
        if found is None:
            raise StateMismatchError(f"{type(module).__name__} has no neutral layout: statefmt.adapters.torch maps "
                                     f"an {_SUPPORTED}; pass the recurrent submodule, e.g. model.lstm")
        kind, cell = found
        if cell:
            return cls(module, kind, True, 1, 1, module.hidden_size, None)
        return cls(module, kind, False, module.num_layers, 2 if module.bidirectional else 1, module.hidden_size,
                   module.proj_size or None)

    @property
    def dtype(self):
        return self.params(0, 0)["W"].dtype

    @property
    def device(self):
        return self.params(0, 0)["W"].device

    @property
    def h_units(self) -> int:
        return self.proj or self.units

    @property
    def activation(self) -> str:
        return getattr(self.module, "nonlinearity", "tanh")

    def source(self) -> dict[str, str]:
        return source_metadata("torch", "torch", repr(self.module))

    def params(self, k: int, d: int, *, zeros: bool = True) -> dict:
        """Layer k, direction d: neutral name -> PyTorch parameter (zeros for absent biases when `zeros`)."""
        suffix = "" if self.cell else f"_l{k}" + ("_reverse" if d else "")
        names = {"W": "weight_ih", "R": "weight_hh", "Wb": "bias_ih", "Rb": "bias_hh"}
        if self.proj:
            names["P"] = "weight_hr"
        params: dict[str, Any] = {key: getattr(self.module, name + suffix, None) for key, name in names.items()}
        for key in ("Wb", "Rb"):
            if params[key] is None:
                W = params["W"]
                params[key] = W.new_zeros(W.shape[0]) if zeros else None
        return {key: value for key, value in params.items() if value is not None}

    def unpack(self, state) -> dict:
        """The state tensors by neutral name, checked against the module."""
        torch = require("torch", "torch")
        suffix = "" if self.cell else "_n"
        if self.kind == "lstm":
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise StateMismatchError(f"state: an LSTM's state is (h{suffix}, c{suffix}), "
                                         f"found {_describe(state)}")
            tensors = dict(zip(("h", "c"), state))
        else:
            tensors = {"h": state}
        problems = []
        shapes = {}
        lead = () if self.cell else (self.layers * self.directions,)
        for s, tensor in tensors.items():
            width = self.h_units if s == "h" else self.units
            label = s + suffix
            if not isinstance(tensor, torch.Tensor):
                problems.append(f"{label}: expected a tensor, found {_describe(tensor)}")
                continue
            shape = tuple(tensor.shape)
            batched, single = (*lead, "batch", width), (*lead, width)
            if len(shape) not in (len(single), len(batched)) or shape[:len(lead)] != lead or shape[-1] != width:
                problems.append(f"{label}: expected shape {_shape(batched)} or unbatched {_shape(single)}, "
                                f"found {_shape(shape)}")
            shapes[s] = shape
        if not problems and len({shape[:-1] for shape in shapes.values()}) > 1:
            problems.append(f"h and c disagree on batch: {_shape(shapes['h'])} and {_shape(shapes['c'])}")
        if problems:
            raise StateMismatchError(problems)
        return tensors

    def layer_signature(self, k: int) -> LayerWeightSignature:
        """What layer k computes, and how PyTorch builds one that computes something else."""
        module = type(self.module).__name__
        kind = self.kind.upper()
        advice = {"bias": f"build nn.{module}(..., bias=True)",
                  "linear_before_reset=False": "load them into Keras GRU(reset_after=False)"}
        if self.cell or self.kind != "lstm":
            advice["proj_units"] = "only nn.LSTM projects h: load them into nn.LSTM(..., proj_size={value})"
        else:
            advice["proj_units"] = f"build nn.{module}(..., proj_size={{value}})"
            advice["proj_units=None"] = f"build the {kind} without proj_size"
        activations: tuple[str, ...] = ("tanh", "relu") if self.kind == "rnn" else ()
        for setting in CELLS[self.kind].settings:
            for value in ACTIVATIONS:  # where each activation PyTorch cannot compute is computed
                elsewhere = "Keras or Flax" if value != "linear" else "Keras"
                advice[f"{setting}={value}"] = (
                    f"build nn.{module}(..., nonlinearity={value!r})" if value in activations else
                    f"PyTorch's {module} cannot: load them into {elsewhere}, whose {kind} takes {setting}={value}")
        return LayerWeightSignature(
            self.kind, self.units, int(self.params(k, 0)["W"].shape[1]), self.directions, self.proj, _name(None, k),
            activation=self.activation, activations=activations,
            bias="Wb" in self.params(k, 0, zeros=False), advice=advice)


def _name(prefix: str | None, k: int) -> str:
    return prefixed(prefix, f"l{k}")


def _numpy(tensor) -> np.ndarray:
    """One host copy at most: a CPU tensor's memory is shared. bfloat16 goes through its bits, not floats."""
    torch = require("torch", "torch")
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes  # a statefmt dependency (numpy has no bfloat16)

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _tensor(array: np.ndarray):
    """A CPU tensor sharing the array's memory (a read-only array, such as a broadcast view, is copied)."""
    torch = require("torch", "torch")
    if not array.flags.writeable:
        array = array.copy()  # torch has no read-only tensors
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _describe(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"{type(value).__name__} of shape {_shape(tuple(getattr(value, 'shape', ())))}"
