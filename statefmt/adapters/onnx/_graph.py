"""The graph walk: a model's recurrent nodes, and which graph inputs feed (outputs carry) their states through ops
that only move elements."""

from __future__ import annotations

import dataclasses
import functools
import os
import stat
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from statefmt import StateError, StateMismatchError
from statefmt._dtypes import dtype_name

from .._common import prefixed, require, source_metadata

KINDS = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}
MOVES = {"Identity": (0,), "Cast": (0,), "Transpose": (0,), "Reshape": (0,), "Squeeze": (0,), "Unsqueeze": (0,),
          "Slice": (0,), "Gather": (0,), "Split": (0,), "Flatten": (0,), "Expand": (0,), "Concat": None}
MAX_ELEMENTS = 1 << 28  # elements of one index map: a state of 268M values, 2 GiB of indices
_MAX_MODEL_BYTES = 2**31 - 1  # protobuf's limit: larger models keep their weights in external data
# The attributes the adapter reads, and the type ONNX gives each.
_ATTRIBUTE_TYPES = {"hidden_size": "INT", "direction": "STRING", "layout": "INT", "linear_before_reset": "INT",
                    "input_forget": "INT", "clip": "FLOAT", "activations": "STRINGS", "activation_alpha": "FLOATS",
                    "activation_beta": "FLOATS"}
_ATTRIBUTE_VALUES = {"direction": ("forward", "reverse", "bidirectional"), "layout": (0, 1),
                     "linear_before_reset": (0, 1), "input_forget": (0, 1)}
FLOAT_TYPES = ("FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16")


class ModelError(StateError):
    """The ONNX model itself is malformed or cannot be read (not: it does not fit the state); names the model."""


class Unmappable(Exception):
    """A chain the adapter cannot follow; the caller turns it into a StateMismatchError naming the node."""


class ReachesInput(Unmappable):
    """A graph input that carries no state was reached: the op that led there is the one to name."""


@dataclasses.dataclass
class Recurrent:
    """One recurrent node, its attributes read and its input and output lists padded to their full length."""

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


_CACHE: OrderedDict[Any, tuple[Callable[[], Any], Graph]] = OrderedDict()


class Graph:
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
        self.memo: OrderedDict[tuple[str, int | None], Any] = OrderedDict()  # the planners' maps, by batch size
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        self.ops: dict[tuple[str, ...], Any] = {}  # onnx.reference's runner of each node the evaluator ran

    @classmethod
    def of(cls, model: Any) -> Graph:
        """The graph of a ModelProto, a path or an InferenceSession; analyses are kept for the last few models."""
        if isinstance(model, Graph):
            return model
        onnx = require("onnx", "onnx")
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            try:
                status = os.stat(path)
            except OSError as error:
                raise ModelError(f"cannot read the model: {error.strerror}", source=path) from None
            key: Any = (path, status.st_mtime_ns, status.st_size)
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

    def _recurrent_nodes(self) -> list[Recurrent]:
        found = []
        for index, node in enumerate(self.proto.graph.node):
            if node.op_type not in KINDS or node.domain not in ("", "ai.onnx"):
                continue
            kind = KINDS[node.op_type]
            name = node.name or f"{node.op_type}#{index}"
            attrs = self._attributes(node, name)
            if "hidden_size" not in attrs:
                raise ModelError(f"node {name!r} ({node.op_type}) has no hidden_size attribute; statefmt needs it to "
                                 "know the state's width", source=self.label)
            inputs = list(node.input) + [""] * (8 - len(node.input))
            outputs = list(node.output) + [""] * (3 - len(node.output))
            rec = Recurrent(index, name, kind, attrs["hidden_size"], attrs.get("direction", "forward"),
                            attrs.get("layout", 0), attrs, inputs, outputs)
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

    def _attributes(self, node: Any, name: str) -> dict[str, Any]:
        """The attributes of a recurrent node, each checked for the type and the values ONNX allows."""
        from onnx import AttributeProto, helper

        attrs: dict[str, Any] = {}
        for attribute in node.attribute:
            expected = _ATTRIBUTE_TYPES.get(attribute.name)
            if expected is None:
                continue
            found = AttributeProto.AttributeType.Name(attribute.type)
            where = f"node {name!r} ({node.op_type}): attribute {attribute.name}"
            if found != expected:
                raise ModelError(f"{where} is {found}, ONNX defines it as {expected}", source=self.label)
            value = helper.get_attribute_value(attribute)
            if expected in ("STRING", "STRINGS"):
                try:
                    value = value.decode() if expected == "STRING" else [v.decode() for v in value]
                except UnicodeDecodeError:
                    raise ModelError(f"{where} is not UTF-8 text", source=self.label) from None
            allowed = _ATTRIBUTE_VALUES.get(attribute.name)
            if (allowed is not None and value not in allowed) or (attribute.name == "hidden_size" and value < 1):
                must = f"one of {', '.join(map(str, allowed))}" if allowed else "at least 1"
                raise ModelError(f"{where} is {value!r}, it must be {must}", source=self.label)
            attrs[attribute.name] = value
        return attrs

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
        if node.op_type not in MOVES:
            return []
        positions = MOVES[node.op_type] or range(len(node.input))
        return [node.input[p] for p in positions if p < len(node.input)]

    def _moved_to(self, name: str) -> list[str]:
        """The values element-moving ops copy `name`'s elements into."""
        moved = []
        for node, position in self.consumers.get(name, ()):
            positions = MOVES.get(node.op_type, ())
            if positions is None or position in positions:
                moved += list(node.output)
        return moved

    def input_dtype(self, name: str) -> str:
        from onnx import TensorProto, helper

        kind = self.inputs[name].type
        elem = kind.tensor_type.elem_type if kind.WhichOneof("value") == "tensor_type" else 0
        if TensorProto.DataType.Name(elem) not in FLOAT_TYPES:
            found = TensorProto.DataType.Name(elem).lower() if elem else "declares no tensor type"
            raise ModelError(f"graph input {name!r} feeds a recurrent state, which is a float tensor; found {found}",
                             source=self.label)
        return dtype_name(helper.tensor_dtype_to_np_dtype(elem))

    def input_shape(self, name: str, batch: int | None) -> tuple[int, ...]:
        info = self.inputs[name].type.tensor_type
        if not info.HasField("shape"):
            raise Unmappable(f"graph input {name!r} declares no shape")
        dims = []
        for dim in info.shape.dim:
            if dim.HasField("dim_value"):
                if dim.dim_value < 0:
                    raise ModelError(f"graph input {name!r} declares dimension {dim.dim_value}", source=self.label)
                dims.append(dim.dim_value)
            elif batch is None:
                raise Unmappable(f"graph input {name!r} has a dynamic dimension")
            else:
                dims.append(batch)
        return tuple(dims)

    def stored(self, name: str) -> Any:
        """The TensorProto the model stores for `name` (an initializer or a Constant's value), or None."""
        if name in self.initializers:
            return self.initializers[name]
        if name in self.producer:
            node, _ = self.producer[name]
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                return node.attribute[0].t
        return None

    def tensor(self, name: str) -> np.ndarray | None:
        """The values of a stored tensor, or None when the graph computes it."""
        from onnx import TensorProto, numpy_helper

        tensor = self.stored(name)
        if tensor is None:
            return None
        if tensor.data_location == TensorProto.EXTERNAL:  # a path's are read in when loaded
            where = {e.key: e.value for e in tensor.external_data}.get("location", "")
            raise ModelError(f"tensor {name!r} is stored in external data ({where!r}), which a model in memory cannot "
                             "resolve; pass the model's path instead", source=self.label)
        try:
            return numpy_helper.to_array(tensor)
        except MemoryError:
            raise
        except Exception as error:  # odd data: a short buffer, dims that disagree, an undefined type
            raise ModelError(f"tensor {name!r} cannot be read: {type(error).__name__}: {error}",
                             source=self.label) from None

    def source(self) -> dict[str, str]:
        return source_metadata("onnxruntime", "onnx", self.label)


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


def _load(model):
    onnx = require("onnx", "onnx")
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        data = _read(path)
        try:
            proto = onnx.load_from_string(data)
        except MemoryError:
            raise
        except Exception as error:  # a corrupt or foreign file: one line, never a traceback
            raise ModelError(f"not an ONNX model: {type(error).__name__}: {error}", source=path) from None
        from onnx.external_data_helper import load_external_data_for_model

        try:  # onnx opens these itself, refusing paths outside the folder, links and special files
            load_external_data_for_model(proto, os.path.dirname(os.path.abspath(path)))
        except MemoryError:
            raise
        except Exception as error:
            raise ModelError(f"its external data cannot be read: {error}", source=path) from None
        return proto, path
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "model"
    path = getattr(model, "_model_path", None)
    if path:
        return _load(path)
    blob = getattr(model, "_model_bytes", None)
    if blob:
        return onnx.load_from_string(blob), "session"
    raise StateMismatchError("this InferenceSession keeps neither its model's path nor its bytes; pass the model "
                             "(its path or its onnx.ModelProto) instead")


def _read(path: str) -> bytes:
    """A model file's bytes; a FIFO, a device or a folder is refused without blocking on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise ModelError(f"cannot read the model: {error.strerror}", source=path) from None
    with os.fdopen(fd, "rb") as file:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ModelError("not a regular file (a FIFO, a device or a folder); a model is a .onnx file",
                             source=path)
        if status.st_size > _MAX_MODEL_BYTES:
            raise ModelError(f"{status.st_size} bytes, over protobuf's 2 GiB limit; a model that large keeps its "
                             "weights in external data", source=path)
        try:
            return file.read(status.st_size + 1)
        except OSError as error:
            raise ModelError(f"cannot read the model: {error.strerror}", source=path) from None


def layer_name(prefix: str | None, k: int) -> str:
    return prefixed(prefix, f"l{k}")
