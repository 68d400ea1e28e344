"""DeepMind's Griffin (`recurrentgemma`, its PyTorch side): the cache of `Griffin` to and from the neutral layout.

`Griffin.forward(tokens, segment_pos, cache)` returns `(logits, cache)`, the cache a dict
`{"blocks.i": ...}` with one entry per residual block:

- a recurrent block, `RecurrentBlockCache(rg_lru_state (B, W) float32, conv1d_state (B, K-1, W))`:
  neutral kind `rglru`, the convolution window transposed to channels first;
- a local-attention block, `AttentionBlockCache(keys, values (B, window, 1, head_dim), num_tokens (B,))`,
  a ring buffer where position p sits in slot `p % window`: neutral kind `attention`, its kept
  positions unrolled oldest first, `kv_heads` 1.

Griffin continues one token at a time from a cache (its convolution asserts it), and the caller
passes the positions that continue the sequence (`segment_pos` from the tokens seen on). Layers
are named "l0", "l1", ... in block order. Imported on first use: `recurrentgemma.torch` (whose
package also imports its JAX side) and torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from statefmt import LayerSignature, LayerState, StateError, StateMismatchError, StateSet, StateSignature

from ._common import fit, model_fingerprints, prefixed, require, source_metadata
from .torch import _numpy, _tensor

_EXTRA = "recurrentgemma"


def signature(target: Any, *, name: str | None = None) -> StateSignature:
    """What a `Griffin` takes: an `rglru` layer per recurrent block, an `attention` layer per local-attention block,
    each tensor in the dtype Griffin holds it in (the RG-LRU state float32, the rest the model's dtype).

    >>> signature(griffin).layers[0].kind
    'rglru'
    """
    model = _griffin(target)
    compute = str(next(model.parameters()).dtype).removeprefix("torch.")
    layers = []
    for index, block in enumerate(model.blocks):
        if _is_attention(block):
            attention = block.attention_block
            dims = {"kv_heads": 1, "head_dim": attention.head_dim, "value_dim": attention.head_dim,
                    "window": attention.window_size}
            layers.append(LayerSignature("attention", dims=dims, dtypes={"keys": compute, "values": compute},
                                         name=_name(name, index)))
        else:
            recurrent = block.recurrent_block
            dims = {"channels": recurrent.lru_width, "conv_window": recurrent.conv_1d.temporal_width - 1}
            layers.append(LayerSignature("rglru", dims=dims, dtypes={"conv": compute, "rg_lru": "float32"},
                                         name=_name(name, index)))
    return StateSignature(layers, model=_fingerprints(model))


def export(source: Any, state: Any = None, *, name: str | None = None) -> StateSet:
    """The cache a run of `source` returned, as a StateSet.

    >>> logits, cache = griffin(tokens, segment_pos)
    >>> statefmt.save(export(griffin, cache), "session.statefmt")

    A layer keeps one dtype: a bfloat16 convolution window beside the float32 RG-LRU state is
    widened to float32 (exactly). `tokens` is the attention blocks' `num_tokens`, when every
    stream has seen the same number.
    """
    model = _griffin(source)
    if not isinstance(state, dict) or sorted(state) != sorted(f"blocks.{i}" for i in range(len(model.blocks))):
        raise StateError(f"expected the cache Griffin returned, a dict with keys blocks.0 .. blocks."
                         f"{len(model.blocks) - 1}, found {_describe(state)}")
    layers: list[LayerState] = []
    tokens: set[int] = set()
    for index, block in enumerate(model.blocks):
        cache = state[f"blocks.{index}"]
        if _is_attention(block):
            seen = _numpy(cache.num_tokens).astype(np.int64)
            tokens.update(int(n) for n in seen)
            keys, values = _unroll(_numpy(cache.keys), seen), _unroll(_numpy(cache.values), seen)
            layers.append(LayerState(_name(name, index), "attention", keys=keys, values=values,
                                     window=int(cache.keys.shape[1])))
        else:
            conv, lru = _numpy(cache.conv1d_state), _numpy(cache.rg_lru_state)
            dtype = np.promote_types(conv.dtype, lru.dtype)
            layers.append(LayerState(_name(name, index), "rglru", conv=conv.transpose(0, 2, 1).astype(dtype),
                                     rg_lru=lru.astype(dtype, copy=False)))
    metadata: dict[str, Any] = {"source": source_metadata("recurrentgemma", _EXTRA, type(model).__name__),
                                "compute_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                                "model": _fingerprints(model)}
    if len(tokens) == 1:
        metadata["tokens"] = tokens.pop()
    return StateSet(layers, metadata=metadata)


def initial_state(states: StateSet, target: Any, *, strict: bool = False, broadcast: bool = False,
                  batch_size: int | None = None, device: Any = None) -> dict[str, Any]:
    """The cache `target` continues from: a dict of `RecurrentBlockCache` and `AttentionBlockCache`.

    >>> cache = initial_state(statefmt.load("session.statefmt"), griffin)
    >>> logits, cache = griffin(next_token, torch.tensor([[n]]), cache)

    An attention layer must hold the last min(tokens, window) positions, as Griffin reads them
    all; one from an implementation that keeps fewer (Hugging Face keeps window - 1) continues
    exactly only while the sequence fits in the window, and past it is refused here.
    """
    rg = require("recurrentgemma.torch", _EXTRA)
    torch = require("torch", _EXTRA)
    model = _griffin(target)
    expected = signature(target)
    states = fit(states, expected, strict=strict, broadcast=broadcast, batch_size=batch_size, downcast=False)
    seen = states.metadata.get("tokens")
    problems = []
    for index, layer in enumerate(states.layers):
        length, window = layer["keys"].shape[2] if layer.kind == "attention" else 0, layer.window
        if layer.kind == "attention" and seen is not None and length < min(seen, window):
            problems.append(f"layer {index} {layer.name!r}: dims.length: Griffin reads the last min(tokens, window) = "
                            f"{min(seen, window)} positions, found {length} (a state kept by an implementation "
                            "with a shorter window continues Griffin exactly only inside its window)")
    if problems:
        raise StateMismatchError(problems, source=states.file)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device if device is None else torch.device(device)
    cache = {}
    for index, layer in enumerate(states.layers):
        if layer.kind == "attention":
            cache[f"blocks.{index}"] = _ring(rg, torch, layer, seen, dtype, device)
        else:
            conv = _tensor(np.ascontiguousarray(layer["conv"].transpose(0, 2, 1)))
            cache[f"blocks.{index}"] = rg.RecurrentBlockCache(
                rg_lru_state=_tensor(layer["rg_lru"]).to(device=device, dtype=torch.float32),
                conv1d_state=conv.to(device=device, dtype=dtype))
    return cache


def _unroll(ring: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """(B, window, 1, D) ring buffers to (B, 1, length, D), oldest first: row b keeps positions n - length .. n - 1."""
    window = ring.shape[1]
    length = int(min(seen.max(initial=0), window))
    if len(set(np.minimum(seen, window))) > 1:
        raise StateError(f"the streams have seen different numbers of tokens ({sorted(set(seen.tolist()))}), so "
                         "their attention windows differ in length: export them one at a time")
    slots = (np.maximum(seen[:, None] - length, 0) + np.arange(length)[None]) % window
    return np.take_along_axis(ring, slots[:, :, None, None], axis=1).transpose(0, 2, 1, 3)


def _ring(rg, torch, layer: LayerState, seen: int | None, dtype, device):
    """An `AttentionBlockCache` holding the layer's positions in the slots Griffin reads them from."""
    keys, values = layer["keys"], layer["values"]
    batch, _, length, head_dim = keys.shape
    window = int(layer.window)
    seen = length if seen is None else int(seen)  # the mask is relative: a full window's slots need only n mod window
    kept = min(seen, window)
    slots = (seen - kept + np.arange(kept)) % window
    ring_keys, ring_values = np.zeros((batch, window, 1, head_dim), keys.dtype), np.zeros((batch, window, 1, head_dim),
                                                                                           values.dtype)
    ring_keys[:, slots] = keys[:, :, length - kept:].transpose(0, 2, 1, 3)
    ring_values[:, slots] = values[:, :, length - kept:].transpose(0, 2, 1, 3)
    return rg.AttentionBlockCache(keys=_tensor(ring_keys).to(device=device, dtype=dtype),
                                  values=_tensor(ring_values).to(device=device, dtype=dtype),
                                  num_tokens=torch.full((batch,), seen, dtype=torch.int32, device=device))


def _griffin(target: Any):
    rg = require("recurrentgemma.torch", _EXTRA)
    if not isinstance(target, rg.Griffin):
        raise StateError(f"statefmt.adapters.recurrentgemma takes a recurrentgemma.torch.Griffin, found "
                         f"{type(target).__name__}")
    return target


def _fingerprints(model) -> dict[str, str]:
    return model_fingerprints("recurrentgemma", model.config._asdict(),
                              ((key, _numpy(value)) for key, value in model.state_dict().items()))


def _is_attention(block) -> bool:
    return hasattr(block, "attention_block")


def _name(prefix: str | None, index: int) -> str:
    return prefixed(prefix, f"l{index}")


def _describe(value) -> str:
    return f"a dict with keys {sorted(value)}" if isinstance(value, dict) else type(value).__name__
