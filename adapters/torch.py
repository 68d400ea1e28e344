"""PyTorch adapter: `nn.LSTM`, `nn.GRU`, `nn.RNN` and their cells, states and weights to and from the neutral layout.

PyTorch modules keep no state: a run returns `(h_n, c_n)` (LSTM) or `h_n`, stacked
`[layers*directions, batch, hidden]` with index `layer*directions + direction`, and the next
run takes them as `hx`. Cells take and return `(h, c)` or `h` of shape `(batch, hidden)`.
Unbatched input goes with 2-D states (1-D for cells). Each PyTorch layer is one neutral
layer, named "l0", "l1", ... (or "<name>.l0" with `name=`). PyTorch's gate order (LSTM
i, f, g, o; GRU r, z, n) and kernel layout `(gates*hidden, in)` are the neutral ones.
PyTorch itself is imported on first use, never when this module is imported.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from statefmt import (
    LayerSignature,
    LayerState,
    LayerWeights,
    StateError,
    StateMismatchError,
    StateSet,
    StateSignature,
    WeightSet,
)

from ._common import fit, require, source_metadata

_SUPPORTED = "nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell or nn.RNNCell"


def signature(target, *, name: str | None = None) -> StateSignature:
    """What `target` expects: one layer per PyTorch layer; no batch size (PyTorch fixes none); its param dtype.

    >>> signature(nn.LSTM(5, 4, num_layers=2)).layers[1]  # doctest: +SKIP
    LayerSignature(kind='lstm', units=4, directions=1, proj_units=None, name='l1')
    """
    t = _Target.of(target)
    return StateSignature([LayerSignature(t.kind, t.units, t.directions, t.proj, _name(name, k))
                           for k in range(t.layers)], dtype=str(t.dtype).removeprefix("torch."))


def export(source, state=None, *, name: str | None = None) -> StateSet:
    """The state a run of `source` returned, as a StateSet.

    >>> y, (h_n, c_n) = lstm(x)  # doctest: +SKIP
    >>> statefmt.save(export(lstm, (h_n, c_n)), "today.statefmt")  # doctest: +SKIP

    Tensors are detached and moved to the host once; on the CPU the arrays share memory
    with them. Unbatched states (2-D, or 1-D for a cell) export as batch 1.
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


def initial_state(states: StateSet, target, *, strict: bool = False, device=None, broadcast: bool | int = False,
                  unbatched: bool = False):
    """What `target` takes as initial state: `(h0, c0)` for an LSTM, `h0` otherwise.

    >>> h0, c0 = initial_state(statefmt.load("today.statefmt"), lstm)  # doctest: +SKIP
    >>> y, (h_n, c_n) = lstm(x2, (h0, c0))  # doctest: +SKIP

    Stacked `[layers*directions, batch, hidden]` (cells: `(batch, hidden)`), cast to the
    module's param dtype (`strict=True` refuses any other dtype) on the module's device (or
    `device`). A one-layer state already in that dtype on the CPU is not copied: the tensors
    share memory with the arrays; a stack is copied once into one tensor. PyTorch fixes no
    batch size: `broadcast=N` starts N streams from a batch-1 state (an expanded view).
    `unbatched=True` returns 2-D states (1-D for a cell) for unbatched input; it needs batch 1.
    """
    torch = require("torch", "torch")
    t = _Target.of(target)
    expected = signature(target)
    if unbatched:
        expected = dataclasses.replace(expected, batch_size=1)
    batch = fit(states, expected, strict=strict, broadcast=broadcast).batch_size
    device = t.device if device is None else torch.device(device)
    result = []
    for s in states.layers[0].state_names:
        pieces = [_tensor(layer[s]) for layer in states.layers]
        tensor = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        tensor = tensor.to(device=device, dtype=t.dtype).expand(-1, batch, -1)
        if t.cell:
            tensor = tensor[0]
        result.append(tensor[..., 0, :] if unbatched else tensor)
    return tuple(result) if t.kind == "lstm" else result[0]


def export_weights(source, *, name: str | None = None) -> WeightSet:
    """The recurrent weights of `source` in the neutral layout (statefmt.weights).

    >>> statefmt.save(export_weights(lstm), "weights.statefmt")  # doctest: +SKIP

    PyTorch's layout is the neutral one: `bias_ih` goes to Wb, `bias_hh` to Rb (zeros when
    `bias=False`), `weight_hr` to P. Every PyTorch recurrent module maps exactly.
    """
    torch = require("torch", "torch")
    t = _Target.of(source)
    layers = []
    with torch.no_grad():
        for k in range(t.layers):
            params = [t.params(k, d) for d in range(t.directions)]
            arrays = {key: _numpy(torch.stack([p[key] for p in params])) for key in params[0]}
            layers.append(LayerWeights(_name(name, k), t.kind, **arrays, activation=t.activation))
    return WeightSet(layers, metadata={"source": t.source()})


def load_weights(weights: WeightSet, target) -> None:
    """Copy neutral weights into `target`'s parameters, refusing (all at once) whatever does not map exactly.

    >>> load_weights(statefmt.load_weights("weights.statefmt"), nn.LSTM(5, 4))  # doctest: +SKIP

    Checks layer count, kind, units, input size, directions and projection, the activations
    (PyTorch LSTM and GRU use tanh and sigmoid; nn.RNN tanh or relu), GRU's
    linear_before_reset, and non-zero biases for a module built with `bias=False`.
    Values are cast to the parameters' dtype and device.
    """
    torch = require("torch", "torch")
    t = _Target.of(target)
    problems = []
    if len(weights.layers) != t.layers:
        problems.append(f"layer count: expected {t.layers}, found {len(weights.layers)}")
    for k, layer in enumerate(weights.layers[:t.layers]):
        problems += t.check_loadable(k, layer)
    if problems:
        raise StateMismatchError(problems)
    with torch.no_grad():
        for k, layer in enumerate(weights.layers):
            for d in range(t.directions):
                for key, param in t.params(k, d, zeros=False).items():
                    param.copy_(_tensor(layer[key][d]))


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
        params = {key: getattr(self.module, name + suffix, None) for key, name in names.items()}
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

    def check_loadable(self, k: int, weights: LayerWeights) -> list[str]:
        where = f"layer {k} {weights.name!r}"
        input_size = self.params(k, 0)["W"].shape[1]
        problems = [f"{where}: {field}: expected {want}, found {found}"
                    for field, want, found in (("kind", self.kind, weights.kind), ("units", self.units, weights.units),
                                               ("input_size", input_size, weights.input_size),
                                               ("directions", self.directions, weights.directions))
                    if want != found]
        if weights.proj_units != self.proj:
            hint = (f"build nn.LSTM(..., proj_size={weights.proj_units})" if weights.proj_units
                    else "build the LSTM without proj_size")
            problems.append(f"{where}: proj_units: expected {self.proj}, found {weights.proj_units}; {hint}")
        if weights.kind != self.kind:
            return problems
        module = type(self.module).__name__
        if self.kind == "rnn":
            if weights.activation != self.activation:
                fix = (f"build nn.{module}(..., nonlinearity={weights.activation!r})"
                       if weights.activation in ("tanh", "relu") else "PyTorch's RNN knows tanh and relu only")
                problems.append(f"{where}: activation: the weights use {weights.activation}, the target uses "
                                f"{self.activation}; {fix}")
        else:
            for setting, want in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
                found = getattr(weights, setting)
                if found != want:
                    problems.append(f"{where}: {setting}: the weights use {found}, and PyTorch's {module} always "
                                    f"uses {want}, so they do not map exactly; load them into Keras or Flax, whose "
                                    f"{self.kind.upper()} takes any {setting}")
        if self.kind == "gru" and not weights.linear_before_reset:
            problems.append(f"{where}: linear_before_reset: PyTorch's {module} applies r after the recurrent matmul "
                            "(linear_before_reset=True); weights with linear_before_reset=False do not map exactly: "
                            "load them into Keras GRU(reset_after=False)")
        if "Wb" not in self.params(k, 0, zeros=False):
            nonzero = [key for key in ("Wb", "Rb") if np.any(np.asarray(weights[key], np.float64) != 0)]
            if nonzero:
                problems.append(f"{where}: {' and '.join(nonzero)}: the weights have non-zero biases and the target "
                                f"was built with bias=False; build nn.{module}(..., bias=True)")
        return problems


def _name(prefix: str | None, k: int) -> str:
    return f"{prefix}.l{k}" if prefix else f"l{k}"


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
