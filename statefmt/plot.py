"""Pictures of a state: where its magnitudes sit, over streams and units, layer by layer.

Needs matplotlib (`pip install "statefmt[plot]"`), imported when a plot is drawn, so that
`import statefmt` stays free of it. One figure, one row per layer:

- a heatmap of |h| (and of |c| for an LSTM) with streams down and units across, directions
  side by side; past `max_rows` streams or `max_columns` units, neighbouring rows or columns are
  pooled by their maximum, so a single diverging stream still shows as a bright line;
- the largest |value| of each stream, where one diverging stream is a spike;
- histograms of |h| and |c| on log axes, where an exploding cell state is a far tail;
- the findings a reader would look for, written on the figure and returned: streams far above
  the others, dead units (zero in every stream), non-finite values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import StateError
from .states import LayerState, StateSet
from .weights import WeightSet

__all__ = ["findings", "plot_state"]

OUTLIER_FACTOR = 10.0  # a stream whose largest |value| is this many times the median stream's
DEAD_BELOW = 1e-6      # a unit whose |h| stays below this in every stream is dead


CHUNK_VALUES = 1 << 22  # values per chunk of streams: memory stays bounded however large the state
EDGES = np.geomspace(1e-12, 1e12, 241)  # histogram bins of |value|, ten per decade, the same for every tensor


@dataclass
class _Summary:
    """One tensor [directions, batch, units], reduced in one pass over chunks of streams."""

    nonfinite: int
    peak: np.ndarray       # [batch]: each stream's largest |value| (inf where a value is not finite)
    unit_peak: np.ndarray  # [directions, units]: each unit's largest finite |value| over the streams
    grid: np.ndarray       # [<= max_rows, directions * <= max_columns]: |value| max-pooled
    counts: np.ndarray     # histogram of the finite, non-zero |value|s over EDGES
    pooled: bool


def _summarize(tensor: np.ndarray, max_rows: int, max_columns: int) -> _Summary:
    directions, batch, units = tensor.shape
    step = max(1, -(-batch // max_rows))  # streams per heatmap row
    chunk = max(step, (CHUNK_VALUES // max(1, directions * units)) // step * step)
    column_step = max(1, -(-units // max_columns))
    peak = np.zeros(batch, np.float32)
    unit_peak = np.zeros((directions, units), np.float64)
    rows, counts, nonfinite = [], np.zeros(EDGES.size - 1, np.int64), 0
    for first in range(0, batch, chunk):
        part = np.abs(np.asarray(tensor[:, first:first + chunk], dtype=np.float32))
        finite = np.isfinite(part)
        bad = part.size - int(np.count_nonzero(finite))
        if bad:
            nonfinite += bad
            unit_peak = np.maximum(unit_peak, np.where(finite, part, 0).max(axis=1))
            part[~finite] = np.inf
        else:
            unit_peak = np.maximum(unit_peak, part.max(axis=1))
        peak[first:first + part.shape[1]] = part.max(axis=(0, 2))
        pooled = np.maximum.reduceat(part, np.arange(0, part.shape[1], step), axis=1)
        pooled = np.maximum.reduceat(pooled, np.arange(0, units, column_step), axis=2)
        rows.append(np.concatenate(list(pooled), axis=1))  # directions side by side
        positive = part[finite & (part > 0)] if bad else part[part > 0]
        counts += np.histogram(np.clip(positive, EDGES[0], EDGES[-1]), EDGES)[0]
    width = directions * -(-units // column_step)
    grid = np.concatenate(rows, axis=0) if rows else np.zeros((0, width), np.float32)
    return _Summary(nonfinite, peak, unit_peak, grid, counts, step > 1 or column_step > 1)


def _tensors(layer: LayerState) -> dict[str, np.ndarray]:
    """The tensors drawn, each as [directions, batch, units]: a modern kind's (batch first) flattened per stream
    into one direction; empty ones (an xLSTM block without conv) left out."""
    if not layer.modern:
        return {name: layer[name] for name in layer.state_names}
    return {name: layer[name].reshape(layer.batch_size, -1)[None] for name in layer.state_names
            if layer[name].size or not layer.batch_size}


def findings(states: StateSet) -> list[str]:
    """What stands out in `states`: diverging streams, dead units, non-finite values (one line each).

    >>> findings(statefmt.load("today.statefmt"))
    ["layer 0 'encoder': c: stream 'sensor-7' reaches |c| = 190, 142x the median stream's 1.34"]
    """
    summaries = [{name: _summarize(tensor, 1, 1) for name, tensor in _tensors(layer).items()}
                 for layer in states.layers]
    return _findings(states, summaries)


def _findings(states: StateSet, summaries: list[dict[str, _Summary]]) -> list[str]:
    notes: list[str] = []
    ids = states.stream_ids
    for index, (layer, tensors) in enumerate(zip(states.layers, summaries)):
        where = f"layer {index} {layer.name!r}"
        for name, summary in tensors.items():
            if summary.nonfinite:
                notes.append(f"{where}: {name}: {summary.nonfinite} non-finite values (NaN or Inf)")
            batch = summary.peak.size
            peak = np.where(np.isfinite(summary.peak), summary.peak, 0.0).astype(np.float64)
            median = float(np.median(peak)) if batch else 0.0
            if batch >= 3 and median > 0:
                for row in np.flatnonzero(peak > OUTLIER_FACTOR * median)[:5]:
                    label = repr(ids[row]) if ids is not None else f"row {row}"
                    notes.append(f"{where}: {name}: stream {label} reaches |{name}| = {peak[row]:.3g}, "
                                 f"{peak[row] / median:.0f}x the median stream's {median:.3g}")
            if name == "h" and batch >= 2:
                dead = np.flatnonzero(summary.unit_peak.min(axis=0) < DEAD_BELOW)
                if dead.size:
                    shown = ", ".join(map(str, dead[:10])) + (" …" if dead.size > 10 else "")
                    notes.append(f"{where}: h: {dead.size} dead unit(s), zero in every stream: {shown}")
    return notes


def _pooled(values: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """values [r, k] shrunk to at most rows x columns by taking the maximum of each block."""
    for axis, limit in ((0, rows), (1, columns)):
        size = values.shape[axis]
        if size > limit:
            values = np.maximum.reduceat(values, np.arange(0, size, -(-size // limit)), axis=axis)
    return values


def plot_state(data: StateSet | WeightSet, out: str | os.PathLike[str], *, title: str | None = None,
               max_rows: int = 400, max_columns: int = 400) -> list[str]:
    """Draw `data` (a state) to the image `out` (PNG, SVG or PDF, by its extension); returns `findings(data)`.

    >>> notes = plot_state(statefmt.load("today.statefmt"), "today.png")

    The same picture as `statefmt inspect FILE --plot OUT.png`.
    """
    if not isinstance(data, StateSet):
        raise StateError(f"a plot shows a state; this holds {'weights' if isinstance(data, WeightSet) else data!r}")
    try:
        from matplotlib.colors import LogNorm
        from matplotlib.figure import Figure  # no pyplot: no global figures, no GUI backend
    except ImportError:
        raise StateError('plotting needs matplotlib: pip install "statefmt[plot]"') from None

    layers = data.layers
    summaries = [{name: _summarize(tensor, max_rows, max_columns) for name, tensor in _tensors(layer).items()}
                 for layer in layers]
    notes = _findings(data, summaries)
    rows = max(1, len(layers))
    figure = Figure(figsize=(19, 3.6 * rows + 0.4 + 0.22 * min(len(notes), 12)))
    axes = figure.subplots(rows, 4, squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1, 1]})
    for index, (layer, tensors) in enumerate(zip(layers, summaries)):
        names = list(tensors)
        for column in range(2):
            axis = axes[index][column]
            if column >= len(names):
                axis.axis("off")
                continue
            _heatmap(figure, axis, tensors[names[column]], 1 if layer.modern else layer.directions, LogNorm)
            axis.set_title(f"layer {index} {layer.name!r} ({layer.kind}): |{names[column]}|", fontsize=10)
        _per_stream(axes[index][2], tensors)
        _histograms(axes[index][3], tensors)
    heading = title or f"{len(layers)} layer(s), {data.batch_size} stream(s)"
    figure.suptitle(heading, fontsize=12)
    if notes:
        figure.text(0.01, 0.005, "\n".join(notes[:12]), fontsize=9, color="#b00020", va="bottom", family="monospace")
    figure.tight_layout(rect=(0, 0.03 * min(len(notes), 12) / rows, 1, 0.97))
    try:
        figure.savefig(os.fspath(out), dpi=90)
    except (OSError, ValueError) as error:
        raise StateError(f"cannot write the plot: {error}", source=os.fspath(out)) from None
    return notes


def _heatmap(figure: Any, axis: Any, summary: _Summary, directions: int, log_norm: Any) -> None:
    pooled = summary.grid
    if pooled.shape[0] == 0:
        axis.text(0.5, 0.5, "no streams", ha="center", va="center")
        axis.set_axis_off()
        return
    finite = pooled[np.isfinite(pooled) & (pooled > 0)]
    low = max(float(finite.min()) if finite.size else 1e-6, 1e-6)
    high = max(float(finite.max()) if finite.size else 1.0, low * 10)
    shown = np.where(np.isfinite(pooled), np.maximum(pooled, low), high)
    image = axis.imshow(shown, aspect="auto", interpolation="nearest", cmap="magma", norm=log_norm(low, high))
    figure.colorbar(image, ax=axis, fraction=0.05, pad=0.02)
    if directions == 2:
        axis.axvline(shown.shape[1] / 2 - 0.5, color="white", linewidth=1.5)
    pooled_note = " (max-pooled)" if summary.pooled else ""
    axis.set_xlabel(f"units{' (forward | backward)' if directions == 2 else ''}{pooled_note}", fontsize=9)
    axis.set_ylabel("streams", fontsize=9)


_COLORS = {"h": "#1f77b4", "c": "#d62728"}
_OTHER_COLORS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")  # a modern kind's tensors, in order


def _color(name: str, position: int) -> str:
    return _COLORS.get(name, _OTHER_COLORS[position % len(_OTHER_COLORS)])


def _per_stream(axis: Any, tensors: dict[str, _Summary]) -> None:
    positive = True
    for position, (name, summary) in enumerate(tensors.items()):
        if summary.peak.size == 0:
            continue
        positive = positive and bool(summary.peak.min() > 0)
        peak = _pooled(summary.peak[:, None], 4000, 1)[:, 0]  # at most 4,000 points, each the largest of its streams
        finite = peak[np.isfinite(peak)]
        top = float(finite.max()) * 2 if finite.size else 1.0
        axis.plot(np.arange(peak.size), np.where(np.isfinite(peak), peak, top), color=_color(name, position),
                  linewidth=0.8, label=f"max |{name}|")
    axis.set_yscale("log") if positive else axis.set_yscale("symlog", linthresh=1e-3)  # zeros: an all-zero stream
    axis.set_title("largest |value| per stream", fontsize=10)
    axis.set_xlabel("streams" + (" (max-pooled)" if any(t.peak.size > 4000 for t in tensors.values()) else ""),
                    fontsize=9)
    axis.legend(fontsize=9)


def _histograms(axis: Any, tensors: dict[str, _Summary]) -> None:
    drawn = False
    for position, (name, summary) in enumerate(tensors.items()):
        used = np.flatnonzero(summary.counts)
        if used.size == 0:
            continue
        lo, hi = used[0], used[-1] + 1
        axis.stairs(summary.counts[lo:hi], EDGES[lo:hi + 1], color=_color(name, position), label=f"|{name}|")
        drawn = True
    if drawn:
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.legend(fontsize=9)
    axis.set_title("distribution (log-log)", fontsize=10)
    axis.set_xlabel("|value|", fontsize=9)
