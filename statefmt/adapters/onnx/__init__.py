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

This module holds the verbs; the work is in `_graph` (the walk from nodes to graph inputs and
outputs), `_plans` (the feed and gather maps, by batch size), `_evaluate` (the element-moving ops
run on indices) and `_weights` (the weights read into the neutral layout and written back).
"""


from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from statefmt import (
    LayerSignature,
    LayerState,
    LayerWeightSignature,
    StateError,
    StateMismatchError,
    StateSet,
    StateSignature,
    WeightSet,
    WeightSignature,
)
from statefmt._dtypes import DTYPE_NAMES

from .._common import fit, fit_weights, require
from . import _plans, _weights
from ._graph import Graph, ModelError, layer_name
from ._weights import ACTIVATIONS, ADVICE, onnx_attributes, onnx_kind, onnx_weights

__all__ = ["ModelError", "Node", "export", "export_weights", "import_weights", "initial_state", "nodes",
           "signature", "to_onnx", "weight_signature"]
_OPSET = 17


# --- the adapter's verbs ---------------------------------------------------------------------------

def signature(target: Any, *, name: str | None = None) -> StateSignature:
    """What `target` expects: one layer per recurrent node in graph order, the batch size static state inputs fix.

    >>> signature("forecaster.onnx").layers[0]
    LayerSignature(kind='lstm', units=4, directions=1, proj_units=None, name='l0')
    """
    graph = Graph.of(target)
    dtypes = {graph.input_dtype(name) for node in graph.nodes for name in node.state_inputs}
    if not dtypes:
        stored = graph.tensor(graph.nodes[0].inputs[1])
        dtypes = {stored.dtype.name} if stored is not None and stored.dtype.name in DTYPE_NAMES else set()
    return StateSignature([LayerSignature(node.kind, node.hidden_size, node.directions, None, layer_name(name, k))
                           for k, node in enumerate(graph.nodes)],
                          batch_size=_plans.static_batch(graph), dtype=dtypes.pop() if len(dtypes) == 1 else None)


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

    >>> [(n.kind, n.initial_h, n.Y_h) for n in nodes("forecaster.onnx")]
    [('lstm', ('l0.h0',), ('l0.hn',))]
    """
    graph = Graph.of(model)
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

    >>> outputs = session.run(None, {"x": x, **feeds})
    >>> statefmt.save(export(session, outputs), "today.statefmt")

    `state` is the list of outputs in the graph's order, or a dict by output name (then only
    the outputs that carry state are needed). Each node's `Y_h`/`Y_c` is gathered from wherever
    the graph put it; a node whose final state no graph output carries is refused.
    """
    if state is None:
        raise StateError("ONNX Runtime keeps no state: pass what session.run returned, e.g. "
                         "export(session, session.run(None, feeds))")
    graph = Graph.of(source)
    states = _plans.gather_states(graph, _plans.named_outputs(graph, state))
    layers = [LayerState(layer_name(name, k), node.kind, **states[k]) for k, node in enumerate(graph.nodes)]
    return StateSet(layers, metadata={"source": graph.source()})


def initial_state(states: StateSet, target: Any, *, strict: bool = False, broadcast: bool = False,
                  batch_size: int | None = None, device: Any = None) -> dict[str, np.ndarray]:
    """The feeds that start `target` from `states`: a dict by graph input name, in those inputs' dtype and layout.

    >>> feeds = initial_state(statefmt.load("today.statefmt"), session)
    >>> outputs = session.run(None, {"x": x2, **feeds})

    Checked first against `signature(target)` (every mismatch at once; `strict=True` also
    refuses a dtype other than the inputs'). `broadcast=True` starts every stream from a
    batch-1 state, at the batch size static inputs fix or at `batch_size=N`. Elements of a
    state input that feed no node are zeros. ORT takes host arrays: `device` may only be
    None or "cpu" (the session's execution provider moves the feeds itself).
    """
    if device not in (None, "cpu"):
        raise StateMismatchError(f"device: ONNX Runtime takes host arrays, found device={device!r}; pass device=None "
                                 "and choose the device with the session's providers")
    graph = Graph.of(target)
    fitted = fit(states, signature(graph), strict=strict, broadcast=broadcast, batch_size=batch_size)
    return _plans.feeds(graph, fitted)


def export_weights(source: Any, *, name: str | None = None) -> WeightSet:
    """The weights of every recurrent node, in the neutral layout (statefmt.weights).

    >>> statefmt.save(export_weights("forecaster.onnx"), "weights.statefmt")

    `W`, `R` and `B` must be stored in the model (initializers or Constant nodes). Refused,
    all at once, with the reason: non-zero peepholes (ONNX's input `P`, which is not statefmt's
    projection `P`), `clip`, `input_forget=1`, different activations per direction, an LSTM
    whose cell and output activations differ, and activations the neutral layout has no name for.
    """
    graph = Graph.of(source)
    problems = [p for k, node in enumerate(graph.nodes) for p in _weights.check_exportable(graph, k, node)]
    if problems:
        raise StateMismatchError(problems)
    layers = [_weights.layer_weights(graph, layer_name(name, k), node) for k, node in enumerate(graph.nodes)]
    return WeightSet(layers, metadata={"source": graph.source()})


def weight_signature(target: Any) -> WeightSignature:
    """What `target` can take as weights: per recurrent node its sizes, and every activation ONNX computes.

    >>> weight_signature("forecaster.onnx").check(statefmt.load_weights("weights.statefmt"))
    []
    """
    graph = Graph.of(target)
    return WeightSignature([_weights.layer_signature(graph, k, node) for k, node in enumerate(graph.nodes)])


def import_weights(weights: WeightSet, target: Any) -> Any:
    """A copy of `target` (an `onnx.ModelProto`) whose recurrent nodes hold `weights`; `target` is left as it was.

    >>> served = import_weights(statefmt.load_weights("weights.statefmt"), "forecaster.onnx")
    >>> session = onnxruntime.InferenceSession(served.SerializeToString())

    Layer count, kind, hidden size, input size and direction must match (all mismatches are
    reported at once), and ONNX has no projection. The attributes that only choose the math
    (activations, GRU linear_before_reset, clip, input_forget, peepholes) are set from the
    weights, so the new model computes exactly what they describe.
    """
    graph = Graph.of(target)
    expected = weight_signature(graph)
    if isinstance(weights, WeightSet):  # the node takes the weights' math: only its sizes must fit
        settable = [dataclasses.replace(layer, **{s: getattr(w, s) for s in (
            "activation", "recurrent_activation", "linear_before_reset") if getattr(w, s) in ACTIVATIONS or
            s == "linear_before_reset"}) for layer, w in zip(expected.layers, weights.layers)]
        expected = WeightSignature(settable + list(expected.layers[len(settable):]))
    fit_weights(weights, expected)
    return _weights.with_weights(graph, weights)


def to_onnx(weights: WeightSet, *, batch_size: int | None = None, opset: int = _OPSET) -> Any:
    """A model running `weights` as one recurrent node per layer, with a named state input and output per layer.

    >>> model = to_onnx(statefmt.load_weights("weights.statefmt"))  # from any adapter's export_weights
    >>> [i.name for i in model.graph.input]
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
        layer.activation, layer.recurrent_activation, tuple(ACTIVATIONS), tuple(ACTIVATIONS),
        layer.linear_before_reset, advice=ADVICE) for layer in weights.layers]))
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
        W, R, B = onnx_weights(layer)
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
        nodes_.append(helper.make_node(onnx_kind(layer.kind), node_inputs, node_outputs, name=name,
                                       **onnx_attributes(layer)))
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
