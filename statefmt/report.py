"""What `statefmt inspect` and `statefmt diff` report, as plain data a pipeline can use too."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._reader import tensor_names as _tensor_names
from .states import LayerState, StateSet
from .weights import LayerWeights, WeightSet


def describe(data: StateSet | WeightSet) -> dict[str, Any]:
    """Layers, shapes, dtypes and per-tensor statistics (min, max, mean, std, non-finite count)."""
    layers = []
    each: Sequence[LayerState | LayerWeights] = data.layers
    for layer in each:
        tensors = {}
        for name in _tensor_names(layer):
            with np.errstate(invalid="ignore"):  # a signalling NaN warns when cast: it is counted below
                array = np.asarray(layer[name], dtype=np.float64)
            finite = array[np.isfinite(array)]
            stats = {"shape": list(array.shape), "nonfinite": int(array.size - finite.size)}
            for stat in ("min", "max", "mean", "std"):
                with np.errstate(over="ignore", invalid="ignore"):
                    value = float(getattr(finite, stat)()) if finite.size else None
                stats[stat] = value if value is not None and math.isfinite(value) else None  # 1e308s overflow std
            tensors[name] = stats
        entry: dict[str, Any]
        if isinstance(layer, LayerState) and layer.modern:
            layers.append({"name": layer.name, "kind": layer.kind, "dims": layer.dims, "dtype": layer.dtype,
                           "tensors": tensors})
            continue
        entry = {"name": layer.name, "kind": layer.kind, "units": layer.units, "directions": layer.directions,
                 "proj_units": layer.proj_units, "dtype": layer.dtype, "tensors": tensors}
        if isinstance(layer, LayerWeights):
            entry["input_size"] = layer.input_size
        layers.append(entry)
    summary: dict[str, Any] = {"content": "state" if isinstance(data, StateSet) else "weights"}
    if isinstance(data, StateSet):
        summary.update(batch_size=data.batch_size, stream_ids=list(data.stream_ids) if data.stream_ids else None)
    summary.update(metadata=data.metadata, layers=layers)
    return summary


def compare(a: StateSet | WeightSet, b: StateSet | WeightSet, *, atol: float = 0.0) -> list[str]:
    """Every structural difference, and every tensor whose values differ by more than `atol`."""
    if type(a) is not type(b):
        return [f"content: {describe(a)['content']} vs {describe(b)['content']}"]
    differences = []
    batches_differ = isinstance(a, StateSet) and isinstance(b, StateSet) and a.batch_size != b.batch_size
    if isinstance(a, StateSet) and isinstance(b, StateSet):
        if batches_differ:
            differences.append(f"batch size: {a.batch_size} vs {b.batch_size}")
        if a.stream_ids != b.stream_ids:
            differences.append("stream_ids differ")
    if len(a.layers) != len(b.layers):
        differences.append(f"layer count: {len(a.layers)} vs {len(b.layers)}")
    left_layers: Sequence[LayerState | LayerWeights] = a.layers
    right_layers: Sequence[LayerState | LayerWeights] = b.layers
    for index, (x, y) in enumerate(zip(left_layers, right_layers)):
        where = f"layer {index} {x.name!r}"
        modern = any(isinstance(layer, LayerState) and layer.modern for layer in (x, y))
        fields: tuple[str, ...] = ("name", "kind", "dims", "dtype") if modern else (
            "name", "kind", "units", "directions", "proj_units", "dtype")
        if modern and x.kind != y.kind:
            fields = ("name", "kind", "dtype")  # the sizes of different kinds do not compare
        structural = [f"{where}: {f}: {getattr(x, f)} vs {getattr(y, f)}" for f in fields
                      if getattr(x, f) != getattr(y, f)]
        differences += structural
        if structural or batches_differ:
            continue
        for name in _tensor_names(x):
            left, right = np.asarray(x[name], np.float64), np.asarray(y[name], np.float64)
            if left.shape != right.shape:
                differences.append(f"{where}: {name}: shape {list(left.shape)} vs {list(right.shape)}")
                continue
            gap = float(np.max(np.abs(left - right), initial=0.0))
            if gap > atol:
                differences.append(f"{where}: {name}: max abs difference {gap:.6g} > atol {atol:g}")
    return differences
