"""ONNX Runtime adapter: the `LSTM`, `GRU` and `RNN` nodes of an ONNX graph, their state and weights.

ONNX Runtime is stateless by design: a caller feeds each node's `initial_h`/`initial_c` through
graph inputs and keeps the `Y_h`/`Y_c` that graph outputs carry. Exporters rarely wire them
straight: torch.onnx slices one `h0` input per layer and concatenates the layers' `Y_h` into one
`hn` output; tf2onnx unsqueezes and concatenates Keras' per-direction states. This adapter
follows those chains (`Identity`, `Cast`, `Slice`, `Gather`, `Split`, `Concat`, `Squeeze`,
`Unsqueeze`, `Reshape`, `Flatten`, `Transpose`, `Expand`) by running them on element indices,
so it inverts whatever mix of them a graph holds, and refuses, naming the op, a chain through
anything that computes. Each recurrent node is one neutral layer ("l0", "l1", ... in graph
order); ONNX's state layout `[directions, batch, hidden]` is the neutral one (`layout=1`:
`[batch, directions, hidden]`), and its gate order (LSTM i, o, f, c; GRU z, r, h) is permuted
to the neutral one (i, f, g, o; r, z, n).

A model is an `onnx.ModelProto`, a path, or an `onnxruntime.InferenceSession` (made from a
path or from bytes). onnx and onnxruntime are imported on first use, never when this module is.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

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
from statefmt.cells import FRAMEWORK_GATE_ORDER, gate_rows

from .._common import fit, fit_weights, prefixed, require, source_metadata

_KINDS = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}
# Default activations per direction: LSTM (f, g, h), GRU (f, g), RNN (f).
_DEFAULT_ACTIVATIONS = {"lstm": ("Sigmoid", "Tanh", "Tanh"), "gru": ("Sigmoid", "Tanh"), "rnn": ("Tanh",)}
# The spec's activations (statefmt.cells.ACTIVATIONS) as ONNX functions (name, alpha, beta).
_ACTIVATIONS: dict[str, tuple[str, float | None, float | None]] = {
    "tanh": ("Tanh", None, None),
    "sigmoid": ("Sigmoid", None, None),
    "relu": ("Relu", None, None),
    "hard_sigmoid": ("HardSigmoid", 1 / 6, 0.5),  # Keras 3's: x/6 + 1/2, clipped to [0, 1]
    "linear": ("Affine", 1.0, 0.0),
}
_ADVICE = {"proj_units": "ONNX's LSTM has no projection (its input P is a peephole); serve the model in PyTorch, "
                         "which has proj_size",
           "activation": "ONNX's recurrent nodes compute " + ", ".join(_ACTIVATIONS) + " only",
           "recurrent_activation": "ONNX's recurrent nodes compute " + ", ".join(_ACTIVATIONS) + " only"}
# Ops that only move elements, and which of their inputs carry the elements moved.
_MOVES = {"Identity": (0,), "Cast": (0,), "Transpose": (0,), "Reshape": (0,), "Squeeze": (0,), "Unsqueeze": (0,),
          "Slice": (0,), "Gather": (0,), "Split": (0,), "Flatten": (0,), "Expand": (0,), "Concat": None}
_OPSET = 17
_MAX_ELEMENTS = 1 << 28  # elements of one index map: a state of 268M values, 2 GiB of indices


# --- the adapter's verbs ---------------------------------------------------------------------------

def signature(target: Any, *, name: str | None = None) -> StateSignature:
    """What `target` expects: one layer per recurrent node in graph order, the batch size static state inputs fix.

    >>> signature("forecaster.onnx").layers[0]  # doctest: +SKIP
    LayerSignature(kind='lstm', units=64, directions=1, proj_units=None, name='l0')
    """
    graph = _Graph.of(target)
    dtypes = {graph.input_dtype(name) for node in graph.nodes for name in node.state_inputs}
    if not dtypes:
        stored = graph.tensor(graph.nodes[0].inputs[1])
        dtypes = {_dtype_name(stored.dtype)} if stored is not None else set()
    return StateSignature([LayerSignature(node.kind, node.hidden_size, node.directions, None, _name(name, k))
                           for k, node in enumerate(graph.nodes)],
                          batch_size=graph.static_batch(), dtype=dtypes.pop() if len(dtypes) == 1 else None)


@dataclasses.dataclass(frozen=True)
class Node:
    """One recurrent node as the graph holds it, and the graph inputs and outputs that carry its state."""

    name: str
    kind: str
    hidden_size: int
    direction: str
    layout: int
    linear_before_reset: bool | None
    initial_h: tuple[str, ...]
    initial_c: tuple[str, ...]
    Y_h: tuple[str, ...]
    Y_c: tuple[str, ...]


def nodes(model: Any) -> tuple[Node, ...]:
    """The recurrent nodes of `model` in graph order, with the graph inputs feeding their initial states
    and the graph outputs carrying their final ones.

    >>> [(n.kind, n.initial_h, n.Y_h) for n in nodes(torch_exported_lstm)]  # doctest: +SKIP
    [('lstm', ('h0',), ('hn',)), ('lstm', ('h0',), ('hn',))]
    """
    graph = _Graph.of(model)
    result = []
    for node in graph.nodes:
        state = {s: graph.feeding(node.inputs[i]) for s, i in (("h", 5), ("c", 6))}
        out = {s: graph.carrying(node.outputs[i]) for s, i in (("h", 1), ("c", 2))}
        lbr = bool(node.attrs.get("linear_before_reset", 0)) if node.kind == "gru" else None
        c_in, c_out = (state["c"], out["c"]) if node.kind == "lstm" else ((), ())
        result.append(Node(node.name, node.kind, node.hidden_size, node.direction, node.layout, lbr,
                           state["h"], c_in, out["h"], c_out))
    return tuple(result)


def export(source: Any, state: Any = None, *, name: str | None = None) -> StateSet:
    """The final states of a run, read from what `session.run` returned (`state`, as in every adapter).

    >>> outputs = session.run(None, {"x": x, **feeds})  # doctest: +SKIP
    >>> statefmt.save(export(session, outputs), "today.statefmt")  # doctest: +SKIP

    `state` is the list of outputs in the graph's order, or a dict by output name (then only
    the outputs that carry state are needed). Each node's `Y_h`/`Y_c` is gathered from wherever
    the graph put it; a node whose final state no graph output carries is refused.
    """
    if state is None:
        raise StateError("ONNX Runtime keeps no state: pass what session.run returned, e.g. "
                         "export(session, session.run(None, feeds))")
    graph = _Graph.of(source)
    arrays = graph.named_outputs(state)
    states = graph.gather_states(arrays)
    layers = [LayerState(_name(name, k), node.kind, **states[k]) for k, node in enumerate(graph.nodes)]
    return StateSet(layers, metadata={"source": graph.source()})


def initial_state(states: StateSet, target: Any, *, strict: bool = False, broadcast: bool = False,
                  batch_size: int | None = None, device: Any = None) -> dict[str, np.ndarray]:
    """The feeds that start `target` from `states`: a dict by graph input name, in those inputs' dtype and layout.

    >>> feeds = initial_state(statefmt.load("today.statefmt"), session)  # doctest: +SKIP
    >>> outputs = session.run(None, {"x": x2, **feeds})  # doctest: +SKIP

    Checked first against `signature(target)` (every mismatch at once; `strict=True` also
    refuses a dtype other than the inputs'). `broadcast=True` starts every stream from a
    batch-1 state, at the batch size static inputs fix or at `batch_size=N`. Elements of a
    state input that feed no node are zeros. ORT takes host arrays: `device` may only be
    None or "cpu" (the session's execution provider moves the feeds itself).
    """
    if device not in (None, "cpu"):
        raise StateMismatchError(f"device: ONNX Runtime takes host arrays, found device={device!r}; pass device=None "
                                 "and choose the device with the session's providers")
    graph = _Graph.of(target)
    fitted = fit(states, signature(graph), strict=strict, broadcast=broadcast, batch_size=batch_size)
    return graph.feeds(fitted)


def export_weights(source: Any, *, name: str | None = None) -> WeightSet:
    """The weights of every recurrent node, in the neutral layout (statefmt.weights).

    >>> statefmt.save(export_weights("forecaster.onnx"), "weights.statefmt")  # doctest: +SKIP

    `W`, `R` and `B` must be stored in the model (initializers or Constant nodes). Refused,
    all at once, with the reason: non-zero peepholes (ONNX's input `P`, which is not statefmt's
    projection `P`), `clip`, `input_forget=1`, different activations per direction, an LSTM
    whose cell and output activations differ, and activations the neutral layout has no name for.
    """
    graph = _Graph.of(source)
    problems = [p for k, node in enumerate(graph.nodes) for p in graph.check_exportable(k, node)]
    if problems:
        raise StateMismatchError(problems)
    layers = [graph.export_weights(_name(name, k), node) for k, node in enumerate(graph.nodes)]
    return WeightSet(layers, metadata={"source": graph.source()})


def weight_signature(target: Any) -> WeightSignature:
    """What `target` can take as weights: per recurrent node its sizes, and every activation ONNX computes.

    >>> weight_signature("forecaster.onnx").check(statefmt.load_weights("weights.statefmt"))  # doctest: +SKIP
    []
    """
    graph = _Graph.of(target)
    return WeightSignature([graph.layer_signature(k, node) for k, node in enumerate(graph.nodes)])


def import_weights(weights: WeightSet, target: Any) -> Any:
    """A copy of `target` (an `onnx.ModelProto`) whose recurrent nodes hold `weights`; `target` is left as it was.

    >>> served = import_weights(statefmt.load_weights("weights.statefmt"), "forecaster.onnx")  # doctest: +SKIP
    >>> session = onnxruntime.InferenceSession(served.SerializeToString())  # doctest: +SKIP

    Layer count, kind, hidden size, input size and direction must match (all mismatches are
    reported at once), and ONNX has no projection. The attributes that only choose the math
    (activations, GRU linear_before_reset, clip, input_forget, peepholes) are set from the
    weights, so the new model computes exactly what they describe.
    """
    graph = _Graph.of(target)
    expected = weight_signature(graph)
    if isinstance(weights, WeightSet):  # the node takes the weights' math: only its sizes must fit
        settable = [dataclasses.replace(layer, **{s: getattr(w, s) for s in (
            "activation", "recurrent_activation", "linear_before_reset") if getattr(w, s) in _ACTIVATIONS or
            s == "linear_before_reset"}) for layer, w in zip(expected.layers, weights.layers)]
        expected = WeightSignature(settable + list(expected.layers[len(settable):]))
    fit_weights(weights, expected)
    return graph.with_weights(weights)


def to_onnx(weights: WeightSet, *, batch_size: int | None = None, opset: int = _OPSET) -> Any:
    """A model running `weights` as one recurrent node per layer, with a named state input and output per layer.

    >>> model = to_onnx(keras_adapter.export_weights(model))  # doctest: +SKIP
    >>> [i.name for i in model.graph.input]  # doctest: +SKIP
    ['x', 'l0.h0', 'l0.c0']

    Input `x` is `[batch, time, features]`; each layer takes `<layer>.h0` (and `<layer>.c0`)
    `[directions, batch, units]` and returns `<layer>.hn` (and `<layer>.cn`); output `y` is the
    last layer's sequence `[batch, time, directions*units]`, directions' features side by side.
    The batch is dynamic unless `batch_size` is given.
    """
    onnx = require("onnx", "onnx")
    from onnx import helper, numpy_helper

    if not isinstance(weights, WeightSet):
        fit_weights(weights, WeightSignature())  # says what was given and what is expected
    fit_weights(weights, WeightSignature([LayerWeightSignature(
        layer.kind, layer.units, layer.input_size, layer.directions, None, layer.name,
        layer.activation, layer.recurrent_activation, tuple(_ACTIVATIONS), tuple(_ACTIVATIONS),
        layer.linear_before_reset, advice=_ADVICE) for layer in weights.layers]))
    first = weights.layers[0]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(first["W"].dtype))
    batch: int | str = batch_size if batch_size is not None else "batch"
    inputs = [helper.make_tensor_value_info("x", elem, [batch, "time", first.input_size])]
    outputs: list[Any] = []
    nodes_, initializers = [helper.make_node("Transpose", ["x"], ["x.tbf"], perm=[1, 0, 2])], []
    initializers.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "shape.tb_"))
    sequence = "x.tbf"
    for layer in weights.layers:
        name, D, H = layer.name, layer.directions, layer.units
        W, R, B = _onnx_weights(layer)
        for key, array in (("W", W), ("R", R), ("B", B)):
            initializers.append(numpy_helper.from_array(array, f"{name}.{key}"))
        states = ["h", "c"] if layer.kind == "lstm" else ["h"]
        for s in states:
            inputs.append(helper.make_tensor_value_info(f"{name}.{s}0", elem, [D, batch, H]))
            outputs.append(helper.make_tensor_value_info(f"{name}.{s}n", elem, [D, batch, H]))
        node_inputs = [sequence, f"{name}.W", f"{name}.R", f"{name}.B", "", f"{name}.h0"]
        node_outputs = [f"{name}.Y", f"{name}.hn"]
        if layer.kind == "lstm":
            node_inputs.append(f"{name}.c0")
            node_outputs.append(f"{name}.cn")
        nodes_.append(helper.make_node(_onnx_kind(layer.kind), node_inputs, node_outputs, name=name,
                                       **_onnx_attributes(layer)))
        # Y [time, directions, batch, units] -> [time, batch, directions*units]
        nodes_.append(helper.make_node("Transpose", [f"{name}.Y"], [f"{name}.Y.tbd"], perm=[0, 2, 1, 3]))
        nodes_.append(helper.make_node("Reshape", [f"{name}.Y.tbd", "shape.tb_"], [f"{name}.y"]))
        sequence = f"{name}.y"
    nodes_.append(helper.make_node("Transpose", [sequence], ["y"], perm=[1, 0, 2]))
    width = weights.layers[-1].directions * weights.layers[-1].units
    outputs.insert(0, helper.make_tensor_value_info("y", elem, [batch, "time", width]))
    graph = helper.make_graph(nodes_, "statefmt", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="statefmt.adapters.onnx")
    onnx.checker.check_model(model)
    return model


# --- reading a graph -------------------------------------------------------------------------------

class _Unmappable(Exception):
    """A chain the adapter cannot follow; the caller turns it into a StateMismatchError naming the node."""


class _ReachesInput(_Unmappable):
    """A graph input that carries no state was reached: the op that led there is the one to name."""


@dataclasses.dataclass
class _Recurrent:
    index: int
    name: str
    kind: str
    hidden_size: int
    direction: str
    layout: int
    attrs: dict[str, Any]
    inputs: list[str]
    outputs: list[str]
    state_inputs: tuple[str, ...] = ()

    @property
    def directions(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("h", "c") if self.kind == "lstm" else ("h",)

    def where(self, k: int) -> str:
        return f"layer {k} (node {self.name!r}, {self.kind.upper()})"

    def state_shape(self, batch: int) -> tuple[int, int, int]:
        D, H = self.directions, self.hidden_size
        return (batch, D, H) if self.layout else (D, batch, H)


_CACHE: OrderedDict[Any, tuple[Callable[[], Any], _Graph]] = OrderedDict()


class _Graph:
    """A model's graph, its recurrent nodes, and the chains between them and the graph's inputs and outputs."""

    def __init__(self, proto: Any, label: str):
        self.proto = proto
        self.label = label
        graph = proto.graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = {i.name: i for i in graph.input if i.name not in self.initializers}
        self.outputs = [o.name for o in graph.output]
        self.producer: dict[str, tuple[Any, int]] = {}
        self.consumers: dict[str, list[tuple[Any, int]]] = {}
        for node in graph.node:
            for position, name in enumerate(node.output):
                if name:
                    self.producer[name] = (node, position)
            for position, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, position))
        self.nodes = self._recurrent_nodes()
        self._maps: OrderedDict[tuple[str, int | None], Any] = OrderedDict()
        self._static: list[int | None] = []  # the static batch, once known

    @classmethod
    def of(cls, model: Any) -> _Graph:
        """The graph of a ModelProto, a path or an InferenceSession; analyses are kept for the last few models."""
        if isinstance(model, _Graph):
            return model
        onnx = require("onnx", "onnx")
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            try:
                stat = os.stat(path)
            except OSError as error:
                raise StateError(f"{path}: cannot read the model: {error.strerror}") from None
            key: Any = (path, stat.st_mtime_ns, stat.st_size)
        elif isinstance(model, onnx.ModelProto):
            key = ("proto", id(model), model.ByteSize())
        elif type(model).__name__ == "InferenceSession" and hasattr(model, "get_inputs"):
            key = ("session", id(model))
        else:
            raise StateMismatchError(f"{type(model).__name__}: statefmt.adapters.onnx takes an onnx.ModelProto, a "
                                     "path to a .onnx file or an onnxruntime.InferenceSession")
        cached = _CACHE.get(key)
        if cached is not None and (key[0] not in ("proto", "session") or cached[0]() is model):
            _CACHE.move_to_end(key)
            return cached[1]
        proto, label = _load(model)
        graph = cls(proto, label)
        try:  # a session is only referenced weakly (it may hold a large model); a ModelProto is kept
            holder: Callable[[], Any] = weakref.ref(model)
        except TypeError:
            holder = functools.partial(lambda kept: kept, model)
        _CACHE[key] = (holder, graph)  # an id-based key is checked against the very object it was made for
        while len(_CACHE) > 8:
            _CACHE.popitem(last=False)
        return graph

    def _recurrent_nodes(self) -> list[_Recurrent]:
        from onnx import helper

        found = []
        for index, node in enumerate(self.proto.graph.node):
            if node.op_type not in _KINDS or node.domain not in ("", "ai.onnx"):
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
            if "activations" in attrs:
                attrs["activations"] = [a.decode() if isinstance(a, bytes) else a for a in attrs["activations"]]
            kind = _KINDS[node.op_type]
            name = node.name or f"{node.op_type}#{index}"
            if "hidden_size" not in attrs:
                raise StateMismatchError(f"{self.label}: node {name!r} ({node.op_type}) has no hidden_size attribute; "
                                         "statefmt needs it to know the state's width")
            inputs = list(node.input) + [""] * (8 - len(node.input))
            outputs = list(node.output) + [""] * (3 - len(node.output))
            rec = _Recurrent(index, name, kind, int(attrs["hidden_size"]), str(attrs.get("direction", "forward")),
                             int(attrs.get("layout", 0)), attrs, inputs, outputs)
            rec.state_inputs = tuple(dict.fromkeys(
                i for s in range(len(rec.state_names)) for i in self.feeding(inputs[5 + s])))
            found.append(rec)
        if not found:
            ops = sorted({n.op_type for n in self.proto.graph.node} & {"Loop", "Scan"})
            how = (f"its recurrence is a {' and '.join(ops)} (tf2onnx writes Keras GRU and SimpleRNN that way)" if ops
                   else "its recurrence, if any, is unrolled into plain ops (torch.onnx's dynamo exporter does that to "
                        "nn.RNN)")
            raise StateMismatchError(f"{self.label}: no LSTM, GRU or RNN node in the graph; {how}. Export recurrent "
                                     "nodes instead: torch.onnx.export(..., dynamo=False), or build the model from "
                                     "the framework's weights with to_onnx(weights)")
        return found

    # where a value comes from, and where it goes, through ops that only move elements

    def feeding(self, value: str) -> tuple[str, ...]:
        """The graph inputs whose elements reach `value` through element-moving ops."""
        return tuple(_reach(value, self.inputs, self._moved_from))

    def carrying(self, value: str) -> tuple[str, ...]:
        """The graph outputs that elements of `value` reach through element-moving ops."""
        found = _reach(value, self.outputs, self._moved_to)
        return tuple(o for o in self.outputs if o in found)

    def _moved_from(self, name: str) -> list[str]:
        """The values an element-moving op copies into `name` (none past a graph input)."""
        if name in self.inputs or name not in self.producer:
            return []
        node, _ = self.producer[name]
        if node.op_type not in _MOVES:
            return []
        positions = _MOVES[node.op_type] or range(len(node.input))
        return [node.input[p] for p in positions if p < len(node.input)]

    def _moved_to(self, name: str) -> list[str]:
        """The values element-moving ops copy `name`'s elements into."""
        moved = []
        for node, position in self.consumers.get(name, ()):
            positions = _MOVES.get(node.op_type, ())
            if positions is None or position in positions:
                moved += list(node.output)
        return moved

    def input_dtype(self, name: str) -> str:
        from onnx import helper

        elem = self.inputs[name].type.tensor_type.elem_type
        return _dtype_name(helper.tensor_dtype_to_np_dtype(elem))

    def input_shape(self, name: str, batch: int | None) -> tuple[int, ...]:
        info = self.inputs[name].type.tensor_type
        if not info.HasField("shape"):
            raise _Unmappable(f"graph input {name!r} declares no shape")
        dims = []
        for dim in info.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(dim.dim_value)
            elif batch is None:
                raise _Unmappable(f"graph input {name!r} has a dynamic dimension")
            else:
                dims.append(batch)
        return tuple(dims)

    def static_batch(self) -> int | None:
        """The batch size static state inputs fix, or None when one of them is dynamic."""
        if not self._static:
            try:
                maps = self._feed_map(None)
                sizes = {m.shape[1] for per_node in maps[1] for m in per_node.values()}
                self._static.append(sizes.pop() if len(sizes) == 1 else None)
            except (_Unmappable, StateMismatchError):
                self._static.append(None)
        return self._static[0]

    def _remember(self, key: tuple[str, int | None], value: Any) -> Any:
        """Keep index maps for the last few batch sizes (a server sees many; each map is as large as the state)."""
        self._maps[key] = value
        while len(self._maps) > 8:
            self._maps.popitem(last=False)
        return value

    # the index maps: which element of which graph input (output) each state element is

    def _feed_map(self, batch: int | None) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
        """(state inputs, per node {state: indices [D, N, H] into the inputs' flat concatenation})."""
        key = ("feed", batch)
        if key not in self._maps:
            sources, offset = {}, 0
            names = list(dict.fromkeys(i for node in self.nodes for i in node.state_inputs))
            for name in names:
                try:
                    shape = self.input_shape(name, batch)
                    size = _bounded(shape, f"graph input {name!r}")
                except _Unmappable as error:
                    if batch is None:
                        raise
                    raise StateMismatchError(f"{self.label}: {error}") from None
                sources[name] = np.arange(offset, offset + size, dtype=np.int64).reshape(shape)
                offset += size
            evaluator = _Evaluator(self, sources)
            per_node = []
            for k, node in enumerate(self.nodes):
                maps = {}
                for s, slot in zip(node.state_names, (5, 6)):
                    value = node.inputs[slot]
                    where = f"{node.where(k)}: initial_{s}"
                    if not value:
                        raise StateMismatchError(f"{self.label}: {where}: the node has no initial_{s} input, so it "
                                                 "always starts from zeros; export the model with the state as an "
                                                 "input (torch: call the module with (x, (h0, c0)) when exporting)")
                    try:
                        result = evaluator.index(value)
                    except _Unmappable as error:
                        raise StateMismatchError(f"{self.label}: {where}: {error}") from None
                    maps[s] = self._normalize(node, result, batch, where)
                per_node.append(maps)
            self._remember(key, (sources, per_node, offset))
        self._maps.move_to_end(key)
        return self._maps[key][0], self._maps[key][1]

    def _normalize(self, node, indices, batch, where):
        if indices is None:
            raise StateMismatchError(f"{self.label}: {where}: is computed from constants, not fed by a graph input; "
                                     "export the model with the state as an input")
        fits = indices.ndim == 3 and indices.shape[node.layout] == node.directions \
            and indices.shape[2] == node.hidden_size
        if not fits or (batch is not None and indices.shape[1 - node.layout] != batch):
            shape = "[batch, directions, hidden]" if node.layout else "[directions, batch, hidden]"
            raise StateMismatchError(f"{self.label}: {where}: the chain from the graph inputs gives shape "
                                     f"{list(indices.shape)}, the node takes {shape} with directions "
                                     f"{node.directions} and hidden {node.hidden_size}")
        if np.any(indices < 0):
            raise StateMismatchError(f"{self.label}: {where}: part of it is a constant, not fed by a graph input; "
                                     "statefmt cannot set those elements")
        return indices.transpose(1, 0, 2) if node.layout else indices

    def feeds(self, states: StateSet) -> dict[str, np.ndarray]:
        static = self.static_batch()
        batch = None if static is not None else states.batch_size
        sources, per_node = self._feed_map(batch)
        plan = self._feed_plan(batch)
        dtypes = {name: _numpy_dtype(self.input_dtype(name)) for name in sources}
        result: dict[str, np.ndarray] = {}
        for name, (k, s) in plan["direct"].items():  # an input that is exactly one node's state: no copy needed
            result[name] = np.ascontiguousarray(np.asarray(states.layers[k][s]).astype(dtypes[name], copy=False))
        rest = [name for name in sources if name not in result]
        if not rest:
            return result
        flat = np.zeros(sum(int(a.size) for a in sources.values()), np.result_type(*dtypes.values()))
        for k, (maps, layer) in enumerate(zip(per_node, states.layers)):
            for s, indices in maps.items():
                run = plan["runs"][k, s]  # one run of one input: a copy of memory, no scatter
                values = np.broadcast_to(layer[s], indices.shape).reshape(-1)
                flat[run if run is not None else indices.reshape(-1)] = values
        if not plan["unique"]:  # one input element feeds several state elements: their values must agree
            for k, (maps, layer) in enumerate(zip(per_node, states.layers)):
                for s, indices in maps.items():
                    clash = flat[indices] != np.broadcast_to(layer[s], indices.shape)
                    if np.any(clash):
                        raise StateMismatchError(
                            f"{self.label}: {self.nodes[k].where(k)}: initial_{s}: the graph feeds one input element "
                            f"to several state elements, and the state gives them different values "
                            f"({int(clash.sum())} elements); the model shares that input between them")
        offsets = plan["offsets"]
        for name in rest:
            indices = sources[name]
            start = offsets[name]
            result[name] = flat[start:start + indices.size].reshape(indices.shape).astype(dtypes[name], copy=False)
        return result

    def _feed_plan(self, batch: int | None) -> dict[str, Any]:
        """Which inputs are one node state as is, and whether any input element feeds two state elements."""
        key = ("plan", batch)
        if key not in self._maps:
            sources, per_node = self._feed_map(batch)
            offsets, offset = {}, 0
            for name, indices in sources.items():
                offsets[name] = offset
                offset += indices.size
            counts = np.zeros(offset, np.int32)
            owners: dict[str, list[tuple[int, str]]] = {}
            runs: dict[tuple[int, str], slice | None] = {}
            for k, maps in enumerate(per_node):
                for s, indices in maps.items():
                    flat = indices.reshape(-1)
                    contiguous = flat[-1] - flat[0] == flat.size - 1 and bool(np.all(np.diff(flat) == 1))
                    runs[k, s] = slice(int(flat[0]), int(flat[-1]) + 1) if contiguous else None
                    np.add.at(counts, indices.reshape(-1), 1)
                    for name, start in offsets.items():
                        if start <= indices.flat[0] < start + sources[name].size:
                            owners.setdefault(name, []).append((k, s))
            unique = bool(np.all(counts <= 1))
            direct = {}
            for name, indices in sources.items() if unique else ():
                pieces = owners.get(name, [])
                if len(pieces) == 1:
                    k, s = pieces[0]
                    mine = per_node[k][s]
                    if mine.shape == indices.shape and np.array_equal(mine, indices):
                        direct[name] = (k, s)
            self._remember(key, {"offsets": offsets, "unique": unique, "direct": direct, "runs": runs})
        self._maps.move_to_end(key)
        return self._maps[key]

    def _output_map(self, batch: int) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], int]:
        """Per graph output reached: indices into the nodes' flat concatenated final states (-1: not a state)."""
        key = ("out", batch)
        if key not in self._maps:
            sources, offset, layout = {}, 0, []
            for node in self.nodes:
                entry = {}
                for s, slot in zip(node.state_names, (1, 2)):
                    shape = node.state_shape(batch)
                    try:
                        size = _bounded(shape, f"node {node.name!r}'s final state")
                    except _Unmappable as error:
                        raise StateMismatchError(f"{self.label}: {error}") from None
                    entry[s] = (offset, shape)
                    if node.outputs[slot]:
                        sources[node.outputs[slot]] = np.arange(offset, offset + size, dtype=np.int64).reshape(shape)
                    offset += size
                layout.append(entry)
            evaluator = _Evaluator(self, sources)
            reached = {o for value in sources for o in self.carrying(value)}
            outputs = {}
            for name in self.outputs:
                if name in reached:
                    try:
                        outputs[name] = evaluator.index(name)
                    except _Unmappable as error:
                        raise StateMismatchError(f"{self.label}: output {name!r}: {error}") from None
                    if outputs[name] is None:
                        del outputs[name]
            self._remember(key, (outputs, layout, offset))
        self._maps.move_to_end(key)
        return self._maps[key]

    def named_outputs(self, outputs: Any) -> dict[str, np.ndarray]:
        if isinstance(outputs, Mapping):
            named = dict(outputs)
        elif isinstance(outputs, Sequence) and not isinstance(outputs, (str, bytes)):
            if len(outputs) != len(self.outputs):
                raise StateMismatchError(f"outputs: the model has {len(self.outputs)} outputs "
                                         f"({', '.join(self.outputs)}), found a list of {len(outputs)}; pass what "
                                         "session.run(None, feeds) returned, or a dict by output name")
            named = dict(zip(self.outputs, outputs))
        else:
            raise StateMismatchError(f"outputs: expected what session.run returned (a list in output order, or a dict "
                                     f"by output name), found {type(outputs).__name__}")
        return {name: np.asarray(value.numpy() if hasattr(value, "numpy") else value) for name, value in named.items()}

    def gather_states(self, arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        carriers = {o for node in self.nodes for slot in (1, 2)[:len(node.state_names)]
                    for o in self.carrying(node.outputs[slot])}
        missing = [name for name in self.outputs if name in carriers and name not in arrays]
        if missing:
            raise StateMismatchError(f"outputs: {', '.join(map(repr, missing))} carry final states and are missing; "
                                     "run the session with output_names=None (all outputs), or include them")
        batch = self._batch_of(arrays, carriers)
        outputs, layout, _ = self._output_map(batch)
        for name, indices in outputs.items():
            if arrays[name].shape != indices.shape:
                raise StateMismatchError(f"outputs: {name!r}: expected shape {list(indices.shape)} at batch {batch}, "
                                         f"found {list(arrays[name].shape)}")
        plan = self._gather_plan(batch)
        problems, states = [], []
        for k, (node, entry) in enumerate(zip(self.nodes, layout)):
            arrays_k = {}
            for s, (_, shape) in entry.items():
                where = plan[k][s]
                if where is None:
                    problems.append(f"{node.where(k)}: Y_{s}: no graph output carries the node's final {s}; export "
                                    "the model with it as an output (torch: return h_n, c_n from forward)")
                    continue
                name, picks = where
                if isinstance(name, list):
                    held, positions = picks
                    array = np.empty(held.size, arrays[name[held[0]]].dtype)
                    for i in np.unique(held):
                        mask = held == i
                        array[mask] = arrays[name[i]].reshape(-1)[positions[mask]]
                    array = array.reshape(shape)
                else:
                    flat = arrays[name].reshape(-1)
                    array = (flat[picks] if isinstance(picks, slice) else np.take(flat, picks)).reshape(shape)
                arrays_k[s] = array.transpose(1, 0, 2) if node.layout else array
            states.append(arrays_k)
        if problems:
            raise StateMismatchError([f"{self.label}: {p}" for p in problems])
        return states

    def _gather_plan(self, batch: int) -> list[dict[str, Any]]:
        """Per node state: (output, slice or flat indices into it) holding it, or None when no output does."""
        key = ("gather", batch)
        if key not in self._maps:
            outputs, layout, total = self._output_map(batch)
            names = list(outputs)
            holder = np.full(total, -1, np.int32)
            position = np.full(total, -1, np.int64)
            for i, name in enumerate(names):
                flat = outputs[name].reshape(-1)
                valid = flat >= 0
                holder[flat[valid]] = i
                position[flat[valid]] = np.flatnonzero(valid)
            plan: list[dict[str, Any]] = []
            for entry in layout:
                found: dict[str, Any] = {}
                for s, (start, shape) in entry.items():
                    stop = start + int(np.prod(shape))
                    held = holder[start:stop]
                    if np.any(held < 0):
                        found[s] = None
                        continue
                    if np.any(held != held[0]):  # spread over several outputs (tf2onnx: one per direction)
                        found[s] = ([names[i] for i in range(len(names))], (held.copy(), position[start:stop]))
                        continue
                    picks: Any = position[start:stop]
                    if picks[-1] - picks[0] == picks.size - 1 and np.all(np.diff(picks) == 1):
                        picks = slice(int(picks[0]), int(picks[-1]) + 1)  # one run of one output: a view, no copy
                    found[s] = (names[held[0]], picks)
                plan.append(found)
            self._remember(key, plan)
        self._maps.move_to_end(key)
        return self._maps[key]

    def _batch_of(self, arrays: dict[str, np.ndarray], carriers: set[str]) -> int:
        """The batch of a run: static, or solved from one output's size (linear in the batch), or one of its dims."""
        static = self.static_batch()
        if static is not None:
            return static
        candidates: dict[int, None] = {}
        try:
            one, two = self._output_map(1)[0], self._output_map(2)[0]
            for name, indices in one.items():
                if name in arrays and two[name].size > indices.size:
                    step = two[name].size - indices.size
                    batch, rest = divmod(arrays[name].size - indices.size, step)
                    if not rest:
                        candidates[batch + 1] = None
        except (_Unmappable, StateMismatchError):
            pass
        for name in self.outputs:
            if name in carriers and name in arrays:
                candidates.update(dict.fromkeys(int(dim) for dim in arrays[name].shape))
        for batch in (c for c in candidates if c > 0):
            try:
                outputs = self._output_map(batch)[0]
            except (_Unmappable, StateMismatchError):
                continue
            if all(arrays[name].shape == indices.shape for name, indices in outputs.items() if name in arrays):
                return batch
        shapes = ", ".join(f"{name!r} {list(arrays[name].shape)}" for name in self.outputs
                           if name in carriers and name in arrays)
        raise StateMismatchError(f"{self.label}: outputs: no batch size fits the shapes of {shapes}")

    # weights

    def tensor(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        if name in self.producer:
            node, _ = self.producer[name]
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                return numpy_helper.to_array(node.attribute[0].t)
        return None

    def activations(self, node: _Recurrent) -> list[tuple[str, float | None, float | None]]:
        names = node.attrs.get("activations") or list(_DEFAULT_ACTIVATIONS[node.kind]) * node.directions
        alphas, betas = list(node.attrs.get("activation_alpha", [])), list(node.attrs.get("activation_beta", []))
        result = []
        for name in names:  # alpha and beta are consumed in order, by the functions that take them
            takes = name in _TAKES_ALPHA
            alpha = (alphas.pop(0) if alphas else _TAKES_ALPHA[name][0]) if takes else None
            beta = (betas.pop(0) if betas else _TAKES_ALPHA[name][1]) if name in _TAKES_BETA else None
            result.append((name, alpha, beta))
        return result

    def check_exportable(self, k: int, node: _Recurrent) -> list[str]:
        where = f"{self.label}: {node.where(k)}"
        problems = []
        for slot, key in ((1, "W"), (2, "R"), (3, "B")):
            name = node.inputs[slot]
            if name and self.tensor(name) is None:
                problems.append(f"{where}: {key} ({name!r}) is computed in the graph, not stored; statefmt reads "
                                "weights from initializers or Constant nodes (fold constants first, e.g. "
                                "onnxruntime's offline optimization or onnxscript's optimizer)")
        if node.kind == "lstm" and node.inputs[7]:
            peepholes = self.tensor(node.inputs[7])
            if peepholes is None or np.any(peepholes != 0):
                problems.append(f"{where}: P: the node has peepholes (ONNX's LSTM input P, which is not statefmt's "
                                "projection P); the neutral LSTM has none, so these weights do not map. A model "
                                "trained without peepholes (PyTorch, Keras, Flax) exports exactly")
        if "clip" in node.attrs:
            problems.append(f"{where}: clip={node.attrs['clip']}: the node clips its cell inputs, which the neutral "
                            "equations do not; export a model built without clip")
        if node.attrs.get("input_forget", 0):
            problems.append(f"{where}: input_forget=1: the node couples the input and forget gates, which the neutral "
                            "LSTM does not; export a model built with input_forget=0")
        problems += [f"{where}: {p}" for p in self._neutral_activations(node)[1]]
        return problems

    def _neutral_activations(self, node: _Recurrent) -> tuple[dict[str, str], list[str]]:
        per = len(_DEFAULT_ACTIVATIONS[node.kind])
        functions = self.activations(node)
        if len(functions) != per * node.directions:
            return {}, [f"activations: expected {per * node.directions} ({per} per direction), "
                        f"found {len(functions)}"]
        names: list[str] = []
        problems: list[str] = []
        for function in functions:
            name = _neutral_name(*function)
            if name is None:
                problems.append(f"activations: {_describe_function(*function)} has no name in the neutral layout "
                                f"(which knows {', '.join(_ACTIVATIONS)}); statefmt cannot port it exactly")
            else:
                names.append(name)
        if problems:
            return {}, problems
        forward, backward = names[:per], names[per:]
        if backward and backward != forward:
            return {}, [f"activations: the directions differ ({', '.join(forward)} forward, {', '.join(backward)} "
                        "backward); the neutral layout has one set per layer"]
        if node.kind == "lstm" and forward[1] != forward[2]:
            return {}, [f"activations: the cell candidate uses {forward[1]} and the output {forward[2]}; the neutral "
                        "LSTM uses one activation for both"]
        if node.kind == "rnn":
            return {"activation": forward[0]}, []
        return {"recurrent_activation": forward[0], "activation": forward[1]}, []

    def export_weights(self, name: str, node: _Recurrent) -> LayerWeights:
        W: Any = self.tensor(node.inputs[1])  # check_exportable saw W, R and B stored
        R: Any = self.tensor(node.inputs[2])
        rows = W.shape[1]
        B: Any = self.tensor(node.inputs[3]) if node.inputs[3] else np.zeros((node.directions, 2 * rows), W.dtype)
        rows_ = gate_rows(node.kind, node.hidden_size, FRAMEWORK_GATE_ORDER["onnx"][node.kind])

        def neutral(array):
            return array[:, rows_]

        functions, _ = self._neutral_activations(node)
        return LayerWeights(name, node.kind, neutral(W), neutral(R), neutral(B[:, :rows]), neutral(B[:, rows:]),
                            activation=functions["activation"],
                            recurrent_activation=functions.get("recurrent_activation", "sigmoid"),
                            linear_before_reset=bool(node.attrs.get("linear_before_reset", 0))
                            if node.kind == "gru" else True)

    def input_size(self, node: _Recurrent) -> int | None:
        W = self.initializers.get(node.inputs[1])
        if W is not None:
            return int(W.dims[2])
        W_ = self.tensor(node.inputs[1])
        return None if W_ is None else int(W_.shape[2])

    def layer_signature(self, k: int, node: _Recurrent) -> LayerWeightSignature:
        input_size = self.input_size(node)
        if input_size is None:
            raise StateMismatchError(f"{self.label}: {node.where(k)}: W ({node.inputs[1]!r}) is computed in the "
                                     "graph, not stored, so its input size is unknown; fold constants first")
        current, _ = self._neutral_activations(node)
        functions = self.activations(node)
        described = {"activation": _describe_function(*functions[1 if node.kind != "rnn" else 0]),
                     "recurrent_activation": _describe_function(*functions[0])}
        return LayerWeightSignature(
            node.kind, node.hidden_size, input_size, node.directions, None, node.name,
            current.get("activation", described["activation"]),
            current.get("recurrent_activation", described["recurrent_activation"] if node.kind != "rnn"
                        else "sigmoid"),
            tuple(_ACTIVATIONS), tuple(_ACTIVATIONS), bool(node.attrs.get("linear_before_reset", 0)),
            advice=_ADVICE)

    def with_weights(self, weights: WeightSet) -> Any:
        from onnx import helper, numpy_helper

        model = type(self.proto)()
        model.CopyFrom(self.proto)
        graph = model.graph
        taken = {t.name for t in graph.initializer} | set(self.producer) | set(self.inputs)
        displaced = set()
        nodes_ = list(graph.node)
        for k, (node, layer) in enumerate(zip(self.nodes, weights.layers)):
            proto = nodes_[node.index]
            stored = self.tensor(node.inputs[1])
            dtype = stored.dtype if stored is not None else np.asarray(layer["W"]).dtype
            arrays = [a.astype(dtype, copy=False) for a in _onnx_weights(layer)]
            while len(proto.input) < 4:
                proto.input.append("")
            for slot, key, array in zip((1, 2, 3), "WRB", arrays):
                name = _fresh(f"{_name(None, k)}.{key}", taken)
                if proto.input[slot]:
                    displaced.add(proto.input[slot])
                proto.input[slot] = name
                graph.initializer.append(numpy_helper.from_array(array, name))
            if len(proto.input) > 7 and proto.input[7]:  # peepholes go: the weights have none
                displaced.add(proto.input[7])
                proto.input[7] = ""
            keep = [a for a in proto.attribute if a.name not in
                    ("activations", "activation_alpha", "activation_beta", "clip", "input_forget",
                     "linear_before_reset")]
            del proto.attribute[:]
            proto.attribute.extend(keep)
            for name, value in _onnx_attributes(layer, direction=False).items():
                proto.attribute.append(helper.make_attribute(name, value))
            while proto.input and not proto.input[-1]:
                proto.input.pop()
        still_used = {name for n in graph.node for name in n.input}
        keep_inits = [t for t in graph.initializer if t.name not in displaced or t.name in still_used]
        del graph.initializer[:]
        graph.initializer.extend(keep_inits)
        return model

    def source(self) -> dict[str, str]:
        return source_metadata("onnxruntime", "onnx", self.label)


_TAKES_ALPHA = {"HardSigmoid": (0.2, 0.5), "LeakyRelu": (0.01, None), "ThresholdedRelu": (1.0, None),
                "ScaledTanh": (1.0, 1.0), "Affine": (1.0, 0.0), "Elu": (1.0, None)}
_TAKES_BETA = {"HardSigmoid", "ScaledTanh", "Affine"}


def _reach(value: str, ends: Any, step: Callable[[str], list[str]]) -> dict[str, None]:
    """The names in `ends` that a walk from `value` along `step` meets, in the order met."""
    found: dict[str, None] = {}
    todo, seen = [value], set()
    while todo:
        name = todo.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        if name in ends:
            found[name] = None
        todo += step(name)
    return found


def _neutral_name(name: str, alpha: float | None, beta: float | None) -> str | None:
    for neutral, (onnx_name, a, b) in _ACTIVATIONS.items():
        if onnx_name == name and _near(alpha, a) and _near(beta, b):
            return neutral
    return None


def _near(value: float | None, expected: float | None) -> bool:
    return expected is None or (value is not None and abs(value - expected) < 1e-6)


def _describe_function(name: str, alpha: float | None, beta: float | None) -> str:
    if alpha is None:
        return name
    if name == "HardSigmoid" and _near(alpha, 0.2) and _near(beta, 0.5):
        return "HardSigmoid(alpha=0.2, beta=0.5), Keras 2's hard_sigmoid rather than Keras 3's (x/6 + 0.5),"
    return f"{name}(alpha={alpha:g}" + (f", beta={beta:g})" if beta is not None else ")")


def _onnx_weights(layer: LayerWeights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    back = np.argsort(gate_rows(layer.kind, layer.units, FRAMEWORK_GATE_ORDER["onnx"][layer.kind]))

    def onnx_order(array):
        return array[:, back]

    W, R = onnx_order(np.asarray(layer["W"])), onnx_order(np.asarray(layer["R"]))
    B = np.concatenate([onnx_order(np.asarray(layer["Wb"])), onnx_order(np.asarray(layer["Rb"]))], axis=1)
    return np.ascontiguousarray(W), np.ascontiguousarray(R), np.ascontiguousarray(B)


def _onnx_attributes(layer: LayerWeights, *, direction: bool = True) -> dict[str, Any]:
    """The attributes that make a node compute `layer`'s equations (and its shape, with `direction`)."""
    per = {"lstm": (layer.recurrent_activation, layer.activation, layer.activation),
           "gru": (layer.recurrent_activation, layer.activation), "rnn": (layer.activation,)}[layer.kind]
    functions = [_ACTIVATIONS[name] for name in per] * layer.directions
    attrs: dict[str, Any] = {"activations": [f[0] for f in functions]}
    alphas = [f[1] for f in functions if f[1] is not None]
    betas = [f[2] for f in functions if f[2] is not None]
    if alphas:
        attrs["activation_alpha"] = alphas
        attrs["activation_beta"] = betas
    if layer.kind == "gru":
        attrs["linear_before_reset"] = int(layer.linear_before_reset)
    if direction:
        attrs["hidden_size"] = layer.units
        attrs["direction"] = "bidirectional" if layer.directions == 2 else "forward"
    return attrs


def _onnx_kind(kind: str) -> str:
    return {v: k for k, v in _KINDS.items()}[kind]


# --- the index evaluator ---------------------------------------------------------------------------

class _Evaluator:
    """Runs the element-moving ops between sources and a value on integer indices (and the shape arithmetic
    around them on real values), so the result says which source element each element of the value is.

    An index array holds -1 where an element is a constant rather than a source element.
    """

    _SHAPE_OPS: ClassVar[frozenset[str]] = frozenset({"Constant", "Shape", "Size", "ConstantOfShape", "Add", "Sub",
                                                       "Mul", "Div", "Neg", "Range", "Equal", "Where", "Max", "Min",
                                                       "Abs"})

    def __init__(self, graph: _Graph, sources: dict[str, np.ndarray]):
        self.graph = graph
        self.values: dict[str, tuple[np.ndarray, bool]] = {name: (array, True) for name, array in sources.items()}

    def index(self, value: str) -> np.ndarray | None:
        """The indices of `value`; None when it holds no source element at all."""
        array, is_index = self._value(value, 0)
        return array if is_index else None

    def _value(self, name: str, depth: int) -> tuple[np.ndarray, bool]:
        if name in self.values:
            return self.values[name]
        if depth > 200:
            raise _Unmappable("the chain is longer than 200 ops")
        graph = self.graph
        tensor = graph.tensor(name) if name in graph.initializers else None
        if tensor is not None:
            self.values[name] = (tensor, False)
            return self.values[name]
        if name in graph.inputs:
            raise _ReachesInput(f"it depends on graph input {name!r}, which does not carry state")
        if name not in graph.producer:
            raise _Unmappable(f"{name!r} has no producer in the graph")
        node, _ = graph.producer[name]
        op = node.op_type
        if op in _KINDS:
            raise _Unmappable(f"it is computed by the recurrent node {node.name!r}, not fed by a graph input")
        refusal = (f"it goes through {op} (node {node.name!r}), which statefmt cannot invert; a state may reach a "
                   f"recurrent node only through {', '.join(sorted(_MOVES))}")
        if node.domain not in ("", "ai.onnx") or (op not in _MOVES and op not in self._SHAPE_OPS):
            raise _Unmappable(refusal)
        if op in ("Shape", "Size"):  # only the shape is needed: a zero-memory view stands for the data
            shape = self._shape_of(node.input[0], depth)
            inputs: list[tuple[Any, bool]] = [(np.broadcast_to(np.int8(0), shape), False)]
        else:
            try:
                inputs = [self._value(i, depth + 1) if i else (None, False) for i in node.input]
            except _ReachesInput:
                if op in _MOVES:
                    raise
                raise _Unmappable(refusal) from None
        moved = _MOVES.get(op, ())
        data_positions = range(len(inputs)) if moved is None else moved
        indexed = [p for p, (_, is_index) in enumerate(inputs) if is_index]
        if indexed and (op not in _MOVES or any(p not in data_positions for p in indexed)):
            raise _Unmappable(f"it goes through {op} (node {node.name!r}) in a way that computes on the state")
        attrs = _attributes(node)
        attrs["_outputs"] = len(node.output)
        arrays = [a for a, _ in inputs]
        if indexed and op == "Concat":
            arrays = [a if is_index else np.full(a.shape, -1, np.int64) for a, is_index in inputs]
        if indexed and op == "Cast" and not _is_float(attrs.get("to")):
            raise _Unmappable(f"it is cast to a non-float type by node {node.name!r}")
        try:
            results = _run(op, arrays, attrs, cast=not indexed)
        except _Unmappable:
            raise
        except Exception as error:  # a malformed graph: say where
            raise _Unmappable(f"{op} (node {node.name!r}) fails on these shapes: {error}") from None
        for out, result in zip(node.output, results):
            if out:
                self.values[out] = (result, bool(indexed))
        return self.values[name]

    def _shape_of(self, name: str, depth: int) -> tuple[int, ...]:
        if name in self.graph.inputs and name not in self.values:
            return self.graph.input_shape(name, None)
        return self._value(name, depth + 1)[0].shape


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper, numpy_helper

    attrs = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        attrs[a.name] = numpy_helper.to_array(value) if a.type == a.TENSOR else value
    return attrs


def _is_float(elem: Any) -> bool:
    from onnx import TensorProto

    return elem in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def _run(op: str, inputs: list, attrs: dict[str, Any], *, cast: bool) -> list[np.ndarray]:
    """One ONNX op on numpy arrays (index arrays pass through the element-moving ops unchanged in dtype)."""
    x: Any = inputs[0] if inputs else None

    def ints(array):
        return [int(v) for v in np.asarray(array).reshape(-1)]

    def axes_of(position, name):
        if len(inputs) > position and inputs[position] is not None:
            return ints(inputs[position])
        return list(attrs[name]) if name in attrs else None

    if op in ("Identity",):
        return [x]
    if op == "Cast":
        if not cast:
            return [x]
        from onnx import helper

        return [x.astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))]
    if op == "Transpose":
        return [np.transpose(x, attrs.get("perm"))]
    if op == "Reshape":
        shape = ints(inputs[1])
        if not attrs.get("allowzero", 0):
            shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return [x.reshape(shape)]
    if op == "Flatten":
        axis = attrs.get("axis", 1)
        axis = axis + x.ndim if axis < 0 else axis
        return [x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))]
    if op == "Squeeze":
        axes = axes_of(1, "axes")
        if axes is None:
            return [np.squeeze(x)]
        return [np.squeeze(x, axis=tuple(a % x.ndim for a in axes))]
    if op == "Unsqueeze":
        axes = sorted(a % (x.ndim + len(axes_of(1, "axes"))) for a in axes_of(1, "axes"))
        for a in axes:
            x = np.expand_dims(x, a)
        return [x]
    if op == "Slice":
        if len(inputs) > 1:
            starts, ends = ints(inputs[1]), ints(inputs[2])
            axes = ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
            steps = ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
        else:
            starts, ends = list(attrs["starts"]), list(attrs["ends"])
            axes, steps = list(attrs.get("axes", range(len(starts)))), [1] * len(starts)
        index: list[Any] = [slice(None)] * x.ndim
        for start, end, axis, step in zip(starts, ends, axes, steps):
            index[axis % x.ndim] = _slice(start, end, step, x.shape[axis % x.ndim])
        return [x[tuple(index)]]
    if op == "Gather":
        axis = attrs.get("axis", 0) % x.ndim
        indices = np.asarray(inputs[1]).astype(np.int64)
        indices = np.where(indices < 0, indices + x.shape[axis], indices)
        return [np.take(x, indices, axis=axis)]
    if op == "Split":
        axis = attrs.get("axis", 0) % x.ndim
        sizes = axes_of(1, "split")
        if sizes is None:
            parts = attrs.get("num_outputs") or attrs["_outputs"]
            size = -(-x.shape[axis] // parts)
            sizes = [min(size, x.shape[axis] - size * p) for p in range(parts)]
        return list(np.split(x, np.cumsum(sizes)[:-1], axis=axis))
    if op == "Concat":
        return [np.concatenate(inputs, axis=attrs["axis"])]
    if op == "Expand":
        shape = np.broadcast_shapes(x.shape, tuple(ints(inputs[1])))
        _bounded(shape, "an Expand")
        return [np.broadcast_to(x, shape).copy()]
    if op == "Constant":
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if key in attrs:
                return [np.asarray(attrs[key])]
        raise _Unmappable("a Constant with an unsupported value kind")
    if op == "Shape":
        shape = np.array(x.shape, np.int64)
        return [shape[attrs.get("start", 0):attrs.get("end", len(shape))]]
    if op == "Size":
        return [np.array(x.size, np.int64)]
    if op == "ConstantOfShape":
        value = attrs.get("value", np.zeros(1, np.float32))
        return [np.full(_bounded(ints(x), "a ConstantOfShape", as_shape=True), value.reshape(-1)[0], value.dtype)]
    binary = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Max": np.maximum, "Min": np.minimum,
              "Equal": np.equal}
    if op in binary:
        return [binary[op](inputs[0], inputs[1])]
    if op == "Div":
        a, b = inputs
        return [(a // b if np.issubdtype(a.dtype, np.integer) else a / b)]
    if op == "Neg":
        return [-x]
    if op == "Abs":
        return [np.abs(x)]
    if op == "Where":
        return [np.where(*inputs)]
    if op == "Range":
        start, limit, delta = (np.asarray(v).item() for v in inputs)
        if delta == 0 or (limit - start) / delta > _MAX_ELEMENTS:
            raise _Unmappable(f"a Range from {start} to {limit} by {delta} is too long to follow")
        return [np.arange(start, limit, delta)]
    raise _Unmappable(f"{op} is not supported")


def _bounded(shape: Any, what: str, *, as_shape: bool = False) -> Any:
    """The element count of `shape` (or the shape itself), refusing what no state could need (a hostile graph)."""
    dims = [int(d) for d in shape]
    size = int(np.prod(dims, dtype=np.float64)) if dims else 1
    if any(d < 0 for d in dims) or size > _MAX_ELEMENTS:
        raise _Unmappable(f"{what} of shape {dims} is larger than statefmt follows ({_MAX_ELEMENTS} elements)")
    return dims if as_shape else size


def _slice(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX's Slice bounds (clamped, -1 meaning "before the first" for a negative step) as a Python slice."""
    if step > 0:
        start = min(max(start + dim if start < 0 else start, 0), dim)
        end = min(max(end + dim if end < 0 else end, 0), dim)
        return slice(start, end, step)
    start = min(max(start + dim if start < 0 else start, -1), dim - 1)
    end = min(max(end + dim if end < 0 else end, -1), dim - 1)
    return slice(start, end if end >= 0 else None, step)


# --- small helpers ---------------------------------------------------------------------------------

def _load(model):
    onnx = require("onnx", "onnx")
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        try:
            return onnx.load(path), path
        except Exception as error:  # a corrupt or foreign file: one line, never a traceback
            raise StateError(f"{path}: not an ONNX model: {type(error).__name__}: {error}") from None
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "model"
    path = getattr(model, "_model_path", None)
    if path:
        return _load(path)
    data = getattr(model, "_model_bytes", None)
    if data:
        return onnx.load_from_string(data), "session"
    raise StateMismatchError("this InferenceSession keeps neither its model's path nor its bytes; pass the model "
                             "(its path or its onnx.ModelProto) instead")


def _name(prefix: str | None, k: int) -> str:
    return prefixed(prefix, f"l{k}")


def _fresh(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _dtype_name(dtype: Any) -> str:
    return "bfloat16" if dtype.name == "bfloat16" else np.dtype(dtype).name


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes  # a statefmt dependency (numpy has no bfloat16)

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
