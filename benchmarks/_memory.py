"""Peak extra memory of one save or load, measured in a fresh process: `python -m benchmarks._memory CASE DIR`.

The peak resident set (VmHWM) is reset through /proc/self/clear_refs once the payload is
in memory, so the figure is what the operation itself adds, page-cache pages it maps included.
"""

from __future__ import annotations

import os
import sys

import numpy as np

LAYERS, STREAMS, UNITS = 4, 65_536, 256


def payload(streams: int = STREAMS) -> dict[str, np.ndarray]:
    """The arrays of the benchmark state, random in [0, 1), filled in place (no temporaries)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for index in range(LAYERS):
        for name in ("h", "c"):
            array = np.empty((1, streams, UNITS), np.float32)
            rng.random(out=array.reshape(-1), dtype=np.float32)
            arrays[f"layers.{index}.{name}"] = array
    return arrays


def state_set(arrays: dict[str, np.ndarray], stream_ids=None):
    from statefmt import LayerState, StateSet

    layers = [LayerState(f"lstm_{i}", "lstm", h=arrays[f"layers.{i}.h"], c=arrays[f"layers.{i}.c"])
              for i in range(LAYERS)]
    return StateSet(layers, stream_ids=stream_ids)


def status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (`VmRSS`, `VmHWM`), in bytes."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def reset_peak() -> None:
    """Start a new peak: VmHWM := VmRSS."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def peak_extra(action) -> int:
    """Bytes by which the peak resident set during `action()` exceeds the resident set before it."""
    reset_peak()
    before = status_bytes("VmRSS")
    result = action()  # kept alive until the peak is read
    peak = status_bytes("VmHWM")
    del result
    return peak - before


def main(case: str, directory: str) -> None:
    import statefmt

    path = os.path.join(directory, f"memory-{case}")
    if case.startswith("save"):
        arrays = payload()
        states = state_set(arrays)
        if case == "save-statefmt":
            extra = peak_extra(lambda: statefmt.save(states, path, durable=False))
        elif case == "save-safetensors":
            from safetensors.numpy import save_file

            extra = peak_extra(lambda: save_file(arrays, path))
        elif case == "save-torch":
            import torch

            tensors = {key: torch.from_numpy(array) for key, array in arrays.items()}
            extra = peak_extra(lambda: torch.save(tensors, path))
        else:
            extra = peak_extra(lambda: np.savez(path, **arrays))
    else:
        source = sys.argv[3]
        if case == "load-statefmt":
            extra = peak_extra(lambda: statefmt.load(source))
        elif case == "load-safetensors":
            from safetensors.numpy import load_file

            extra = peak_extra(lambda: load_file(source))
        elif case == "load-torch":
            import torch

            extra = peak_extra(lambda: torch.load(source, weights_only=True))
        else:
            extra = peak_extra(lambda: dict(np.load(source)))
    print(extra)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
