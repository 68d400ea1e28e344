"""The benchmark figures as pictures for the docs: reads benchmarks/results/*.json, writes docs/images/*.png.

    python -m benchmarks.plots          (after `python -m benchmarks` and `python -m benchmarks.store`)

- bench-one-stream.png: one stream by id against the number of streams, from a file (file.json)
  and from the store (store.json): both curves should stay flat;
- bench-store-vs-peers.png: the store's write, get and put beside raw Lance and Redis (store.json);
- bench-file-vs-peers.png: save and load beside safetensors, torch and numpy, when file.json holds
  them (keys "saves" and "loads": {name: seconds}).

A missing results file or key skips its picture, saying so; the pictures already in docs/images stay.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
IMAGES = REPO / "docs" / "images"
COLORS = {"statefmt": "#3949ab", "raw Lance": "#9e9e9e", "Redis": "#d32f2f"}


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        print(f"skipped: {path.relative_to(REPO)} is missing (run `python -m benchmarks"
              f"{'' if name == 'file' else '.' + name}`)")
        return None
    return json.loads(path.read_text())


def _rows(store: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in store.get("rows", [])}


def _figure(width: float = 8.0, height: float = 4.5) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def _footer(figure: Any, *sources: dict[str, Any]) -> None:
    import textwrap

    lines = [line for s in sources for line in textwrap.wrap(
        f"{s.get('measured') or s.get('date', '')[:16].replace('T', ' ')}: {s.get('machine', '')}", 120,
        subsequent_indent="    ")]
    figure.text(0.01, 0.01, "\n".join(lines), fontsize=9, color="#333333", va="bottom")  # legible at page width


def one_stream(file: dict[str, Any] | None, store: dict[str, Any] | None) -> Path | None:
    """One stream by id, milliseconds, against the number of streams held."""
    curves = []
    if file and file.get("one_stream_by_id_seconds"):
        points = sorted((int(n), s) for n, s in file["one_stream_by_id_seconds"].items())
        curves.append(("statefmt file: load(path, streams=[id])", points, "o-", COLORS["statefmt"]))
    if store:
        rows = _rows(store)
        points = sorted((int(key.rsplit("_", 1)[1]), row["seconds"]) for key, row in rows.items()
                        if key.startswith("scale_get1_"))
        if "get1" in rows and store.get("streams") and int(store["streams"]) not in dict(points):
            points = sorted({**dict(points), int(store["streams"]): rows["get1"]["seconds"]}.items())
        if points:
            curves.append(("statefmt store: get([id])", points, "s-", "#00897b"))
    if not curves:
        print("skipped: bench-one-stream.png (no scale figures in file.json or store.json)")
        return None
    figure, axis = _figure(9.0, 4.8)
    for label, points, style, color in curves:
        axis.plot([n for n, _ in points], [s * 1e3 for _, s in points], style, color=color, label=label)
        for n, s in points:
            axis.annotate(_ms(s * 1e3), (n, s * 1e3), textcoords="offset points", xytext=(0, 6), ha="center",
                          fontsize=7, color=color)
    axis.set_xscale("log")
    axis.set_ylim(0, 1.35 * max(s for _, points, _, _ in curves for _, s in points) * 1e3)
    axis.set_xlabel("streams held")
    axis.set_ylabel("one stream by id, ms")
    axis.set_title("One stream by id, against the number of streams held")
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    _footer(figure, *(s for s in (file, store) if s))
    figure.tight_layout(rect=(0, 0.15, 1, 1))
    return _save(figure, "bench-one-stream.png")


def store_vs_peers(store: dict[str, Any] | None) -> Path | None:
    """Write, get and put: the store beside raw Lance and Redis, seconds on a log axis."""
    if not store:
        return None
    rows = _rows(store)
    operations = [  # (label, statefmt, raw Lance, Redis)
        ("write the fleet", "write", "raw_write_indexed", "redis_write"),
        ("get 1", "get1", "raw_get1", "redis_get1"),
        ("get 1,000", "get1000", "raw_get1000", "redis_get1000"),
        ("get 10,000", "get10000", "raw_get10000", "redis_get10000"),
        ("put 10,000", "put10k", "raw_put10k", "redis_put10k"),
    ]
    operations = [op for op in operations if op[1] in rows]
    if not operations:
        print("skipped: bench-store-vs-peers.png (store.json has none of its rows)")
        return None
    import numpy as np

    figure, axis = _figure(9.0, 4.8)
    x = np.arange(len(operations))
    for offset, (peer, column) in zip((-0.27, 0.0, 0.27), (("statefmt", 1), ("raw Lance", 2), ("Redis", 3))):
        values = [rows[op[column]]["seconds"] * 1e3 if op[column] in rows else np.nan for op in operations]
        bars = axis.bar(x + offset, values, width=0.26, color=COLORS[peer], label=peer)
        for bar, value in zip(bars, values):
            if value == value:
                axis.annotate(_ms(value), (bar.get_x() + bar.get_width() / 2, value), textcoords="offset points",
                              xytext=(0, 2), ha="center", fontsize=7)
    axis.set_xticks(x, [op[0] for op in operations])
    axis.set_yscale("log")
    axis.set_ylabel("ms (log scale, lower is better)")
    axis.set_title(f"Store of {store.get('streams', 0):,} streams beside raw Lance and Redis "
                   "(Redis: in RAM, not durable, no versions)", fontsize=10)
    axis.legend(fontsize=8)
    _footer(figure, store)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    return _save(figure, "bench-store-vs-peers.png")


def file_vs_peers(file: dict[str, Any] | None) -> Path | None:
    """Save and load beside the peers, when file.json holds them."""
    if not file or not (file.get("saves") or file.get("loads")):
        print("skipped: bench-file-vs-peers.png (file.json holds no 'saves' or 'loads')")
        return None
    groups = [(title, file[key]) for title, key in (("save", "saves"), ("load", "loads")) if file.get(key)]
    figure = _figure(4.5 * len(groups), 4.0)[0]
    figure.clear()
    axes = figure.subplots(1, len(groups), squeeze=False)[0]
    for axis, (title, figures) in zip(axes, groups):
        names = sorted(figures, key=figures.get)
        axis.barh(names, [figures[n] * 1e3 for n in names],
                  color=[COLORS["statefmt"] if n.startswith("statefmt") else "#9e9e9e" for n in names])
        axis.invert_yaxis()
        axis.set_xlabel("ms (lower is better)")
        axis.set_title(title)
    _footer(figure, file)
    figure.tight_layout(rect=(0, 0.15, 1, 1))
    return _save(figure, "bench-file-vs-peers.png")


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _save(figure: Any, name: str) -> Path:
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / name
    figure.savefig(path, dpi=100)
    print(f"wrote {path.relative_to(REPO)}")
    return path


def main() -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print('the plots need matplotlib: pip install "statefmt[plot]"', file=sys.stderr)
        return 1
    file, store = _load("file"), _load("store")
    one_stream(file, store)
    store_vs_peers(store)
    file_vs_peers(file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
