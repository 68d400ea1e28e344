"""The weights of recurrent nodes: read into the neutral layout, checked, and written back into a copy of the model."""

from __future__ import annotations

from typing import Any

import numpy as np

from statefmt import LayerWeights, LayerWeightSignature, StateMismatchError, WeightSet
from statefmt.cells import FRAMEWORK_GATE_ORDER, GATES, gate_rows

from ._graph import FLOAT_TYPES, KINDS, Graph, ModelError, Recurrent, layer_name

# Default activations per direction: LSTM (f, g, h), GRU (f, g), RNN (f).
DEFAULT_ACTIVATIONS = {"lstm": ("Sigmoid", "Tanh", "Tanh"), "gru": ("Sigmoid", "Tanh"), "rnn": ("Tanh",)}
# The spec's activations (statefmt.cells.ACTIVATIONS) as ONNX functions (name, alpha, beta).
ACTIVATIONS: dict[str, tuple[str, float | None, float | None]] = {
    "tanh": ("Tanh", None, None),
    "sigmoid": ("Sigmoid", None, None),
    "relu": ("Relu", None, None),
    "hard_sigmoid": ("HardSigmoid", 1 / 6, 0.5),  # Keras 3's: x/6 + 1/2, clipped to [0, 1]
    "linear": ("Affine", 1.0, 0.0),
}
ADVICE = {"proj_units": "ONNX's LSTM has no projection (its input P is a peephole); serve the model in PyTorch, "
                         "which has proj_size",
           "activation": "ONNX's recurrent nodes compute " + ", ".join(ACTIVATIONS) + " only",
           "recurrent_activation": "ONNX's recurrent nodes compute " + ", ".join(ACTIVATIONS) + " only"}
_TAKES_ALPHA = {"HardSigmoid": (0.2, 0.5), "LeakyRelu": (0.01, None), "ThresholdedRelu": (1.0, None),
                "ScaledTanh": (1.0, 1.0), "Affine": (1.0, 0.0), "Elu": (1.0, None)}
_TAKES_BETA = {"HardSigmoid", "ScaledTanh", "Affine"}


def activations(node: Recurrent) -> list[tuple[str, float | None, float | None]]:
    names = node.attrs.get("activations") or list(DEFAULT_ACTIVATIONS[node.kind]) * node.directions
    alphas, betas = list(node.attrs.get("activation_alpha", [])), list(node.attrs.get("activation_beta", []))
    result = []
    for name in names:  # alpha and beta are consumed in order, by the functions that take them
        takes = name in _TAKES_ALPHA
        alpha = (alphas.pop(0) if alphas else _TAKES_ALPHA[name][0]) if takes else None
        beta = (betas.pop(0) if betas else _TAKES_ALPHA[name][1]) if name in _TAKES_BETA else None
        result.append((name, alpha, beta))
    return result


def check_stored(graph: Graph, k: int, node: Recurrent) -> int | None:
    """The input size of a node whose stored W, R, B and P have the types and shapes ONNX defines (None: W is
    computed in the graph); a malformed one is refused, all its problems at once."""
    from onnx import TensorProto

    D, H, G = node.directions, node.hidden_size, GATES[node.kind]
    tensors = {key: graph.stored(node.inputs[slot]) if node.inputs[slot] else None
               for key, slot in (("W", 1), ("R", 2), ("B", 3), ("P", 7))}
    W = tensors["W"]
    width = int(W.dims[2]) if W is not None and len(W.dims) == 3 else None
    shapes: dict[str, list[int | None]] = {"W": [D, G * H, width], "R": [D, G * H, H], "B": [D, 2 * G * H],
                                           "P": [D, 3 * H]}
    problems = []
    for key, tensor in tensors.items():
        if tensor is None or (key == "P" and node.kind != "lstm"):
            continue
        name = TensorProto.DataType.Name(tensor.data_type) if tensor.data_type in TensorProto.DataType.values() \
            else str(tensor.data_type)
        if name not in FLOAT_TYPES:
            problems.append(f"{node.where(k)}: {key} ({tensor.name!r}) holds {name.lower()}, ONNX takes floats")
        if list(tensor.dims) != shapes[key]:
            expected = "[" + ", ".join("input size" if d is None else str(d) for d in shapes[key]) + "]"
            problems.append(f"{node.where(k)}: {key} ({tensor.name!r}) has shape {list(tensor.dims)}, the node "
                            f"({node.direction}, hidden_size {H}) takes {expected}")
    if problems:
        raise ModelError(problems, source=graph.label)
    return width


def check_exportable(graph: Graph, k: int, node: Recurrent) -> list[str]:
    check_stored(graph, k, node)
    where = f"{graph.label}: {node.where(k)}"
    problems = []
    for slot, key in ((1, "W"), (2, "R"), (3, "B")):
        name = node.inputs[slot]
        if name and graph.tensor(name) is None:
            problems.append(f"{where}: {key} ({name!r}) is computed in the graph, not stored; statefmt reads "
                            "weights from initializers or Constant nodes (fold constants first, e.g. "
                            "onnxruntime's offline optimization or onnxscript's optimizer)")
    if node.kind == "lstm" and node.inputs[7]:
        peepholes = graph.tensor(node.inputs[7])
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
    problems += [f"{where}: {p}" for p in _neutral_activations(node)[1]]
    return problems


def _neutral_activations(node: Recurrent) -> tuple[dict[str, str], list[str]]:
    per = len(DEFAULT_ACTIVATIONS[node.kind])
    functions = activations(node)
    if len(functions) != per * node.directions:
        return {}, [f"activations: expected {per * node.directions} ({per} per direction), "
                    f"found {len(functions)}"]
    names: list[str] = []
    problems: list[str] = []
    for function in functions:
        name = _neutral_name(*function)
        if name is None:
            problems.append(f"activations: {_describe_function(*function)} has no name in the neutral layout "
                            f"(which knows {', '.join(ACTIVATIONS)}); statefmt cannot port it exactly")
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


def layer_weights(graph: Graph, name: str, node: Recurrent) -> LayerWeights:
    W: Any = graph.tensor(node.inputs[1])  # check_exportable saw W, R and B stored
    R: Any = graph.tensor(node.inputs[2])
    rows = W.shape[1]
    B: Any = graph.tensor(node.inputs[3]) if node.inputs[3] else np.zeros((node.directions, 2 * rows), W.dtype)
    rows_ = gate_rows(node.kind, node.hidden_size, FRAMEWORK_GATE_ORDER["onnx"][node.kind])

    def neutral(array):
        return array[:, rows_]

    functions, _ = _neutral_activations(node)
    return LayerWeights(name, node.kind, neutral(W), neutral(R), neutral(B[:, :rows]), neutral(B[:, rows:]),
                        activation=functions["activation"],
                        recurrent_activation=functions.get("recurrent_activation", "sigmoid"),
                        linear_before_reset=bool(node.attrs.get("linear_before_reset", 0))
                        if node.kind == "gru" else True)


def layer_signature(graph: Graph, k: int, node: Recurrent) -> LayerWeightSignature:
    size = check_stored(graph, k, node)
    if size is None:
        raise StateMismatchError(f"{graph.label}: {node.where(k)}: W ({node.inputs[1]!r}) is computed in the "
                                 "graph, not stored, so its input size is unknown; fold constants first")
    current, _ = _neutral_activations(node)
    functions = activations(node)
    described = {"activation": _describe_function(*functions[1 if node.kind != "rnn" else 0]),
                 "recurrent_activation": _describe_function(*functions[0])}
    return LayerWeightSignature(
        node.kind, node.hidden_size, size, node.directions, None, node.name,
        current.get("activation", described["activation"]),
        current.get("recurrent_activation", described["recurrent_activation"] if node.kind != "rnn"
                    else "sigmoid"),
        tuple(ACTIVATIONS), tuple(ACTIVATIONS), bool(node.attrs.get("linear_before_reset", 0)),
        advice=ADVICE)


def with_weights(graph: Graph, weights: WeightSet) -> Any:
    from onnx import helper, numpy_helper

    model = type(graph.proto)()
    model.CopyFrom(graph.proto)
    target = model.graph
    taken = {t.name for t in target.initializer} | set(graph.producer) | set(graph.inputs)
    displaced = set()
    nodes_ = list(target.node)
    for k, (node, layer) in enumerate(zip(graph.nodes, weights.layers)):
        proto = nodes_[node.index]
        stored = graph.tensor(node.inputs[1])
        dtype = stored.dtype if stored is not None else np.asarray(layer["W"]).dtype
        arrays = [a.astype(dtype, copy=False) for a in onnx_weights(layer)]
        while len(proto.input) < 4:
            proto.input.append("")
        for slot, key, array in zip((1, 2, 3), "WRB", arrays):
            name = _fresh(f"{layer_name(None, k)}.{key}", taken)
            if proto.input[slot]:
                displaced.add(proto.input[slot])
            proto.input[slot] = name
            target.initializer.append(numpy_helper.from_array(array, name))
        if len(proto.input) > 7 and proto.input[7]:  # peepholes go: the weights have none
            displaced.add(proto.input[7])
            proto.input[7] = ""
        keep = [a for a in proto.attribute if a.name not in
                ("activations", "activation_alpha", "activation_beta", "clip", "input_forget",
                 "linear_before_reset")]
        del proto.attribute[:]
        proto.attribute.extend(keep)
        for name, value in onnx_attributes(layer, direction=False).items():
            proto.attribute.append(helper.make_attribute(name, value))
        while proto.input and not proto.input[-1]:
            proto.input.pop()
    still_used = {name for n in target.node for name in n.input}
    keep_inits = [t for t in target.initializer if t.name not in displaced or t.name in still_used]
    del target.initializer[:]
    target.initializer.extend(keep_inits)
    return model


def _neutral_name(name: str, alpha: float | None, beta: float | None) -> str | None:
    for neutral, (onnx_name, a, b) in ACTIVATIONS.items():
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


def onnx_weights(layer: LayerWeights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    back = np.argsort(gate_rows(layer.kind, layer.units, FRAMEWORK_GATE_ORDER["onnx"][layer.kind]))

    def onnx_order(array):
        return array[:, back]

    W, R = onnx_order(np.asarray(layer["W"])), onnx_order(np.asarray(layer["R"]))
    B = np.concatenate([onnx_order(np.asarray(layer["Wb"])), onnx_order(np.asarray(layer["Rb"]))], axis=1)
    return np.ascontiguousarray(W), np.ascontiguousarray(R), np.ascontiguousarray(B)


def onnx_attributes(layer: LayerWeights, *, direction: bool = True) -> dict[str, Any]:
    """The attributes that make a node compute `layer`'s equations (and its shape, with `direction`)."""
    per = {"lstm": (layer.recurrent_activation, layer.activation, layer.activation),
           "gru": (layer.recurrent_activation, layer.activation), "rnn": (layer.activation,)}[layer.kind]
    functions = [ACTIVATIONS[name] for name in per] * layer.directions
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


def onnx_kind(kind: str) -> str:
    return {v: k for k, v in KINDS.items()}[kind]


def _fresh(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate

