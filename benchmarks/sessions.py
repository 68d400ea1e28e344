"""One language model session's state, saved and loaded: statefmt beside safetensors on the same tensors and
`torch.save` of the Hugging Face cache itself: `python -m benchmarks.sessions`.

The sessions are shaped like real models' (random values; no weights needed, the caches are filled directly):
Mamba-2 2.7B (64 layers, 80 heads x 64 x 128 ssm state, float32: 172 MB, whatever the prompt's length) and a
Qwen3-Next-style hybrid after 4,096 tokens (36 gated DeltaNet layers of 32 heads x 128 x 128, 12 attention
layers of 2 x 256 keys and values in bfloat16). Page cache warm, best of 9; statefmt's load checks every block's
checksum and every value's finiteness, as the others do not. Results go to benchmarks/results/sessions.json.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch
import transformers

import statefmt
from benchmarks._timing import best as _best
from statefmt import LayerState, StateSet
from statefmt.adapters.torch import _numpy

REPO = Path(__file__).resolve().parent.parent
REPEAT = 9  # the machine is shared: more runs than the other benchmarks' 5, each figure the best


def best(action) -> float:
    return _best(action, repeat=REPEAT)


def mamba2_session() -> tuple[StateSet, object]:
    config = transformers.Mamba2Config(hidden_size=2560, num_hidden_layers=64, state_size=128, expand=2,
                                       head_dim=64, num_heads=80, n_groups=1, conv_kernel=4)
    return _filled(config, {i: "mamba2" for i in range(64)}, conv_channels=5120 + 2 * 128, heads=80, key=64,
                   value=128, tokens=4096)


def hybrid_session() -> tuple[StateSet, object]:
    types = ["full_attention" if i % 4 == 3 else "linear_attention" for i in range(48)]
    config = transformers.Qwen3NextConfig(hidden_size=2048, num_hidden_layers=48, num_attention_heads=16,
                                          num_key_value_heads=2, head_dim=256, linear_num_value_heads=32,
                                          linear_num_key_heads=16, linear_key_head_dim=128,
                                          linear_value_head_dim=128, linear_conv_kernel_dim=4, layer_types=types)
    kinds = {i: "gated_deltanet" if kind == "linear_attention" else "attention" for i, kind in enumerate(types)}
    return _filled(config, kinds, conv_channels=2 * 16 * 128 + 32 * 128, heads=32, key=128, value=128, tokens=4096)


def _filled(config, kinds, *, conv_channels, heads, key, value, tokens):
    """The cache a forward would leave (random values), and the same state as a StateSet."""
    generator = torch.Generator().manual_seed(0)
    cache = transformers.DynamicCache(config=config)
    layers = []
    for index, kind in kinds.items():
        if kind == "attention":
            keys, values = (torch.randn(1, 2, tokens, 256, generator=generator).to(torch.bfloat16) for _ in range(2))
            cache.layers[index].update(keys, values)
            layers.append(LayerState(f"l{index}", "attention", keys=_numpy(keys), values=_numpy(values)))
            continue
        conv = torch.randn(1, conv_channels, 4, generator=generator)
        recurrent = torch.randn(1, heads, key, value, generator=generator)
        cache.update_conv_state(conv, index, conv_kernel_size=4)
        cache.update_recurrent_state(recurrent, index)
        name = "ssm" if kind == "mamba2" else "recurrent"
        layers.append(LayerState(f"l{index}", kind, conv=_numpy(conv[..., 1:].contiguous()),
                                 **{name: _numpy(recurrent)}))
    return StateSet(layers, metadata={"tokens": tokens}), cache


def compare(label: str, states: StateSet, cache: object, folder: str) -> dict[str, float]:
    tensors = {f"layers.{i}.{name}": np.ascontiguousarray(layer[name]) for i, layer in enumerate(states)
               for name in layer.state_names}
    nbytes = sum(array.nbytes for array in tensors.values())
    paths = {name: os.path.join(folder, f"{label}.{name}") for name in ("statefmt", "safetensors", "pt")}
    figures = {
        "statefmt save": best(lambda: statefmt.save(states, paths["statefmt"], durable=False)),
        "safetensors save": best(lambda: safetensors.numpy.save_file(tensors, paths["safetensors"])),
        "torch.save of the cache": best(lambda: torch.save(cache, paths["pt"])),
        "statefmt load": best(lambda: statefmt.load(paths["statefmt"])),
        "safetensors load": best(lambda: safetensors.numpy.load_file(paths["safetensors"])),
        "torch.load of the cache": best(lambda: torch.load(paths["pt"], weights_only=False)),
    }
    print(f"{label}: {len(states)} layers, {nbytes / 1e6:.0f} MB")
    for name, seconds in figures.items():
        peer = figures["safetensors save" if "save" in name else "safetensors load"]
        print(f"  {name:<26} {seconds * 1e3:8.1f} ms {nbytes / seconds / 1e9:6.2f} GB/s  {seconds / peer:5.2f}x "
              "safetensors")
    return {"bytes": nbytes, **figures}


def main() -> None:
    print(f"session state, save and load (page cache warm, best of 9), {time.strftime('%Y-%m-%d %H:%M')} UTC")
    folder = tempfile.mkdtemp(prefix=".bench-sessions-", dir=REPO)
    try:
        results = {"mamba2-2.7b": compare("mamba2-2.7b", *mamba2_session(), folder)}
        results["qwen3-next-hybrid-4k"] = compare("qwen3-next-hybrid-4k", *hybrid_session(), folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "sessions.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
