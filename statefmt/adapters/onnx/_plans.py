"""The planners: which element of which graph input feeds each state element (feed maps), which element of which
graph output holds each final state element (gather maps), and the feeds and states they give."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from statefmt import StateMismatchError, StateSet
from statefmt._dtypes import numpy_dtype

from ._evaluate import Evaluator
from ._graph import MAX_ELEMENTS, Graph, Unmappable


def static_batch(graph: Graph) -> int | None:
    """The batch size static state inputs fix, or None when one of them is dynamic (or there are none).

    Where all are static, the feed map is made here, and a chain that cannot be followed is refused
    now: a signature without a batch size would be a wrong answer for such a model.
    """
    key = ("static", None)
    if key not in graph.memo:
        names = {name for node in graph.nodes for name in node.state_inputs}
        try:
            static = bool(names) and all(graph.input_shape(name, None) for name in names)
        except Unmappable:  # a dynamic dimension, or no shape at all
            static = False
        sizes = {m.shape[1] for per_node in _feed_map(graph, None)[1] for m in per_node.values()} if static else ()
        _remember(graph, key, sizes.pop() if len(sizes) == 1 else None)
    graph.memo.move_to_end(key)
    return graph.memo[key]


def _remember(graph: Graph, key: tuple[str, int | None], value: Any) -> Any:
    """Keep index maps for the last few batch sizes (a server sees many; each map is as large as the state)."""
    graph.memo[key] = value
    while len(graph.memo) > 8:
        graph.memo.popitem(last=False)
    return value

# the index maps: which element of which graph input (output) each state element is

def _feed_map(graph: Graph, batch: int | None) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """(state inputs, per node {state: indices [D, N, H] into the inputs' flat concatenation})."""
    key = ("feed", batch)
    if key not in graph.memo:
        sources, offset = {}, 0
        names = list(dict.fromkeys(i for node in graph.nodes for i in node.state_inputs))
        for name in names:
            try:
                shape = graph.input_shape(name, batch)
                size = bounded(shape, f"graph input {name!r}")
            except Unmappable as error:
                raise StateMismatchError(f"{graph.label}: {error}") from None
            sources[name] = np.arange(offset, offset + size, dtype=np.int64).reshape(shape)
            offset += size
        evaluator = Evaluator(graph, sources)
        per_node = []
        for k, node in enumerate(graph.nodes):
            maps = {}
            for s, slot in zip(node.state_names, (5, 6)):
                value = node.inputs[slot]
                where = f"{node.where(k)}: initial_{s}"
                if not value:
                    raise StateMismatchError(f"{graph.label}: {where}: the node has no initial_{s} input, so it "
                                             "always starts from zeros; export the model with the state as an "
                                             "input (torch: call the module with (x, (h0, c0)) when exporting)")
                try:
                    result = evaluator.index(value)
                except Unmappable as error:
                    raise StateMismatchError(f"{graph.label}: {where}: {error}") from None
                maps[s] = _normalize(graph, node, result, batch, where)
            per_node.append(maps)
        _remember(graph, key, (sources, per_node, offset))
    graph.memo.move_to_end(key)
    return graph.memo[key][0], graph.memo[key][1]


def _normalize(graph: Graph, node, indices, batch, where):
    if indices is None:
        raise StateMismatchError(f"{graph.label}: {where}: is computed from constants, not fed by a graph input; "
                                 "export the model with the state as an input")
    fits = indices.ndim == 3 and indices.shape[node.layout] == node.directions \
        and indices.shape[2] == node.hidden_size
    if not fits or (batch is not None and indices.shape[1 - node.layout] != batch):
        shape = "[batch, directions, hidden]" if node.layout else "[directions, batch, hidden]"
        raise StateMismatchError(f"{graph.label}: {where}: the chain from the graph inputs gives shape "
                                 f"{list(indices.shape)}, the node takes {shape} with directions "
                                 f"{node.directions} and hidden {node.hidden_size}")
    if np.any(indices < 0):
        raise StateMismatchError(f"{graph.label}: {where}: part of it is a constant, not fed by a graph input; "
                                 "statefmt cannot set those elements")
    return indices.transpose(1, 0, 2) if node.layout else indices


def feeds(graph: Graph, states: StateSet) -> dict[str, np.ndarray]:
    static = static_batch(graph)
    batch = None if static is not None else states.batch_size
    sources, per_node = _feed_map(graph, batch)
    plan = _feed_plan(graph, batch)
    dtypes = {name: numpy_dtype(graph.input_dtype(name)) for name in sources}
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
                        f"{graph.label}: {graph.nodes[k].where(k)}: initial_{s}: the graph feeds one input element "
                        f"to several state elements, and the state gives them different values "
                        f"({int(clash.sum())} elements); the model shares that input between them")
    offsets = plan["offsets"]
    for name in rest:
        indices = sources[name]
        start = offsets[name]
        result[name] = flat[start:start + indices.size].reshape(indices.shape).astype(dtypes[name], copy=False)
    return result


def _feed_plan(graph: Graph, batch: int | None) -> dict[str, Any]:
    """Which inputs are one node state as is, and whether any input element feeds two state elements."""
    key = ("plan", batch)
    if key not in graph.memo:
        sources, per_node = _feed_map(graph, batch)
        offsets, offset = {}, 0
        for name, indices in sources.items():
            offsets[name] = offset
            offset += indices.size
        owners: dict[str, list[tuple[int, str]]] = {}
        runs: dict[tuple[int, str], slice | None] = {}
        for k, maps in enumerate(per_node):
            for s, indices in maps.items():
                flat = indices.reshape(-1)
                contiguous = flat[-1] - flat[0] == flat.size - 1 and bool(np.all(np.diff(flat) == 1))
                runs[k, s] = slice(int(flat[0]), int(flat[-1]) + 1) if contiguous else None
                for name, start in offsets.items():
                    if start <= indices.flat[0] < start + sources[name].size:
                        owners.setdefault(name, []).append((k, s))
        every = [indices.reshape(-1) for maps in per_node for indices in maps.values()]
        unique = bool(np.all(np.bincount(np.concatenate(every), minlength=offset) <= 1))  # ufunc.at: 10x slower
        direct = {}
        for name, indices in sources.items() if unique else ():
            pieces = owners.get(name, [])
            if len(pieces) == 1:
                k, s = pieces[0]
                mine = per_node[k][s]
                if mine.shape == indices.shape and np.array_equal(mine, indices):
                    direct[name] = (k, s)
        _remember(graph, key, {"offsets": offsets, "unique": unique, "direct": direct, "runs": runs})
    graph.memo.move_to_end(key)
    return graph.memo[key]


def _output_map(graph: Graph, batch: int) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], int]:
    """Per graph output reached: indices into the nodes' flat concatenated final states (-1: not a state)."""
    key = ("out", batch)
    if key not in graph.memo:
        sources, offset, layout = {}, 0, []
        for node in graph.nodes:
            entry = {}
            for s, slot in zip(node.state_names, (1, 2)):
                shape = node.state_shape(batch)
                try:
                    size = bounded(shape, f"node {node.name!r}'s final state")
                except Unmappable as error:
                    raise StateMismatchError(f"{graph.label}: {error}") from None
                entry[s] = (offset, shape)
                if node.outputs[slot]:
                    sources[node.outputs[slot]] = np.arange(offset, offset + size, dtype=np.int64).reshape(shape)
                offset += size
            layout.append(entry)
        evaluator = Evaluator(graph, sources)
        reached = {o for value in sources for o in graph.carrying(value)}
        outputs = {}
        for name in graph.outputs:
            if name in reached:
                try:
                    outputs[name] = evaluator.index(name)
                except Unmappable as error:
                    raise StateMismatchError(f"{graph.label}: output {name!r}: {error}") from None
                if outputs[name] is None:
                    del outputs[name]
        _remember(graph, key, (outputs, layout, offset))
    graph.memo.move_to_end(key)
    return graph.memo[key]


def named_outputs(graph: Graph, outputs: Any) -> dict[str, np.ndarray]:
    if isinstance(outputs, Mapping):
        named = dict(outputs)
    elif isinstance(outputs, Sequence) and not isinstance(outputs, (str, bytes)):
        if len(outputs) != len(graph.outputs):
            raise StateMismatchError(f"outputs: the model has {len(graph.outputs)} outputs "
                                     f"({', '.join(graph.outputs)}), found a list of {len(outputs)}; pass what "
                                     "session.run(None, feeds) returned, or a dict by output name")
        named = dict(zip(graph.outputs, outputs))
    else:
        raise StateMismatchError(f"outputs: expected what session.run returned (a list in output order, or a dict "
                                 f"by output name), found {type(outputs).__name__}")
    return {name: np.asarray(value.numpy() if hasattr(value, "numpy") else value) for name, value in named.items()}


def gather_states(graph: Graph, arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    carriers = {o for node in graph.nodes for slot in (1, 2)[:len(node.state_names)]
                for o in graph.carrying(node.outputs[slot])}
    missing = [name for name in graph.outputs if name in carriers and name not in arrays]
    if missing:
        raise StateMismatchError(f"outputs: {', '.join(map(repr, missing))} carry final states and are missing; "
                                 "run the session with output_names=None (all outputs), or include them")
    batch = _batch_of(graph, arrays, carriers)
    outputs, layout, _ = _output_map(graph, batch)
    for name, indices in outputs.items():
        if arrays[name].shape != indices.shape:
            raise StateMismatchError(f"outputs: {name!r}: expected shape {list(indices.shape)} at batch {batch}, "
                                     f"found {list(arrays[name].shape)}")
    plan = _gather_plan(graph, batch)
    problems, states = [], []
    for k, (node, entry) in enumerate(zip(graph.nodes, layout)):
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
        raise StateMismatchError([f"{graph.label}: {p}" for p in problems])
    return states


def _gather_plan(graph: Graph, batch: int) -> list[dict[str, Any]]:
    """Per node state: (output, slice or flat indices into it) holding it, or None when no output does."""
    key = ("gather", batch)
    if key not in graph.memo:
        outputs, layout, total = _output_map(graph, batch)
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
        _remember(graph, key, plan)
    graph.memo.move_to_end(key)
    return graph.memo[key]


def _batch_of(graph: Graph, arrays: dict[str, np.ndarray], carriers: set[str]) -> int:
    """The batch of a run: static, or solved from one output's size (linear in the batch), or one of its dims."""
    try:
        static = static_batch(graph)
    except StateMismatchError:  # the feeds cannot be followed; the outputs may still be read
        static = None
    if static is not None:
        return static
    candidates: dict[int, None] = {}
    try:
        one, two = _output_map(graph, 1)[0], _output_map(graph, 2)[0]
        for name, indices in one.items():
            if name in arrays and two[name].size > indices.size:
                step = two[name].size - indices.size
                batch, rest = divmod(arrays[name].size - indices.size, step)
                if not rest:
                    candidates[batch + 1] = None
    except (Unmappable, StateMismatchError):
        pass
    for name in graph.outputs:
        if name in carriers and name in arrays:
            candidates.update(dict.fromkeys(int(dim) for dim in arrays[name].shape))
    for batch in (c for c in candidates if c > 0):
        try:
            outputs = _output_map(graph, batch)[0]
        except (Unmappable, StateMismatchError):
            continue
        if all(arrays[name].shape == indices.shape for name, indices in outputs.items() if name in arrays):
            return batch
    shapes = ", ".join(f"{name!r} {list(arrays[name].shape)}" for name in graph.outputs
                       if name in carriers and name in arrays)
    raise StateMismatchError(f"{graph.label}: outputs: no batch size fits the shapes of {shapes}")


# weights


def bounded(shape: Any, what: str, *, as_shape: bool = False) -> Any:
    """The element count of `shape` (or the shape itself), refusing what no state could need (a hostile graph)."""
    dims = [int(d) for d in shape]
    size = int(np.prod(dims, dtype=np.float64)) if dims else 1
    if any(d < 0 for d in dims) or size > MAX_ELEMENTS:
        raise Unmappable(f"{what} of shape {dims} is larger than statefmt follows ({MAX_ELEMENTS} elements)")
    return dims if as_shape else size
