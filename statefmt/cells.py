"""Facts about recurrent cells, in one table (placeholder until the adapter-API work lands)."""

from __future__ import annotations

STATE_NAMES = {"lstm": ("h", "c"), "gru": ("h",), "rnn": ("h",)}
KINDS = tuple(STATE_NAMES)
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
ACTIVATIONS = ("tanh", "sigmoid", "relu", "hard_sigmoid", "linear")
