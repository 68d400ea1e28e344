"""Hugging Face transformers adapter: the recurrent state of Mamba, Mamba-2, gated DeltaNet hybrids (Qwen3-Next,
Qwen3.5), RWKV-4, xLSTM and RecurrentGemma (Griffin) language models to and from the neutral layout (format
2.1, `statefmt.kinds`).

A forward pass with `use_cache=True` leaves the state in the output: `out.cache_params` (Mamba,
Mamba-2, xLSTM), `out.past_key_values` (Qwen3-Next) or `out.state` (RWKV). `export(model, out)`
takes it (or the cache itself) as a StateSet; `initial_state(states, model)` builds what the next
forward or `generate` takes under that same argument name (`cache_argument(model)` says which).
RecurrentGemma is the exception: its RG-LRU blocks keep their state in the model itself, and its
output carries no cache. Pass it a `DynamicCache(config=model.config)` as `past_key_values` and
export that; `initial_state` puts the RG-LRU state into the model and returns the attention cache.

Layers are named "l0", "l1", ... after the model's decoder layers. Hugging Face keeps conv
windows K wide; the neutral window is K-1 (the oldest column is never read), so export drops it
and `initial_state` puts back a zero column. It keeps recurrent states in float32 beside a conv
window in the model's dtype: export stores a layer in the wider of its dtypes (exactly), and
`initial_state` gives each tensor back in the dtype the model holds it in, refusing (as a misfit)
any value that dtype would round. Every state carries the model's fingerprints (its config and
weights, hashed), so the state of another model is refused by name.

`generate` takes the cache too: a model with attention layers (Qwen3-Next) the whole prompt, as
its cache says how many tokens it has seen; one without (Mamba, Mamba-2, RWKV) only the tokens
after the state, or it reads the prompt twice.

Known limits of the installed transformers (5.23, read in its source and measured, not papered over):
- Mamba-1's slow path (CPU, no `mamba_ssm`) ignores the cached ssm state when a forward continues
  with more than one token (2e-3 off): continue one token at a time (`generate` does), which is exact.
- RWKV's one-token step broadcasts a `[batch, channels]` shift against `[batch, 1, channels]`: right
  at batch 1 only (1.08 off at batch 2, with its own cache too); several tokens at once are exact.
- RWKV with `rescale_every > 0` divides its weights in place when it first runs in eval mode; its
  weights fingerprint changes then: fingerprint it after the same first forward, or set 0.
- xLSTM's `generate` cannot take a cache built outside it (`xLSTMCache` lacks `is_compileable`):
  continue with forward calls, which are exact.
- RecurrentGemma's forward of several tokens ignores a cached conv window (its prefill path): continue
  one token at a time, which is exact, past the local-attention window too.
transformers itself is imported on first use, never when this module is imported.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import xxhash

from statefmt import LayerSignature, LayerState, StateMismatchError, StateSet, StateSignature

from ._common import fit, prefixed, require, source_metadata
from .torch import _numpy, _tensor

IMPLEMENTATION = "transformers"
# Config entries that say how a model is run or stored, not what it computes: left out of its fingerprint.
_RUN_SETTINGS = ("transformers_version", "_name_or_path", "name_or_path", "architectures", "dtype", "torch_dtype",
                 "use_cache", "output_hidden_states", "output_attentions", "return_dict", "_attn_implementation",
                 "_attn_implementation_internal", "_commit_hash", "chunk_size", "max_inference_chunksize")


def signature(target: Any, *, name: str | None = None) -> StateSignature:
    """What `target` (a transformers model) takes: per layer its kind, sizes and tensor dtypes; its fingerprints.

    >>> signature(Mamba2ForCausalLM(config)).layers[0].kind  # doctest: +SKIP
    'mamba2'

    No batch size (a cache takes any). The fingerprints hash the config and every weight: a
    second or so per GB of weights.
    """
    t = _Target.of(target)
    return StateSignature([LayerSignature(spec.kind, dims=spec.dims, dtypes=spec.dtypes,
                                          name=prefixed(name, f"l{spec.index}")) for spec in t.layers],
                          model=fingerprint(target))


def export(source: Any, state: Any = None, *, name: str | None = None, tokens: Any = None) -> StateSet:
    """The state a forward of `source` with `use_cache=True` left, as a StateSet.

    >>> out = model(input_ids, use_cache=True)  # doctest: +SKIP
    >>> statefmt.save(export(model, out, tokens=input_ids), "session.statefmt")  # doctest: +SKIP

    `state` is the forward's output or its cache. `tokens` (the input ids seen, `[batch, tokens]`,
    or their count) records how many tokens the state has seen, with a fingerprint of the ids;
    without it, a model with attention layers tells the count itself.
    """
    if state is None:
        raise StateMismatchError("pass the forward's output (or its cache): export(model, model(ids, use_cache=True))")
    t = _Target.of(source)
    cache = t.family.cache_of(state)
    problems: list[str] = []
    layers = []
    for spec in t.layers:
        arrays = t.family.read(t, cache, spec, problems)
        if arrays is not None:
            layers.append(_layer(prefixed(name, f"l{spec.index}"), spec, arrays))
    if problems:
        raise StateMismatchError(problems)
    metadata: dict[str, Any] = {"source": source_metadata("transformers", "transformers", type(source).__name__),
                                "compute_dtype": t.compute_dtype, "model": fingerprint(source)}
    seen = _tokens(tokens) if tokens is not None else t.family.tokens(cache, t)
    if seen is not None:
        metadata["tokens"] = seen[0]
        if seen[1] is not None:
            metadata["token_fingerprint"] = seen[1]
    return StateSet(layers, metadata=metadata)


def initial_state(states: StateSet, target: Any, *, strict: bool = False, broadcast: bool = False,
                  batch_size: int | None = None, device: Any = None) -> Any:
    """The cache `target`'s forward and `generate` take (under `cache_argument(target)`), holding `states`.

    >>> cache = initial_state(statefmt.load("session.statefmt"), model)  # doctest: +SKIP
    >>> out = model(next_ids, **{cache_argument(model): cache}, use_cache=True)  # doctest: +SKIP

    Every misfit (layer count, kind, sizes, window, the model's fingerprints, a dtype that would
    round values; with `strict`, any other dtype) is reported at once, before anything is built.
    `broadcast=True, batch_size=N` starts N sessions from a batch-1 state.
    """
    torch = require("torch", "transformers")
    t = _Target.of(target)
    states = fit(states, signature(target), strict=strict, broadcast=broadcast, batch_size=batch_size,
                 downcast=False)
    device = t.device if device is None else torch.device(device)
    tensors = [{key: _tensor(np.ascontiguousarray(layer[key])).to(device=device, dtype=getattr(torch, spec.dtypes[key]))
                for key in layer.state_names} for spec, layer in zip(t.layers, states.layers)]
    return t.family.build(t, tensors, states.metadata.get("tokens"), states.batch_size, device)


def cast_cost(model: Any, states: StateSet, dtype: str, tokens: Any) -> float:
    """What storing `states` as `dtype` costs: the largest logit difference over `tokens` (`[batch, n]`, what
    follows the state) between continuing from `states` and from `states.astype(dtype)`. Measure it before
    paying it (engines found float32 recurrent state necessary for accuracy).

    >>> cast_cost(model, states, "bfloat16", next_ids)  # doctest: +SKIP
    0.0025

    Both continue one token at a time, which every family here computes exactly.
    """
    torch = require("torch", "transformers")
    argument = cache_argument(model)
    runs = []
    for candidate in (states, states.astype(dtype)):
        cache, logits = initial_state(candidate, model), []
        with torch.no_grad():
            for t in range(tokens.shape[1]):
                out = model(tokens[:, t:t + 1], **{argument: cache}, use_cache=True)
                logits.append(out.logits.float())
                cache = getattr(out, argument, None) or cache  # RecurrentGemma updates its own
        runs.append(torch.cat(logits, 1))
    return float((runs[0] - runs[1]).abs().max())


def cache_argument(target: Any) -> str:
    """The keyword `target`'s forward takes its state under: "cache_params", "past_key_values" or "state"."""
    return _Target.of(target).family.argument


def fingerprint(model: Any) -> dict[str, str]:
    """The model's fingerprints: xxh3-64 of its config (run settings left out) and of every weight (name, dtype,
    shape, bytes), so a state from another model is refused by name.

    >>> fingerprint(model)["config"]  # doctest: +SKIP
    'xxh3_64:...'
    """
    config = {key: value for key, value in model.config.to_dict().items() if key not in _RUN_SETTINGS}
    text = json.dumps(config, sort_keys=True, default=str)
    digest = xxhash.xxh3_64()
    for key, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}:{data.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(_numpy(data).view(np.uint8).data)
    return {"implementation": IMPLEMENTATION, "config": "xxh3_64:" + xxhash.xxh3_64_hexdigest(text.encode()),
            "weights": "xxh3_64:" + digest.hexdigest()}


# --- the model ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Spec:
    """One decoder layer's state as the model holds it."""

    index: int
    kind: str
    dims: dict[str, int | None]  # every size but attention's length, which grows with the tokens
    dtypes: dict[str, str]  # tensor -> the dtype the model holds it in
    conv_kernel: int = 0  # Hugging Face's conv window width K (0: no conv)


@dataclasses.dataclass(frozen=True)
class _Target:
    model: Any
    family: _Family
    layers: tuple[_Spec, ...]
    compute_dtype: str
    device: Any

    @classmethod
    def of(cls, model: Any) -> _Target:
        require("transformers", "transformers")
        config = getattr(model, "config", None)
        family = _FAMILIES.get(str(getattr(config, "model_type", "")))
        if family is None:
            raise StateMismatchError(f"{type(model).__name__} has no neutral layout here: statefmt.adapters."
                                     f"transformers maps models of type {', '.join(sorted(_FAMILIES))}; found "
                                     f"{getattr(config, 'model_type', None)!r}")
        param = next(model.parameters())
        compute = str(param.dtype).removeprefix("torch.")
        return cls(model, family, tuple(family.specs(model, compute)), compute, param.device)


def _layer(name: str, spec: _Spec, tensors: dict[str, Any]) -> LayerState:
    """A neutral layer from the model's tensors: every tensor in the widest of their dtypes (an exact cast)."""
    torch = require("torch", "transformers")
    widest = max((t.dtype for t in tensors.values()), key=lambda d: (torch.finfo(d).bits, d == torch.float32))
    if len({t.dtype for t in tensors.values()}) > 1 and torch.finfo(widest).bits == 16:
        widest = torch.float32  # float16 beside bfloat16: float32 holds both
    arrays = {key: _numpy(t.detach().to(widest)) for key, t in tensors.items()}
    return LayerState(name, spec.kind, window=spec.dims.get("window"), **arrays)


def _tokens(tokens: Any) -> tuple[int, str | None]:
    if isinstance(tokens, (int, np.integer)) and not isinstance(tokens, bool):
        return int(tokens), None
    ids = np.ascontiguousarray(_numpy(tokens) if hasattr(tokens, "detach") else np.asarray(tokens), "<i8")
    if ids.ndim != 2:
        raise StateMismatchError(f"tokens: expected the input ids [batch, tokens] or their count, found shape "
                                 f"{list(ids.shape)}")
    return int(ids.shape[1]), "xxh3_64:" + xxhash.xxh3_64_hexdigest(ids.data)


class _Family:
    """How one model type lays out its state; `_FAMILIES` maps `config.model_type` to one."""

    argument = "cache_params"

    def specs(self, model: Any, compute: str) -> list[_Spec]:
        raise NotImplementedError

    def cache_of(self, state: Any) -> Any:
        """The cache, from a forward's output (under the argument's name) or the cache itself."""
        found = getattr(state, self.argument, None)
        return state if found is None else found

    def read(self, target: _Target, cache: Any, spec: _Spec, problems: list[str]) -> dict[str, Any] | None:
        raise NotImplementedError

    def tokens(self, cache: Any, target: _Target) -> tuple[int, str | None] | None:
        return None

    def build(self, target: _Target, tensors: list[dict[str, Any]], tokens: int | None, batch: int,
              device: Any) -> Any:
        raise NotImplementedError


class _Dynamic(_Family):
    """A `DynamicCache` of linear-attention layers (conv + recurrent) and attention layers (keys, values)."""

    recurrent: str = ""  # the neutral name of its linear-attention layers' recurrent tensor

    def decoder_layers(self, model: Any) -> list[Any]:
        return list(model.base_model.layers)

    def read(self, target: _Target, cache: Any, spec: _Spec, problems: list[str]) -> dict[str, Any] | None:
        layer = cache.layers[spec.index]
        if spec.kind == "attention":
            if getattr(layer, "keys", None) is None or not layer.is_initialized:
                problems.append(f"layer {spec.index}: the cache holds no keys: run the model with use_cache=True")
                return None
            return {"keys": layer.keys, "values": layer.values}
        if not layer.has_previous_state[0]:
            problems.append(f"layer {spec.index}: the cache holds no state: run the model with use_cache=True")
            return None
        conv = layer.conv_states[0]
        return {"conv": conv[..., conv.shape[-1] - (spec.conv_kernel - 1):], self.recurrent: layer.recurrent_states[0]}

    def tokens(self, cache: Any, target: _Target) -> tuple[int, str | None] | None:
        attention = [spec for spec in target.layers if spec.kind == "attention"]
        return None if not attention else (int(cache.layers[attention[0].index].get_seq_length()), None)

    def build(self, target: _Target, tensors: list[dict[str, Any]], tokens: int | None, batch: int,
              device: Any) -> Any:
        torch = require("torch", "transformers")
        cache = require("transformers", "transformers").DynamicCache(config=target.model.config)
        for spec, arrays in zip(target.layers, tensors):
            if spec.kind == "attention":
                if arrays["keys"].shape[2]:
                    layer = cache.layers[spec.index]
                    layer.update(arrays["keys"], arrays["values"])
                    if hasattr(layer, "cumulative_length") and tokens is not None:
                        layer.cumulative_length = int(tokens)  # a sliding window keeps fewer than it has seen
                continue
            conv = arrays["conv"]
            pad = torch.zeros((*conv.shape[:-1], 1), dtype=conv.dtype, device=conv.device)  # the unread column
            cache.update_conv_state(torch.cat([pad, conv], -1), spec.index, conv_kernel_size=spec.conv_kernel)
            cache.update_recurrent_state(arrays[self.recurrent], spec.index)
        return cache


class _Mamba(_Dynamic):
    recurrent = "ssm"

    def specs(self, model: Any, compute: str) -> list[_Spec]:
        specs = []
        for index, block in enumerate(self.decoder_layers(model)):
            mixer = block.mixer
            k = mixer.conv_kernel_size
            dims = {"channels": mixer.intermediate_size, "conv_window": k - 1, "state_size": mixer.ssm_state_size}
            specs.append(_Spec(index, "mamba", dims, {"conv": compute, "ssm": "float32"}, k))
        return specs


class _Mamba2(_Dynamic):
    recurrent = "ssm"

    def specs(self, model: Any, compute: str) -> list[_Spec]:
        specs = []
        for index, block in enumerate(self.decoder_layers(model)):
            mixer = block.mixer
            k = mixer.conv_kernel_size
            dims = {"conv_channels": mixer.conv_dim, "conv_window": k - 1, "heads": mixer.num_heads,
                    "head_dim": mixer.head_dim, "state_size": mixer.ssm_state_size}
            specs.append(_Spec(index, "mamba2", dims, {"conv": compute, "ssm": "float32"}, k))
        return specs


class _GatedDeltaNetHybrid(_Dynamic):
    """Qwen3-Next: gated DeltaNet layers ("linear_attention") beside full-attention layers."""

    argument = "past_key_values"
    recurrent = "recurrent"

    def specs(self, model: Any, compute: str) -> list[_Spec]:
        config = model.config.get_text_config(decoder=True)
        specs = []
        for index, (block, kind) in enumerate(zip(self.decoder_layers(model), config.layer_types)):
            if kind == "linear_attention":
                mixer = block.linear_attn
                k = mixer.conv_kernel_size
                dims = {"conv_channels": mixer.conv_dim, "conv_window": k - 1, "heads": mixer.num_v_heads,
                        "key_dim": mixer.head_k_dim, "value_dim": mixer.head_v_dim}
                specs.append(_Spec(index, "gated_deltanet", dims, {"conv": compute, "recurrent": "float32"}, k))
            else:
                window = getattr(config, "sliding_window", None) if kind == "sliding_attention" else None
                dims = {"kv_heads": config.num_key_value_heads, "head_dim": config.head_dim,
                        "value_dim": config.head_dim, "window": window}
                specs.append(_Spec(index, "attention", dims, {"keys": compute, "values": compute}))
        return specs


class _Rwkv(_Family):
    """RWKV-4: `state`, five tensors `[batch, hidden, layers]` ordered ffn_x, att_x, num, den, max."""

    argument = "state"
    _ORDER = ("ffn_x", "att_x", "att_num", "att_den", "att_max")

    def specs(self, model: Any, compute: str) -> list[_Spec]:
        config = model.config
        dtypes = {name: compute if name in ("ffn_x", "att_x") else "float32" for name in self._ORDER}
        return [_Spec(index, "rwkv4", {"channels": config.hidden_size}, dtypes)
                for index in range(config.num_hidden_layers)]

    def read(self, target: _Target, cache: Any, spec: _Spec, problems: list[str]) -> dict[str, Any] | None:
        if not isinstance(cache, (list, tuple)) or len(cache) != 5:
            problems.append(f"layer {spec.index}: expected the model's `state` (5 tensors), found "
                            f"{type(cache).__name__}")
            return None
        return {name: cache[i][:, :, spec.index] for i, name in enumerate(self._ORDER)}

    def build(self, target: _Target, tensors: list[dict[str, Any]], tokens: int | None, batch: int,
              device: Any) -> Any:
        torch = require("torch", "transformers")
        return [torch.stack([layer[name] for layer in tensors], -1) for name in self._ORDER]


class _Xlstm(_Family):
    """xLSTM (xLSTM-7B's blocks): `xLSTMCache.rnn_state[layer]` = (C, n, m[..., 1]); no convolution."""

    def specs(self, model: Any, compute: str) -> list[_Spec]:
        config = model.config
        dims = {"heads": config.num_heads, "key_dim": config.qk_head_dim, "value_dim": config.v_head_dim,
                "conv_channels": 0, "conv_window": 0}
        return [_Spec(index, "mlstm", dims, dict.fromkeys(("C", "n", "m", "conv"), compute))
                for index in range(config.num_hidden_layers)]

    def read(self, target: _Target, cache: Any, spec: _Spec, problems: list[str]) -> dict[str, Any] | None:
        C, n, m = cache.rnn_state[spec.index]
        return {"C": C, "n": n, "m": m[..., 0], "conv": C.new_zeros((C.shape[0], 0, 0))}

    def tokens(self, cache: Any, target: _Target) -> tuple[int, str | None] | None:
        return int(cache.seqlen_offset.reshape(-1)[0]), None

    def build(self, target: _Target, tensors: list[dict[str, Any]], tokens: int | None, batch: int,
              device: Any) -> Any:
        torch = require("torch", "transformers")
        xlstm = require("transformers.models.xlstm.modeling_xlstm", "transformers")
        dtype = getattr(torch, target.compute_dtype)
        cache = xlstm.xLSTMCache(target.model.config, batch, dtype=dtype, device=device)
        for spec, arrays in zip(target.layers, tensors):
            cache.rnn_state[spec.index] = (arrays["C"], arrays["n"], arrays["m"][..., None])
        cache.seqlen_offset += int(tokens or 0)
        return cache


class _RecurrentGemma(_Dynamic):
    """Griffin: RG-LRU blocks keep their state in the model itself (`conv1d_state`, `rg_lru.recurrent_states`),
    local-attention blocks in the `past_key_values` the caller passes (the forward returns none)."""

    argument = "past_key_values"

    def specs(self, model: Any, compute: str) -> list[_Spec]:
        config = model.config
        specs = []
        for index, kind in enumerate(config.layers_block_type):
            if kind == "linear_attention":
                k = config.conv1d_width
                dims: dict[str, int | None] = {"channels": config.lru_width, "conv_window": k - 1}
                specs.append(_Spec(index, "rglru", dims, {"conv": compute, "rg_lru": "float32"}, k))
            else:
                dims = {"kv_heads": config.num_key_value_heads, "head_dim": config.head_dim,
                        "value_dim": config.head_dim, "window": config.attention_window_size}
                specs.append(_Spec(index, "attention", dims, {"keys": compute, "values": compute}))
        return specs

    def read(self, target: _Target, cache: Any, spec: _Spec, problems: list[str]) -> dict[str, Any] | None:
        if spec.kind == "attention":
            return super().read(target, cache, spec, problems)
        block = target.model.model.layers[spec.index].temporal_block
        if block.conv1d_state is None or block.rg_lru.recurrent_states is None:
            problems.append(f"layer {spec.index}: the model holds no state: run it with use_cache=True")
            return None
        return {"conv": block.conv1d_state, "rg_lru": block.rg_lru.recurrent_states}

    def build(self, target: _Target, tensors: list[dict[str, Any]], tokens: int | None, batch: int,
              device: Any) -> Any:
        attention = [(spec, arrays) for spec, arrays in zip(target.layers, tensors) if spec.kind == "attention"]
        seen = tokens if tokens is not None else max((a["keys"].shape[2] for _, a in attention), default=0)
        cache = require("transformers", "transformers").DynamicCache(config=target.model.config)
        for spec, arrays in zip(target.layers, tensors):
            if spec.kind == "attention":
                if arrays["keys"].shape[2]:
                    layer = cache.layers[spec.index]
                    layer.update(arrays["keys"], arrays["values"])
                    layer.cumulative_length = int(seen)  # a sliding window keeps fewer than it has seen
                continue
            block = target.model.model.layers[spec.index].temporal_block  # the model holds this state itself
            block.conv1d_state, block.rg_lru.recurrent_states = arrays["conv"], arrays["rg_lru"]
        return cache


_FAMILIES: dict[str, _Family] = {"mamba": _Mamba(), "falcon_mamba": _Mamba(), "mamba2": _Mamba2(),
                                 "qwen3_next": _GatedDeltaNetHybrid(), "qwen3_5_text": _GatedDeltaNetHybrid(),
                                 "rwkv": _Rwkv(), "xlstm": _Xlstm(), "recurrent_gemma": _RecurrentGemma()}
