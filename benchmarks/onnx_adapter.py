"""The ONNX adapter's op semantics, an ablation: `python -m benchmarks.onnx_adapter [--batch 4096] [--repeat 5]`.

The adapter learns which graph input element feeds each state element by running the chains
between them (Slice, Gather, Concat, Reshape, ... and the shape arithmetic around them) on index
arrays. Its walk decides what may be run; the ops themselves are `_evaluate.run_op`, a dozen
hand-written numpy functions. The plain alternative is onnx's own `onnx.reference`: here each op
runs through a `ReferenceEvaluator` of its node instead (made once per node and kept), with the
same walk around it, so the two differ in the op semantics only.

Measured on the adapter's real uses: `signature`, `initial_state` and `export` of torch.onnx
exports as the tests make them (2-layer LSTM, TorchScript exporter; bidirectional GRU, dynamo
exporter; batch 3) and of a larger one (4-layer LSTM, 256 units, at `--batch` streams). "cold"
is a model seen for the first time (the adapter's analysis cache emptied before each run), which
is when the ops run; "new batch" is a model seen before at a batch size it has not run at (or no
longer keeps: the adapter keeps the maps of 8), where the ops run again; "warm" is every other call,
served from the cache, where they do not run.
The machine is shared: read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import io
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._timing import best
from statefmt import LayerState, StateSet
from statefmt.adapters import onnx as onnx_adapter
from statefmt.adapters.onnx import _evaluate, _graph


def exported(kind: str, layers: int, units: int, *, bidirectional: bool = False, dynamo: bool = False) -> Any:
    """A batch-first torch stack exported with its state as graph inputs and outputs, as the tests export it."""
    import onnx
    import torch

    torch.manual_seed(0)
    rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](8, units, num_layers=layers, batch_first=True,
                                                              bidirectional=bidirectional)
    names = ["h0", "c0"] if kind == "lstm" else ["h0"]
    directions = 2 if bidirectional else 1

    class Stack(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = rnn

        def forward(self, x: Any, *state: Any) -> Any:
            y, final = self.rnn(x, tuple(state) if kind == "lstm" else state[0])
            return (y, *final) if kind == "lstm" else (y, final)

    outputs = ["y", "hn", "cn"][:1 + len(names)]
    axes = {"x": {0: "batch"}, "y": {0: "batch"}, **{n: {1: "batch"} for n in names + outputs[1:]}}
    state = [torch.zeros(directions * layers, 3, units) + i for i in range(len(names))]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Stack(), (torch.zeros(3, 2, 8), *state), buffer, input_names=["x", *names],
                          output_names=outputs, dynamo=dynamo, dynamic_axes=None if dynamo else axes)
    return onnx.load_from_string(buffer.getvalue())


class ReferenceOps:
    """`_evaluate.run_op` through onnx.reference: one ReferenceEvaluator per node, made on first use and kept
    (an adapter built on it would keep them with the graph's analysis, and drop them with it)."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.evaluators: dict[tuple[str, ...], Any] = {}

    def __call__(self, node: Any, inputs: list, attrs: dict[str, Any], *, cast: bool) -> list[np.ndarray]:
        from onnx.reference import ReferenceEvaluator

        if node.op_type == "Cast" and not cast:  # indices pass a Cast unchanged, as in the hand-written ops
            return [inputs[0]]
        key = (node.op_type, *node.output)  # output names are unique in a graph
        if key not in self.evaluators:
            self.evaluators[key] = ReferenceEvaluator(node, opsets={"": self.opset})
        feeds = {name: array for name, array in zip(node.input, inputs) if name}
        return list(self.evaluators[key].run(None, feeds))


def states_for(model: Any, batch: int) -> StateSet:
    rng = np.random.default_rng(0)
    layers = []
    for k, node in enumerate(onnx_adapter.nodes(model)):
        directions = 2 if node.direction == "bidirectional" else 1
        arrays = {s: rng.standard_normal((directions, batch, node.hidden_size)).astype(np.float32)
                  for s in (("h", "c") if node.kind == "lstm" else ("h",))}
        layers.append(LayerState(f"l{k}", node.kind, **arrays))
    return StateSet(layers)


def outputs_for(model: Any, states: StateSet) -> list[np.ndarray]:
    """What session.run would return: the feeds' own values where the graph passes them through."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((states.batch_size, 2, 8), np.float32)
    return session.run(None, {"x": x, **onnx_adapter.initial_state(states, model)})


def uses(model: Any, batch: int) -> dict[str, Callable[[], object]]:
    states = states_for(model, batch)
    outputs = outputs_for(model, states)
    return {"signature": lambda: onnx_adapter.signature(model),
            "initial_state": lambda: onnx_adapter.initial_state(states, model),
            "export": lambda: onnx_adapter.export(model, outputs)}


def measure(models: dict[str, tuple[Any, int]], repeat: int) -> None:
    hand_written = _evaluate.run_op
    print(f"{'':<44} {'hand-written':>13} {'onnx.reference':>15} {'ratio':>7}   (best of {repeat})")
    for title, (model, batch) in models.items():
        calls = uses(model, batch)
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        print(f"{title} ({len(model.graph.node)} nodes), batch {batch}")
        for use, call in calls.items():
            times = {}
            for label in ("hand", "reference"):
                ops = hand_written if label == "hand" else ReferenceOps(opset)

                def cold(ops: Any = ops) -> None:  # a model seen for the first time
                    _graph._CACHE.clear()
                    if isinstance(ops, ReferenceOps):
                        ops.evaluators.clear()

                def new_batch() -> None:  # a model seen before, at a batch size it was not (or no longer) run at
                    for _, graph in _graph._CACHE.values():
                        graph.memo.clear()

                _evaluate.run_op = ops
                try:
                    times[label, "cold"] = best(call, repeat=repeat, before=cold)
                    times[label, "new batch"] = best(call, repeat=repeat, before=new_batch)
                    times[label, "warm"] = best(call, repeat=repeat)
                finally:
                    _evaluate.run_op = hand_written
                    _graph._CACHE.clear()
            for state in ("cold", "new batch", "warm"):
                hand, reference = times["hand", state], times["reference", state]
                print(f"  {use + ', ' + state:<42} {hand * 1e3:10.2f} ms {reference * 1e3:12.2f} ms "
                      f"{reference / hand:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4096, help="streams of the larger model")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (best is shown)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    measure({"2-layer LSTM, TorchScript exporter": (exported("lstm", 2, 4), 3),
             "bidirectional GRU, dynamo exporter": (exported("gru", 1, 4, bidirectional=True, dynamo=True), 3),
             "4-layer LSTM, 256 units, TorchScript exporter": (exported("lstm", 4, 256), args.batch)}, args.repeat)


if __name__ == "__main__":
    main()
