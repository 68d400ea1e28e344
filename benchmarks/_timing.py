"""Timing shared by the benchmarks: the best of several runs, since the machine is shared and noisy."""

from __future__ import annotations

import time
from collections.abc import Callable


def best(action: Callable[[], object], *, repeat: int = 5, before: Callable[[], object] | None = None) -> float:
    """The shortest of `repeat` timed runs of `action()`; `before()` runs untimed ahead of each."""
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)
