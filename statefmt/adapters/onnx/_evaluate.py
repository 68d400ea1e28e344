"""The index evaluator: runs a chain of element-moving ops on integer indices to learn which source element each
element of a value is (and the shape arithmetic around the chain on real values). The walk decides what may
run and bounds the work; the ops themselves are onnx.reference's."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from ._graph import KINDS, MAX_ELEMENTS, MOVES, Graph, ReachesInput, Unmappable

# The elements one evaluation may make, all ops together: WORK_FACTOR times what its sources hold (the state
# inputs the model declares, or the nodes' final states), plus WORK_FLOOR for the shape arithmetic around them.
# An exporter's chain makes two or three times its sources; a hostile one is refused before it allocates.
WORK_FACTOR, WORK_FLOOR = 8, 1 << 20
_BROADCASTS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Where"})


class Evaluator:
    """Runs the element-moving ops between sources and a value on integer indices (and the shape arithmetic
    around them on real values), so the result says which source element each element of the value is.

    An index array holds -1 where an element is a constant rather than a source element. The work is
    bounded (WORK_FACTOR, MAX_ELEMENTS): each op's output is counted before it runs.
    """

    _SHAPE_OPS: ClassVar[frozenset[str]] = frozenset({"Constant", "Shape", "Size", "ConstantOfShape", "Add", "Sub",
                                                       "Mul", "Div", "Neg", "Range", "Equal", "Where", "Max", "Min",
                                                       "Abs"})

    def __init__(self, graph: Graph, sources: dict[str, np.ndarray]):
        self.graph = graph
        self.values: dict[str, tuple[np.ndarray, bool]] = {name: (array, True) for name, array in sources.items()}
        self.declared = sum(int(array.size) for array in sources.values())
        self.limit = WORK_FACTOR * self.declared + WORK_FLOOR
        self.made = 0

    def index(self, value: str) -> np.ndarray | None:
        """The indices of `value`; None when it holds no source element at all."""
        array, is_index = self._value(value, 0)
        return array if is_index else None

    def _value(self, name: str, depth: int) -> tuple[np.ndarray, bool]:
        if name in self.values:
            return self.values[name]
        if depth > 200:
            raise Unmappable("the chain is longer than 200 ops")
        graph = self.graph
        tensor = graph.tensor(name) if name in graph.initializers else None
        if tensor is not None:
            self.values[name] = (tensor, False)
            return self.values[name]
        if name in graph.inputs:
            raise ReachesInput(f"it depends on graph input {name!r}, which does not carry state")
        if name not in graph.producer:
            raise Unmappable(f"{name!r} has no producer in the graph")
        node, _ = graph.producer[name]
        op = node.op_type
        if op in KINDS:
            raise Unmappable(f"it is computed by the recurrent node {node.name!r}, not fed by a graph input")
        refusal = (f"it goes through {op} (node {node.name!r}), which statefmt cannot invert; a state may reach a "
                   f"recurrent node only through {', '.join(sorted(MOVES))}")
        if node.domain not in ("", "ai.onnx") or (op not in MOVES and op not in self._SHAPE_OPS):
            raise Unmappable(refusal)
        if op in ("Shape", "Size"):  # only the shape is needed: a zero-memory view stands for the data
            shape = self._shape_of(node.input[0], depth)
            inputs: list[tuple[Any, bool]] = [(np.broadcast_to(np.int8(0), shape), False)]
        else:
            try:
                inputs = [self._value(i, depth + 1) if i else (None, False) for i in node.input]
            except ReachesInput:
                if op in MOVES:
                    raise
                raise Unmappable(refusal) from None
        moved = MOVES.get(op, ())
        data_positions = range(len(inputs)) if moved is None else moved
        indexed = [p for p, (_, is_index) in enumerate(inputs) if is_index]
        if indexed and (op not in MOVES or any(p not in data_positions for p in indexed)):
            raise Unmappable(f"it goes through {op} (node {node.name!r}) in a way that computes on the state")
        arrays = [a for a, _ in inputs]
        try:
            attrs = _attributes(node)
            if indexed and op == "Cast" and not _is_float(attrs.get("to")):
                raise Unmappable(f"it is cast to a non-float type by node {node.name!r}")
            self._count(node, produced(op, arrays, attrs))
            if indexed and op == "Concat":
                arrays = [a if is_index else np.full(a.shape, -1, np.int64) for a, is_index in inputs]
            results = run_op(self.graph, node, arrays, cast=not indexed)
        except (Unmappable, MemoryError):
            raise
        except Exception as error:  # a malformed graph: say where
            raise Unmappable(f"{op} (node {node.name!r}) fails on these shapes: {error}") from None
        for out, result in zip(node.output, results):
            if out:
                self.values[out] = (result, bool(indexed))
        return self.values[name]

    def _count(self, node: Any, made: int) -> None:
        self.made += made
        if made > MAX_ELEMENTS or self.made > self.limit:
            raise Unmappable(f"{node.op_type} (node {node.name!r}) would make {made} elements, more than statefmt "
                             f"follows for this model: at most {MAX_ELEMENTS} in one array, and {self.limit} in all "
                             f"({WORK_FACTOR} times the {self.declared} elements its states declare, plus "
                             f"{WORK_FLOOR})")

    def _shape_of(self, name: str, depth: int) -> tuple[int, ...]:
        if name in self.graph.inputs and name not in self.values:
            return self.graph.input_shape(name, None)
        return self._value(name, depth + 1)[0].shape


def _attributes(node: Any) -> dict[str, Any]:
    """The attributes the walk reads itself (Cast's `to`, Gather's `axis`); onnx.reference reads the rest."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in ("to", "axis")}


def _is_float(elem: Any) -> bool:
    from onnx import TensorProto

    return elem in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def _ints(array: Any) -> list[int]:
    return [int(v) for v in np.asarray(array).reshape(-1)]


def _elements(shape: Any) -> int:
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise Unmappable(f"a shape {dims} with a negative dimension")
    return math.prod(dims)


def produced(op: str, inputs: list, attrs: dict[str, Any]) -> int:
    """How many elements `op` makes from `inputs`, known before it runs: a small graph can ask for any number."""
    x: Any = inputs[0] if inputs else None
    if op == "Shape":
        return x.ndim
    if op == "Size":
        return 1
    if op == "Concat":
        return sum(int(np.size(a)) for a in inputs)
    if op == "Gather":
        axis = attrs.get("axis", 0) % x.ndim
        return x.size // x.shape[axis] * int(np.size(inputs[1])) if x.shape[axis] else 0
    if op == "Expand":
        return _elements(np.broadcast_shapes(x.shape, tuple(_ints(inputs[1]))))
    if op == "ConstantOfShape":
        return _elements(_ints(x))
    if op == "Range":
        start, limit, delta = (np.asarray(v).item() for v in inputs)
        if delta == 0:
            raise Unmappable(f"a Range from {start} to {limit} by 0 never ends")
        return max(0, math.ceil((limit - start) / delta))
    if op in _BROADCASTS:
        return _elements(np.broadcast_shapes(*(np.shape(a) for a in inputs)))
    return max((int(np.size(a)) for a in inputs if a is not None), default=0)  # the rest make no more than they take


def run_op(graph: Graph, node: Any, inputs: list, *, cast: bool) -> list[np.ndarray]:
    """One ONNX op on numpy arrays, by onnx.reference; index arrays pass a Cast unchanged (they are not values).

    The hand-written numpy of a dozen ops that stood here did not pay: benchmarks.onnx_adapter.
    """
    if node.op_type == "Cast" and not cast:
        return [inputs[0]]
    key = tuple(node.output)  # unique in a graph
    if key not in graph.ops:
        from onnx.reference import ReferenceEvaluator

        graph.ops[key] = ReferenceEvaluator(node, opsets={"": graph.opset} if graph.opset else None)
    return list(graph.ops[key].run(None, {name: array for name, array in zip(node.input, inputs) if name}))
