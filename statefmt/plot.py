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
from typing import Any

import numpy as np

from .errors import StateError
from .states import StateSet
from .weights import WeightSet

__all__ = ["findings", "plot_state"]

OUTLIER_FACTOR = 10.0  # a stream whose largest |value| is this many times the median stream's
DEAD_BELOW = 1e-6      # a unit whose |h| stays below this in every stream is dead


def findings(states: StateSet) -> list[str]:
    """What stands out in `states`: diverging streams, dead units, non-finite values (one line each).

    >>> findings(statefmt.load("today.statefmt"))  # doctest: +SKIP
    ["layer 0 'l0': c: stream 'pump-7' reaches |c| = 812, 64x the median stream's 12.7"]
    """
    notes: list[str] = []
    ids = states.stream_ids
    for index, layer in enumerate(states.layers):
        where = f"layer {index} {layer.name!r}"
        for name in ("h", "c") if layer.kind == "lstm" else ("h",):
            values = np.abs(np.asarray(layer[name], dtype=np.float64))  # [directions, batch, units]
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            if bad:
                notes.append(f"{where}: {name}: {bad} non-finite values (NaN or Inf)")
            values = np.where(np.isfinite(values), values, 0.0)
            if values.shape[1] == 0:
                continue
            per_stream = values.max(axis=(0, 2))
            median = float(np.median(per_stream))
            if values.shape[1] >= 3 and median > 0:
                for row in np.flatnonzero(per_stream > OUTLIER_FACTOR * median)[:5]:
                    label = repr(ids[row]) if ids is not None else f"row {row}"
                    notes.append(f"{where}: {name}: stream {label} reaches |{name}| = {per_stream[row]:.3g}, "
                                 f"{per_stream[row] / median:.0f}x the median stream's {median:.3g}")
            if name == "h" and values.shape[1] >= 2:
                dead = np.flatnonzero(values.max(axis=1).min(axis=0) < DEAD_BELOW)
                if dead.size:
                    shown = ", ".join(map(str, dead[:10])) + (" …" if dead.size > 10 else "")
                    notes.append(f"{where}: h: {dead.size} dead unit(s), zero in every stream: {shown}")
    return notes


def _pooled(values: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """values [r, k] shrunk to at most rows x columns by taking the maximum of each block."""
    for axis, limit in ((0, rows), (1, columns)):
        size = values.shape[axis]
        if size > limit:
            step = -(-size // limit)
            pad = step * -(-size // step) - size
            widths = [(0, 0), (0, 0)]
            widths[axis] = (0, pad)
            padded = np.pad(values, widths)
            shape = (-1, step, padded.shape[1]) if axis == 0 else (padded.shape[0], -1, step)
            values = padded.reshape(shape).max(axis=axis + 1)
    return values


def plot_state(data: StateSet | WeightSet, out: str | os.PathLike[str], *, title: str | None = None,
               max_rows: int = 400, max_columns: int = 400) -> list[str]:
    """Draw `data` (a state) to the image `out` (PNG, SVG or PDF, by its extension); returns `findings(data)`.

    >>> notes = plot_state(statefmt.load("today.statefmt"), "today.png")  # doctest: +SKIP

    The same picture as `statefmt inspect FILE --plot OUT.png`.
    """
    if not isinstance(data, StateSet):
        raise StateError(f"a plot shows a state; this holds {'weights' if isinstance(data, WeightSet) else data!r}")
    try:
        from matplotlib.colors import LogNorm
        from matplotlib.figure import Figure  # no pyplot: no global figures, no GUI backend
    except ImportError:
        raise StateError('plotting needs matplotlib: pip install "statefmt[plot]"') from None

    notes = findings(data)
    layers = data.layers
    rows = max(1, len(layers))
    figure = Figure(figsize=(19, 3.6 * rows + 0.4 + 0.22 * min(len(notes), 12)))
    axes = figure.subplots(rows, 4, squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1, 1]})
    for index, layer in enumerate(layers):
        names = ("h", "c") if layer.kind == "lstm" else ("h",)
        for column in range(2):
            axis = axes[index][column]
            if column >= len(names):
                axis.axis("off")
                continue
            name = names[column]
            _heatmap(figure, axis, layer[name], name, max_rows, max_columns, LogNorm)
            axis.set_title(f"layer {index} {layer.name!r} ({layer.kind}): |{name}|", fontsize=10)
        _per_stream(axes[index][2], [(name, layer[name]) for name in names])
        _histograms(axes[index][3], [(name, layer[name]) for name in names])
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


def _heatmap(figure: Any, axis: Any, tensor: np.ndarray, name: str, max_rows: int, max_columns: int,
             log_norm: Any) -> None:
    values = np.abs(np.asarray(tensor, dtype=np.float64))
    values = np.where(np.isfinite(values), values, np.nan)
    directions, batch, _ = values.shape
    grid = np.concatenate([values[d] for d in range(directions)], axis=1) if directions else values[0]
    if batch == 0:
        axis.text(0.5, 0.5, "no streams", ha="center", va="center")
        axis.set_axis_off()
        return
    pooled = _pooled(np.nan_to_num(grid, nan=np.inf), max_rows, max_columns * directions)
    finite = pooled[np.isfinite(pooled) & (pooled > 0)]
    low = max(float(finite.min()) if finite.size else 1e-6, 1e-6)
    high = max(float(finite.max()) if finite.size else 1.0, low * 10)
    shown = np.where(np.isfinite(pooled), np.maximum(pooled, low), high)
    image = axis.imshow(shown, aspect="auto", interpolation="nearest", cmap="magma", norm=log_norm(low, high))
    figure.colorbar(image, ax=axis, fraction=0.05, pad=0.02)
    if directions == 2:
        axis.axvline(shown.shape[1] / 2 - 0.5, color="white", linewidth=1.5)
    pooled_note = " (max-pooled)" if grid.shape[0] > max_rows or grid.shape[1] > max_columns * directions else ""
    axis.set_xlabel(f"units{' (forward | backward)' if directions == 2 else ''}{pooled_note}", fontsize=9)
    axis.set_ylabel("streams", fontsize=9)


def _per_stream(axis: Any, tensors: list[tuple[str, np.ndarray]]) -> None:
    colors = {"h": "#1f77b4", "c": "#d62728"}
    for name, tensor in tensors:
        values = np.abs(np.asarray(tensor, dtype=np.float64))
        if values.shape[1] == 0:
            continue
        peak = np.where(np.isfinite(values), values, np.inf).max(axis=(0, 2))
        peak = _pooled(peak[:, None], 4000, 1)[:, 0]  # at most 4,000 points, each the largest of its streams
        finite = peak[np.isfinite(peak)]
        top = float(finite.max()) * 2 if finite.size else 1.0
        axis.plot(np.arange(peak.size), np.where(np.isfinite(peak), peak, top), color=colors[name],
                  linewidth=0.8, label=f"max |{name}|")
    axis.set_yscale("symlog", linthresh=1e-3)
    axis.set_title("largest |value| per stream", fontsize=10)
    axis.set_xlabel("streams", fontsize=9)
    axis.legend(fontsize=9)


def _histograms(axis: Any, tensors: list[tuple[str, np.ndarray]]) -> None:
    colors = {"h": "#1f77b4", "c": "#d62728"}
    drawn = False
    for name, tensor in tensors:
        values = np.abs(np.asarray(tensor, dtype=np.float64)).ravel()
        values = values[np.isfinite(values) & (values > 0)]
        if values.size == 0:
            continue
        low, high = float(values.min()), float(values.max())
        bins = np.geomspace(low, high * 1.0001, 60) if high > low else 10
        axis.hist(values, bins=bins, histtype="step", color=colors[name], label=f"|{name}|", log=True)
        drawn = True
    if drawn:
        axis.set_xscale("log")
        axis.legend(fontsize=9)
    axis.set_title("distribution (log-log)", fontsize=10)
    axis.set_xlabel("|value|", fontsize=9)
