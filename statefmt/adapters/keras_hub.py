"""keras-hub's Qwen3.5 (a gated DeltaNet hybrid, Keras 3): `call_with_cache`'s cache to and from the neutral layout.

`Qwen3_5CausalLM.call_with_cache(token_ids, cache, index)` returns `(logits, hidden, cache)`,
the cache a tuple stacked over layers, of which each layer reads its own part:

- `conv (B, layers, conv_dim, K-1)` and `recurrent (B, layers, heads, key, value)` float32 for a
  `linear_attention` layer: neutral kind `gated_deltanet`, the same axes without the layer's;
- `kv (B, layers, 2, max_length, kv_heads, head_dim)` for a `full_attention` layer, filled up to
  `index` (the tokens seen): neutral kind `attention`, `[batch, kv_heads, length, head_dim]`.

The state this adapter speaks is the pair `(cache, index)`: what `call_with_cache` takes and the
position it continues at. The KV cache is allocated to a fixed length, so `initial_state` asks for
`max_length` (the tokens seen plus those to come). Layers are named "l0", "l1", ... Keras and
keras-hub are imported on first use; any Keras backend works.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from statefmt import LayerSignature, LayerState, StateError, StateMismatchError, StateSet, StateSignature

from ._common import fit, model_fingerprints, prefixed, require, source_metadata

_EXTRA = "keras_hub"


def signature(target: Any, *, name: str | None = None) -> StateSignature:
    """What a Qwen3.5 `CausalLM` takes: a `gated_deltanet` layer per linear-attention layer, an `attention` per other,
    each tensor in the dtype keras-hub holds it in (the recurrent state float32, the rest the compute dtype).

    >>> [layer.kind for layer in signature(lm).layers]
    ['gated_deltanet', 'attention']
    """
    backbone = _backbone(target)
    compute = _dtype(backbone)
    layers = []
    for index, layer in enumerate(backbone.transformer_layers):
        if layer.layer_type == "linear_attention":
            dims = {"conv_channels": _conv_dim(backbone), "conv_window": backbone.linear_conv_kernel_dim - 1,
                    "heads": backbone.linear_num_value_heads, "key_dim": backbone.linear_key_head_dim,
                    "value_dim": backbone.linear_value_head_dim}
            layers.append(LayerSignature("gated_deltanet", dims=dims, dtypes={"conv": compute, "recurrent": "float32"},
                                         name=_name(name, index)))
        else:
            dims = {"kv_heads": backbone.num_key_value_heads, "head_dim": backbone.head_dim,
                    "value_dim": backbone.head_dim, "window": None}
            layers.append(LayerSignature("attention", dims=dims, dtypes={"keys": compute, "values": compute},
                                         name=_name(name, index)))
    return StateSignature(layers, model=_fingerprints(backbone))


def export(source: Any, state: Any = None, *, name: str | None = None) -> StateSet:
    """The cache `call_with_cache` returned and the tokens it has seen, `(cache, index)`, as a StateSet.

    >>> _, _, cache = lm.call_with_cache(prompt, cache, 0)
    >>> statefmt.save(export(lm, (cache, prompt.shape[1])), "session.statefmt")

    A gated DeltaNet layer keeps one dtype: a bfloat16 convolution window beside the float32
    recurrent state is widened to float32 (exactly).
    """
    keras = require("keras", _EXTRA)
    backbone = _backbone(source)
    if not (isinstance(state, (tuple, list)) and len(state) == 2 and isinstance(state[0], (tuple, list))
            and len(state[0]) == 3):
        raise StateError("expected (cache, index): the (kv, conv, recurrent) cache call_with_cache returned and "
                         f"the number of tokens it has seen, found {type(state).__name__}")
    (kv, conv, recurrent), index = state
    seen = int(keras.ops.convert_to_numpy(index))
    kv, conv, recurrent = (_numpy(keras, part) for part in (kv, conv, recurrent))
    if not 0 <= seen <= kv.shape[3]:
        raise StateError(f"index: expected the tokens seen, 0 to the cache's length {kv.shape[3]}, found {seen}")
    layers = []
    for i, layer in enumerate(backbone.transformer_layers):
        if layer.layer_type == "linear_attention":
            dtype = np.promote_types(conv.dtype, recurrent.dtype)
            layers.append(LayerState(_name(name, i), "gated_deltanet", conv=conv[:, i].astype(dtype),
                                     recurrent=recurrent[:, i].astype(dtype, copy=False)))
        else:
            keys, values = (kv[:, i, part, :seen].transpose(0, 2, 1, 3) for part in (0, 1))
            layers.append(LayerState(_name(name, i), "attention", keys=keys, values=values))
    metadata = {"source": source_metadata("keras_hub", _EXTRA, type(source).__name__), "tokens": seen,
                "compute_dtype": _dtype(backbone), "model": _fingerprints(backbone)}
    return StateSet(layers, metadata=metadata)


def initial_state(states: StateSet, target: Any, *, strict: bool = False, broadcast: bool = False,
                  batch_size: int | None = None, device: Any = None, max_length: int | None = None) -> Any:
    """`(cache, index)` for `target.call_with_cache(next_tokens, cache, index)`, the KV cache `max_length` long.

    >>> cache, index = initial_state(statefmt.load("session.statefmt"), lm, max_length=64)
    >>> logits, _, cache = lm.call_with_cache(next_tokens, cache, index)

    `device` is not used: Keras places the arrays itself.
    """
    keras = require("keras", _EXTRA)
    backbone = _backbone(target)
    states = fit(states, signature(target), strict=strict, broadcast=broadcast, batch_size=batch_size,
                 downcast=False)
    seen = states.metadata.get("tokens")
    lengths = {layer["keys"].shape[2] for layer in states.layers if layer.kind == "attention"}
    seen = max(lengths, default=0) if seen is None else int(seen)
    problems = [f"layer {i} {layer.name!r}: dims.length: a full-attention layer keeps every position, expected "
                f"{seen} (the tokens seen), found {layer['keys'].shape[2]}" for i, layer in enumerate(states.layers)
                if layer.kind == "attention" and layer["keys"].shape[2] != seen]
    length = seen if max_length is None else max_length
    if length < seen:
        problems.append(f"max_length: expected at least the {seen} tokens the state has seen, found {max_length}")
    if problems:
        raise StateMismatchError(problems, source=states.file)
    batch, count, dtype = states.batch_size, len(states.layers), _dtype(backbone)
    kv = np.zeros((batch, count, 2, length, backbone.num_key_value_heads, backbone.head_dim), dtype)
    conv = np.zeros((batch, count, _conv_dim(backbone), backbone.linear_conv_kernel_dim - 1), dtype)
    recurrent = np.zeros((batch, count, backbone.linear_num_value_heads, backbone.linear_key_head_dim,
                          backbone.linear_value_head_dim), "float32")
    for i, layer in enumerate(states.layers):
        if layer.kind == "attention":
            kv[:, i, 0, :seen] = layer["keys"].transpose(0, 2, 1, 3)
            kv[:, i, 1, :seen] = layer["values"].transpose(0, 2, 1, 3)
        else:
            conv[:, i], recurrent[:, i] = layer["conv"], layer["recurrent"]
    cache = tuple(keras.ops.convert_to_tensor(part) for part in (kv, conv, recurrent))
    return cache, seen


def _backbone(target: Any):
    models = require("keras_hub", _EXTRA).models
    backbone = target.backbone if isinstance(target, models.CausalLM) else target
    if not isinstance(backbone, models.Qwen3_5Backbone):
        raise StateError(f"statefmt.adapters.keras_hub takes a Qwen3.5 CausalLM or Qwen3_5Backbone, found "
                         f"{type(target).__name__}")
    return backbone


def _fingerprints(backbone) -> dict[str, str]:
    keras = require("keras", _EXTRA)
    return model_fingerprints("keras_hub", backbone.get_config(),
                              ((weight.path, _numpy(keras, weight)) for weight in backbone.weights))


def _conv_dim(backbone) -> int:
    return (2 * backbone.linear_num_key_heads * backbone.linear_key_head_dim
            + backbone.linear_num_value_heads * backbone.linear_value_head_dim)


def _dtype(backbone) -> str:
    return str(backbone.compute_dtype)


def _numpy(keras, tensor) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def _name(prefix: str | None, index: int) -> str:
    return prefixed(prefix, f"l{index}")
