"""The interpreter of the element-moving ops: runs a chain on integer indices to learn which source element each
element of a value is (and the shape arithmetic around the chain on real values)."""

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
            attrs = attributes(node)
            attrs["_outputs"] = len(node.output)
            if indexed and op == "Cast" and not _is_float(attrs.get("to")):
                raise Unmappable(f"it is cast to a non-float type by node {node.name!r}")
            self._count(node, produced(op, arrays, attrs))
            if indexed and op == "Concat":
                arrays = [a if is_index else np.full(a.shape, -1, np.int64) for a, is_index in inputs]
            results = run_op(node, arrays, attrs, cast=not indexed)
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


def attributes(node: Any) -> dict[str, Any]:
    from onnx import helper, numpy_helper

    attrs = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        attrs[a.name] = numpy_helper.to_array(value) if a.type == a.TENSOR else value
    return attrs


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


def run_op(node: Any, inputs: list, attrs: dict[str, Any], *, cast: bool) -> list[np.ndarray]:
    """One ONNX op on numpy arrays (index arrays pass through the element-moving ops unchanged in dtype)."""
    op = node.op_type
    x: Any = inputs[0] if inputs else None

    def axes_of(position, name):
        if len(inputs) > position and inputs[position] is not None:
            return _ints(inputs[position])
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
        shape = _ints(inputs[1])
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
            starts, ends = _ints(inputs[1]), _ints(inputs[2])
            axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
            steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
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
        return [np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(inputs[1])))).copy()]
    if op == "Constant":
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if key in attrs:
                return [np.asarray(attrs[key])]
        raise Unmappable("a Constant with an unsupported value kind")
    if op == "Shape":
        dims = np.array(x.shape, np.int64)
        return [dims[attrs.get("start", 0):attrs.get("end", len(dims))]]
    if op == "Size":
        return [np.array(x.size, np.int64)]
    if op == "ConstantOfShape":
        value = attrs.get("value", np.zeros(1, np.float32))
        return [np.full(_ints(x), value.reshape(-1)[0], value.dtype)]
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
        return [np.arange(start, limit, delta)]
    raise Unmappable(f"{op} is not supported")


def _slice(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX's Slice bounds (clamped, -1 meaning "before the first" for a negative step) as a Python slice."""
    if step > 0:
        start = min(max(start + dim if start < 0 else start, 0), dim)
        end = min(max(end + dim if end < 0 else end, 0), dim)
        return slice(start, end, step)
    start = min(max(start + dim if start < 0 else start, -1), dim - 1)
    end = min(max(end + dim if end < 0 else end, -1), dim - 1)
    return slice(start, end if end >= 0 else None, step)

