"""Recurrent weights in one neutral layout, so a model can be ported between frameworks exactly.

Per layer, all directions stacked on axis 0 (ONNX's layout, PyTorch's gate order):

    W   [directions, gates*units, input_size]   input kernel
    R   [directions, gates*units, h_units]      recurrent kernel (h_units = proj_units or units)
    Wb  [directions, gates*units]               input bias
    Rb  [directions, gates*units]               recurrent bias
    P   [directions, proj_units, units]         projection of h (an LSTM with proj_units only)

Gate blocks: LSTM i, f, g, o; GRU r, z, n; simple RNN one block. A framework with one
bias per gate puts it in Wb and zeros in Rb. The GRU candidate is
`n = tanh(W_n x + Wb_n + r * (R_n h + Rb_n))` when `linear_before_reset` (PyTorch, Keras
`reset_after=True`, Flax), else `n = tanh(W_n x + Wb_n + R_n (r * h) + Rb_n)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from ._dtypes import dtype_name, little_endian
from .cells import ACTIVATIONS, GATE_ORDER, GATES, KINDS
from .errors import StateFormatError, StateMismatchError
from .states import layer_index, refuse_duplicate_names

__all__ = ["GATES", "GATE_ORDER", "LayerWeights", "WeightSet"]  # GATES, GATE_ORDER: from statefmt.cells


class LayerWeights:
    """The weights of one recurrent layer in the neutral layout (see the module docstring).

    >>> gru = LayerWeights("gru", "gru", W=np.zeros((1, 12, 3)), R=np.zeros((1, 12, 4)), Wb=np.zeros((1, 12)),
    ...                    Rb=np.zeros((1, 12)))
    >>> gru.units, gru.input_size, gru.gate("R", "n").shape
    (4, 3, (4, 4))
    """

    __slots__ = ("_arrays", "activation", "kind", "linear_before_reset", "name", "recurrent_activation")

    def __init__(
        self,
        name: str,
        kind: str,
        W: Any,
        R: Any,
        Wb: Any,
        Rb: Any,
        P: Any = None,
        *,
        activation: str = "tanh",
        recurrent_activation: str = "sigmoid",
        linear_before_reset: bool = True,
    ) -> None:
        where = f"layer {name!r}"
        if not isinstance(name, str) or not name:
            raise StateFormatError(f"layer name must be a non-empty string, found {name!r}")
        if kind not in GATES:
            raise StateFormatError(f"{where}: kind: expected one of {', '.join(KINDS)}, found {kind!r}")
        for setting, value in (("activation", activation), ("recurrent_activation", recurrent_activation)):
            if not isinstance(value, str) or value not in ACTIVATIONS:
                raise StateFormatError(f"{where}: {setting}: expected one of {', '.join(ACTIVATIONS)}, "
                                       f"found {value!r}")
        if not isinstance(linear_before_reset, (bool, np.bool_)):
            raise StateFormatError(f"{where}: linear_before_reset: expected True or False, "
                                   f"found {linear_before_reset!r}")
        arrays = {"W": little_endian(W), "R": little_endian(R), "Wb": little_endian(Wb), "Rb": little_endian(Rb)}
        if P is not None:
            arrays["P"] = little_endian(P)
        W_ = arrays["W"]
        if W_.ndim != 3 or W_.shape[0] not in (1, 2) or W_.shape[1] % GATES[kind] or W_.shape[1] == 0:
            raise StateFormatError(
                f"{where}: W: expected [directions, {GATES[kind]}*units, input_size], found {list(W_.shape)}"
            )
        directions, rows, _ = W_.shape
        units = rows // GATES[kind]
        if P is not None and (arrays["P"].ndim != 3 or not 0 < arrays["P"].shape[1] < units):
            raise StateFormatError(f"{where}: P: expected [directions, proj_units (fewer than the {units} units), "
                                   f"units], found {list(arrays['P'].shape)}")
        h_units = arrays["P"].shape[1] if P is not None else units
        expected = {"R": (directions, rows, h_units), "Wb": (directions, rows), "Rb": (directions, rows)}
        if P is not None:
            if kind != "lstm":
                raise StateFormatError(f"{where}: only an LSTM may have a projection P")
            expected["P"] = (directions, h_units, units)
        for key, shape in expected.items():
            if arrays[key].shape != shape:
                raise StateFormatError(f"{where}: {key}: expected shape {list(shape)}, found {list(arrays[key].shape)}")
        dtypes = {dtype_name(array.dtype) for array in arrays.values()}
        if len(dtypes) > 1:
            raise StateFormatError(f"{where}: tensors disagree on dtype: {', '.join(sorted(dtypes))}")
        self.name = name
        self.kind = kind
        self.activation = activation
        self.recurrent_activation = recurrent_activation
        self.linear_before_reset = bool(linear_before_reset)
        self._arrays = arrays

    @property
    def weight_names(self) -> tuple[str, ...]:
        return tuple(self._arrays)

    @property
    def units(self) -> int:
        return int(self._arrays["W"].shape[1]) // GATES[self.kind]

    @property
    def input_size(self) -> int:
        return int(self._arrays["W"].shape[2])

    @property
    def directions(self) -> int:
        return int(self._arrays["W"].shape[0])

    @property
    def proj_units(self) -> int | None:
        return int(self._arrays["P"].shape[1]) if "P" in self._arrays else None

    @property
    def dtype(self) -> str:
        return dtype_name(self._arrays["W"].dtype)

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._arrays[key]
        except (KeyError, TypeError):
            raise StateMismatchError(f"layer {self.name!r} has weights {', '.join(self.weight_names)}, "
                                     f"not {key!r}") from None

    def gate(self, key: str, gate: str, direction: int = 0) -> np.ndarray:
        """One gate's block of W, R, Wb or Rb, e.g. `layer.gate("R", "n")`."""
        gates = GATE_ORDER[self.kind]
        if key not in ("W", "R", "Wb", "Rb") or gate not in gates or direction not in range(self.directions):
            raise StateMismatchError(
                f"layer {self.name!r}: gate({key!r}, {gate!r}, {direction!r}): expected one of W, R, Wb, Rb, "
                f"a {self.kind} gate ({', '.join(gates)}) and a direction below {self.directions}")
        index = gates.index(gate)
        return self[key][direction, index * self.units:(index + 1) * self.units]

    def __repr__(self) -> str:
        proj = f", proj_units={self.proj_units}" if self.proj_units else ""
        return (
            f"LayerWeights({self.name!r}, {self.kind}, units={self.units}, input_size={self.input_size}{proj}, "
            f"directions={self.directions}, dtype={self.dtype})"
        )


class WeightSet:
    """The recurrent weights of a model, layers in order from input to output.

    >>> weights = statefmt.load_weights("weights.statefmt")
    >>> weights[0].kind, len(weights)
    ('gru', 1)
    """

    def __init__(self, layers: Iterable[LayerWeights], *, metadata: Mapping[str, Any] | None = None,
                 file: str | None = None) -> None:
        self.layers = tuple(layers)
        if not self.layers:
            raise StateFormatError("a WeightSet needs at least one layer")
        refuse_duplicate_names(self.layers)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.file = file  # the file (or URL) it was read from, which errors about it name

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerWeights]:
        return iter(self.layers)

    def __getitem__(self, key: str | int) -> LayerWeights:
        return self.layers[layer_index(self.layers, key)]

    def __repr__(self) -> str:
        return f"WeightSet(layers=[{', '.join(repr(layer) for layer in self.layers)}])"
