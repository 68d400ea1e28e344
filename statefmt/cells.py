"""The facts of each cell kind, in one table: the schema, the core and every adapter read them from here.

A kind's states, its gates in the neutral order (PyTorch's), the activations it applies, and
which gates keep their input and recurrent biases apart. Also the closed list of activation
names a weights file may hold, and the gate orders of the frameworks that differ from the
neutral one. No framework is imported: these are names and numbers only.

The state kinds of modern recurrent models (format 2.1) are tabled in `statefmt.kinds`, and
joined here: `STATE_KINDS` lists every kind a state layer may have, `STATE_NAMES` its tensors.

>>> CELLS["gru"].gates, STATE_NAMES["lstm"], GATES["lstm"], STATE_NAMES["mamba2"]
(('r', 'z', 'n'), ('h', 'c'), 4, ('conv', 'ssm'))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import StateMismatchError
from .kinds import KINDS_2_1, StateKind


@dataclass(frozen=True)
class Cell:
    """One cell kind."""

    kind: str
    states: tuple[str, ...]  # state tensors, in the order of a file's checksums and of PyTorch's (h, c)
    gates: tuple[str, ...]  # gate blocks of W, R, Wb and Rb, in the neutral order
    settings: tuple[str, ...]  # the activations it applies, by their LayerWeights field
    apart: tuple[str, ...]  # gates whose Wb and Rb do not merge into one bias (GRU candidate: r * (R_n h + Rb_n))


CELLS: dict[str, Cell] = {cell.kind: cell for cell in (
    Cell("lstm", ("h", "c"), ("i", "f", "g", "o"), ("activation", "recurrent_activation"), ()),
    Cell("gru", ("h",), ("r", "z", "n"), ("activation", "recurrent_activation"), ("n",)),
    Cell("rnn", ("h",), ("h",), ("activation",), ()),
)}

KINDS: tuple[str, ...] = tuple(CELLS)  # the classic cells: what a weights file holds
MODERN: dict[str, StateKind] = KINDS_2_1
STATE_KINDS: tuple[str, ...] = KINDS + tuple(MODERN)  # what a state layer may be
STATE_NAMES: dict[str, tuple[str, ...]] = {**{kind: cell.states for kind, cell in CELLS.items()},
                                           **{kind: entry.names for kind, entry in MODERN.items()}}
GATES: dict[str, int] = {kind: len(cell.gates) for kind, cell in CELLS.items()}
GATE_ORDER: dict[str, tuple[str, ...]] = {kind: cell.gates for kind, cell in CELLS.items()}
DIRECTIONS: tuple[int, ...] = (1, 2)  # forward; forward and backward

# The tensors of a weights layer: W, R, Wb and Rb always, P for a projected LSTM only.
WEIGHT_NAMES: tuple[str, ...] = ("W", "R", "Wb", "Rb", "P")

# The closed list of activations a weights file may name, and what each computes.
ACTIVATIONS: dict[str, str] = {
    "tanh": "tanh(x)",
    "sigmoid": "1 / (1 + exp(-x))",
    "relu": "max(x, 0)",
    "hard_sigmoid": "clip(x / 6 + 1 / 2, 0, 1)",  # Keras 3, jax.nn.hard_sigmoid, ONNX HardSigmoid(alpha=1/6)
    "linear": "x",  # Keras "linear"; ONNX Affine(alpha=1, beta=0)
}

# Frameworks whose gate blocks come in another order (same letters as the neutral gates;
# Keras' and ONNX's LSTM "c" and GRU "h" are the neutral "g" and "n").
FRAMEWORK_GATE_ORDER: dict[str, dict[str, tuple[str, ...]]] = {
    "keras": {"lstm": ("i", "f", "g", "o"), "gru": ("z", "r", "n"), "rnn": ("h",)},
    "onnx": {"lstm": ("i", "o", "f", "g"), "gru": ("z", "r", "n"), "rnn": ("h",)},
}


def gate_rows(kind: str, units: int, order: tuple[str, ...]) -> np.ndarray:
    """Row indices that put gate blocks given in `order` into the neutral order: `neutral = framework[rows]`.

    The inverse, `framework = neutral[np.argsort(rows)]`, goes back.

    >>> gate_rows("gru", 1, ("z", "r", "n")).tolist()
    [1, 0, 2]
    """
    neutral = GATE_ORDER[kind]
    if sorted(order) != sorted(neutral):
        raise StateMismatchError(f"gate order: the {kind} gates are {', '.join(neutral)}, found {', '.join(order)}")
    return np.concatenate([np.arange(units) + order.index(gate) * units for gate in neutral])
